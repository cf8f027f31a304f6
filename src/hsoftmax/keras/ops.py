r"""The node math of hierarchical softmax in ``keras.ops``: the Keras backend's one copy.

A node with children ``c_0..c_{k-1}`` gets one score per child slot (see
:mod:`hsoftmax.keras.plan`): a binary node scores ``[0, s]`` with :math:`s = W_r h + b_r`, a
k-ary node ``s_j = W_{r+j} h + b_{r+j}``, a one-child node ``[0]``. :func:`child_log_probs` turns
the slot scores into the children's log-probabilities by one masked log-softmax, so

* binary: :math:`\log p(c_1) = s - \log(1 + e^s) = \log\sigma(s)`,
  :math:`\log p(c_0) = \log\sigma(-s)` (the torch layer's sigmoid node, exactly);
* k-ary: :math:`\log p(c_j) = s_j - \operatorname{logsumexp}_i s_i`;
* one child: 0.

Every path of :class:`hsoftmax.keras.HierarchicalSoftmax` (training, the full distribution and
the beam search) scores slots with :func:`shared_slot_scores` or :func:`slot_scores` and calls
:func:`child_log_probs`; nothing else computes a node's probabilities.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from keras import ops

__all__ = ["NEG", "child_log_probs", "slot_scores", "shared_slot_scores"]

#: Stands for log 0 (an absent slot, a dead beam entry). Finite, so that ``exp`` gives exactly 0
#: and no gradient is NaN, and far below any real log-probability.
NEG = -1e30


def child_log_probs(scores, valid, axis=-1):
    """``(..., K)`` slot scores and validity -> ``(..., K)`` child log-probabilities (the slots
    along ``axis``: ``axis=0`` for a ``(K, nodes, batch)`` layout, whose reductions are then
    elementwise over ``K`` slabs instead of over a tiny innermost dimension, unrolled up to 8).

    Invalid slots get about ``NEG``; every row needs at least one valid slot (the plans put a
    FIXED slot 0 in every row, padding included).
    """
    s = ops.where(valid, scores, NEG)
    if axis == 0 and s.shape[0] is not None and s.shape[0] <= 8:
        # A few slabs: max and sum elementwise (XLA's CPU reduce over a short axis is slow).
        m = s[0]
        for j in range(1, s.shape[0]):
            m = ops.maximum(m, s[j])
        m = ops.stop_gradient(m)
        z = s - m
        total = ops.exp(z[0])
        for j in range(1, s.shape[0]):
            total = total + ops.exp(z[j])
        return z - ops.log(total)
    # The max only keeps exp in range; the result does not depend on it, so no gradient flows.
    m = ops.stop_gradient(ops.max(s, axis=axis, keepdims=True))
    z = s - m
    return z - ops.log(ops.sum(ops.exp(z), axis=axis, keepdims=True))


def _row_scores(h, kernel, bias, rows, matmul=False):
    """``h`` ``(B, d)``, ``rows`` ``(B, ..., K)`` int -> ``(B, ..., K)`` scores ``W_r . h + b_r``,
    0 where ``rows`` is negative. Narrow nodes in training: gathered rows times ``h`` summed over
    ``d`` (not einsum), so XLA can fuse the gather into the reduction instead of materializing
    the rows for the backward pass; ``matmul`` (inference: no backward) asks for the batched
    matmul, about 2x faster for a tree search's (B, E, 1) rows on JAX."""
    safe = ops.maximum(rows, 0)
    w = ops.take(kernel, safe, axis=0)  # (B, ..., K, d)
    if len(rows.shape) == 3 and (rows.shape[-1] >= 16 or matmul):
        # Wide k-ary nodes (two-level clusters): a batched matmul beats the fused multiply-sum
        # (measured on JAX at V = 100k: about 20% off the two-level train step).
        s = ops.einsum("bd,brkd->brk", h, w)
    else:
        hb = h
        for _ in range(len(rows.shape) - 1):
            hb = ops.expand_dims(hb, 1)  # (B, 1, ..., 1, d)
        s = ops.sum(w * hb, axis=-1)
    if bias is not None:
        s = s + ops.take(bias, safe, axis=0)
    return ops.where(rows >= 0, s, ops.zeros_like(s))


def slot_scores(h: Any, kernel: Any, bias: Any, rows: Any, lead_fixed: bool, matmul: bool = False) -> tuple[Any, Any]:
    """Per-example slot scores: ``rows`` ``(B, ..., K)`` slot rows (FIXED/NONE allowed) ->
    ``(scores, valid)``, both ``(B, ..., K)``. With ``lead_fixed`` (binary runs) slot 0 is the
    fixed 0 everywhere and only slots ``1..`` are gathered. ``matmul``: see :func:`_row_scores`."""
    valid = rows >= -1
    if lead_fixed and rows.shape[-1] == 1:  # one-child nodes only: nothing to score
        return ops.zeros_like(ops.cast(rows, h.dtype)), valid
    if lead_fixed:
        s = _row_scores(h, kernel, bias, rows[..., 1:], matmul)
        s = ops.concatenate([ops.zeros_like(s[..., :1]), s], axis=-1)
    else:
        s = _row_scores(h, kernel, bias, rows, matmul)
    return s, valid


def shared_slot_scores(h, kernel, bias, rows_np):
    """Slot scores of one node for the whole batch by one matmul: ``rows_np`` is the node's
    static ``(K,)`` numpy slot rows -> ``(scores (B, K), valid (K,))``."""
    rows_np = np.asarray(rows_np)
    real = np.flatnonzero(rows_np >= 0)
    if real.size == 0:
        return ops.repeat(ops.zeros_like(h[:, :1]), rows_np.size, axis=1), rows_np >= -1
    w = ops.take(kernel, rows_np[real].astype("int32"), axis=0)  # (r, d)
    s = ops.matmul(h, ops.transpose(w))
    if bias is not None:
        s = s + ops.take(bias, rows_np[real].astype("int32"), axis=0)
    if real.size != rows_np.size:
        # Scatter the real columns into their slots (static positions: a gather of [0, s...]).
        src = np.zeros(rows_np.size, dtype=np.int32)
        src[real] = 1 + np.arange(real.size)
        s = ops.take(ops.concatenate([ops.zeros_like(s[:, :1]), s], axis=1), src, axis=1)
    return s, rows_np >= -1

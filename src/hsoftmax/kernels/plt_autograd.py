r"""The torch bridge to the PLT kernels (:mod:`hsoftmax.kernels.plt`): an autograd Function for
the batch loss and plain calls for prediction, on numpy views of CPU tensors.

:class:`hsoftmax.LabelTree` sends a call here when :func:`hsoftmax.functional._cpu_kernels`
(the one backend choice) says the kernels may take it; otherwise it runs its own torch code
(:mod:`hsoftmax.label_tree`), which gives the same numbers. The node-table gradient comes out
coalesced by row, as a sparse COO tensor or dense (the same wrapping as the HS bridge).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from . import borrow_marks, buffer, threads
from . import plt as P
from .autograd import _bias_np, _np, _table_grads, _torch_path_grads

__all__ = ["node_targets", "batch_loss", "topk", "threshold", "log_marginals"]


def node_targets(layout: P.PLTLayout, offsets: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, ...]:
    """``(start (B+1,), rows (M,), targets (M,) int8)``: every example's node targets, CSR."""
    B = offsets.shape[0] - 1
    counts = np.empty(B, np.int64)
    P.batch_count(offsets, labels, layout, counts)
    start = np.zeros(B + 1, np.int64)
    np.cumsum(counts, out=start[1:])
    rows = np.empty(start[-1], np.int64)
    targets = np.empty(start[-1], np.int8)
    P.batch_fill(offsets, labels, layout, start, rows, targets)
    return start, rows, targets


class _PLTLossFn(torch.autograd.Function):
    """Per-example PLT loss on the CPU kernels; backward gives the input gradient and the
    coalesced node-table gradient (sparse or dense). ``torch_loss`` recomputes the loss on the
    torch path for double backward."""

    @staticmethod
    def forward(
        ctx: Any,
        h: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        layout: P.PLTLayout,
        offsets: np.ndarray,
        labels: np.ndarray,
        sparse: bool,
        torch_loss: Callable[[Tensor, Tensor, Tensor | None], Tensor],
    ) -> Tensor:
        hn = _np(h)
        start, rows, targets = node_targets(layout, offsets, labels)
        loss = np.empty(hn.shape[0], hn.dtype)
        coef = np.empty(rows.shape[0], hn.dtype)
        P.batch_forward(hn, _np(weight), _bias_np(bias, hn.dtype), start, rows, targets, loss, coef)
        ctx.save_for_backward(h, weight)
        ctx.bias, ctx.sparse, ctx.torch_loss = bias, sparse, torch_loss
        ctx.plan = (start, rows, coef)
        return torch.from_numpy(loss)

    @staticmethod
    def backward(ctx: Any, go: Tensor) -> tuple[Tensor | None, ...]:
        h, weight = ctx.saved_tensors
        bias = ctx.bias
        if torch.is_grad_enabled():  # create_graph=True: differentiate the torch path instead
            return _torch_path_grads(ctx, (h, weight, bias), go, ctx.torch_loss)
        start, rows, coef = ctx.plan
        threads()  # backward may run on another thread than forward: numba's count is per thread
        hn = _np(h)
        gon = _np(go.to(h.dtype))
        gh = gw = gb = None
        if ctx.needs_input_grad[0]:
            ghn = np.empty_like(hn)
            P.batch_grad_input(gon, _np(weight), start, rows, coef, ghn)
            gh = torch.from_numpy(ghn)
        want_w = ctx.needs_input_grad[1]
        want_b = bias is not None and ctx.needs_input_grad[2]
        if want_w or want_b:
            with borrow_marks(weight.shape[0]) as mark:
                uniq, gstart, entries = P.group_rows(rows, mark)
            example = np.repeat(np.arange(hn.shape[0]), np.diff(start))
            gwn = buffer((uniq.shape[0], hn.shape[1]), hn.dtype)
            gbn = np.empty(uniq.shape[0] if want_b else 0, hn.dtype)
            P.batch_grad_rows(gon, hn, example, coef, gstart, entries, gwn, gbn)
            gw, gb = _table_grads(uniq, gwn, gbn if want_b else None, weight.shape, ctx.sparse)
            if not want_w:
                gw = None
        return gh, gw, gb, None, None, None, None, None


def batch_loss(
    h: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    layout: P.PLTLayout,
    offsets: np.ndarray,
    labels: np.ndarray,
    sparse: bool,
    torch_loss: Callable[[Tensor, Tensor, Tensor | None], Tensor],
) -> Tensor:
    """``(B,)`` per-example PLT loss of validated CSR label sets (``offsets``/``labels`` int64)."""
    out = _PLTLossFn.apply(h, weight, bias, layout, offsets, labels, sparse, torch_loss)
    assert isinstance(out, Tensor)
    return out


def topk(h: Tensor, k: int, weight: Tensor, bias: Tensor | None, layout: P.PLTLayout) -> tuple[Tensor, Tensor]:
    """Exact top-k labels by marginal: ``(log marginals (B, k), labels (B, k))``."""
    hn = _np(h)
    vals = np.empty((hn.shape[0], k), np.float64)
    idx = np.empty((hn.shape[0], k), np.int64)
    P.topk_search(hn, _np(weight), _bias_np(bias, hn.dtype), layout, k, vals, idx)
    return torch.from_numpy(vals.astype(hn.dtype, copy=False)), torch.from_numpy(idx)


def threshold(
    h: Tensor, log_t: float, weight: Tensor, bias: Tensor | None, layout: P.PLTLayout
) -> tuple[Tensor, Tensor, Tensor]:
    """Every label with log marginal ``>= log_t``: CSR ``(offsets, labels, log marginals)``."""
    hn = _np(h)
    W, b = _np(weight), _bias_np(bias, hn.dtype)
    counts = np.empty(hn.shape[0], np.int64)
    P.threshold_count(hn, W, b, layout, log_t, counts)
    start = np.zeros(hn.shape[0] + 1, np.int64)
    np.cumsum(counts, out=start[1:])
    lp = np.empty(start[-1], np.float64)
    labels = np.empty(start[-1], np.int64)
    P.threshold_fill(hn, W, b, layout, log_t, start, lp, labels)
    return torch.from_numpy(start), torch.from_numpy(labels), torch.from_numpy(lp.astype(hn.dtype, copy=False))


def log_marginals(h: Tensor, weight: Tensor, bias: Tensor | None, layout: P.PLTLayout) -> Tensor:
    """``(B, V)`` log marginal of every label: the ``(B, R)`` scores by BLAS, one tree pass each."""
    s = h @ weight.T
    if bias is not None:
        s = s + bias
    ls = F.logsigmoid(s)
    out = np.empty((h.shape[0], layout.num_classes), _np(h).dtype)
    P.log_marginals_all(_np(ls), layout, out)
    return torch.from_numpy(out)

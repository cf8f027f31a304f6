r"""numba kernels of a *linear* PLT over sparse inputs: napkinXC's model, on hsoftmax's PLT layout.

The node models of :mod:`hsoftmax.kernels.plt` score a dense input ``h`` (an encoder's output).
Here the input is a sparse row ``x`` (TF-IDF, bag of words: ``indices``, ``values``) and each
edge has a full-rank linear model over the features, so an edge's score is
:math:`s_r = b_r + \sum_{f \in nz(x)} x_f W^\top[f, r]`: ``O(nnz(x))`` per scored edge, however
many features there are. The weights are stored *feature-major*, ``Wt (F, R)``, so that the
children of a node (contiguous rows ``row_offset[j] + c``) are contiguous in ``Wt[f]``. A dense
:class:`~hsoftmax.LabelTree` with ``weight = Wt.T`` computes exactly the same numbers on the dense
``x`` (tested): the node targets, the edge logistic and the marginals are those of
:mod:`hsoftmax.kernels.plt`, reused, never rewritten.

Kernels:

* :func:`example_scores` / :func:`example_update`: one example's scores on its node targets and
  its SGD or AdaGrad step (the gradient of its loss at the current weights), over the runs of
  contiguous rows (:func:`row_runs`) the node targets come in;
* :func:`train_epoch`: one pass over the examples in a given order, Hogwild over ``threads``
  contiguous chunks of that order (each thread its own scratch), the learning rate decaying
  linearly from ``lr0`` to ``lr1`` over the pass; returns the summed loss;
* :func:`topk_search`: exact top-``K`` labels by best-first search, and
  :func:`threshold_count` / :func:`threshold_fill`: every label with marginal ``>= t`` — the
  searches of :mod:`hsoftmax.kernels.plt` on a :class:`SparseRow`, whose children are scored
  from the sparse row (:func:`hsoftmax.kernels.plt.child_log_marginals`).

Every index the kernels read comes from a validated CSR matrix
(:func:`hsoftmax.label_tree.LinearLabelTree` checks ``indptr``, ``indices < F`` and finite values,
and the label sets with :func:`hsoftmax.kernels.plt.check_label_sets`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit, prange
from numba.extending import overload

from .node import JIT, PARALLEL, log_sigmoid_and_grad
from .plt import child_log_marginals, edge_loss, is_row_type, node_targets, sort_by_marginal, threshold_one, topk_one

__all__ = [
    "SparseRow",
    "row_runs",
    "example_scores",
    "example_update",
    "train_epoch",
    "topk_search",
    "threshold_count",
    "threshold_fill",
]


@njit(inline="always", **JIT)
def _child_scores(idx, val, Wt, b, ro, k, out):
    """Scores of the ``k`` contiguous rows ``ro..ro+k-1`` for the sparse row ``(idx, val)``,
    into ``out[:k]``: one contiguous slice of ``Wt[f]`` per feature, indexed from 0 (no
    wraparound test, so the compiler vectorizes the loop)."""
    for c in range(k):
        out[c] = b[ro + c] if b.shape[0] > 0 else 0.0
    for j in range(idx.shape[0]):
        v = val[j]
        wr = Wt[idx[j], ro : ro + k]
        for c in range(k):
            out[c] += v * wr[c]


@njit(**JIT)
def row_runs(rows, n, runs):
    """Splits the node-target rows ``rows[:n]`` into runs of consecutive rows: ``runs[:m + 1]``
    are their start positions (``runs[m] = n``); returns ``m``. :func:`~hsoftmax.kernels.plt.
    node_targets` writes each positive node's children as one such run (their rows are
    contiguous), so the kernels below read and write a run of ``Wt[f]`` as one contiguous
    slice, which the compiler vectorizes, instead of gathering row by row."""
    m = 0
    for e in range(n):
        if e == 0 or rows[e] != rows[e - 1] + 1:
            runs[m] = e
            m += 1
    runs[m] = n
    return m


@njit(**JIT)
def example_scores(idx, val, Wt, b, rows, n, runs, m, scores):
    """``scores[e] = b[rows[e]] + sum_j val[j] * Wt[idx[j], rows[e]]`` for ``e < n``, ``runs[:m + 1]``
    being :func:`row_runs` of ``rows[:n]``: each run is a node's children, scored as the
    searches score them (:func:`_child_scores`)."""
    for q in range(m):
        e0, e1 = runs[q], runs[q + 1]
        _child_scores(idx, val, Wt, b, rows[e0], e1 - e0, scores[e0:e1])


@njit(**JIT)
def example_update(idx, val, Wt, b, G, Gb, rows, targets, n, runs, m, scores, lr, eps):
    """One example's step on its node targets ``rows[:n]``/``targets[:n]`` (``runs[:m + 1]``: their
    :func:`row_runs`) at the scores ``scores[:n]`` (from :func:`example_scores`, i.e. at the
    current weights): the gradient of the example's loss (the sum of its edges'
    cross-entropies) is ``coef[e] * x`` on column ``rows[e]`` of ``Wt`` and ``coef[e]`` on
    ``b[rows[e]]``. With ``G``/``Gb`` of length 0 a plain SGD step ``-lr * grad``; else AdaGrad:
    ``G += grad**2``, ``step = -lr * grad / sqrt(G + eps)`` (``G`` shaped as ``Wt``, ``Gb`` as
    ``b``). Overwrites ``scores[:n]`` with the coefficients and returns the loss."""
    loss = 0.0
    for e in range(n):
        l, c = edge_loss(scores[e], targets[e])
        loss += l
        scores[e] = c
    ada = G.shape[0] > 0
    for j in range(idx.shape[0]):
        v = val[j]
        f = idx[j]
        w = Wt[f]
        if ada:
            for e in range(n):
                g = scores[e] * v
                if g != 0.0:  # a zero step leaves G alone (and G + eps may be 0)
                    r = rows[e]
                    G[f, r] += g * g
                    w[r] -= lr * g / np.sqrt(G[f, r] + eps)
            continue
        for q in range(m):
            e0, e1 = runs[q], runs[q + 1]
            part, wr = scores[e0:e1], w[rows[e0] : rows[e0] + e1 - e0]
            for c in range(e1 - e0):
                wr[c] -= lr * (part[c] * v)
    if b.shape[0] > 0:
        for e in range(n):
            g = scores[e]
            r = rows[e]
            if ada:
                Gb[r] += g * g
                b[r] -= lr * g / np.sqrt(Gb[r] + eps)
            else:
                b[r] -= lr * g
    return loss


@njit(**JIT)
def _train_chunk(
    indptr, indices, data, order, q0, q1, offsets, labels, layout, Wt, b, G, Gb, lr0, lr1, eps, pcap, tcap
):
    positive = np.empty(pcap, np.int64)
    rows = np.empty(tcap, np.int64)
    targets = np.empty(tcap, np.int8)
    scores = np.empty(tcap, np.float64)
    runs = np.empty(tcap + 1, np.int64)
    span = max(q1 - q0, 1)
    loss = 0.0
    for q in range(q0, q1):
        i = order[q]
        lr = lr0 + (lr1 - lr0) * ((q - q0) / span)
        n = node_targets(labels[offsets[i] : offsets[i + 1]], layout, positive, rows, targets)
        a, z = indptr[i], indptr[i + 1]
        idx = indices[a:z]
        val = data[a:z]
        m = row_runs(rows, n, runs)
        example_scores(idx, val, Wt, b, rows, n, runs, m, scores)
        loss += example_update(idx, val, Wt, b, G, Gb, rows, targets, n, runs, m, scores, lr, eps)
    return loss


@njit(**PARALLEL)
def train_epoch(
    indptr, indices, data, order, offsets, labels, layout, Wt, b, G, Gb, lr0, lr1, eps, threads, pcap, tcap
):
    """One pass of per-example steps over the examples ``order`` (CSR input ``indptr, indices,
    data``; CSR label sets ``offsets, labels``), split into ``threads`` contiguous chunks run
    Hogwild (``threads=1``: sequential and deterministic). ``pcap``/``tcap``: the scratch sizes
    of the largest label set (:func:`hsoftmax.kernels.plt.positive_capacity`,
    :func:`~hsoftmax.kernels.plt.target_capacity`). Returns the summed loss."""
    m = order.shape[0]
    T = max(1, min(threads, m))
    losses = np.zeros(T, np.float64)
    for t in prange(T):
        q0 = (m * t) // T
        q1 = (m * (t + 1)) // T
        losses[t] = _train_chunk(
            indptr, indices, data, order, q0, q1, offsets, labels, layout, Wt, b, G, Gb, lr0, lr1, eps, pcap, tcap
        )
    return losses.sum()


class SparseRow(NamedTuple):
    """A sparse input ``(idx, val)`` with the feature-major table ``Wt (F, R)``, ``b (R,)`` (length
    0: no bias) that scores it: the ``row`` of :func:`hsoftmax.kernels.plt.topk_one` and
    :func:`~hsoftmax.kernels.plt.threshold_one`, which this module's searches reuse."""

    idx: np.ndarray
    val: np.ndarray
    Wt: np.ndarray
    b: np.ndarray


@overload(child_log_marginals, inline="always", jit_options=JIT)
def _sparse_child_log_marginals(row, ro, k, lp, out):
    if not is_row_type(row, SparseRow):
        return None

    def impl(row, ro, k, lp, out):
        _child_scores(row.idx, row.val, row.Wt, row.b, ro, k, out)
        for c in range(k):
            ls, _ = log_sigmoid_and_grad(out[c])
            out[c] = lp + ls

    return impl


@njit(**PARALLEL)
def topk_search(indptr, indices, data, Wt, b, layout, K, vals, idx):
    """Exact top-``K`` labels of each CSR row by marginal: ``vals (B, K)`` log marginals
    (float64), ``idx (B, K)`` int64, descending. ``K <= num_classes``."""
    for i in prange(indptr.shape[0] - 1):
        a, z = indptr[i], indptr[i + 1]
        topk_one(SparseRow(indices[a:z], data[a:z], Wt, b), layout, K, vals[i], idx[i])


@njit(**PARALLEL)
def threshold_count(indptr, indices, data, Wt, b, layout, log_t, counts):
    """``counts[i]``: how many labels of CSR row ``i`` have log marginal ``>= log_t``."""
    empty_lp = np.empty(0, np.float64)
    empty_ref = np.empty(0, np.int64)
    for i in prange(indptr.shape[0] - 1):
        a, z = indptr[i], indptr[i + 1]
        counts[i] = threshold_one(SparseRow(indices[a:z], data[a:z], Wt, b), layout, log_t, empty_lp, empty_ref)


@njit(**PARALLEL)
def threshold_fill(indptr, indices, data, Wt, b, layout, log_t, start, lp, labels):
    """The labels :func:`threshold_count` counted, into ``labels[start[i]:start[i + 1]]`` with
    their log marginals in ``lp``, each row's by descending marginal (ties: label id)."""
    for i in prange(indptr.shape[0] - 1):
        a, z = indptr[i], indptr[i + 1]
        s0, s1 = start[i], start[i + 1]
        threshold_one(SparseRow(indices[a:z], data[a:z], Wt, b), layout, log_t, lp[s0:s1], labels[s0:s1])
        sort_by_marginal(lp[s0:s1], labels[s0:s1])

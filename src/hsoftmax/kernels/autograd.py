r"""The bridge from torch to the numba CPU kernels: autograd Functions, fused SGD, fast inference.

:mod:`hsoftmax.functional` decides, once per public operation, whether a call runs here (every
tensor on the CPU, one float32/float64 dtype, numba available and enabled) or in its own
device-generic torch code; this module only runs the CPU kernels (:mod:`.numba_cpu`) on numpy
views of the tensors. It computes the same numbers as the torch code, and the tests compare the
two on every kind of tree.

Imports flow one way. This module builds on :mod:`hsoftmax.functional` (``TreeTensors``, and the
torch node math :func:`~hsoftmax.functional.decision_log_probs` for a wide root done with BLAS)
and on :mod:`.numba_cpu`; ``functional`` never imports it at module level: its dispatch function
imports it on first use, after checking that the kernels are enabled and numba imports. So
importing ``hsoftmax`` neither imports numba nor creates an import cycle.

Public entry points (called by ``functional`` only): :func:`target_log_prob`, :func:`can_fuse`,
:func:`log_prob`, :func:`topk`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..functional import TreeTensors, decision_log_probs, torch_target_log_prob
from . import borrow_marks, buffer, bump_version, threads
from . import numba_cpu as nb

__all__ = ["target_log_prob", "can_fuse", "log_prob", "topk"]

_ROOT_BLAS_MIN_ARITY = 8  # a k-ary root this wide, visited by the whole batch, goes to BLAS
_TOPK_TOP_ROWS = 128  # at most this many top table rows are scored up front with BLAS


# ---------------------------------------------------------------------------- entry points
def target_log_prob(
    h: Tensor,
    target: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    tt: TreeTensors,
    sparse: bool,
    sgd_lr: float | None,
) -> Tensor:
    """:func:`hsoftmax.functional.target_log_prob` on the kernels (``B >= 1``, ``P >= 1``; with
    ``sgd_lr``, the table must pass :func:`can_fuse`)."""
    fn = _BinaryPathFn if tt.is_binary else _GroupedFn
    return fn.apply(h, weight, bias, target, tt, sparse, sgd_lr)


def can_fuse(weight: Tensor, bias: Tensor | None) -> bool:
    """Whether the kernels can apply an in-place SGD update to ``weight``/``bias`` in backward:
    they write through numpy views, so both must be contiguous."""
    return weight.is_contiguous() and (bias is None or bias.is_contiguous())


def log_prob(h: Tensor, weight: Tensor, bias: Tensor | None, tt: TreeTensors) -> Tensor:
    """:func:`hsoftmax.functional.log_prob` for inference (no gradient): the ``(B, P)`` matmul
    stays with torch's BLAS; one pass over the tree per example replaces the level-by-level
    gathers (which cost a kernel launch per level)."""
    s_all = h @ weight.T
    if bias is not None:
        s_all = s_all + bias
    sp = F.softplus(-s_all.abs())  # vectorized here; a scalar exp+log1p per node is slower
    out = np.empty((h.shape[0], tt.num_classes), _np(h).dtype)
    nb.log_prob_all(nb.NodeScores(_np(s_all), _np(sp)), _nodes(tt), tt.num_classes, out)
    return torch.from_numpy(out)


def topk(h: Tensor, k: int, weight: Tensor, bias: Tensor | None, tt: TreeTensors) -> tuple[Tensor, Tensor]:
    """:func:`hsoftmax.functional.topk` (``B >= 1``): one best-first heap search per example."""
    B = h.shape[0]
    hn = _np(h)
    vals = np.empty((B, k), hn.dtype)
    idx = np.empty((B, k), np.int64)
    # The top of the tree is expanded by most searches: score its first R rows for the whole
    # batch with one BLAS matmul (and their log-sigmoid terms vectorized) instead of one dot
    # product (and one exp + log1p) per expansion. R grows with the batch, so that a row is
    # precomputed only where many examples are likely to need it.
    R = min(tt.num_params, 2 * B, _TOPK_TOP_ROWS) if B >= 8 else 0
    if R:
        st = h @ weight[:R].T
        if bias is not None:
            st += bias[:R]
        top = nb.NodeScores(st.numpy(), F.softplus(-st.abs()).numpy())
    else:
        top = nb.NodeScores(np.empty((B, 0), hn.dtype), np.empty((B, 0), hn.dtype))
    nb.topk_search(
        hn, _table(weight, bias, hn.dtype), top, _nodes(tt), tt.num_classes, k, max(tt.max_arity, 1), vals, idx
    )
    return torch.from_numpy(vals), torch.from_numpy(idx)


# ---------------------------------------------------------------------------- numpy views
def _np(t: Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy()


def _bias_np(bias: Tensor | None, dtype: np.dtype) -> np.ndarray:
    """The bias as a numpy view, or an empty array for none (the kernels' convention)."""
    return _np(bias) if bias is not None else np.empty(0, dtype)


def _table(weight: Tensor, bias: Tensor | None, dtype: np.dtype) -> nb.Table:
    """The node table as numpy views (of the tensors themselves when they are contiguous, so
    fused SGD writes through them)."""
    return nb.Table(_np(weight), _bias_np(bias, dtype))


def _nodes(tt: TreeTensors) -> nb.Nodes:
    return nb.Nodes(tt.arity.numpy(), tt.param_offset.numpy(), tt.child_offset.numpy(), tt.children.numpy())


def _decisions(tt: TreeTensors) -> nb.Decisions:
    return nb.Decisions(tt.decision_nodes.numpy(), tt.decision_choices.numpy(), tt.decision_lengths.numpy())


# ---------------------------------------------------------------------------- shared by both Functions
def _saved_tensors(ctx):
    """``ctx.saved_tensors``, with a clear error when a fused SGD backward (``sgd_lr``) finds
    that the table it saved was already updated in place, e.g. by the fused backward of an
    earlier-run second call on the same table. Its input gradient would need the old rows."""
    try:
        return ctx.saved_tensors
    except RuntimeError as e:
        if ctx.sgd_lr is None or "inplace" not in str(e):
            raise
        raise RuntimeError(
            "fused_sgd_lr: the node table was modified in place after this forward, most likely "
            "by the fused SGD backward of another call on the same table in the same graph. With "
            "fused_sgd_lr, call the layer once per backward (concatenate the inputs), or set "
            "fused_sgd_lr=None and use an optimizer."
        ) from e


def _fused_done(weight: Tensor, bias: Tensor | None, want_w: bool, want_b: bool) -> None:
    """After an in-place fused update through numpy: bump autograd's version counters, so any
    other graph node that saved the old table raises instead of reading the new rows."""
    if want_w:
        bump_version(weight)
    if want_b and bias is not None:
        bump_version(bias)


def _table_grads(
    uniq: np.ndarray, gw: np.ndarray, gb: np.ndarray | None, shape: torch.Size, sparse: bool
) -> tuple[Tensor, Tensor | None]:
    """Wrap coalesced row gradients as sparse COO tensors (flagged coalesced, so no optimizer
    re-sorts them) or scatter them into dense zeros."""
    idx = torch.from_numpy(uniq)
    vals = torch.from_numpy(gw)
    bvals = None if gb is None else torch.from_numpy(gb)
    if sparse:
        i2 = idx.unsqueeze(0)
        W = torch.sparse_coo_tensor(i2, vals, tuple(shape), is_coalesced=True, check_invariants=False)
        b = (
            None
            if bvals is None
            else torch.sparse_coo_tensor(i2, bvals, (shape[0],), is_coalesced=True, check_invariants=False)
        )
        return W, b
    W = vals.new_zeros(tuple(shape)).index_copy_(0, idx, vals)
    b = None if bvals is None else bvals.new_zeros(shape[0]).index_copy_(0, idx, bvals)
    return W, b


def _set_ctx(ctx: Any, tt: TreeTensors, bias: Tensor | None, sparse: bool, sgd_lr: float | None) -> None:
    ctx.tt, ctx.sparse, ctx.has_bias = tt, sparse, bias is not None
    ctx.sgd_lr = None if sgd_lr is None else float(sgd_lr)
    ctx.bias = bias  # for double backward (saved_tensors holds it only with sgd_lr)


def _differentiable_backward(ctx: Any, go: Tensor) -> tuple[Tensor | None, ...]:
    """Backward under ``create_graph=True`` (grad mode is on inside backward exactly then): the
    kernels' gradients are not differentiable, so recompute the same log-probs on the torch path
    and differentiate that, building the graph a second derivative needs (a gradient penalty).
    The node-table gradients come out dense. Fused SGD cannot be differentiated: it raises."""
    if ctx.sgd_lr is not None:
        raise RuntimeError(
            "fused_sgd_lr does not support create_graph=True (double backward): set fused_sgd_lr=None "
            "and use an optimizer"
        )
    h, weight, _, target = ctx.saved_tensors[:4]
    return _torch_path_grads(
        ctx, (h, weight, ctx.bias), go, lambda h, w, b: torch_target_log_prob(h, target, w, b, ctx.tt)
    )


def _torch_path_grads(
    ctx: Any,
    inputs: tuple[Tensor, Tensor, Tensor | None],
    go: Tensor,
    recompute: Callable[[Tensor, Tensor, Tensor | None], Tensor],
) -> tuple[Tensor | None, ...]:
    """The differentiable gradients of a kernel Function whose first inputs are ``(h, weight,
    bias)``: ``recompute(h, weight, bias)`` (the same output on the torch path) differentiated
    with ``create_graph=True``, for the inputs that want a gradient; ``None`` for the rest of
    the Function's inputs."""
    wanted = [(i, t) for i, t in enumerate(inputs) if t is not None and ctx.needs_input_grad[i]]
    grads: list[Tensor | None] = [None] * len(ctx.needs_input_grad)
    if wanted:
        out = recompute(*inputs)
        got = torch.autograd.grad(out, [t for _, t in wanted], go.to(out.dtype), create_graph=True, allow_unused=True)
        for (i, t), g in zip(wanted, got):
            grads[i] = torch.zeros_like(t) if g is None else g
    return tuple(grads)


# ---------------------------------------------------------------------------- binary trees
class _BinaryPathFn(torch.autograd.Function):
    """Fused binary-path log-prob on the CPU: gather, dot, log-sigmoid and sum in one pass, and a
    backward that yields an already coalesced (unique, sorted rows) node-table gradient, sparse
    or dense, or with ``sgd_lr`` applies SGD to the rows in place. Same math as the torch
    binary path of :func:`hsoftmax.functional.target_log_prob`."""

    @staticmethod
    def forward(
        ctx: Any,
        h: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        target: Tensor,
        tt: TreeTensors,
        sparse: bool,
        sgd_lr: float | None = None,
    ) -> Tensor:
        hn = _np(h)
        out = np.empty(hn.shape[0], hn.dtype)
        coef = np.empty((hn.shape[0], tt.path_rows.shape[1]), hn.dtype)
        nb.binary_forward(hn, _table(weight, bias, hn.dtype), _paths(tt), _np(target), out, coef)
        # The bias is saved only for the fused update, which writes it in place (and checks its version).
        ctx.save_for_backward(h, weight, bias if sgd_lr is not None else None, target, torch.from_numpy(coef))
        _set_ctx(ctx, tt, bias, sparse, sgd_lr)
        return torch.from_numpy(out)

    @staticmethod
    def backward(ctx: Any, go: Tensor) -> tuple[Tensor | None, ...]:
        if torch.is_grad_enabled():  # create_graph=True
            return _differentiable_backward(ctx, go)
        h, weight, bias, target, coef_t = _saved_tensors(ctx)
        coef = coef_t.numpy()
        paths = _paths(ctx.tt)
        gon = _np(go.to(h.dtype))
        hn, tn = _np(h), _np(target)
        gh = gw = gb = None
        if ctx.needs_input_grad[0]:
            ghn = np.empty_like(hn)
            nb.binary_grad_input(gon, coef, _np(weight), paths, tn, ghn)
            gh = torch.from_numpy(ghn)
        want_w = ctx.needs_input_grad[1]
        want_b = ctx.has_bias and ctx.needs_input_grad[2]
        if ctx.sgd_lr is not None and (want_w or want_b):
            # Fused SGD: the table rows are updated in place through numpy views of the saved
            # (contiguous) tensors; the input gradient above already read the old rows. No
            # gradient is returned for them.
            with borrow_marks(weight.shape[0]) as mark:
                nb.binary_sgd_params(
                    gon,
                    coef,
                    hn,
                    paths,
                    tn,
                    mark,
                    _table(weight, bias, hn.dtype),
                    ctx.sgd_lr,
                    bool(want_w),
                    want_b,
                    threads(),
                )
            _fused_done(weight, bias, want_w, want_b)
        elif want_w or want_b:
            with borrow_marks(weight.shape[0]) as mark:
                uniq, gwn, gbn = nb.binary_grad_params(gon, coef, hn, paths, tn, mark, want_b, buffer, threads())
            gw, gb = _table_grads(uniq, gwn, gbn, weight.shape, ctx.sparse)
            if not want_w:
                gw = None
        return gh, gw, gb, None, None, None, None


def _paths(tt: TreeTensors) -> nb.Paths:
    return nb.Paths(tt.path_rows.numpy(), tt.path_signs.numpy())


# ---------------------------------------------------------------------------- any tree
class _GroupedForward(NamedTuple):
    """What :class:`_GroupedFn`'s forward leaves for its backward."""

    plan: nb.GroupPlan
    work: nb.WorkItems
    entries: nb.EntryInfo
    scores: np.ndarray  # S: per decision, the binary derivative or the k-ary softmax
    root_softmax: Tensor | None  # (B, k) when the root went to BLAS
    root_arity: int


class _GroupedFn(torch.autograd.Function):
    """Log-prob of targets in any tree on the CPU, with the batch's decisions grouped by node so
    each node's rows (a two-level tree's cluster block) are read once per batch; backward yields
    a coalesced node-table gradient, or with ``sgd_lr`` applies SGD to the rows in place. A wide
    root (a two-level tree's cluster softmax, a dense ``(B, k)`` softmax every example visits)
    is one BLAS matmul each way instead. Same math as the torch step-by-step path of
    :func:`hsoftmax.functional.target_log_prob`."""

    @staticmethod
    def forward(
        ctx: Any,
        h: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        target: Tensor,
        tt: TreeTensors,
        sparse: bool,
        sgd_lr: float | None = None,
    ) -> Tensor:
        hn, tn = _np(h), _np(target)
        table = _table(weight, bias, hn.dtype)
        nodes, decisions = _nodes(tt), _decisions(tt)
        B = hn.shape[0]
        with borrow_marks(nodes.arity.shape[0]) as mark:
            plan = nb.group_plan(decisions, tn, nodes.arity, mark)
        # Group 0 is the root and, when every example visits it, its entries are 0..B-1 in order.
        kr = int(nodes.arity[0])
        root = (
            plan.groups.shape[0] > 0 and plan.groups[0] == 0 and kr >= _ROOT_BLAS_MIN_ARITY and int(plan.gstart[1]) == B
        )
        work = nb.work_items(plan, 1 if root else 0, threads())
        ent = nb.entry_info(plan, decisions, tn)
        S = np.empty(plan.score_offset[-1], hn.dtype)
        lpe = np.empty(plan.entries.shape[0], hn.dtype)
        out = np.empty(B, hn.dtype)
        nb.grouped_forward(hn, table, nodes, plan.groups, ent, work.forward, S, lpe)
        p_root = None
        if root:
            ht, wt = torch.from_numpy(hn), torch.from_numpy(table.W)[:kr]
            sr = ht @ wt.T if bias is None else torch.addmm(torch.from_numpy(table.b)[:kr], ht, wt.T)
            lp = decision_log_probs(sr)
            c = torch.from_numpy(ent.choice[:B])
            torch.from_numpy(lpe)[:B] = lp.gather(1, c.unsqueeze(1)).squeeze(1)
            p_root = lp.exp_()  # the root softmax, for backward
        nb.sum_decisions(lpe, ent.position, decisions, tn, out)
        ctx.save_for_backward(h, weight, bias if sgd_lr is not None else None, target)
        ctx.fwd = _GroupedForward(plan, work, ent, S, p_root, kr)
        _set_ctx(ctx, tt, bias, sparse, sgd_lr)
        return torch.from_numpy(out)

    @staticmethod
    def backward(ctx: Any, go: Tensor) -> tuple[Tensor | None, ...]:
        if torch.is_grad_enabled():  # create_graph=True
            return _differentiable_backward(ctx, go)
        h, weight, bias, target = _saved_tensors(ctx)
        plan, work, ent, S, p_root, kr = ctx.fwd
        nodes, decisions = _nodes(ctx.tt), _decisions(ctx.tt)
        gon = _np(go.to(h.dtype))
        hn, tn = _np(h), _np(target)
        d = hn.shape[1]
        want_h = ctx.needs_input_grad[0]
        want_w = ctx.needs_input_grad[1]
        want_b = ctx.has_bias and ctx.needs_input_grad[2]
        if not (want_h or want_w or want_b):
            return None, None, None, None, None, None, None
        sgd = ctx.sgd_lr is not None
        fused = sgd and want_w
        lr = ctx.sgd_lr if sgd else 0.0
        # Numpy views of the saved tensors (contiguous when fused): in-place SGD writes through
        # them. The bias is saved only with SGD.
        table = _table(weight, bias, hn.dtype)
        wn, bn = table
        nrows = int(plan.vstart[-1])
        ghd = buffer((ent.example.shape[0], d), hn.dtype)
        if fused:
            grad = nb.Table(hn[:0], np.empty(1 if want_b else 0, hn.dtype))  # non-empty b: update the bias too
        else:
            grad = nb.Table(buffer((nrows, d), hn.dtype), np.empty(nrows if want_b else 0, hn.dtype))
        g_root: Tensor | None = None
        gw_root: Tensor | None = None  # set together with g_root
        if p_root is not None:
            # Root: G = go * (onehot(choice) - softmax); input grad G @ W_root, row grads G^T h.
            B = hn.shape[0]
            g_root = (
                p_root.neg()
                .scatter_add_(1, torch.from_numpy(ent.choice[:B]).unsqueeze(1), torch.ones(B, 1, dtype=p_root.dtype))
                .mul_(torch.from_numpy(gon).unsqueeze(1))
            )
            wr = torch.from_numpy(wn)[:kr]
            torch.mm(g_root, wr, out=torch.from_numpy(ghd)[:B])
            gw_root = g_root.T @ torch.from_numpy(hn)
        # Input gradient of the big groups first (it reads their old rows), then one pass over
        # the rows: row gradients (or in-place SGD) and the other groups' input gradients.
        nb.grouped_grad_input(gon, wn, nodes, plan.groups, ent, work.input_grad, S, ghd)
        nb.grouped_backward_rows(gon, hn, table, lr, nodes, plan, ent, S, work.rows, ghd, grad, fused)
        gh = gw = gb = None
        if want_h:
            ghn = np.empty_like(hn)
            nb.sum_rows_by_example(ghd, ent.position, decisions, tn, ghn)
            gh = torch.from_numpy(ghn)
        if fused:
            if g_root is not None and gw_root is not None:
                torch.from_numpy(wn)[:kr].sub_(gw_root, alpha=lr)
                if want_b:
                    torch.from_numpy(bn)[:kr].sub_(g_root.sum(0), alpha=lr)
        elif want_w or want_b:
            gwn, gbn = grad
            if g_root is not None and gw_root is not None:
                gwn[:kr] = gw_root.numpy()
                if want_b:
                    gbn[:kr] = g_root.sum(0).numpy()
            uniq = nb.group_rows_index(plan, nodes.param_offset)
            gw, gb = _table_grads(uniq, gwn, gbn if want_b else None, weight.shape, ctx.sparse)
            if sgd and want_b:  # bias-only SGD (the weight is frozen)
                torch.from_numpy(bn).index_add_(0, torch.from_numpy(uniq), torch.from_numpy(gbn), alpha=-lr)
                gb = None
            if not want_w:
                gw = None
        if sgd:
            _fused_done(weight, bias, want_w, want_b)
        return gh, gw, gb, None, None, None, None

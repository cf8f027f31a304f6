r"""The math of hierarchical softmax, as pure functions of (hidden states, weights, tree tensors).

Notation: ``h`` is ``(B, d)``; the weight table ``W`` is ``(P, d)`` and ``b`` is ``(P,)``
(``P = tree.num_params``). At an internal node ``n`` with children ``c_0..c_{k-1}``:

* ``k == 1``: the child is taken with probability 1 (no parameters);
* ``k == 2``: one row ``r``; with :math:`s = W_r h + b_r`,
  :math:`\log p(c_1) = \log\sigma(s)` and :math:`\log p(c_0) = \log\sigma(-s)` (word2vec's node);
* ``k > 2``: rows ``r..r+k-1``; :math:`\log p(c_j) = s_j - \operatorname{logsumexp}_i s_i`.

A class's log-probability is the sum over the decisions on its root-to-leaf path, so the
distribution is normalized by construction. Every function here costs O(d * path) per example
except :func:`log_prob`, which the user calls precisely to get all ``V`` classes.

All functions take a :class:`TreeTensors` (the tree's flat arrays as tensors on the right
device), built once by :func:`tree_tensors` and held by :class:`hsoftmax.HierarchicalSoftmax`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from . import kernels as K
from .tree import Tree

__all__ = ["TreeTensors", "tree_tensors", "target_log_prob", "log_prob", "topk", "sample"]


class TreeTensors(NamedTuple):
    """The tree's flat arrays as tensors (see :mod:`hsoftmax.tree` for their meaning)."""

    num_classes: int
    num_params: int
    is_binary: bool
    is_two_level: bool
    levels: tuple[tuple[int, int], ...]  # contiguous BFS id blocks of internal nodes, by depth
    child_offset: Tensor  # (N+1,) long
    children: Tensor  # (E,) long refs
    arity: Tensor  # (N,) long
    param_offset: Tensor  # (N+1,) long
    decision_nodes: Tensor  # (V, D) int32
    decision_choices: Tensor  # (V, D) int32
    decision_lengths: Tensor  # (V,) long
    path_rows: Tensor  # (V, D) int32, binary trees: weight row of each decision (else empty)
    path_signs: Tensor  # (V, D) int8, binary trees: +1 (child 1), -1 (child 0), 0 (padding)
    edge_rows: Tensor  # (E,) long: weight row scoring each child slot, -1 for a fixed 0 score
    edge_owner: Tensor  # (E,) long: the node each child slot belongs to
    class_parent: Tensor  # (V,) long: parent node of each class
    class_choice: Tensor  # (V,) long: child index of each class within its parent
    max_arity: int = 1  # the largest number of children of any node


def tree_tensors(tree: Tree, device: torch.device | str | None = None) -> TreeTensors:
    """Convert a :class:`Tree` to :class:`TreeTensors` on ``device``."""
    V, N = tree.num_classes, tree.num_nodes
    arity = np.asarray(tree.arity)
    poff = np.asarray(tree.param_offset)
    dn, dc = np.asarray(tree.decision_nodes), np.asarray(tree.decision_choices)
    owner = np.repeat(np.arange(N), arity)
    slot = np.arange(owner.size) - np.asarray(tree.child_offset)[owner]
    k = arity[owner]
    edge_rows = np.where(k > 2, poff[owner] + slot, np.where((k == 2) & (slot == 1), poff[owner], -1))
    depth = np.asarray(tree.node_depth)
    cuts = np.flatnonzero(np.diff(depth)) + 1
    bounds = np.concatenate([[0], cuts, [N]]).tolist()
    levels = tuple(zip(bounds[:-1], bounds[1:]))
    if tree.is_binary:
        mask = np.arange(dn.shape[1]) < np.asarray(tree.decision_lengths)[:, None]
        rows = poff[dn].astype(np.int32)
        signs = np.where(mask, np.where(dc == 1, 1, -1), 0).astype(np.int8)
    else:
        rows = np.zeros((0, 0), dtype=np.int32)
        signs = np.zeros((0, 0), dtype=np.int8)

    def t(a: np.ndarray, dtype=None) -> Tensor:
        return torch.tensor(np.asarray(a), dtype=dtype, device=device)

    return TreeTensors(
        num_classes=V,
        num_params=tree.num_params,
        is_binary=tree.is_binary,
        is_two_level=tree.is_two_level,
        levels=levels,
        child_offset=t(tree.child_offset, torch.long),
        children=t(tree.children, torch.long),
        arity=t(arity, torch.long),
        param_offset=t(poff, torch.long),
        decision_nodes=t(dn, torch.int32),
        decision_choices=t(dc, torch.int32),
        decision_lengths=t(tree.decision_lengths, torch.long),
        path_rows=t(rows, torch.int32),
        path_signs=t(signs, torch.int8),
        edge_rows=t(edge_rows, torch.long),
        edge_owner=t(owner, torch.long),
        class_parent=t(np.asarray(tree.parent)[:V], torch.long),
        class_choice=t(np.asarray(tree.choice)[:V], torch.long),
        max_arity=int(arity.max()) if arity.size else 1,
    )


# ---------------------------------------------------------------------------- row gathers
class _SparseGather1d(torch.autograd.Function):
    """``vec[idx]`` whose gradient is a sparse COO tensor (for a sparse-mode bias vector)."""

    @staticmethod
    def forward(ctx, vec: Tensor, idx: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(idx)
        ctx.size = vec.shape[0]
        return vec[idx]

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (idx,) = ctx.saved_tensors
        g = torch.sparse_coo_tensor(idx.reshape(1, -1), grad.reshape(-1), (ctx.size,), check_invariants=False)
        return g, None


def _rows(weight: Tensor, idx: Tensor, sparse: bool) -> Tensor:
    """``weight[idx]`` (any index shape), with a sparse gradient when asked."""
    return F.embedding(idx, weight, sparse=sparse)


def _bias(bias: Tensor | None, idx: Tensor, sparse: bool) -> Tensor | float:
    if bias is None:
        return 0.0
    if sparse and bias.requires_grad and torch.is_grad_enabled():
        return _SparseGather1d.apply(bias, idx)
    return bias[idx]


def _scores(h: Tensor, weight: Tensor, bias: Tensor | None, rows: Tensor, sparse: bool) -> Tensor:
    """``W[rows] . h + b[rows]`` for ``rows`` of shape (M, A) and ``h`` of shape (M, d) -> (M, A)."""
    w = _rows(weight, rows, sparse).to(h.dtype)
    s = torch.bmm(w, h.unsqueeze(-1)).squeeze(-1)
    b = _bias(bias, rows, sparse)
    return s + (b.to(h.dtype) if isinstance(b, Tensor) else b)


def child_log_probs(
    h: Tensor, nodes: Tensor, weight: Tensor, bias: Tensor | None, tt: TreeTensors,
    sparse: bool = False, temperature: float = 1.0,
) -> Tensor:
    """Log-probabilities of the children of ``nodes[m]`` given ``h[m]``: ``(M, A)``, where
    ``A`` is the largest arity among ``nodes``; slots past a node's arity hold ``-inf``."""
    k = tt.arity[nodes]
    A = int(k.max()) if k.numel() else 1
    j = torch.arange(A, device=h.device)
    o = tt.param_offset[nodes].unsqueeze(-1)
    k = k.unsqueeze(-1)
    kary = k > 2
    has_param = torch.where(kary, j < k, (k == 2) & (j == 1))
    exists = j < k
    M = nodes.shape[0]
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (h, weight, bias))
    if tt.num_params == 0:
        s = h.new_zeros(M, A)
    elif not needs_grad and M * A > 4 * int(k.sum()) + 64 and M * A * h.shape[1] > (1 << 20):
        # Mixed arities (a wide node among narrow ones, e.g. a two-level root next to small
        # clusters): padding every node to A and gathering (M, A, d) rows would be mostly
        # waste. Score each distinct node once with a matmul over the rows that visit it.
        s = h.new_zeros(M, A)
        uniq, inv = torch.unique(nodes, return_inverse=True)
        order = torch.argsort(inv)
        counts = torch.bincount(inv, minlength=uniq.numel()).tolist()
        pos = 0
        for u, c in zip(uniq.tolist(), counts):
            m = order[pos : pos + c]
            pos += c
            ku, ou = int(tt.arity[u]), int(tt.param_offset[u])
            if ku == 1:
                continue
            r = 1 if ku == 2 else ku
            su = h[m] @ weight[ou : ou + r].to(h.dtype).T
            if bias is not None:
                su = su + bias[ou : ou + r].to(h.dtype)
            if ku == 2:
                s[m, 1:2] = su
            else:
                s[m, :ku] = su
    else:
        rows = torch.where(kary, o + j, o).clamp_(max=tt.num_params - 1)
        s = torch.where(has_param, _scores(h, weight, bias, rows, sparse), 0.0)
    if temperature != 1.0:
        s = s / temperature
    s = s.masked_fill(~exists, float("-inf"))
    return torch.log_softmax(s, dim=-1)


# ---------------------------------------------------------------------------- target log-prob
def target_log_prob(
    h: Tensor, target: Tensor, weight: Tensor, bias: Tensor | None, tt: TreeTensors, sparse: bool = False,
    sgd_lr: float | None = None,
) -> Tensor:
    """``log p(target[i] | h[i])`` for ``h`` (B, d) and ``target`` (B,) long in range: ``(B,)``.

    Never builds a (B, V) tensor: binary trees gather each example's padded path of rows,
    two-level trees do one matmul at the root and one per cluster present in the batch, other
    trees walk the decisions step by step.

    With ``sgd_lr`` set, backward does not return gradients for ``weight``/``bias``: it applies
    plain SGD to them in place, ``weight -= sgd_lr * grad`` (the same gradient it would have
    returned), after the input gradient has been computed from the old values. On the CPU
    kernels the update happens inside the backward kernel, so no gradient is materialized.
    """
    if h.shape[0] == 0 or tt.num_params == 0:
        return h.new_zeros(h.shape[0]) + 0.0 * h.sum()
    if sgd_lr is not None and not _fusable(h, weight, bias):
        # Generic path: take the gradient through an identity whose backward applies it.
        weight = _SGDInBackward.apply(weight, sgd_lr) if weight.requires_grad else weight
        if bias is not None and bias.requires_grad:
            bias = _SGDInBackward.apply(bias, sgd_lr)
        sgd_lr = None
    if tt.is_binary:
        return _binary_path_log_prob(h, target, weight, bias, tt, sparse, sgd_lr)
    if _use_kernels(h, weight, bias) is not None:
        return _GroupedFn.apply(h, weight, bias, target, tt, sparse, sgd_lr)
    if tt.is_two_level:
        return _two_level_log_prob(h, target, weight, bias, tt, sparse)
    return _stepwise_log_prob(h, target, weight, bias, tt, sparse)


def _use_kernels(h: Tensor, weight: Tensor, bias: Tensor | None):
    """The numba module if this call can take the CPU fast path, else ``None``: every tensor on
    the CPU, one float32/float64 dtype (the torch path handles mixed dtypes), and no autograd
    graph through anything but ``h``, ``weight`` and ``bias`` themselves (forward-mode AD,
    functorch transforms and double backward use the torch path)."""
    if h.device.type != "cpu" or weight.device.type != "cpu":
        return None
    dt = h.dtype
    if dt not in (torch.float32, torch.float64) or weight.dtype != dt:
        return None
    if bias is not None and (bias.dtype != dt or bias.device.type != "cpu"):
        return None
    if torch._C._functorch.is_functorch_wrapped_tensor(h) or torch._C._functorch.is_functorch_wrapped_tensor(weight):
        return None
    return K.cpu()


def _np(t: Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy()


def _fusable(h: Tensor, weight: Tensor, bias: Tensor | None) -> bool:
    """Whether the CPU kernels can apply an in-place SGD update to ``weight``/``bias``: they
    must take the fast path and be contiguous (the kernels write through a numpy view)."""
    return (
        _use_kernels(h, weight, bias) is not None
        and weight.is_contiguous()
        and (bias is None or bias.is_contiguous())
    )


class _SGDInBackward(torch.autograd.Function):
    """Identity on a parameter whose backward applies ``param -= lr * grad`` in place and passes
    no gradient on. Autograd runs it after every use of the parameter in the graph has
    contributed (they all depend on its output), so each of them saw the old value."""

    @staticmethod
    def forward(ctx, param, lr):  # type: ignore[override]
        ctx.param = param
        ctx.lr = lr
        return param.view_as(param)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        with torch.no_grad():
            ctx.param.add_(grad.to(ctx.param.dtype), alpha=-ctx.lr)
        return None, None


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
        K.bump_version(weight)
    if want_b and bias is not None:
        K.bump_version(bias)


class _BinaryPathFn(torch.autograd.Function):
    """Fused binary-path log-prob on the CPU: gather, dot, log-sigmoid and sum in one pass, and a
    backward that yields an already coalesced (unique, sorted rows) node-table gradient, sparse
    or dense. Same math as :func:`_binary_path_log_prob`'s torch code."""

    @staticmethod
    def forward(ctx, h, weight, bias, target, rows, signs, sparse, sgd_lr=None):  # type: ignore[override]
        k = K.cpu()
        hn, wn = _np(h), _np(weight)
        bn = _np(bias) if bias is not None else np.empty(0, hn.dtype)
        tn = _np(target)
        out = np.empty(hn.shape[0], hn.dtype)
        coef = np.empty((hn.shape[0], rows.shape[1]), hn.dtype)
        k.binary_forward(hn, wn, bn, rows.numpy(), signs.numpy(), tn, out, coef)
        # The bias is saved only for the fused update, which writes it in place (and checks its version).
        ctx.save_for_backward(h, weight, bias if sgd_lr is not None else None, target, rows, signs, torch.from_numpy(coef))
        ctx.sparse = sparse
        ctx.has_bias = bias is not None
        ctx.sgd_lr = None if sgd_lr is None else float(sgd_lr)
        return torch.from_numpy(out)

    @staticmethod
    @once_differentiable
    def backward(ctx, go):  # type: ignore[override]
        k = K.cpu()
        h, weight, bias, target, rows, signs, coef_t = _saved_tensors(ctx)
        coef = coef_t.numpy()
        gon = _np(go.to(h.dtype))
        hn, wn, tn = _np(h), _np(weight), _np(target)
        gh = gw = gb = None
        if ctx.needs_input_grad[0]:
            ghn = np.empty_like(hn)
            k.binary_grad_input(gon, coef, wn, rows.numpy(), tn, ghn)
            gh = torch.from_numpy(ghn)
        want_b = ctx.has_bias and ctx.needs_input_grad[2]
        if ctx.sgd_lr is not None and (ctx.needs_input_grad[1] or want_b):
            # Fused SGD: the table rows are updated in place through numpy views of the saved
            # (contiguous) tensors; the input gradient above already read the old rows. No
            # gradient is returned for them.
            bn = _np(bias) if bias is not None else np.empty(0, hn.dtype)
            with K.borrow_marks(weight.shape[0]) as mark:
                k.binary_sgd_params(
                    gon, coef, hn, rows.numpy(), signs.numpy(), tn, mark, wn, bn, ctx.sgd_lr,
                    bool(ctx.needs_input_grad[1]), want_b, K.threads(),
                )
            _fused_done(weight, bias, ctx.needs_input_grad[1], want_b)
        elif ctx.needs_input_grad[1] or want_b:
            P = weight.shape[0]
            with K.borrow_marks(P) as mark:
                uniq, gwn, gbn = k.binary_grad_params(
                    gon, coef, hn, rows.numpy(), signs.numpy(), tn, mark, want_b, K.buffer, K.threads()
                )
            gw, gb = _table_grads(uniq, gwn, gbn, weight.shape, ctx.sparse)
            if not ctx.needs_input_grad[1]:
                gw = None
        return gh, gw, gb, None, None, None, None, None


def _table_grads(uniq: np.ndarray, gw: np.ndarray, gb: np.ndarray | None, shape, sparse: bool):
    """Wrap coalesced row gradients as sparse COO tensors (flagged coalesced, so no optimizer
    re-sorts them) or scatter them into dense zeros."""
    idx = torch.from_numpy(uniq)
    vals = torch.from_numpy(gw)
    bvals = None if gb is None else torch.from_numpy(gb)
    if sparse:
        i2 = idx.unsqueeze(0)
        W = torch.sparse_coo_tensor(i2, vals, tuple(shape), is_coalesced=True, check_invariants=False)
        b = None if bvals is None else torch.sparse_coo_tensor(
            i2, bvals, (shape[0],), is_coalesced=True, check_invariants=False
        )
        return W, b
    W = vals.new_zeros(tuple(shape)).index_copy_(0, idx, vals)
    b = None if bvals is None else bvals.new_zeros(shape[0]).index_copy_(0, idx, bvals)
    return W, b


_ROOT_BLAS_MIN_ARITY = 8  # a k-ary root this wide, visited by the whole batch, goes to BLAS


class _GroupedFn(torch.autograd.Function):
    """Log-prob of targets in any tree on the CPU, with the batch's decisions grouped by node so
    each node's rows (a two-level tree's cluster block) are read once per batch; backward yields
    a coalesced node-table gradient, or with ``sgd_lr`` applies SGD to the rows in place. A wide
    root (a two-level tree's cluster softmax, a dense ``(B, k)`` softmax every example visits)
    is one BLAS matmul each way instead. Same math as :func:`_stepwise_log_prob`."""

    @staticmethod
    def forward(ctx, h, weight, bias, target, tt, sparse, sgd_lr=None):  # type: ignore[override]
        k = K.cpu()
        hn, wn = _np(h), _np(weight)
        bn = _np(bias) if bias is not None else np.empty(0, hn.dtype)
        tn = _np(target)
        dn, dc, L = tt.decision_nodes.numpy(), tt.decision_choices.numpy(), tt.decision_lengths.numpy()
        arity, poff = tt.arity.numpy(), tt.param_offset.numpy()
        B, D = hn.shape[0], dn.shape[1]
        with K.borrow_marks(arity.shape[0]) as mark:
            groups, gstart, entries, soff, vstart = k.group_plan(dn, dc, L, tn, arity, poff, mark)
        # Group 0 is the root and, when every example visits it, its entries are 0..B-1 in order.
        kr = int(arity[0])
        root = (
            groups.shape[0] > 0 and groups[0] == 0 and kr >= _ROOT_BLAS_MIN_ARITY and int(gstart[1]) == B
        )
        T = K.threads()
        items = k.work_items(groups, gstart, vstart, 1 if root else 0, T)
        fitems, fperm, fstart = items[:3]
        ex, sb, ch, pos = k.entry_info(entries, dc, tn, soff, D)
        S = np.empty(soff[-1], hn.dtype)
        lpe = np.empty(entries.shape[0], hn.dtype)
        out = np.empty(B, hn.dtype)
        k.grouped_forward(hn, wn, bn, arity, poff, groups, ex, sb, ch, fitems, fperm, fstart, S, lpe)
        p_root = None
        if root:
            ht, wt = torch.from_numpy(hn), torch.from_numpy(wn)[:kr]
            sr = ht @ wt.T if bias is None else torch.addmm(torch.from_numpy(bn)[:kr], ht, wt.T)
            lse = torch.logsumexp(sr, 1, keepdim=True)
            c = torch.from_numpy(ch[:B])
            torch.from_numpy(lpe)[:B] = (sr.gather(1, c.unsqueeze(1)) - lse).squeeze(1)
            p_root = sr.sub_(lse).exp_()  # the root softmax, for backward
        k.sum_decisions(lpe, pos, L, tn, D, out)
        ctx.save_for_backward(h, weight, bias if sgd_lr is not None else None, target)
        ctx.plan = (groups, gstart, vstart, items, ex, sb, ch, pos, S, p_root, kr)
        ctx.tt, ctx.sparse, ctx.has_bias = tt, sparse, bias is not None
        ctx.sgd_lr = None if sgd_lr is None else float(sgd_lr)
        return torch.from_numpy(out)

    @staticmethod
    @once_differentiable
    def backward(ctx, go):  # type: ignore[override]
        k = K.cpu()
        h, weight, bias, target = _saved_tensors(ctx)
        tt = ctx.tt
        groups, gstart, vstart, items, ex, sb, ch, pos, S, p_root, kr = ctx.plan
        _, _, _, eitems, eperm, estart, ritems, rperm, rstart = items
        gon = _np(go.to(h.dtype))
        hn, tn = _np(h), _np(target)
        L, arity, poff = tt.decision_lengths.numpy(), tt.arity.numpy(), tt.param_offset.numpy()
        D = tt.decision_nodes.shape[1]
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
        wn = _np(weight)
        bn = _np(bias) if bias is not None else np.empty(0, hn.dtype)
        ghd = K.buffer((ex.shape[0], d), hn.dtype)
        if fused:
            gwn = hn[:0]
            gbn = np.empty(1 if want_b else 0, hn.dtype)  # non-empty: update the bias too
        else:
            gwn = K.buffer((vstart[-1], d), hn.dtype)
            gbn = np.empty(vstart[-1] if want_b else 0, hn.dtype)
        g_root = gw_root = None
        if p_root is not None:
            # Root: G = go * (onehot(choice) - softmax); input grad G @ W_root, row grads G^T h.
            B = hn.shape[0]
            g_root = p_root.neg().scatter_add_(
                1, torch.from_numpy(ch[:B]).unsqueeze(1), torch.ones(B, 1, dtype=p_root.dtype)
            ).mul_(torch.from_numpy(gon).unsqueeze(1))
            wr = torch.from_numpy(wn)[:kr]
            torch.mm(g_root, wr, out=torch.from_numpy(ghd)[:B])
            gw_root = g_root.T @ torch.from_numpy(hn)
        # Input gradient of the big groups first (it reads their old rows), then one pass over
        # the rows: row gradients (or in-place SGD) and the other groups' input gradients.
        k.grouped_grad_input(gon, wn, arity, poff, groups, ex, sb, ch, eitems, eperm, estart, S, ghd)
        k.grouped_backward_rows(
            gon, hn, wn, bn, lr, arity, poff, groups, gstart, ex, sb, ch, vstart, S, ritems, rperm, rstart,
            ghd, gwn, gbn, fused,
        )
        gh = gw = gb = None
        if want_h:
            ghn = np.empty_like(hn)
            k.sum_rows_by_example(ghd, pos, L, tn, D, ghn)
            gh = torch.from_numpy(ghn)
        if fused:
            if gw_root is not None:
                torch.from_numpy(wn)[:kr].sub_(gw_root, alpha=lr)
                if want_b:
                    torch.from_numpy(bn)[:kr].sub_(g_root.sum(0), alpha=lr)
        elif want_w or want_b:
            if gw_root is not None:
                gwn[:kr] = gw_root.numpy()
                if want_b:
                    gbn[:kr] = g_root.sum(0).numpy()
            uniq = k.group_rows_index(groups, poff, vstart)
            gw, gb = _table_grads(uniq, gwn, gbn if want_b else None, weight.shape, ctx.sparse)
            if sgd and want_b:  # bias-only SGD (the weight is frozen)
                torch.from_numpy(bn).index_add_(0, torch.from_numpy(uniq), torch.from_numpy(gbn), alpha=-lr)
                gb = None
            if not want_w:
                gw = None
        if sgd:
            _fused_done(weight, bias, want_w, want_b)
        return gh, gw, gb, None, None, None, None


def _binary_path_log_prob(h, target, weight, bias, tt: TreeTensors, sparse: bool, sgd_lr=None) -> Tensor:
    if _use_kernels(h, weight, bias) is not None:
        return _BinaryPathFn.apply(h, weight, bias, target, tt.path_rows, tt.path_signs, sparse, sgd_lr)
    rows = tt.path_rows[target].long()  # (B, D)
    sign = tt.path_signs[target].to(h.dtype)  # (B, D); 0 marks padding
    s = _scores(h, weight, bias, rows, sparse)
    return (F.logsigmoid(sign * s) * sign.abs()).sum(-1)


def _node_log_probs(h: Tensor, node: int, weight, bias, tt: TreeTensors, sparse: bool) -> Tensor:
    """Children log-probs of one node for every row of ``h``: one matmul, ``(M, arity)``."""
    k = int(tt.arity[node])
    o = int(tt.param_offset[node])
    if k == 1:
        return h.new_zeros(h.shape[0], 1)
    rows = torch.arange(o, o + (1 if k == 2 else k), device=h.device)
    w = _rows(weight, rows, sparse).to(h.dtype)
    s = h @ w.T
    b = _bias(bias, rows, sparse)
    s = s + (b.to(h.dtype) if isinstance(b, Tensor) else b)
    if k == 2:
        return torch.cat([F.logsigmoid(-s), F.logsigmoid(s)], dim=-1)
    return torch.log_softmax(s, dim=-1)


def _two_level_log_prob(h, target, weight, bias, tt: TreeTensors, sparse: bool) -> Tensor:
    # Root: one (B, C) matmul. Cluster nodes are 1..C in root-choice order (BFS numbering).
    cluster = tt.class_parent[target]
    root_lp = _node_log_probs(h, 0, weight, bias, tt, sparse)
    out = root_lp.gather(1, (cluster - 1).unsqueeze(1)).squeeze(1)
    # Second level: group the batch by cluster so each cluster's block is read once. All the
    # blocks present are fetched with ONE row gather and cut with split (and the inputs with one
    # index + split), so autograd builds one sparse gradient and one input gradient, not one per
    # cluster (accumulating hundreds of sparse gradients was quadratic).
    order = torch.argsort(cluster)
    uniq, counts = torch.unique_consecutive(cluster[order], return_counts=True)
    k = tt.arity[uniq]
    nrows = torch.where(k == 2, 1, torch.where(k == 1, 0, k))
    starts = tt.param_offset[uniq]
    total = int(nrows.sum())
    seg = torch.repeat_interleave(torch.arange(uniq.numel(), device=h.device), nrows, output_size=total)
    first = torch.cumsum(nrows, 0) - nrows
    rows = starts[seg] + torch.arange(total, device=h.device) - first[seg]
    w_blocks = _rows(weight, rows, sparse).to(h.dtype).split(nrows.tolist())
    b_all = _bias(bias, rows, sparse)
    b_blocks = b_all.to(h.dtype).split(nrows.tolist()) if isinstance(b_all, Tensor) else None
    h_groups = h[order].split(counts.tolist())
    choice = tt.class_choice[target[order]].split(counts.tolist())
    parts = []
    for g, (ku, hg) in enumerate(zip(k.tolist(), h_groups)):
        if ku == 1:
            parts.append(hg.new_zeros(hg.shape[0]))
            continue
        sc = hg @ w_blocks[g].T
        if b_blocks is not None:
            sc = sc + b_blocks[g]
        lp = torch.cat([F.logsigmoid(-sc), F.logsigmoid(sc)], dim=-1) if ku == 2 else torch.log_softmax(sc, -1)
        parts.append(lp.gather(1, choice[g].unsqueeze(1)).squeeze(1))
    second = torch.cat(parts)
    return out + second[torch.argsort(order)]


def _stepwise_log_prob(h, target, weight, bias, tt: TreeTensors, sparse: bool) -> Tensor:
    dn = tt.decision_nodes[target].long()
    dc = tt.decision_choices[target].long()
    L = tt.decision_lengths[target]
    out = h.new_zeros(h.shape[0])
    for step in range(dn.shape[1]):
        active = torch.nonzero(L > step).squeeze(1)
        if active.numel() == 0:
            break
        lp = child_log_probs(h[active], dn[active, step], weight, bias, tt, sparse)
        taken = lp.gather(1, dc[active, step].unsqueeze(1)).squeeze(1)
        out = out.index_add(0, active, taken)
    return out


# ---------------------------------------------------------------------------- all classes
def log_prob(h: Tensor, weight: Tensor, bias: Tensor | None, tt: TreeTensors) -> Tensor:
    """Exact log-probabilities of all classes: ``(B, V)``; ``exp`` of each row sums to 1.

    Scores every node once with a single ``(B, P)`` matmul, normalizes each node's children,
    then adds edge log-probs down the tree one level at a time.
    """
    B, V = h.shape[0], tt.num_classes
    E = tt.children.numel()
    if tt.num_params == 0:
        return h.new_zeros(B, V) + 0.0 * h.sum()
    s_all = h @ weight.to(h.dtype).T
    if bias is not None:
        s_all = s_all + bias.to(h.dtype)
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (h, weight, bias))
    kern = None if needs_grad else _use_kernels(h, weight, bias)
    if kern is not None:
        # Inference: the (B, P) matmul stays with torch's BLAS; one pass over the tree per
        # example replaces the level-by-level gathers (which cost a kernel launch per level).
        out_n = np.empty((B, V), _np(h).dtype)
        sp = F.softplus(-s_all.abs())  # vectorized here; a scalar exp+log1p per node is slower
        kern.log_prob_all(
            _np(s_all), _np(sp), tt.child_offset.numpy(), tt.children.numpy(), tt.arity.numpy(),
            tt.param_offset.numpy(), V, out_n,
        )
        return torch.from_numpy(out_n)
    has = tt.edge_rows >= 0
    edge_s = torch.where(has, s_all[:, tt.edge_rows.clamp(min=0)], 0.0)  # (B, E)
    # Segment log-softmax over each node's children (the max is only a stability shift).
    N = tt.arity.numel()
    mx = edge_s.new_full((B, N), float("-inf")).scatter_reduce(
        1, tt.edge_owner.expand(B, E), edge_s.detach(), reduce="amax", include_self=True
    )
    shifted = edge_s - mx[:, tt.edge_owner]
    lse = torch.log(h.new_zeros(B, N).index_add(1, tt.edge_owner, shifted.exp()))
    edge_lp = shifted - lse[:, tt.edge_owner]
    # Top-down accumulation: BFS levels are contiguous id blocks, and the internal children of a
    # level are exactly the next block, in child-table order.
    parent_lp = h.new_zeros(B, 1)
    out = h.new_empty(B, V)
    off = tt.child_offset
    for a, b in tt.levels:
        lo, hi = int(off[a]), int(off[b])
        refs = tt.children[lo:hi]
        lp = torch.repeat_interleave(parent_lp, tt.arity[a:b], dim=1, output_size=hi - lo) + edge_lp[:, lo:hi]
        leaf = refs < V
        out[:, refs[leaf]] = lp[:, leaf]
        parent_lp = lp[:, ~leaf]
    return out


# ---------------------------------------------------------------------------- top-k search
_TOPK_TOP_ROWS = 128  # at most this many top table rows are scored up front with BLAS


@torch.no_grad()
def topk(h: Tensor, k: int, weight: Tensor, bias: Tensor | None, tt: TreeTensors) -> tuple[Tensor, Tensor]:
    """Exact ``k`` most probable classes per row by best-first search: ``(values, indices)``, (B, k).

    A node's log-prob bounds every class below it (each edge adds a log-prob <= 0), so popping
    frontier entries in order of log-prob yields classes in exactly descending order. The work
    grows with ``k * depth``, not with the number of classes.
    """
    B, V = h.shape[0], tt.num_classes
    kern = _use_kernels(h, weight, bias) if B else None
    if kern is not None:
        hn = _np(h)
        vals_n = np.empty((B, k), hn.dtype)
        idx_n = np.empty((B, k), np.int64)
        bn = _np(bias) if bias is not None else np.empty(0, hn.dtype)
        # The top of the tree is expanded by most searches: score its first R rows for the whole
        # batch with one BLAS matmul (and their log-sigmoid terms vectorized) instead of one dot
        # product (and one exp + log1p) per expansion. R grows with the batch, so that a row is
        # precomputed only where many examples are likely to need it.
        R = min(tt.num_params, 2 * B, _TOPK_TOP_ROWS) if B >= 8 else 0
        if R:
            st = h @ weight[:R].T
            if bias is not None:
                st += bias[:R]
            spt = F.softplus(-st.abs())
            st_n, spt_n = st.numpy(), spt.numpy()
        else:
            st_n = spt_n = np.empty((B, 0), hn.dtype)
        kern.topk_search(
            hn, _np(weight), bn, st_n, spt_n, tt.child_offset.numpy(), tt.children.numpy(), tt.arity.numpy(),
            tt.param_offset.numpy(), V, k, max(tt.max_arity, 1), vals_n, idx_n,
        )
        return torch.from_numpy(vals_n), torch.from_numpy(idx_n)
    dev = h.device
    vals = h.new_full((B, k), float("-inf"))
    idx = torch.zeros(B, k, dtype=torch.long, device=dev)
    if B == 0:
        return vals, idx
    found = torch.zeros(B, dtype=torch.long, device=dev)
    # Frontier: log-probs and refs, one row per example; -inf marks a free slot.
    f_lp = h.new_full((B, 1), 0.0)
    f_ref = torch.full((B, 1), V, dtype=torch.long, device=dev)  # the root
    while True:
        live = torch.nonzero(found < k).squeeze(1)
        if live.numel() == 0:
            break
        best_lp, best_col = f_lp[live].max(dim=1)
        best_ref = f_ref[live, best_col]
        f_lp[live, best_col] = float("-inf")
        is_leaf = best_ref < V
        # Classes come out in descending order: record them.
        lv, lref, llp = live[is_leaf], best_ref[is_leaf], best_lp[is_leaf]
        vals[lv, found[lv]] = llp
        idx[lv, found[lv]] = lref
        found[lv] += 1
        # Internal nodes: push their children with accumulated log-probs.
        ex = live[~is_leaf]
        if ex.numel():
            nodes = best_ref[~is_leaf] - V
            clp = child_log_probs(h[ex], nodes, weight, bias, tt) + best_lp[~is_leaf].unsqueeze(1)
            A = clp.shape[1]
            slot = torch.arange(A, device=dev)
            cref = tt.children[(tt.child_offset[nodes].unsqueeze(1) + slot).clamp(max=tt.children.numel() - 1)]
            new_lp = f_lp.new_full((B, A), float("-inf"))
            new_ref = f_ref.new_zeros(B, A)
            new_lp[ex] = clp
            new_ref[ex] = cref
            f_lp = torch.cat([f_lp, new_lp], dim=1)
            f_ref = torch.cat([f_ref, new_ref], dim=1)
        # Compact: drop columns that are free in every row.
        if f_lp.shape[1] > 64:
            f_lp, order = f_lp.sort(dim=1, descending=True)
            f_ref = f_ref.gather(1, order)
            keep = int(torch.isfinite(f_lp).sum(dim=1).max())
            f_lp, f_ref = f_lp[:, : max(keep, 1)], f_ref[:, : max(keep, 1)]
    return vals, idx


# ---------------------------------------------------------------------------- sampling
@torch.no_grad()
def sample(
    h: Tensor, num_samples: int, weight: Tensor, bias: Tensor | None, tt: TreeTensors,
    temperature: float = 1.0, generator: torch.Generator | None = None,
) -> Tensor:
    """Ancestral samples ``(B, num_samples)``: start at the root, draw a child from each node's
    distribution (its logits divided by ``temperature``), stop at a class. O(depth) per draw."""
    B, V = h.shape[0], tt.num_classes
    n = B * num_samples
    hh = h.repeat_interleave(num_samples, dim=0)
    ref = torch.full((n,), V, dtype=torch.long, device=h.device)
    while True:
        active = torch.nonzero(ref >= V).squeeze(1)
        if active.numel() == 0:
            break
        nodes = ref[active] - V
        lp = child_log_probs(hh[active], nodes, weight, bias, tt, temperature=temperature)
        choice = torch.multinomial(lp.exp(), 1, generator=generator).squeeze(1)
        ref[active] = tt.children[tt.child_offset[nodes] + choice]
    return ref.view(B, num_samples)

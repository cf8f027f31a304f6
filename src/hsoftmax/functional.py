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

Every torch path computes a node's children log-probabilities with one function,
:func:`decision_log_probs`. The code here is device-generic; each public operation
(:func:`target_log_prob`, :func:`log_prob`, :func:`topk`) first asks :func:`_cpu_kernels`, the
one backend choice, whether the call can run on the numba CPU kernels instead, through their
autograd bridge :mod:`hsoftmax.kernels.autograd` (same numbers, faster); :func:`sample` is torch
on every device. The bridge imports this module (``TreeTensors``, :func:`decision_log_probs`);
this module imports the bridge only inside :func:`_cpu_kernels`, on first use, so there is no
import cycle and numba is not imported until a kernel runs.
"""

from __future__ import annotations

import itertools
from types import ModuleType
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from . import kernels as K
from .tree import Tree

__all__ = [
    "TreeTensors",
    "tree_tensors",
    "decision_log_probs",
    "child_log_probs",
    "target_log_prob",
    "log_prob",
    "topk",
    "sample",
]


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
    # Static shapes for the compiled/exported torch path (Python ints, so no tensor is read):
    level_edges: tuple[tuple[int, int], ...] = ()  # each level's block of child-table slots
    depth_arity: tuple[int, ...] = ()  # the largest arity at each depth (decision step)
    # Per depth, (lo, hi, width): the depth's wide nodes have their rows wide_rows[lo:hi] scored
    # densely for the whole batch; the others are gathered per example, padded to ``width``.
    depth_plan: tuple[tuple[int, int, int], ...] = ()
    wide_rows: Tensor | None = None  # (R,) long: the wide nodes' rows, depth after depth
    wide_col: Tensor | None = None  # (N,) long: a wide node's first column in its depth's block, else -1


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
    levels = tuple(itertools.pairwise(bounds))
    coff = np.asarray(tree.child_offset)
    level_edges = tuple((int(coff[a]), int(coff[b])) for a, b in levels)
    depth_arity = tuple(int(arity[a:b].max()) for a, b in levels)
    depth_plan, wide_rows, wide_col = _wide_node_plan(levels, arity, poff)
    if tree.is_binary:
        mask = np.arange(dn.shape[1]) < np.asarray(tree.decision_lengths)[:, None]
        rows = poff[dn].astype(np.int32)
        signs = np.where(mask, np.where(dc == 1, 1, -1), 0).astype(np.int8)
    else:
        rows = np.zeros((0, 0), dtype=np.int32)
        signs = np.zeros((0, 0), dtype=np.int8)

    def t(a: np.ndarray, dtype: torch.dtype | None = None) -> Tensor:
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
        level_edges=level_edges,
        depth_arity=depth_arity,
        depth_plan=depth_plan,
        wide_rows=t(wide_rows, torch.long),
        wide_col=t(wide_col, torch.long),
    )


_GATHER_COST = 4  # a gathered (B, A, d) row costs about this many dense matmul columns


def _wide_node_plan(
    levels: tuple[tuple[int, int], ...], arity: np.ndarray, poff: np.ndarray
) -> tuple[tuple[tuple[int, int, int], ...], np.ndarray, np.ndarray]:
    """Which nodes of each depth are scored densely (one ``(B, R)`` matmul over their rows, for
    the whole batch) instead of by a per-example padded gather: a frequency-binned two-level
    tree has a few clusters of thousands of classes among hundreds of small ones, and padding
    every example to the widest would gather ``B x 3742 x d`` rows. The cut ``A`` minimizes
    ``_GATHER_COST * A + R(A)`` (the rows of the k-ary nodes wider than ``A``); the root is
    always scored densely by the caller."""
    N = arity.size
    wide_col = np.full(N, -1, dtype=np.int64)
    plan, rows = [], []
    pos = 0
    for depth, (a, b) in enumerate(levels):
        ar = arity[a:b]
        width = int(ar.max())
        if depth > 0 and width > 2:
            cands = np.unique(np.maximum(ar, 2))
            cost = [_GATHER_COST * c + int(ar[ar > c].sum()) for c in cands]
            width = int(cands[int(np.argmin(cost))])
        lo = pos
        if depth > 0:
            for n in np.flatnonzero(ar > width) + a:
                wide_col[n] = pos - lo
                rows.append(np.arange(poff[n], poff[n] + arity[n]))
                pos += int(arity[n])
        plan.append((lo, pos, width))
    wide_rows = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    return tuple(plan), wide_rows, wide_col


# ---------------------------------------------------------------------------- row gathers
class _SparseGather1d(torch.autograd.Function):
    """``vec[idx]`` whose gradient is a sparse COO tensor (for a sparse-mode bias vector)."""

    @staticmethod
    def forward(ctx: Any, vec: Tensor, idx: Tensor) -> Tensor:
        ctx.save_for_backward(idx)
        ctx.size = vec.shape[0]
        return vec[idx]

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
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


# ---------------------------------------------------------------------------- node math
def decision_log_probs(
    scores: Tensor, *, signed: bool = False, owner: Tensor | None = None, num_nodes: int = 0
) -> Tensor:
    r"""The torch node math, once: children's log-probabilities from their scores.

    A node's decision is a log-softmax over its children's scores, where a binary node's child 0
    has the fixed score 0 and child 1 the score :math:`s` of the node's one row, so that
    :math:`\log p(c_1) = \log\sigma(s)` and :math:`\log p(c_0) = \log\sigma(-s)`. Every torch
    path of this module calls this function, in one of three layouts of the same rule:

    * default: ``scores (..., A)``, one node per row with its children along the last dim (0 at
      a binary node's child 0, ``-inf`` past the node's arity) -> ``log_softmax`` over it;
    * ``owner`` ``(E,)`` long (with ``num_nodes``): ``scores (B, E)`` holds the children of many
      nodes side by side (ragged, e.g. every edge of the tree), ``owner[e]`` the node of column
      ``e`` -> a log-softmax within each node's columns;
    * ``signed=True``: ``scores`` (any shape) are binary decisions' signed scores ``z`` (``s``
      for child 1, ``-s`` for child 0) -> the log-prob of that child, :math:`\log\sigma(z)`
      elementwise: the two-child log-softmax of ``[0, z]`` in its stable form.

    >>> s = torch.tensor([[0.0, 1.5]])  # a binary node: child 0 fixed at 0, child 1 scored 1.5
    >>> torch.allclose(decision_log_probs(s), decision_log_probs(torch.tensor([[-1.5, 1.5]]), signed=True))
    True
    >>> ragged = decision_log_probs(torch.tensor([[0.0, 1.5, 1.0, 2.0, 3.0]]), owner=torch.tensor([0, 0, 1, 1, 1]),
    ...                             num_nodes=2)
    >>> torch.allclose(ragged[0, 2:], torch.log_softmax(torch.tensor([1.0, 2.0, 3.0]), 0))
    True
    """
    if signed:
        return F.logsigmoid(scores)
    if owner is None:
        return torch.log_softmax(scores, dim=-1)
    B, E = scores.shape
    # The max is only a stability shift (so it needs no gradient).
    mx = scores.new_full((B, num_nodes), float("-inf")).scatter_reduce(
        1, owner.expand(B, E), scores.detach(), reduce="amax", include_self=True
    )
    shifted = scores - mx[:, owner]
    lse = torch.log(scores.new_zeros(B, num_nodes).index_add(1, owner, shifted.exp()))
    return shifted - lse[:, owner]


def _children_from_rows(s: Tensor) -> Tensor:
    """Children log-probs of one node from the scores of its rows, ``s (M, r)``: ``(M, k)``. ``r``
    is 0 for a single child (probability 1), 1 for a binary node (two children), else ``k``."""
    if s.shape[-1] == 0:
        return s.new_zeros(s.shape[0], 1)
    if s.shape[-1] == 1:
        return decision_log_probs(torch.cat([-s, s], dim=-1), signed=True)
    return decision_log_probs(s)


def child_log_probs(
    h: Tensor,
    nodes: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    tt: TreeTensors,
    sparse: bool = False,
    temperature: float = 1.0,
    width: int | None = None,
    scores_only: bool = False,
) -> Tensor:
    """Log-probabilities of the children of ``nodes[m]`` given ``h[m]``: ``(M, A)``, where
    ``A`` is ``width`` (static: at least the largest arity among ``nodes``) or, by default, that
    largest arity read from the tensors; slots past a node's arity hold ``-inf``. With
    ``scores_only``, the scores before the node softmax (a binary node's child 0 scores 0)."""
    k = tt.arity[nodes]
    A = width if width is not None else (int(k.max()) if k.numel() else 1)
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
    elif width is None and not needs_grad and 4 * int(k.sum()) + 64 < M * A and M * A * h.shape[1] > (1 << 20):
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
    return s if scores_only else decision_log_probs(s)


# ---------------------------------------------------------------------------- target log-prob
def target_log_prob(
    h: Tensor,
    target: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    tt: TreeTensors,
    sparse: bool = False,
    sgd_lr: float | None = None,
) -> Tensor:
    """``log p(target[i] | h[i])`` for ``h`` (B, d) and ``target`` (B,) long in range: ``(B,)``.

    Never builds a (B, V) tensor: binary trees gather each example's padded path of rows, other
    trees (two-level ones included) do one matmul at the root, then one batched product per
    depth with each example's node rows padded to that depth's largest arity. Every shape is
    static (no host sync, one compiled graph per batch size).

    With ``sgd_lr`` set, backward does not return gradients for ``weight``/``bias``: it applies
    plain SGD to them in place, ``weight -= sgd_lr * grad`` (the same gradient it would have
    returned), after the input gradient has been computed from the old values. On the CPU
    kernels the update happens inside the backward kernel, so no gradient is materialized.
    """
    if h.shape[0] == 0 or tt.num_params == 0:
        return h.new_zeros(h.shape[0]) + 0.0 * h.sum()
    fast = _cpu_kernels(h, weight, bias)
    if sgd_lr is not None and (fast is None or not fast.can_fuse(weight, bias)):
        # Generic path: take the gradient through an identity whose backward applies it.
        weight = _SGDInBackward.apply(weight, sgd_lr) if weight.requires_grad else weight
        if bias is not None and bias.requires_grad:
            bias = _SGDInBackward.apply(bias, sgd_lr)
        sgd_lr = None
    if fast is not None:
        return fast.target_log_prob(h, target, weight, bias, tt, sparse, sgd_lr)
    return torch_target_log_prob(h, target, weight, bias, tt, sparse)


def torch_target_log_prob(
    h: Tensor, target: Tensor, weight: Tensor, bias: Tensor | None, tt: TreeTensors, sparse: bool = False
) -> Tensor:
    """:func:`target_log_prob` on the torch path whatever the device (no backend choice, no
    fused SGD): the kernels' backward differentiates it for double backward."""
    if tt.is_binary:
        return _binary_path_log_prob(h, target, weight, bias, tt, sparse)
    if tt.is_two_level and h.device.type == "cpu" and not torch.compiler.is_compiling():
        return _two_level_log_prob(h, target, weight, bias, tt, sparse)
    return _stepwise_log_prob(h, target, weight, bias, tt, sparse)


_bridge: ModuleType | None = None
_ops: ModuleType | None = None


@torch.compiler.assume_constant_result
def _kernel_ops_ready() -> bool:
    """Whether the kernels are enabled and numba imports; if so, import (register) the custom
    ops of :mod:`hsoftmax.kernels.ops`. Run once per compilation, outside the traced graph, and
    baked in as a constant: toggling :func:`hsoftmax.kernels.set_enabled` after compiling does
    not change a compiled function (compile it again)."""
    global _ops
    if K.cpu() is None:
        return False
    if _ops is None:
        from .kernels import ops

        _ops = ops
    return True


def _cpu_kernels(h: Tensor, weight: Tensor, bias: Tensor | None, *, backward: bool = True) -> ModuleType | None:
    """The backend choice, made here once per public operation: the CPU kernels' bridge
    (:mod:`hsoftmax.kernels.autograd`) if this call can take it, else ``None`` (torch).

    The kernels take a call when every tensor is on the CPU with one float32/float64 dtype (the
    torch path handles mixed dtypes), no functorch transform wraps them (forward-mode AD, vmap
    and double backward use the torch path), and numba is available and enabled
    (:func:`hsoftmax.kernels.set_enabled`). ``backward=False``: the operation has no kernel
    backward, so it takes the kernels only when no gradient is needed."""
    global _bridge
    if h.device.type != "cpu" or weight.device.type != "cpu":
        return None
    dt = h.dtype
    if dt not in (torch.float32, torch.float64) or weight.dtype != dt:
        return None
    if bias is not None and (bias.dtype != dt or bias.device.type != "cpu"):
        return None
    if not backward and torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (h, weight, bias)):
        return None
    if torch.compiler.is_compiling():
        # Compiled or exported: the kernels as opaque custom ops (dynamo cannot trace numba).
        return _ops if _kernel_ops_ready() else None
    if torch._C._functorch.is_functorch_wrapped_tensor(h) or torch._C._functorch.is_functorch_wrapped_tensor(weight):
        return None
    if K.cpu() is None:
        return None
    if _bridge is None:
        from .kernels import autograd  # not at module level: it imports this module

        _bridge = autograd
    return _bridge


class _SGDInBackward(torch.autograd.Function):
    """Identity on a parameter whose backward applies ``param -= lr * grad`` in place and passes
    no gradient on. Autograd runs it after every use of the parameter in the graph has
    contributed (they all depend on its output), so each of them saw the old value."""

    @staticmethod
    def forward(ctx: Any, param: Tensor, lr: float) -> Tensor:
        ctx.param = param
        ctx.lr = lr
        return param.view_as(param)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[None, None]:
        with torch.no_grad():
            ctx.param.add_(grad.to(ctx.param.dtype), alpha=-ctx.lr)
        return None, None


def _binary_path_log_prob(
    h: Tensor, target: Tensor, weight: Tensor, bias: Tensor | None, tt: TreeTensors, sparse: bool
) -> Tensor:
    rows = tt.path_rows[target].long()  # (B, D)
    sign = tt.path_signs[target].to(h.dtype)  # (B, D); 0 marks padding
    s = _scores(h, weight, bias, rows, sparse)
    return (decision_log_probs(sign * s, signed=True) * sign.abs()).sum(-1)


def _root_log_probs(h: Tensor, weight: Tensor, bias: Tensor | None, tt: TreeTensors, sparse: bool) -> Tensor:
    """Children log-probs of the root for every row of ``h``: one matmul, ``(B, arity)``. The
    root is node 0 with parameter rows from 0, and its arity is static (``depth_arity[0]``)."""
    k = tt.depth_arity[0]
    if k == 1:
        return h.new_zeros(h.shape[0], 1)
    rows = torch.arange(1 if k == 2 else k, device=h.device)
    w = _rows(weight, rows, sparse).to(h.dtype)
    s = h @ w.T
    b = _bias(bias, rows, sparse)
    s = s + (b.to(h.dtype) if isinstance(b, Tensor) else b)
    return _children_from_rows(s)


def _node_log_probs(h: Tensor, node: int, weight: Tensor, bias: Tensor | None, tt: TreeTensors, sparse: bool) -> Tensor:
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
    return _children_from_rows(s)


def _two_level_log_prob(
    h: Tensor, target: Tensor, weight: Tensor, bias: Tensor | None, tt: TreeTensors, sparse: bool
) -> Tensor:
    """Eager CPU torch path of a two-level tree: the batch grouped by cluster, one matmul per
    cluster present. Data-dependent shapes (and ``.tolist()`` syncs), but no padding: a
    frequency-binned tree's clusters range from a few classes to thousands (3,742 for V = 100k),
    and the static form pads every example to the widest (9x the work, 2 GB of gathered rows at
    B = 512, d = 256). Compiled code and other devices take :func:`_stepwise_log_prob`."""
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
        lp = _children_from_rows(sc)
        parts.append(lp.gather(1, choice[g].unsqueeze(1)).squeeze(1))
    second = torch.cat(parts)
    return out + second[torch.argsort(order)]


def _depth_scores(
    h: Tensor, nodes: Tensor, weight: Tensor, bias: Tensor | None, tt: TreeTensors, sparse: bool, step: int
) -> Tensor:
    """Children scores ``(B, depth_arity[step])`` of each example's node at depth ``step``
    (``-inf`` past its arity): narrow nodes by a padded row gather, wide ones (``depth_plan``)
    read from one dense ``(B, R)`` matmul over their rows."""
    A = tt.depth_arity[step]
    lo, hi, width = tt.depth_plan[step]
    s = child_log_probs(h, nodes, weight, bias, tt, sparse, width=width, scores_only=True)
    if hi == lo:
        return s
    # tree_tensors always sets the wide-node tensors; only a depth with wide nodes reaches here.
    assert tt.wide_rows is not None and tt.wide_col is not None
    rows = tt.wide_rows[lo:hi]
    dense = h @ _rows(weight, rows, sparse).to(h.dtype).T
    b = _bias(bias, rows, sparse)
    dense = dense + (b.to(h.dtype) if isinstance(b, Tensor) else b)
    col = tt.wide_col[nodes]
    j = torch.arange(A, device=h.device)
    wide_s = dense.gather(1, (col.clamp(min=0).unsqueeze(1) + j).clamp(max=hi - lo - 1))
    wide_s = wide_s.masked_fill(j >= tt.arity[nodes].unsqueeze(1), float("-inf"))
    s = F.pad(s, (0, A - width), value=float("-inf"))
    return torch.where((col >= 0).unsqueeze(1), wide_s, s)


def _stepwise_log_prob(
    h: Tensor, target: Tensor, weight: Tensor, bias: Tensor | None, tt: TreeTensors, sparse: bool
) -> Tensor:
    """Any tree, one decision step (depth) at a time, with static shapes: the root is one
    ``(B, k)`` matmul (every example visits it); at depth ``t >= 1`` each example gathers its
    node's rows padded to a static width, a ``(B, A_t, d)`` batched product, except that the
    depth's few widest nodes (``depth_plan``) are scored with one dense matmul for the batch.
    For a two-level tree that is Theano's two-matmul form: clusters, then each example's own
    cluster block. No shape depends on the data, so it compiles once and runs
    without host syncs; examples whose path is shorter than ``t`` add 0."""
    dn = tt.decision_nodes[target].long()
    dc = tt.decision_choices[target].long()
    L = tt.decision_lengths[target]
    out = h.new_zeros(h.shape[0])
    for step in range(len(tt.depth_arity)):
        if step == 0:
            lp = _root_log_probs(h, weight, bias, tt, sparse)
        else:
            lp = decision_log_probs(_depth_scores(h, dn[:, step], weight, bias, tt, sparse, step))
        taken = lp.gather(1, dc[:, step : step + 1]).squeeze(1)
        out = out + torch.where(step < L, taken, 0.0)
    return out


# ---------------------------------------------------------------------------- all classes
def log_prob(h: Tensor, weight: Tensor, bias: Tensor | None, tt: TreeTensors) -> Tensor:
    """Exact log-probabilities of all classes: ``(B, V)``; ``exp`` of each row sums to 1.

    Scores every node once with a single ``(B, P)`` matmul, normalizes each node's children,
    then adds edge log-probs down the tree one level at a time.
    """
    B, V = h.shape[0], tt.num_classes
    if tt.num_params == 0:
        return h.new_zeros(B, V) + 0.0 * h.sum()
    fast = _cpu_kernels(h, weight, bias, backward=False)
    if fast is not None:
        return fast.log_prob(h, weight, bias, tt)
    s_all = h @ weight.to(h.dtype).T
    if bias is not None:
        s_all = s_all + bias.to(h.dtype)
    has = tt.edge_rows >= 0
    edge_s = torch.where(has, s_all[:, tt.edge_rows.clamp(min=0)], 0.0)  # (B, E)
    edge_lp = decision_log_probs(edge_s, owner=tt.edge_owner, num_nodes=tt.arity.numel())
    # Top-down accumulation over refs (classes 0..V-1, then node n at V + n): BFS levels are
    # contiguous id blocks, so a level's parents are all filled when it is reached. The level
    # bounds are static ints (level_edges), so every shape is static.
    ref_lp = h.new_zeros(B, V + tt.arity.numel())
    for lo, hi in tt.level_edges:
        lp = ref_lp[:, V + tt.edge_owner[lo:hi]] + edge_lp[:, lo:hi]
        ref_lp.index_copy_(1, tt.children[lo:hi], lp)  # in place: the gather above saves no values
    return ref_lp[:, :V]


# ---------------------------------------------------------------------------- top-k search
@torch.no_grad()
def topk(h: Tensor, k: int, weight: Tensor, bias: Tensor | None, tt: TreeTensors) -> tuple[Tensor, Tensor]:
    """Exact ``k`` most probable classes per row by best-first search: ``(values, indices)``, (B, k).

    A node's log-prob bounds every class below it (each edge adds a log-prob <= 0), so popping
    frontier entries in order of log-prob yields classes in exactly descending order. The work
    grows with ``k * depth``, not with the number of classes.
    """
    B, V = h.shape[0], tt.num_classes
    fast = _cpu_kernels(h, weight, bias) if B else None
    if fast is not None:
        return fast.topk(h, k, weight, bias, tt)
    if torch.compiler.is_compiling():
        # The best-first search below has data-dependent loops and shapes. Compiled or exported,
        # the torch path ranks the exact log-probabilities instead: O(B * V), same answer.
        return torch.topk(log_prob(h, weight, bias, tt), k, dim=1)
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
    h: Tensor,
    num_samples: int,
    weight: Tensor,
    bias: Tensor | None,
    tt: TreeTensors,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Ancestral samples ``(B, num_samples)``: start at the root, draw a child from each node's
    distribution (its logits divided by ``temperature``), stop at a class. O(depth) per draw.
    Torch on every device: a draw is a few node decisions, which no kernel would speed up much."""
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

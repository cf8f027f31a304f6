r"""``ShardedHierarchicalSoftmax``: one hierarchical-softmax output layer split across ranks.

At ``V = 10M`` classes and ``d = 512`` the node table alone is 20 GB; a tree splits across
devices more naturally than a flat vocabulary does. The tree's top levels (a few nodes) are
**replicated** on every rank of a process group; below a cut, whole **subtrees** are assigned to
ranks (balanced by parameter rows, or by expected node visits given class counts), and each rank
holds only its subtrees' rows. A class's log-probability is the replicated prefix (the top
tree's log-prob of the subtree, or of the class itself if it hangs in the top) plus the
suffix that the subtree's owner scores:
:math:`\log p(y) = \log p_\text{top}(s(y)) + \log p_{s(y)}(y)`. Both terms are computed by
ordinary :class:`hsoftmax.HierarchicalSoftmax` layers (the top tree, and one layer per owned
subtree, each a :class:`~hsoftmax.Tree` of its own), so the node math and the kernels are the
core's; this module only splits the tree, routes the examples and communicates.

Semantics are Megatron-LM's tensor (model) parallelism: every rank of ``process_group`` calls
the layer with the **same** input and targets (the model body's output, replicated across the
group), and every rank gets the same loss and the same input gradient.

What travels per training step, for a batch of ``B`` examples (``d`` = ``in_features``, ``w``
ranks, floats of the input's dtype):

* forward: **one** ``all_reduce`` of ``B`` floats: each rank's suffix log-probs, 0 for the
  examples whose class it does not own (each example has exactly one owner, or none when its
  class hangs in the replicated top).
* backward: **one** ``all_reduce`` of ``B * d`` floats: the input gradient of the suffixes
  (each rank's partial sum over its subtrees; the replicated top's part is added locally, once).
  This is Megatron's "copy to tensor-parallel region" (identity forward, all-reduce backward).

Megatron's vocab-parallel cross-entropy (``vocab_parallel_cross_entropy``) exchanges, in the
forward, three all-reduces of ``B`` floats each (the per-token max logit, the target logit and
the sum of exponentials: ``3 B`` floats), and in the backward the same ``B * d`` input-gradient
all-reduce of the column-parallel output projection before it. So per step:
``hsoftmax = B + B d`` floats against ``Megatron = 3 B + B d``; neither depends on ``V``. The
replicated top needs no communication: its gradient is computed from identical inputs and
identical (all-reduced) outputs on every rank, so it is identical everywhere, like the layer
norms of a Megatron tensor-parallel block. ``comm_bytes`` counts what each call sent.

Process groups and composition: ``process_group`` is the **tensor-parallel** group (the ranks
that share one copy of the output layer). With data parallelism on top (``tp * dp`` ranks),
wrap the whole model in :class:`~torch.nn.parallel.DistributedDataParallel` with
``process_group=`` the **data-parallel** group (the ranks holding the same shard: tp-rank ``r``
of every replica); DDP then averages the replicated top and each shard's rows over their
replicas, dense or sparse (every table is an ``nn.Embedding``; a held subtree that no example
of a batch reaches is scored once with weight 0, so every parameter has a gradient every step,
as DDP's sparse all-reduce requires).
The model body may itself be tensor-parallel over the same group, as in Megatron: the layer
expects the body's output already reduced (identical on every rank of the group).

Collectives raise ``RuntimeError`` naming the layer and the operation when a rank dies or stops
answering within the process group's timeout (``init_process_group(timeout=...)``), instead of
hanging.

Example (one process, a group of one; see ``examples/torchrun_sharded.py`` for several)::

    >>> import os, tempfile, torch, torch.distributed as dist
    >>> from hsoftmax import HierarchicalSoftmax, Tree
    >>> from hsoftmax.distributed import ShardedHierarchicalSoftmax
    >>> store = dist.FileStore(tempfile.mktemp(), 1)
    >>> dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    >>> full = HierarchicalSoftmax(8, Tree.huffman(range(1, 101)))
    >>> sharded = ShardedHierarchicalSoftmax.from_full(full)
    >>> x, y = torch.randn(4, 8), torch.tensor([0, 5, 50, 99])
    >>> torch.allclose(sharded(x, y).loss, full(x, y).loss)
    True
    >>> torch.equal(sharded.topk(x, 3).indices, full.topk(x, 3).indices)
    True
    >>> torch.equal(sharded.to_full().weight, full.weight)
    True
    >>> dist.destroy_process_group()
"""

from __future__ import annotations

import heapq
import itertools
import math
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from .builders import check_counts, concat_ranges
from .layer import (
    HierarchicalSoftmax,
    HierarchicalSoftmaxOutput,
    _as_int,
    _check_class_range,
    _check_in_features_and_tree,
    _check_k,
    _check_reduction,
)
from .tree import Tree

__all__ = ["ShardedHierarchicalSoftmax", "ShardPlan", "ShardedLogProb", "plan_shards"]


# ---------------------------------------------------------------------------- the plan
class ShardPlan:
    """Where every node, row and class of a tree lives when it is split over ``world_size`` ranks.

    Deterministic in its arguments, so every rank computes the same plan with no communication.

    Attributes:
        world_size: ranks.
        top_nodes: ``(T,)`` the replicated internal nodes (the root first), in id order.
        top_tree: the replicated top as a :class:`Tree`: its classes are first the classes that
            hang from top nodes (``direct_classes``, in id order), then one pseudo-class per
            subtree (``len(direct_classes) + s``).
        top_rows: ``(P_top,)`` the full table's rows of the top tree, in its row order.
        cut_nodes: ``(S,)`` the root node of each subtree ``s``.
        owner: ``(S,)`` the rank holding subtree ``s``.
        weight: ``(S,)`` each subtree's balancing weight (rows, or expected node visits).
        class_subtree: ``(V,)`` int32, the subtree of each class, ``-1`` for a direct class.
        class_local: ``(V,)`` int32, the class's index in its subtree's tree (or in
            ``direct_classes``).
        class_top: ``(V,)`` int32, the class's top-tree class (its subtree's pseudo-class).
    """

    def __init__(self, tree: Tree, world_size: int, counts: Any = None, subtrees_per_rank: int = 2) -> None:
        world_size = _as_int("world_size", world_size, minimum=1)
        subtrees_per_rank = _as_int("subtrees_per_rank", subtrees_per_rank, minimum=1)
        V, N = tree.num_classes, tree.num_nodes
        self.tree, self.world_size = tree, world_size
        self._poff = np.asarray(tree.param_offset)
        node_parent = np.asarray(tree.parent)[V:]
        self._levels = _level_blocks(np.asarray(tree.node_depth))
        weight = _subtree_weights(tree, counts, node_parent, self._levels)
        top, cut = _choose_cut(tree, weight, world_size, subtrees_per_rank)
        self.top_nodes, self.cut_nodes = top, cut
        self.weight = weight[cut]
        self.owner = _assign(self.weight, world_size)
        self._node_owner = _node_owner(N, top, cut, node_parent, self._levels)
        S = cut.size
        self.class_subtree = self._node_owner[np.asarray(tree.parent)[:V]].astype(np.int32)
        self.direct_classes = np.flatnonzero(self.class_subtree < 0)
        self.class_local = _rank_within_groups(self.class_subtree, S).astype(np.int32)
        nd = self.direct_classes.size
        self.class_top = np.where(self.class_subtree < 0, self.class_local, nd + self.class_subtree).astype(np.int32)
        self.top_tree = self._sub_tree(top, nd + S, self._top_ref_map(top, nd))
        self.top_rows = concat_ranges(self._poff[top], self._poff[top + 1])

    @property
    def num_subtrees(self) -> int:
        return int(self.cut_nodes.size)

    def subtrees_of(self, rank: int) -> np.ndarray:
        """The subtrees held by ``rank``, in id order."""
        return np.flatnonzero(self.owner == rank)

    def subtree_nodes(self, s: int) -> np.ndarray:
        """Internal nodes of subtree ``s`` (its root first), in id order."""
        return np.flatnonzero(self._node_owner == s)

    def subtree_rows(self, s: int) -> np.ndarray:
        """The full table's rows of subtree ``s``, in the order of its own tree's rows."""
        nodes = self.subtree_nodes(s)
        return concat_ranges(self._poff[nodes], self._poff[nodes + 1])

    def subtree_classes(self, s: int) -> np.ndarray:
        """The classes of subtree ``s``: its tree's class ``i`` is class ``subtree_classes(s)[i]``."""
        return np.flatnonzero(self.class_subtree == s)

    def subtree_tree(self, s: int) -> Tree:
        """Subtree ``s`` as a :class:`Tree` of its own (classes renumbered ``0..n-1``)."""
        nodes = self.subtree_nodes(s)
        classes = self.subtree_classes(s)
        labels = self.tree.labels
        sub_labels = None if labels is None else [labels[int(c)] for c in classes]
        return self._sub_tree(nodes, classes.size, self._subtree_ref_map(nodes, classes.size), sub_labels)

    def rows_of(self, rank: int) -> np.ndarray:
        """The full table's rows that ``rank`` holds besides the top: its subtrees', in order."""
        parts = [self.subtree_rows(int(s)) for s in self.subtrees_of(rank)]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def classes_of(self, rank: int) -> np.ndarray:
        """The classes whose log-prob columns ``rank`` reports: its subtrees' (in order), and
        on rank 0 also the direct classes of the top."""
        parts = [self.subtree_classes(int(s)) for s in self.subtrees_of(rank)]
        if rank == 0:
            parts.append(self.direct_classes)
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def summary(self) -> str:
        rows = [int(self.rows_of(r).size) for r in range(self.world_size)]
        return (
            f"{self.num_subtrees} subtrees below {self.top_nodes.size} replicated nodes "
            f"({self.top_rows.size} rows); rows per rank {rows}"
        )

    # -- building the top tree and the subtrees' trees from the full child table
    def _top_ref_map(self, top: np.ndarray, nd: int) -> np.ndarray:
        """Full ref -> top-tree ref, for the refs that are children of top nodes."""
        V, N = self.tree.num_classes, self.tree.num_nodes
        m = np.full(V + N, -1, dtype=np.int64)
        m[self.direct_classes] = np.arange(nd)
        m[V + self.cut_nodes] = nd + np.arange(self.cut_nodes.size)
        m[V + top] = (nd + self.cut_nodes.size) + np.arange(top.size)
        return m

    def _subtree_ref_map(self, nodes: np.ndarray, nc: int) -> _RefMap:
        return _RefMap(self.tree.num_classes, self.class_local, nodes, nc)

    def _sub_tree(self, nodes: np.ndarray, nc: int, ref_map: Any, labels: list[str] | None = None) -> Tree:
        """The tree of internal ``nodes`` (a connected set, in id order) with their children
        renamed by ``ref_map``. A connected set listed in breadth-first order stays
        breadth-first, so the new tree keeps the node order and, with it, the row order."""
        off, ch = np.asarray(self.tree.child_offset), np.asarray(self.tree.children)
        kids = ch[concat_ranges(off[nodes], off[nodes + 1])]
        sub_off = np.zeros(nodes.size + 1, dtype=np.int64)
        np.cumsum(off[nodes + 1] - off[nodes], out=sub_off[1:])
        sub = Tree(nc, sub_off, ref_map[kids], labels=labels)
        if not np.array_equal(sub.children, ref_map[kids]):  # the renumbering was the identity
            raise AssertionError("internal error: a subtree's nodes were renumbered")
        return sub


class _RefMap:
    """Full ref -> subtree ref for one subtree, without an O(V + N) array per subtree."""

    def __init__(self, V: int, class_local: np.ndarray, nodes: np.ndarray, nc: int) -> None:
        self.V, self.class_local, self.nodes, self.nc = V, class_local, nodes, nc

    def __getitem__(self, refs: np.ndarray) -> np.ndarray:
        out = np.empty(refs.size, dtype=np.int64)
        is_class = refs < self.V
        out[is_class] = self.class_local[refs[is_class]]
        out[~is_class] = self.nc + np.searchsorted(self.nodes, refs[~is_class] - self.V)
        return out


def plan_shards(tree: Tree, world_size: int, counts: Any = None, subtrees_per_rank: int = 2) -> ShardPlan:
    """The :class:`ShardPlan` of ``tree`` over ``world_size`` ranks.

    The cut grows greedily from the root: the heaviest subtree is split (its root joins the
    replicated top) until there are at least ``world_size * subtrees_per_rank`` subtrees, none
    weighs more than ``1 / (world_size * subtrees_per_rank)`` of the whole, and assigning them
    (heaviest first, each to the least loaded rank) loads no rank more than 5% over its share
    (or the top reaches ``64 * world_size * subtrees_per_rank`` nodes: a tree whose splits peel
    off one class at a time cannot be balanced by subtrees). The weight is parameter rows, or
    with ``counts`` (one per class) the expected node visits ``sum(count * decisions)``.

    >>> plan = plan_shards(Tree.balanced(64), 2)
    >>> plan.num_subtrees, plan.top_nodes.size, [plan.rows_of(r).size for r in range(2)]
    (4, 3, [30, 30])
    """
    return ShardPlan(tree, world_size, counts, subtrees_per_rank)


def _level_blocks(depth: np.ndarray) -> list[tuple[int, int]]:
    """Breadth-first ids: each depth is one contiguous block ``[a, b)`` of node ids."""
    cuts = np.flatnonzero(np.diff(depth)) + 1
    bounds = [0, *cuts.tolist(), depth.size]
    return list(itertools.pairwise(bounds))


def _subtree_weights(tree: Tree, counts: Any, node_parent: np.ndarray, levels: list[tuple[int, int]]) -> np.ndarray:
    """``(N,)`` the weight of the subtree under each internal node."""
    V = tree.num_classes
    if counts is None:
        w = np.diff(np.asarray(tree.param_offset)).astype(np.float64)
    else:
        c = check_counts(counts)
        if c.size != V:
            raise ValueError(f"counts must have one entry per class ({V}), got {c.size}")
        w = np.zeros(tree.num_nodes)
        np.add.at(w, np.asarray(tree.parent)[:V], c * np.asarray(tree.decision_lengths))
    for a, b in reversed(levels[1:]):  # children before parents
        np.add.at(w, node_parent[a:b], w[a:b])
    return w


def _choose_cut(tree: Tree, weight: np.ndarray, world: int, per_rank: int) -> tuple[np.ndarray, np.ndarray]:
    """``(top nodes, cut nodes)``, each in id order (see :func:`plan_shards`)."""
    target = world * per_rank
    V = tree.num_classes
    off, ch = np.asarray(tree.child_offset), np.asarray(tree.children)
    total = float(weight[0])
    heap: list[tuple[float, int]] = [(-total, 0)]
    top: list[int] = []
    # A cap on the replicated part: a caterpillar tree (each split peels one class) cannot be
    # balanced by subtrees, and replicating all of it would defeat the point.
    max_top = 64 * target
    while heap and len(top) < max_top:
        negw, j = heap[0]
        if top and len(heap) >= target and -negw <= total / target and _balanced(heap, total, world):
            break
        heapq.heappop(heap)
        top.append(j)
        kids = ch[off[j] : off[j + 1]]
        for n in (kids[kids >= V] - V).tolist():
            heapq.heappush(heap, (-float(weight[n]), n))
    return np.sort(np.array(top, dtype=np.int64)), np.sort(np.array([j for _, j in heap], dtype=np.int64))


_TOLERANCE = 0.05  # the cut is refined until the most loaded rank carries at most 5% over its share


def _balanced(heap: list[tuple[float, int]], total: float, world: int) -> bool:
    """Whether assigning the subtrees now would load no rank more than ``_TOLERANCE`` over its
    share."""
    weights = np.array([-w for w, _ in heap])
    owner = _assign(weights, world)
    load = np.bincount(owner, weights=weights, minlength=world)
    return bool(load.max() <= (1 + _TOLERANCE) * total / world)


def _assign(weight: np.ndarray, world_size: int) -> np.ndarray:
    """Longest-processing-time assignment: heaviest subtree first, to the least loaded rank."""
    owner = np.zeros(weight.size, dtype=np.int64)
    load = [(0.0, r) for r in range(world_size)]
    for s in sorted(range(weight.size), key=lambda s: (-weight[s], s)):
        w, r = heapq.heappop(load)
        owner[s] = r
        heapq.heappush(load, (w + float(weight[s]), r))
    return owner


def _node_owner(
    N: int, top: np.ndarray, cut: np.ndarray, node_parent: np.ndarray, levels: list[tuple[int, int]]
) -> np.ndarray:
    """``(N,)`` the subtree of each internal node, ``-1`` for the top's."""
    owner = np.full(N, -1, dtype=np.int64)
    owner[cut] = np.arange(cut.size)
    inherit = np.ones(N, dtype=bool)
    inherit[top] = False
    inherit[cut] = False
    for a, b in levels[1:]:  # parents before children
        blk = np.arange(a, b)[inherit[a:b]]
        owner[blk] = owner[node_parent[blk]]
    return owner


def _rank_within_groups(group: np.ndarray, num_groups: int) -> np.ndarray:
    """Each element's position among the elements of its group (``-1`` is a group too)."""
    order = np.argsort(group, kind="stable")
    sizes = np.bincount(group + 1, minlength=num_groups + 1)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    out = np.empty(group.size, dtype=np.int64)
    out[order] = np.arange(group.size) - starts[group[order] + 1]
    return out


# ---------------------------------------------------------------------------- collectives
class _Comm:
    """The layer's collectives over one group: clear errors, and a byte count per operation."""

    def __init__(self, group: Any) -> None:
        group = group if group is not None else dist.group.WORLD
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        self.root = dist.get_global_rank(group, 0)
        self.bytes: dict[str, int] = {}

    def _count(self, what: str, t: Tensor) -> None:
        self.bytes[what] = self.bytes.get(what, 0) + t.numel() * t.element_size()

    def _failed(self, what: str, e: Exception) -> RuntimeError:
        return RuntimeError(
            f"ShardedHierarchicalSoftmax: the {what} over the {self.world_size} ranks of its process group "
            f"failed on rank {self.rank}: a rank has died or did not reach the call within the group's "
            f"timeout (init_process_group(timeout=...)); every rank must call the layer with the same "
            f"batch. ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        )

    def all_reduce(self, t: Tensor, what: str) -> Tensor:
        self._count(what, t)
        try:
            dist.all_reduce(t, group=self.group)
        except RuntimeError as e:
            raise self._failed(f"all_reduce of {what}", e) from e
        return t

    def broadcast(self, t: Tensor, what: str) -> Tensor:
        self._count(what, t)
        try:
            dist.broadcast(t, src=self.root, group=self.group)
        except RuntimeError as e:
            raise self._failed(f"broadcast of {what}", e) from e
        return t

    def all_gather(self, t: Tensor, what: str) -> list[Tensor]:
        self._count(what, t)
        out = [torch.empty_like(t) for _ in range(self.world_size)]
        try:
            dist.all_gather(out, t.contiguous(), group=self.group)
        except RuntimeError as e:
            raise self._failed(f"all_gather of {what}", e) from e
        return out

    def gather(self, t: Tensor, dst: int, what: str) -> list[Tensor] | None:
        self._count(what, t)
        out = [torch.empty_like(t) for _ in range(self.world_size)] if self.rank == dst else None
        try:
            dist.gather(t.contiguous(), out, dst=dist.get_global_rank(self.group, dst), group=self.group)
        except RuntimeError as e:
            raise self._failed(f"gather of {what}", e) from e
        return out


class _CopyToShards(torch.autograd.Function):
    """Identity forward; backward all-reduces the input gradient (Megatron's
    ``copy_to_tensor_model_parallel_region``): each rank's subtrees add their part of it."""

    @staticmethod
    def forward(ctx: Any, h: Tensor, comm: _Comm) -> Tensor:
        ctx.comm = comm
        return h.view_as(h)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return ctx.comm.all_reduce(grad.contiguous().clone(), "input gradient (backward)"), None


class _ReduceFromShards(torch.autograd.Function):
    """All-reduce forward, identity backward (Megatron's
    ``reduce_from_tensor_model_parallel_region``): the per-example suffix log-probs."""

    @staticmethod
    def forward(ctx: Any, local: Tensor, comm: _Comm) -> Tensor:
        return comm.all_reduce(local.clone(), "per-example log-probs (forward)")

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad, None


# ---------------------------------------------------------------------------- the layer
class ShardedLogProb(NamedTuple):
    """One rank's columns of the log-probabilities: ``values[..., i]`` is class ``classes[i]``."""

    values: Tensor
    classes: Tensor


class ShardedHierarchicalSoftmax(nn.Module):
    r"""A :class:`~hsoftmax.HierarchicalSoftmax` whose node table is split over the ranks of a
    ``torch.distributed`` process group (see :mod:`hsoftmax.distributed` for the scheme and what
    travels).

    Every rank must call every method with the same input (and targets); each returns the same
    result on every rank, except :meth:`log_prob`, which returns each rank's own columns unless
    ``gather=True``. The output and loss equal the unsharded layer's (up to floating-point
    rounding), as do the gradients of the input and of every row.

    Args:
        in_features: size of each input sample ``d``.
        tree: the full label hierarchy (every rank passes the same tree).
        process_group: the group to shard over (default: the world). ``torch.distributed`` must
            be initialized.
        bias, sparse, reduction, ignore_index, device, dtype: as for
            :class:`~hsoftmax.HierarchicalSoftmax` (``fused_sgd_lr`` is not supported).
        counts: optional class counts: balance the ranks by expected node visits, not rows.
        subtrees_per_rank: how finely to cut (more subtrees balance better, and replicate a
            larger top).

    Attributes:
        plan: the :class:`ShardPlan` (the same on every rank).
        top: the replicated top tree's :class:`~hsoftmax.HierarchicalSoftmax`.
        subtrees: one :class:`~hsoftmax.HierarchicalSoftmax` per subtree this rank holds
            (``plan.subtrees_of(rank)``).
        comm_bytes: bytes this rank sent into each kind of collective, summed over calls.

    Initialized like the unsharded layer (rows uniform in ``+-1/sqrt(d)``); the replicated top is
    broadcast from the group's first rank. To start from a trained layer use :meth:`from_full`.
    """

    def __init__(
        self,
        in_features: int,
        tree: Tree,
        process_group: Any = None,
        bias: bool = True,
        sparse: bool = False,
        reduction: str = "mean",
        ignore_index: int = -100,
        device: Any = None,
        dtype: torch.dtype | None = None,
        counts: Any = None,
        subtrees_per_rank: int = 2,
    ) -> None:
        super().__init__()
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(
                "ShardedHierarchicalSoftmax needs torch.distributed: call "
                "torch.distributed.init_process_group first (e.g. under torchrun)"
            )
        in_features = _check_in_features_and_tree(in_features, tree)
        _check_reduction(reduction)
        self._comm = _Comm(process_group)
        self.rank, self.world_size = self._comm.rank, self._comm.world_size
        self.tree = tree
        self.in_features = in_features
        self.ignore_index = _as_int("ignore_index", ignore_index)
        self.reduction = reduction
        self.plan = plan_shards(tree, self.world_size, counts, subtrees_per_rank)
        kw: dict[str, Any] = {"bias": bias, "sparse": sparse, "device": device, "dtype": dtype}
        # reduction="none": the per-example log-probs are combined here, then reduced.
        self.top = HierarchicalSoftmax(in_features, self.plan.top_tree, reduction="none", **kw)
        self._owned = self.plan.subtrees_of(self.rank)
        self.subtrees = nn.ModuleList(
            HierarchicalSoftmax(in_features, self.plan.subtree_tree(int(s)), reduction="none", **kw)
            for s in self._owned
        )
        p = self.plan
        # Class routing, on the module's device: which subtree, which class inside it.
        dev = self.top.weight.device
        self.register_buffer("_class_subtree", torch.from_numpy(p.class_subtree).to(dev), persistent=False)
        self.register_buffer("_class_local", torch.from_numpy(p.class_local).to(dev), persistent=False)
        self.register_buffer("_class_top", torch.from_numpy(p.class_top).to(dev), persistent=False)
        slot = np.full(p.num_subtrees + 1, -1, dtype=np.int64)  # global subtree (+1) -> local index
        slot[self._owned + 1] = np.arange(self._owned.size)
        self.register_buffer("_slot", torch.from_numpy(slot).to(dev), persistent=False)
        with torch.no_grad():
            for t in self.top.parameters():
                self._comm.broadcast(t.data, "replicated top (init)")

    # The one attribute of the layer that cannot be honoured: an in-place update of shards.
    fused_sgd_lr = None
    _class_subtree: Tensor
    _class_local: Tensor
    _class_top: Tensor
    _slot: Tensor

    def _held(self) -> list[tuple[int, HierarchicalSoftmax]]:
        """``(subtree, its layer)`` for every subtree this rank holds."""
        layers: list[HierarchicalSoftmax] = list(self.subtrees)  # type: ignore[arg-type]
        return list(zip(self._owned.tolist(), layers))

    @property
    def num_classes(self) -> int:
        return self.tree.num_classes

    @property
    def comm_bytes(self) -> dict[str, int]:
        return self._comm.bytes

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, num_classes={self.num_classes}, rank={self.rank}/"
            f"{self.world_size}, {self.plan.summary()}"
        )

    # ------------------------------------------------------------------ unsharded <-> sharded
    @classmethod
    def from_full(
        cls, layer: HierarchicalSoftmax, process_group: Any = None, **kwargs: Any
    ) -> ShardedHierarchicalSoftmax:
        """This rank's shard of an unsharded layer (the same layer on every rank, e.g. loaded
        from one checkpoint): the replicated top and this rank's subtrees' rows, copied.
        ``kwargs`` go to the constructor (``counts``, ``subtrees_per_rank``)."""
        if not isinstance(layer, HierarchicalSoftmax):
            raise TypeError(f"layer must be an hsoftmax.HierarchicalSoftmax, got {type(layer).__name__}")
        w = layer.weight
        self = cls(
            layer.in_features,
            layer.tree,
            process_group,
            bias=layer.bias is not None,
            sparse=layer.sparse,
            reduction=layer.reduction,
            ignore_index=layer.ignore_index,
            device=w.device,
            dtype=w.dtype,
            **kwargs,
        )
        with torch.no_grad():
            self._copy_rows(self.top, layer, self.plan.top_rows)
            for s, sub in self._held():
                self._copy_rows(sub, layer, self.plan.subtree_rows(int(s)))
        return self

    @staticmethod
    def _copy_rows(dst: HierarchicalSoftmax, src: HierarchicalSoftmax, rows: np.ndarray) -> None:
        idx = torch.from_numpy(rows).to(src.weight.device)
        dst.weight.copy_(src.weight.detach().index_select(0, idx))
        if dst.bias is not None and src.bias is not None:
            dst.bias.copy_(src.bias.detach().index_select(0, idx))

    def _local_rows(self) -> Tensor:
        """This rank's subtree rows (weight, then bias as one more column), in ``rows_of`` order."""
        parts = []
        for _, sub in self._held():
            w = sub.weight.detach()
            parts.append(w if sub.bias is None else torch.cat([w, sub.bias.detach().unsqueeze(1)], 1))
        cols = self.in_features + (self.top.bias is not None)
        return torch.cat(parts) if parts else self.top.weight.new_zeros(0, cols)

    @torch.no_grad()
    def to_full(self, dst: int | None = None) -> HierarchicalSoftmax | None:
        """The unsharded layer, gathered: on every rank (``dst=None``, one ``all_gather``) or
        only on group rank ``dst`` (one ``gather``; the others get ``None``). Its state dict is
        an ordinary :class:`~hsoftmax.HierarchicalSoftmax` checkpoint."""
        p = self.plan
        counts = [int(p.rows_of(r).size) for r in range(self.world_size)]
        local = self._local_rows()
        padded = local.new_zeros(max(counts), local.shape[1])
        padded[: local.shape[0]] = local
        if dst is None:
            gathered: list[Tensor] | None = self._comm.all_gather(padded, "rows (to_full)")
        else:
            dst = _as_int("dst", dst)
            if not 0 <= dst < self.world_size:
                raise ValueError(f"dst must be a rank of the group [0, {self.world_size}) or None, got {dst}")
            gathered = self._comm.gather(padded, dst, "rows (to_full)")
        if gathered is None:
            return None
        w = self.top.weight
        full = HierarchicalSoftmax(
            self.in_features,
            self.tree,
            bias=self.top.bias is not None,
            sparse=self.top.sparse,
            reduction=self.reduction,
            ignore_index=self.ignore_index,
            device=w.device,
            dtype=w.dtype,
        )
        top_idx = torch.from_numpy(p.top_rows).to(w.device)
        full.weight.index_copy_(0, top_idx, w.detach())
        if full.bias is not None:
            full.bias.index_copy_(0, top_idx, self.top.bias.detach())
        for r, block in enumerate(gathered):
            idx = torch.from_numpy(p.rows_of(r)).to(w.device)
            rows = block[: counts[r]]
            full.weight.index_copy_(0, idx, rows[:, : self.in_features])
            if full.bias is not None:
                full.bias.index_copy_(0, idx, rows[:, self.in_features])
        return full

    # ------------------------------------------------------------------ forward
    def forward(self, input: Tensor, target: Tensor) -> HierarchicalSoftmaxOutput:
        """Log-probability of each target and the reduced NLL loss, as the unsharded layer's
        (one all-reduce of ``B`` floats forward, one of ``B * d`` backward)."""
        h = self.top._prepare_input(input)
        t = self.top._check_target(target, input.shape[:-1])
        keep = t != self.ignore_index
        tk = torch.where(keep, t, 0)
        _check_class_range(tk, self.num_classes)
        top_t = torch.where(keep, self._class_top[tk].long(), self.ignore_index)
        prefix = self.top(h, top_t).output
        hs = _CopyToShards.apply(h, self._comm)
        sub = torch.where(keep, self._class_subtree[tk].long(), -1)
        local = self._suffix_log_probs(hs, sub, self._class_local[tk].long())
        out = prefix + _ReduceFromShards.apply(local, self._comm)
        return self._reduce(out.view(target.shape), int(keep.sum()))

    def _suffix_log_probs(self, hs: Tensor, sub: Tensor, local_class: Tensor) -> Tensor:
        """``(B,)`` each example's log-prob inside its subtree if this rank holds it, else 0.
        Always depends on ``hs``, so every rank's backward reaches the input all-reduce."""
        slot = self._slot[sub + 1]
        mine = torch.nonzero(slot >= 0).squeeze(1)
        out = hs.new_zeros(hs.shape[0]) + hs[:0].sum()
        held = self._held()
        present: list[int] = []
        if mine.numel():
            order = mine[torch.argsort(slot[mine], stable=True)]
            slots, sizes = torch.unique_consecutive(slot[order], return_counts=True)
            present = slots.tolist()
            # One gather of the inputs and one scatter of the results for all subtrees:
            # autograd then adds one (B, d) input gradient, not one per subtree.
            split = sizes.tolist()
            h_parts, y_parts = hs[order].split(split), local_class[order].split(split)
            parts = [held[j][1](hj, yj).output for j, hj, yj in zip(present, h_parts, y_parts)]
            out = out.index_put((order,), torch.cat(parts), accumulate=True)
        if torch.is_grad_enabled() and hs.shape[0] and len(present) < len(held):
            # A held subtree that no example reached is scored once with weight 0, so that every
            # parameter gets a (zero) gradient every step: DistributedDataParallel's sparse
            # all-reduce requires one from every rank.
            missed = set(range(len(held))) - set(present)
            zero = hs.new_zeros(1, dtype=torch.long)
            extra = sum(held[j][1](hs[:1], zero).output.sum() for j in sorted(missed))
            out = out + 0.0 * extra
        return out

    def _reduce(self, out: Tensor, count: int) -> HierarchicalSoftmaxOutput:
        if self.reduction == "none":
            loss = -out
        elif self.reduction == "sum":
            loss = -out.sum()
        else:
            loss = -out.sum() / max(count, 1)
        return HierarchicalSoftmaxOutput(out, loss)

    # ------------------------------------------------------------------ all classes
    def _owned_log_probs(self, h: Tensor, top_lp: Tensor) -> Tensor:
        """``(B, n_local)`` this rank's columns (``plan.classes_of(rank)`` order)."""
        nd = self.plan.direct_classes.size
        parts = [sub.log_prob(h) + top_lp[:, nd + int(s)].unsqueeze(1) for s, sub in self._held()]
        if self.rank == 0:
            parts.append(top_lp[:, :nd])
        return torch.cat(parts, 1) if parts else h.new_zeros(h.shape[0], 0)

    def log_prob(self, input: Tensor, gather: bool = False) -> ShardedLogProb | Tensor:
        """Exact log-probabilities: this rank's columns as a :class:`ShardedLogProb`
        ``(values (*, n_local), classes (n_local,))``, no communication; or with
        ``gather=True`` all ``(*, num_classes)`` on every rank (one ``all_gather`` of
        ``B * max n_local`` floats per rank). For evaluation: the gathered values carry no
        gradient, and a local column's gradient reaches the input only on its own rank (train
        with :meth:`forward`)."""
        h = self.top._prepare_input(input)
        top_lp = self.top.log_prob(h)
        vals = self._owned_log_probs(h, top_lp)
        classes = torch.from_numpy(self.plan.classes_of(self.rank)).to(h.device)
        if not gather:
            return ShardedLogProb(vals.view(*input.shape[:-1], -1), classes)
        widths = [int(self.plan.classes_of(r).size) for r in range(self.world_size)]
        padded = vals.new_zeros(vals.shape[0], max(widths))
        padded[:, : vals.shape[1]] = vals
        full = vals.new_empty(vals.shape[0], self.num_classes)
        for r, block in enumerate(self._comm.all_gather(padded.detach(), "log-prob columns")):
            full[:, torch.from_numpy(self.plan.classes_of(r)).to(h.device)] = block[:, : widths[r]]
        return full.view(*input.shape[:-1], self.num_classes)

    # ------------------------------------------------------------------ search and sampling
    @torch.no_grad()
    def topk(self, input: Tensor, k: int) -> torch.return_types.topk:
        """The ``k`` most probable classes, exactly: each rank's best ``k`` among its classes
        (the replicated prefix plus each subtree's own top-k search), merged after one
        ``all_gather`` of ``B * k`` values and indices per rank."""
        k = _check_k(k, self.num_classes)
        h = self.top._prepare_input(input)
        B = h.shape[0]
        top_lp = self.top.log_prob(h)
        nd = self.plan.direct_classes.size
        vals, idx = [], []
        for s, sub in self._held():
            classes = torch.from_numpy(self.plan.subtree_classes(int(s))).to(h.device)
            best = sub.topk(h, min(k, classes.numel()))
            vals.append(best.values + top_lp[:, nd + int(s)].unsqueeze(1))
            idx.append(classes[best.indices])
        if self.rank == 0 and nd:
            vals.append(top_lp[:, :nd])
            idx.append(torch.from_numpy(self.plan.direct_classes).to(h.device).expand(B, nd))
        cand_v = torch.cat([h.new_full((B, k), -math.inf), *vals], 1)
        cand_i = torch.cat([torch.full((B, k), -1, dtype=torch.long, device=h.device), *idx], 1)
        best_v, pos = cand_v.topk(k, dim=1)
        best_i = cand_i.gather(1, pos)
        all_v = torch.cat(self._comm.all_gather(best_v, "top-k values"), 1)
        all_i = torch.cat(self._comm.all_gather(best_i, "top-k indices"), 1)
        v, pos = all_v.topk(k, dim=1)
        shape = (*input.shape[:-1], k)
        return torch.return_types.topk((v.view(shape), all_i.gather(1, pos).view(shape)))

    def predict(self, input: Tensor) -> Tensor:
        """The most probable class of each input: ``(*)``."""
        return self.topk(input, 1).indices.squeeze(-1)

    @torch.no_grad()
    def sample(
        self,
        input: Tensor,
        num_samples: int = 1,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Ancestral samples ``(*, num_samples)``, as the unsharded layer's: the group's first
        rank draws the top part and broadcasts it (``B * num_samples`` int64), each subtree's
        owner finishes the draws that entered it, and one all-reduce of ``B * num_samples``
        int64 combines them."""
        num_samples = _as_int("num_samples", num_samples, minimum=1)
        h = self.top._prepare_input(input)
        top = self.top.sample(h, num_samples, temperature=temperature, generator=generator).reshape(-1)
        top = self._comm.broadcast(top.contiguous(), "top draws (sample)")
        nd = self.plan.direct_classes.size
        out = torch.zeros_like(top)
        hh = h.repeat_interleave(num_samples, dim=0)
        for s, sub in self._held():
            ex = torch.nonzero(top == nd + int(s)).squeeze(1)
            if ex.numel():
                classes = torch.from_numpy(self.plan.subtree_classes(int(s))).to(h.device)
                draw = sub.sample(hh[ex], 1, temperature=temperature, generator=generator).squeeze(1)
                out[ex] = classes[draw]
        out = self._comm.all_reduce(out, "subtree draws (sample)")
        direct = torch.nonzero(top < nd).squeeze(1)
        out[direct] = torch.from_numpy(self.plan.direct_classes).to(h.device)[top[direct]]
        return out.view(*input.shape[:-1], num_samples)

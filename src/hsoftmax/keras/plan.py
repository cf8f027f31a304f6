r"""Static index tables that let the Keras layer walk a :class:`~hsoftmax.Tree` with fixed shapes.

Pure numpy, built once per tree from the tree's public arrays; the layer turns them into backend
constants. Every table speaks of **slots**: a node with ``k`` children has ``k`` child slots, and
slot ``j`` of node ``n`` holds the weight row that scores child ``j``, or

* ``FIXED`` (-1): a score fixed at 0 (child 0 of a binary node, whose one row scores child 1;
  the only slot of a one-child node; and the *virtual* node that pads short paths), or
* ``NONE`` (-2): no child there (padding up to the table's width).

With those scores, every node's child log-probabilities are one masked log-softmax over its
slots (:func:`hsoftmax.keras.ops.child_log_probs`): a binary node's ``[0, s]`` gives
``[log sigmoid(-s), log sigmoid(s)]``, a k-ary node's ``s_0..s_{k-1}`` its softmax, a one-child
or virtual node's ``[0]`` the certain 0. Padded path entries point at the virtual node with
choice 0, so they add exactly 0 and need no mask.

Three consumers:

* **training** (:class:`TargetPlan`): per class, its padded decisions ``(V, D)``; the first
  decision is the same node for every class, so it is scored for the whole batch by one matmul
  against its rows; the remaining columns are split into runs of equal slot width, each gathered
  as ``(batch, columns, width)`` rows: O(d * sum of arities on the path) per example.
* **full distribution** (:class:`FullPlan`): nodes bucketed by arity (padded to a power of two,
  so at most 2x slot padding), each ref's edge in the buckets' outputs, and the ancestor tables
  of a pointer doubling that sums every path in log2(depth) gathers.
* **tree search** (:class:`BeamPlan`): the *top* of the tree (:class:`SearchTop`: the root and
  the shallowest nodes after it, whose log-probabilities are computed for the whole batch at
  once, and the refs just below them where the search starts), and one global table of every
  node's slot rows and child refs, plus a dead row (no children) for dead and unexpanded entries.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..tree import Tree

FIXED = -1
NONE = -2

__all__ = ["FIXED", "NONE", "slot_table", "TargetPlan", "FullPlan", "SearchTop", "BeamPlan", "Plan", "top_rows"]


def slot_table(tree: Tree, nodes: np.ndarray, width: int) -> np.ndarray:
    """``(len(nodes), width)`` int32 slot rows of the given internal nodes; a node id equal to
    ``tree.num_nodes`` is the virtual node (``[FIXED, NONE, ...]``)."""
    nodes = np.asarray(nodes, dtype=np.int64)
    arity = np.append(np.asarray(tree.arity), 1)  # the virtual node has one (fixed) child
    poff = np.append(np.asarray(tree.param_offset), 0)
    k = arity[nodes][:, None]
    j = np.arange(width)[None, :]
    rows = np.where(k > 2, poff[nodes][:, None] + j, np.where((k == 2) & (j == 1), poff[nodes][:, None], FIXED))
    rows = np.where(j < k, rows, NONE)
    return rows.astype(np.int32)


class RunTable(NamedTuple):
    """Decision columns ``[start, stop)`` whose nodes have at most ``width`` children."""

    start: int
    stop: int
    nodes: np.ndarray  # (V, stop - start) int32 node ids (num_nodes = virtual)
    choices: np.ndarray  # (V, stop - start) int32
    slots: np.ndarray  # (num_nodes + 1, width) int32: slot rows of every node and the virtual one
    lead_fixed: bool  # slot 0 is FIXED in every row (binary runs): only slots 1.. are gathered


class TargetPlan(NamedTuple):
    """Tables for ``log p(target)``. ``first_slots`` is ``None`` when the tree has one class."""

    first_slots: np.ndarray | None  # (k0,) slot rows of the first decision node
    first_choice: np.ndarray  # (V,) int32 choice taken there
    runs: tuple[RunTable, ...]


class FullPlan(NamedTuple):
    """Tables for the full ``(batch, V)`` log-probabilities.

    Refs ``0..V+N-1`` plus one sentinel ``V+N`` (log-probability 0, its own ancestor). After the
    buckets' child log-probabilities are flattened (plus one zero column), ``ref_source`` picks
    each ref's edge log-probability (the root's and the sentinel's: the zero column); then
    ``s += s[:, jump_t]`` for each ``jump_t`` (the ``2**t``-th ancestor) sums whole paths.
    """

    buckets: tuple[tuple[np.ndarray, bool], ...]  # (slot rows (M, K), lead_fixed) per arity bucket
    ref_source: np.ndarray  # (V + N + 1,) int32 into the buckets' flattened outputs
    jumps: tuple[np.ndarray, ...]  # (V + N + 1,) int32: the 2**t-th ancestor, sentinel above the root


class Edges(NamedTuple):
    """Refs below the top's nodes: ref ``refs[i]`` has log-probability ``lp[parent[i]] +
    edge[edge[i]]`` (``lp`` of the top's nodes in top order, ``edge`` their flattened child
    log-probabilities ``(K * T)``, slot-major)."""

    parent: np.ndarray  # int32 positions in the top
    edge: np.ndarray  # int32 into the flattened (K, T) child log-probabilities
    refs: np.ndarray  # int32 refs


class SearchTop(NamedTuple):
    """The top of the tree: the first ``T`` nodes by depth (the root first, every node's parent
    before it), scored for the whole batch by one matmul against their ``rows``. Their
    log-probabilities are summed level by level (``levels[l]``: the nodes of depth ``l + 1``,
    parents in the level before); the search then starts from ``classes`` (classes below the
    top) and ``frontier`` (nodes below the top, not in it)."""

    rows: np.ndarray  # (P,) int32 weight rows of the top's nodes
    prefix: bool  # rows == arange(P): a slice of the kernel, not a gather
    slots: np.ndarray  # (K, T) int32: per child slot, the position in ``rows``; FIXED / NONE kept
    levels: tuple[Edges, ...]
    classes: Edges
    frontier: Edges


class BeamPlan(NamedTuple):
    """Tables for the top-k tree search. The top of the tree is scored by one matmul; every
    later step expands the open nodes it picks through one global table (row ``num_nodes``: a
    dead or unexpanded entry, no children), so all steps have the same shapes and run as one
    loop."""

    top: SearchTop
    slots: np.ndarray  # (num_nodes + 1, K) int32, K the widest non-root node
    child_refs: np.ndarray  # (num_nodes + 1, K) int32 refs, -1 where no child
    steps: int  # depth - 1 (the tree has nodes below the root when positive)
    lead_fixed: bool  # every node is binary or unary: slot 0 is always FIXED


class Plan(NamedTuple):
    target: TargetPlan
    full: FullPlan
    beam: BeamPlan


def _width_runs(widths: np.ndarray) -> list[tuple[int, int]]:
    """Split columns into maximal runs of equal width."""
    runs, start = [], 0
    for c in range(1, widths.size + 1):
        if c == widths.size or widths[c] != widths[start]:
            runs.append((start, c))
            start = c
    return runs


def target_plan(tree: Tree) -> TargetPlan:
    V, N = tree.num_classes, tree.num_nodes
    lengths = np.asarray(tree.decision_lengths)
    if tree.max_decisions == 0:
        return TargetPlan(None, np.zeros(V, np.int32), ())
    dn = np.asarray(tree.decision_nodes).astype(np.int64)
    dc = np.asarray(tree.decision_choices).astype(np.int64)
    pad = np.arange(dn.shape[1])[None, :] >= lengths[:, None]
    dn = np.where(pad, N, dn)
    dc = np.where(pad, 0, dc)
    first = int(dn[0, 0])
    assert np.all(dn[:, 0] == first), "the first decision is shared by every class"
    arity = np.append(np.asarray(tree.arity), 1)
    first_slots = slot_table(tree, np.array([first]), int(arity[first]))[0]
    runs = []
    if dn.shape[1] > 1:
        widths = arity[dn[:, 1:]].max(axis=0)
        for a, b in _width_runs(widths):
            w = int(widths[a])
            slots = slot_table(tree, np.arange(N + 1), w)
            runs.append(
                RunTable(
                    1 + a,
                    1 + b,
                    dn[:, 1 + a : 1 + b].astype(np.int32),
                    dc[:, 1 + a : 1 + b].astype(np.int32),
                    slots,
                    bool(np.all(slots[:, 0] == FIXED)),
                )
            )
    return TargetPlan(first_slots, dc[:, 0].astype(np.int32), tuple(runs))


def full_plan(tree: Tree) -> FullPlan:
    V, N = tree.num_classes, tree.num_nodes
    arity = np.asarray(tree.arity)
    off = np.asarray(tree.child_offset)
    E = int(off[-1])
    owner = np.repeat(np.arange(N), arity)
    slot = np.arange(E) - off[owner]
    # Bucket deciding nodes by arity, padded up to a power of two (binary nodes: width 2).
    deciding = np.flatnonzero(arity >= 2)
    width = np.where(arity >= 2, 1 << np.ceil(np.log2(np.maximum(arity, 2))).astype(np.int64), 0)
    buckets, base = [], 0
    position = np.full(N, -1, dtype=np.int64)  # flat index of slot 0 of each deciding node
    for w in np.unique(width[deciding]):
        nodes = deciding[width[deciding] == w]
        slots = slot_table(tree, nodes, int(w))
        buckets.append((slots, bool(np.all(slots[:, 0] == FIXED))))
        position[nodes] = base + np.arange(nodes.size) * w
        base += nodes.size * int(w)
    zero = base  # one extra zero column: a one-child node's child, the root, the sentinel
    edge_source = np.where(arity[owner] >= 2, position[owner] + slot, zero)
    R = V + N
    children = np.asarray(tree.children)
    ref_source = np.full(R + 1, zero, dtype=np.int64)
    ref_source[children] = edge_source
    parent = np.asarray(tree.parent)
    anc = np.full(R + 1, R, dtype=np.int64)  # parent ref of each ref; the root's is the sentinel
    has = parent >= 0
    anc[:R][has] = V + parent[has]
    jumps = []
    span = 1  # after t doublings each ref holds the sum of its 2**t nearest edges
    while span < tree.depth:
        jumps.append(anc.astype(np.int32))
        anc = anc[anc]
        span *= 2
    return FullPlan(tuple(buckets), ref_source.astype(np.int32), tuple(jumps))


def top_rows(tree: Tree) -> int:
    """Weight rows the search's top may use: ``num_params / 64`` (its matmul costs 1/64 of the
    full distribution's; at V = 100k on a trained model the top's ~1,560 nodes hold ~60% of a
    best-first search's expansions, and a top 2x or 4x larger was slower on JAX: its cost
    grows with the batch times its size), at least the root's."""
    return max(tree.num_params // 64, int(tree.param_offset[1]))


def search_top(tree: Tree, max_rows: int | None = None) -> SearchTop:
    """The longest prefix of the nodes sorted by depth whose weight rows fit ``max_rows``
    (default :func:`top_rows`; always the root) and whose ``(K, T)`` slot table stays within
    4x that (one wide node among binary ones must not pad every row to its width)."""
    V, N = tree.num_classes, tree.num_nodes
    budget = top_rows(tree) if max_rows is None else int(max_rows)
    arity = np.asarray(tree.arity)
    poff = np.asarray(tree.param_offset)
    depth = np.asarray(tree.node_depth)
    order = np.lexsort((np.arange(N), depth))  # by depth, then id: parents come first
    nrows = np.diff(poff)[order]
    width = np.maximum.accumulate(np.maximum(arity[order], 1))
    fits = (np.cumsum(nrows) <= budget) & (np.arange(1, N + 1) * width <= 4 * max(budget, 1))
    T = max(1, int(np.argmin(fits)) if not fits.all() else N)
    nodes = order[:T]
    K = int(width[T - 1])
    rows = np.concatenate([np.arange(poff[n], poff[n + 1]) for n in nodes]).astype(np.int64)
    col = np.full(tree.num_params + 1, -1, dtype=np.int64)
    col[rows] = np.arange(rows.size)
    slots = slot_table(tree, nodes, K).astype(np.int64)
    slots = np.where(slots >= 0, col[np.maximum(slots, 0)], slots).T.astype(np.int32)
    pos = np.full(N, -1, dtype=np.int64)
    pos[nodes] = np.arange(T)
    off = np.asarray(tree.child_offset)
    children = np.asarray(tree.children)
    # Every child of a top node: its parent's position and its edge in the flattened slots.
    owner = np.repeat(nodes, arity[nodes])
    kid = np.concatenate([children[off[n] : off[n + 1]] for n in nodes]).astype(np.int64)
    j = np.concatenate([np.arange(arity[n]) for n in nodes]).astype(np.int64)
    ppos, edge = pos[owner], j * T + pos[owner]
    kid_pos = np.where(kid >= V, pos[np.maximum(kid - V, 0)], -1)  # the kid's position in the top

    def edges(mask: np.ndarray, base: int = 0) -> Edges:
        at = np.flatnonzero(mask)
        at = at[np.argsort(kid_pos[at], kind="stable")]  # top nodes in top order
        return Edges((ppos[at] - base).astype(np.int32), edge[at].astype(np.int32), kid[at].astype(np.int32))

    d_top = depth[nodes]
    start = np.searchsorted(d_top, np.arange(int(d_top[-1]) + 1))  # first position of each depth
    # Level l's parents are all in level l - 1: positions relative to its start.
    levels = [
        edges((kid_pos >= 0) & (depth[np.maximum(kid - V, 0)] == lvl), int(start[lvl - 1]))
        for lvl in range(1, int(d_top[-1]) + 1)
    ]
    return SearchTop(
        rows.astype(np.int32),
        bool(np.array_equal(rows, np.arange(rows.size))),
        slots,
        tuple(levels),
        edges(kid < V),
        edges((kid >= V) & (kid_pos < 0)),
    )


def beam_plan(tree: Tree, max_top_rows: int | None = None) -> BeamPlan:
    """The search's tables; ``max_top_rows`` overrides :func:`top_rows` (tests)."""
    N = tree.num_nodes
    arity = np.asarray(tree.arity)
    off = np.asarray(tree.child_offset)
    children = np.asarray(tree.children)

    def child_refs(nodes: np.ndarray, w: int) -> np.ndarray:
        j = np.arange(w)[None, :]
        idx = off[nodes][:, None] + j
        ok = j < arity[nodes][:, None]
        return np.where(ok, children[np.where(ok, idx, 0)], -1).astype(np.int32)

    K = int(arity[1:].max()) if N > 1 else 1
    every = np.arange(N + 1)  # node N is the virtual carry row
    slots = slot_table(tree, every, K)
    refs = np.concatenate([child_refs(np.arange(N), K), np.full((1, K), -1, np.int32)])
    return BeamPlan(
        search_top(tree, max_top_rows),
        slots,
        refs,
        max(tree.depth - 1, 0),
        bool(np.all(slots[:, 0] == FIXED)),
    )


def plan(tree: Tree) -> Plan:
    """All three plans of ``tree``."""
    return Plan(target_plan(tree), full_plan(tree), beam_plan(tree))

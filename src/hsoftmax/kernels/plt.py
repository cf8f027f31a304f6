r"""numba kernels of probabilistic label trees (PLTs): the one place the PLT math lives.

A PLT (Jasinska et al. 2016; Wydmuch et al., NeurIPS 2018; napkinXC) turns a multi-label problem
into binary decisions along a :class:`~hsoftmax.Tree`. For a label set ``Y``, a node ``v`` is
*positive* when some label under it is in ``Y`` (``z_v = 1``). Each non-root node has a logistic
model of :math:`\eta_v(x) = P(z_v = 1 \mid z_{\mathrm{pa}(v)} = 1, x)`, and the marginal of a
label is the product along its path, :math:`P(y \in Y \mid x) = \prod_{v \in \mathrm{path}(y)}
\eta_v(x)`: a calibrated per-label probability, not a share of one distribution, which is why
top-k by these marginals is consistent for precision@k where fastText's pick-one-label ``-loss
hs`` is not (Wydmuch et al.).

**Node targets** (:func:`node_targets`): the positive nodes are the ancestors of the labels (the
labels included); the training examples of the node models are every child of a positive node,
with target 1 if the child is positive and 0 if not (napkinXC's ``getNodesToUpdate``). The root
is treated as positive for every example, so its children are trained on all examples and their
models estimate the *unconditional* :math:`P(z_v = 1 \mid x)`; for an empty label set the root's
children are all negatives. napkinXC instead keeps a classifier at the root (negative for an
empty set) and conditions the root's children on it; both give the same marginals, this one
with one logistic fewer and no special case for empty sets.

**Row layout** (:func:`plt_layout`): one parameter row per *edge* that carries a decision, laid
out in the order of the tree's CSR child table, so the rows of node ``j``'s children are the
contiguous block ``row_offset[j] + choice`` (all children of a positive node are scored
together, as the rows of a k-ary HS node are). Unlike hierarchical softmax (one row per binary
node: the two children share a sigmoid), a PLT has one independent logistic per child: a binary
node has two rows. An edge below a single-child node other than the root has *no* row: its child
is positive exactly when its parent is (they cover the same labels), so its conditional is 1 and
learning it would only waste a row and bias the marginals down until it saturated. The root's
single child, if it has one, keeps its row (it models "some label is relevant", napkinXC's root
classifier). ``ref_row[ref]`` is the row of the edge into a ref (``-1``: none).

**Kernels**, on a :class:`PLTLayout` and a node table ``W (R, d)``, ``b (R,)`` (length 0: no
bias):

* per example, for trainers (word2vec-style, in-place): :func:`node_targets` (a),
  :func:`binary_logistic` (fastText's ``Loss::binaryLogistic``, written once), :func:`plt_step`
  (b) and :func:`example_step` (both);
* per batch, for the torch autograd bridge: :func:`batch_count`, :func:`batch_fill`,
  :func:`batch_forward`, :func:`batch_grad_input`, :func:`group_rows`, :func:`batch_grad_rows` (c);
* prediction: :func:`topk_search` (d, exact best-first search), :func:`threshold_count` /
  :func:`threshold_fill` (e, every label with marginal ``>= t``, pruning below ``t``) and
  :func:`log_marginals_all` (f, every label). The per-example searches :func:`topk_one` and
  :func:`threshold_one` are written once for every kind of input: they score a node's children
  through :func:`child_log_marginals`, which each input type implements (a :class:`DenseRow`
  here, :class:`hsoftmax.kernels.plt_sparse.SparseRow` for sparse inputs).

Label ids must be validated before a kernel sees them (:func:`check_label_sets`); the kernels
check only their scratch capacities.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from ..tree import Tree
from .node import JIT, PARALLEL, dot, log_sigmoid_and_grad
from .numba_cpu import _heap_pop, _heap_push, _with_room

__all__ = [
    "PLTLayout",
    "PLTScratch",
    "plt_layout",
    "make_scratch",
    "positive_capacity",
    "target_capacity",
    "check_label_sets",
    "edge_loss",
    "node_targets",
    "binary_logistic",
    "plt_step",
    "example_step",
    "batch_count",
    "batch_fill",
    "batch_forward",
    "batch_grad_input",
    "group_rows",
    "batch_grad_rows",
    "DenseRow",
    "child_log_marginals",
    "is_row_type",
    "topk_one",
    "threshold_one",
    "sort_by_marginal",
    "topk_search",
    "threshold_count",
    "threshold_fill",
    "log_marginals_all",
]


# ---------------------------------------------------------------------------- layout
class PLTLayout(NamedTuple):
    """A tree's arrays as a PLT reads them (int64; ``V`` classes, ``N`` internal nodes,
    ``E = V + N - 1`` edges; refs as in :mod:`hsoftmax.tree`). numba takes it as one struct."""

    num_classes: int  # V
    num_rows: int  # R: rows of the node table
    depth: int  # longest root-to-class path, in edges
    max_arity: int
    child_offset: np.ndarray  # (N + 1,) the tree's CSR child table ...
    children: np.ndarray  # (E,) ... of refs
    row_offset: np.ndarray  # (N + 1,) node j's children have rows row_offset[j] + choice, or none
    parent: np.ndarray  # (V + N,) parent node of each ref, -1 for the root
    ref_row: np.ndarray  # (V + N,) row of the edge into each ref, -1 for none


def plt_layout(tree: Tree) -> PLTLayout:
    """The :class:`PLTLayout` of ``tree`` (see the module docstring for the row layout).

    >>> from hsoftmax import Tree
    >>> lay = plt_layout(Tree.balanced(4))          # root -> 2 nodes -> 2 classes each
    >>> lay.num_rows, lay.row_offset.tolist()       # two rows per binary node
    (6, [0, 2, 4, 6])
    >>> chain = Tree.from_paths([["a", "b"], ["a", "b"]])   # root -> a -> b -> {0, 1}
    >>> plt_layout(chain).row_offset.tolist()       # a's edge: the root's one child keeps a row
    [0, 1, 1, 3]
    """
    if not isinstance(tree, Tree):
        raise TypeError(f"tree must be an hsoftmax.Tree, got {type(tree).__name__}")
    V, N = tree.num_classes, tree.num_nodes
    arity = np.asarray(tree.arity, dtype=np.int64)
    has_rows = (arity >= 2) | (np.arange(N) == 0)
    row_offset = np.zeros(N + 1, dtype=np.int64)
    np.cumsum(np.where(has_rows, arity, 0), out=row_offset[1:])
    parent = np.asarray(tree.parent, dtype=np.int64)
    choice = np.asarray(tree.choice, dtype=np.int64)
    ref_row = np.full(V + N, -1, dtype=np.int64)
    child = parent >= 0
    p = parent[child]
    ref_row[child] = np.where(has_rows[p], row_offset[p] + choice[child], -1)
    return PLTLayout(
        num_classes=V,
        num_rows=int(row_offset[-1]),
        depth=int(tree.depth),
        max_arity=int(arity.max()),
        child_offset=np.ascontiguousarray(tree.child_offset, dtype=np.int64),
        children=np.ascontiguousarray(tree.children, dtype=np.int64),
        row_offset=row_offset,
        parent=parent,
        ref_row=ref_row,
    )


def positive_capacity(layout: PLTLayout, num_labels: int) -> int:
    """Entries of :attr:`PLTScratch.positive` that an example with ``num_labels`` labels needs:
    each label adds at most ``depth`` refs (itself and its ancestors below the root)."""
    return max(1, num_labels * layout.depth)


def target_capacity(layout: PLTLayout, num_labels: int) -> int:
    """The most node targets :func:`node_targets` writes for ``num_labels`` labels: the children
    of the root and of at most ``num_labels * (depth - 1)`` positive internal nodes."""
    return max(1, min(layout.num_rows, layout.max_arity * (1 + num_labels * max(layout.depth - 1, 0))))


class PLTScratch(NamedTuple):
    """Per-thread scratch of the per-example kernels (:func:`make_scratch`)."""

    positive: np.ndarray  # (positive_capacity,) int64
    rows: np.ndarray  # (target_capacity,) int64: the node-target rows
    targets: np.ndarray  # (target_capacity,) int8: their 0/1 targets


def make_scratch(layout: PLTLayout, max_labels: int) -> PLTScratch:
    """Scratch for examples of up to ``max_labels`` labels (one per thread)."""
    n = target_capacity(layout, max_labels)
    return PLTScratch(
        np.empty(positive_capacity(layout, max_labels), np.int64), np.empty(n, np.int64), np.empty(n, np.int8)
    )


def check_label_sets(
    offsets: Any, labels: Any, num_classes: int, num_examples: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(offsets, labels)`` as int64 arrays, checked to be a CSR label set over
    ``num_classes`` classes (example ``i``'s labels are ``labels[offsets[i]:offsets[i + 1]]``)
    before any kernel reads them; raises ``ValueError``/``TypeError`` naming the problem.

    >>> check_label_sets([0, 2, 2, 3], [4, 1, 0], num_classes=5)[0].tolist()
    [0, 2, 2, 3]
    >>> check_label_sets([0, 1], [5], num_classes=5)
    Traceback (most recent call last):
    ...
    ValueError: label 5 is out of range [0, 5)
    """
    off = np.asarray(offsets)
    lab = np.asarray(labels)
    for name, a in (("offsets", off), ("labels", lab)):
        if a.ndim != 1:
            raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
        if a.size and (a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.integer)):
            raise TypeError(f"{name} must be integers, got {a.dtype}")
    off = off.astype(np.int64, copy=False)
    lab = lab.astype(np.int64, copy=False)
    if off.size < 1 or off[0] != 0 or off[-1] != lab.size or np.any(np.diff(off) < 0):
        raise ValueError("offsets must start at 0, be non-decreasing and end at len(labels)")
    if num_examples is not None and off.size - 1 != num_examples:
        raise ValueError(f"the label sets are for {off.size - 1} examples, but there are {num_examples} inputs")
    if lab.size:
        lo, hi = int(lab.min()), int(lab.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"label {lo if lo < 0 else hi} is out of range [0, {num_classes})")
    return np.ascontiguousarray(off), np.ascontiguousarray(lab)


# ---------------------------------------------------------------------------- the edge logistic
@njit(inline="always", **JIT)
def edge_loss(s, t):
    """``(loss, dloss/ds)`` of one edge's logistic with score ``s`` and target ``t`` (0 or 1):
    the binary cross-entropy ``-log sigmoid(+-s)`` and ``sigmoid(s) - t``, exact and stable for
    any ``s`` (the log-sigmoid of :mod:`hsoftmax.kernels.node`)."""
    if t:
        ls, g = log_sigmoid_and_grad(s)
        return -ls, -g
    ls, g = log_sigmoid_and_grad(-s)
    return -ls, g


@njit(inline="always", **JIT)
def _edge_score(W, b, r, x):
    s = dot(W[r], x)
    if b.shape[0] > 0:
        s += b[r]
    return s


@njit(inline="always", **JIT)
def _edge_log_prob(W, b, r, x):
    """``log sigmoid(W[r] . x + b[r])``: the log of an edge's conditional probability."""
    ls, _ = log_sigmoid_and_grad(_edge_score(W, b, r, x))
    return ls


# ---------------------------------------------------------------------------- (a) node targets
@njit(**JIT)
def _contains(sorted_refs, n, ref):
    """Whether ``ref`` is among ``sorted_refs[:n]`` (ascending), by binary search."""
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi) >> 1
        v = sorted_refs[mid]
        if v == ref:
            return True
        if v < ref:
            lo = mid + 1
        else:
            hi = mid
    return False


@njit(**JIT)
def node_targets(labels, layout, positive, rows, targets):
    """The node targets of one label set: writes ``rows[:n]`` (table rows) and ``targets[:n]``
    (1: the edge's child is positive, 0: negative) and returns ``n``.

    ``labels``: the example's label ids (in range; duplicates are harmless). ``positive``,
    ``rows``, ``targets``: scratch of at least :func:`positive_capacity` and
    :func:`target_capacity` entries (a :class:`PLTScratch`). The root's children come first,
    then the children of each positive internal node in ascending node order. Allocates
    nothing; safe to run on many threads with separate scratch.
    """
    V = layout.num_classes
    parent, children, child_offset, row_offset = layout.parent, layout.children, layout.child_offset, layout.row_offset
    if labels.shape[0] * max(layout.depth, 1) > positive.shape[0]:
        raise ValueError("node_targets: positive scratch too small (see positive_capacity)")
    m = 0
    for q in range(labels.shape[0]):
        ref = labels[q]
        while parent[ref] >= 0:
            positive[m] = ref
            m += 1
            ref = V + parent[ref]
    pos = positive[:m]
    pos.sort()
    u = 0  # unique in place
    for q in range(m):
        if u == 0 or pos[q] != pos[u - 1]:
            pos[u] = pos[q]
            u += 1
    n = 0
    cap = rows.shape[0]
    # The root (always positive), then every positive internal node: score all its children.
    for q in range(-1, u):
        if q < 0:
            node = 0
        else:
            if pos[q] < V:
                continue
            node = pos[q] - V
        lo = row_offset[node]
        k = row_offset[node + 1] - lo
        if k == 0:  # a single child below the root: taken with probability 1
            continue
        if n + k > cap or n + k > targets.shape[0]:
            raise ValueError("node_targets: rows/targets scratch too small (see target_capacity)")
        c0 = child_offset[node]
        for c in range(k):
            rows[n] = lo + c
            targets[n] = 1 if _contains(pos, u, children[c0 + c]) else 0
            n += 1
    return n


# ---------------------------------------------------------------------------- (b) per-example SGD
@njit(inline="always", **JIT)
def binary_logistic(W, b, r, h, t, lr, grad_h):
    """fastText's ``Loss::binaryLogistic``: score row ``r`` against ``h``, take one SGD step on
    the edge's cross-entropy and return it. With ``alpha = lr * (t - sigmoid(s))``:
    ``grad_h += alpha * W[r]`` (the old row), then ``W[r] += alpha * h`` (and ``b[r] += alpha``
    when there is a bias), so ``grad_h`` collects ``-lr * dloss/dh``, to be added to the
    input's vectors by the caller."""
    s = _edge_score(W, b, r, h)
    loss, c = edge_loss(s, t)
    alpha = -lr * c
    if alpha != 0.0:
        w = W[r]
        for k in range(h.shape[0]):
            grad_h[k] += alpha * w[k]
            w[k] += alpha * h[k]
        if b.shape[0] > 0:
            b[r] += alpha
    return loss


@njit(**JIT)
def plt_step(W, b, h, rows, targets, n, lr, grad_h):
    """One example's SGD step on its node targets ``rows[:n]``/``targets[:n]`` (from
    :func:`node_targets`): :func:`binary_logistic` at each, in order. Updates ``W`` (and ``b``,
    unless it has length 0) in place, adds ``-lr * dloss/dh`` into ``grad_h`` and returns the
    example's loss (the sum of the edges' binary cross-entropies, natural log)."""
    loss = 0.0
    for e in range(n):
        loss += binary_logistic(W, b, rows[e], h, targets[e], lr, grad_h)
    return loss


@njit(**JIT)
def example_step(W, b, h, labels, layout, scratch, lr, grad_h):
    """:func:`node_targets` then :func:`plt_step` for one example with label ids ``labels``;
    returns its loss."""
    n = node_targets(labels, layout, scratch.positive, scratch.rows, scratch.targets)
    return plt_step(W, b, h, scratch.rows, scratch.targets, n, lr, grad_h)


# ---------------------------------------------------------------------------- (c) batches
@njit(**JIT)
def _example_targets(labels, layout, pcap, rows, targets):
    # A function of its own so that numba's parfor pass keeps the scratch per iteration.
    positive = np.empty(pcap, np.int64)
    return node_targets(labels, layout, positive, rows, targets)


@njit(**PARALLEL)
def batch_count(offsets, labels, layout, counts):
    """``counts[i]``: the number of node targets of example ``i`` (CSR ``offsets``/``labels``)."""
    B = offsets.shape[0] - 1
    for i in prange(B):
        lab = labels[offsets[i] : offsets[i + 1]]
        L = lab.shape[0]
        cap = min(layout.num_rows, layout.max_arity * (1 + L * max(layout.depth - 1, 0)))
        rows = np.empty(max(cap, 1), np.int64)
        targets = np.empty(max(cap, 1), np.int8)
        counts[i] = _example_targets(lab, layout, max(1, L * layout.depth), rows, targets)


@njit(**PARALLEL)
def batch_fill(offsets, labels, layout, start, rows, targets):
    """Every example's node targets into ``rows[start[i]:start[i + 1]]`` / ``targets[...]``,
    ``start`` being the running sum of :func:`batch_count`'s counts."""
    B = offsets.shape[0] - 1
    for i in prange(B):
        lab = labels[offsets[i] : offsets[i + 1]]
        a, z = start[i], start[i + 1]
        _example_targets(lab, layout, max(1, lab.shape[0] * layout.depth), rows[a:z], targets[a:z])


@njit(**PARALLEL)
def batch_forward(h, W, b, start, rows, targets, loss, coef):
    """Per-example loss ``loss[i]`` (sum of its edges' cross-entropies, accumulated in float64)
    and ``coef[e] = dloss/ds`` of each node target ``e``."""
    for i in prange(h.shape[0]):
        x = h[i]
        acc = 0.0
        for e in range(start[i], start[i + 1]):
            l, c = edge_loss(_edge_score(W, b, rows[e], x), targets[e])
            acc += l
            coef[e] = c
        loss[i] = acc


@njit(**PARALLEL)
def batch_grad_input(go, W, start, rows, coef, gh):
    """``gh[i] = go[i] * sum_e coef[e] * W[rows[e]]``: the input gradient of ``sum_i go[i] loss[i]``."""
    d = W.shape[1]
    for i in prange(gh.shape[0]):
        g = gh[i]
        for k in range(d):
            g[k] = 0.0
        for e in range(start[i], start[i + 1]):
            c = coef[e] * go[i]
            w = W[rows[e]]
            for k in range(d):
                g[k] += c * w[k]


@njit(**JIT)
def group_rows(rows, mark):
    """The batch's node targets grouped by row: ``(uniq, gstart, entries)`` with ``uniq`` the
    distinct rows ascending and ``entries[gstart[u]:gstart[u + 1]]`` the targets on ``uniq[u]``.
    ``mark``: an ``(R,)`` int32 scratch of -1, left all -1 (so no R-sized reset is needed)."""
    M = rows.shape[0]
    uniq = np.empty(M, np.int64)
    n = 0
    for e in range(M):
        r = rows[e]
        if mark[r] < 0:
            mark[r] = 0
            uniq[n] = r
            n += 1
    uniq = np.sort(uniq[:n])
    for u in range(n):
        mark[uniq[u]] = u
    gstart = np.zeros(n + 1, np.int64)
    for e in range(M):
        gstart[mark[rows[e]] + 1] += 1
    for u in range(n):
        gstart[u + 1] += gstart[u]
    fill = gstart[:-1].copy()
    entries = np.empty(M, np.int64)
    for e in range(M):
        u = mark[rows[e]]
        entries[fill[u]] = e
        fill[u] += 1
    for u in range(n):
        mark[uniq[u]] = -1
    return uniq, gstart, entries


@njit(**PARALLEL)
def batch_grad_rows(go, h, example, coef, gstart, entries, gw, gb):
    """Coalesced node-table gradient: ``gw[u] = sum go[i] * coef[e] * h[i]`` and
    ``gb[u] = sum go[i] * coef[e]`` over the targets ``e`` of group ``u`` (``example[e] = i``);
    ``gb`` may have length 0 (no bias)."""
    d = h.shape[1]
    for u in prange(gstart.shape[0] - 1):
        g = gw[u]
        for k in range(d):
            g[k] = 0.0
        cb = 0.0
        for q in range(gstart[u], gstart[u + 1]):
            e = entries[q]
            i = example[e]
            c = coef[e] * go[i]
            cb += c
            x = h[i]
            for k in range(d):
                g[k] += c * x[k]
        if gb.shape[0] > 0:
            gb[u] = cb


# ---------------------------------------------------------------------------- (d, e) the searches
# The searches are written once, for any kind of input: what differs between a dense input
# (here) and a sparse one (:mod:`hsoftmax.kernels.plt_sparse`) is only how a node's children are
# scored, :func:`child_log_marginals`, which numba picks by the type of the searches' ``row``
# argument when it compiles them (an overload per row type, so every kernel stays cacheable:
# numba cannot cache a kernel that takes a jitted function as an argument).
class DenseRow(NamedTuple):
    """A dense input ``x (d,)`` with the node table ``W (R, d)``, ``b (R,)`` (length 0: no bias)
    that scores it: the ``row`` of the searches."""

    x: np.ndarray
    W: np.ndarray
    b: np.ndarray


def child_log_marginals(row, ro, k, lp, out):
    """``out[:k]``: the log marginals of the ``k`` children of a node whose decision rows are
    ``ro..ro+k-1``, for the input ``row``, given the node's own log marginal ``lp``. Only
    callable inside numba kernels: each row type registers its own implementation
    (:class:`DenseRow` here, :class:`hsoftmax.kernels.plt_sparse.SparseRow` there)."""
    raise NotImplementedError("child_log_marginals runs only inside numba kernels")


def is_row_type(row: Any, cls: type) -> bool:
    """Whether the numba type ``row`` is the NamedTuple ``cls``: how the overloads of
    :func:`child_log_marginals` recognise their row."""
    return isinstance(row, types.BaseNamedTuple) and row.instance_class is cls


@overload(child_log_marginals, inline="always", jit_options=JIT)
def _dense_child_log_marginals(row, ro, k, lp, out):
    if not is_row_type(row, DenseRow):
        return None

    def impl(row, ro, k, lp, out):
        for c in range(k):
            out[c] = lp + _edge_log_prob(row.W, row.b, ro + c, row.x)

    return impl


@njit(inline="always", **JIT)
def _expand(row, row_offset, node, k, lp, out):
    """``out[:k]``: the log marginals of ``node``'s ``k`` children: the node's own ``lp`` when it
    has no decision rows (a single child below the root is taken with probability 1), else
    :func:`child_log_marginals`."""
    ro = row_offset[node]
    if row_offset[node + 1] == ro:
        out[:k] = lp
    else:
        child_log_marginals(row, ro, k, lp, out)


@njit(**JIT)
def topk_one(row, layout, K, vals, idx):
    """Best-first search for one input ``row``: a max-heap of (log marginal, ref). A node's log
    marginal bounds every label below it (each edge adds a log-probability <= 0), so labels leave
    the heap in exactly descending order of their marginals; writes ``vals[:K]``, ``idx[:K]``."""
    V = layout.num_classes
    child_offset, children = layout.child_offset, layout.children
    cap = 64 + 2 * layout.max_arity
    hv = np.empty(cap, np.float64)
    hr = np.empty(cap, np.int64)
    s = np.empty(max(layout.max_arity, 1), np.float64)
    hv[0] = 0.0
    hr[0] = V  # the root
    n = 1
    found = 0
    while found < K and n > 0:
        lp, ref = _heap_pop(hv, hr, n)
        n -= 1
        if ref < V:
            vals[found] = lp
            idx[found] = ref
            found += 1
            continue
        node = ref - V
        c0 = child_offset[node]
        k = child_offset[node + 1] - c0
        hv, hr = _with_room(hv, hr, n, n + k)
        _expand(row, layout.row_offset, node, k, lp, s)
        for c in range(k):
            _heap_push(hv, hr, n, s[c], children[c0 + c])
            n += 1


@njit(**JIT)
def threshold_one(row, layout, log_t, out_lp, out_ref):
    """Depth-first search keeping every subtree whose root has log marginal ``>= log_t``; writes
    the labels found into ``out_*`` (if they have room: length 0 just counts) and returns how
    many there are."""
    V = layout.num_classes
    child_offset, children = layout.child_offset, layout.children
    cap = 64 + 2 * layout.max_arity
    sv = np.empty(cap, np.float64)
    sr = np.empty(cap, np.int64)
    s = np.empty(max(layout.max_arity, 1), np.float64)
    sv[0] = 0.0
    sr[0] = 0
    n = 1
    found = 0
    room = out_ref.shape[0]
    while n > 0:
        n -= 1
        lp, node = sv[n], sr[n]
        c0 = child_offset[node]
        k = child_offset[node + 1] - c0
        sv, sr = _with_room(sv, sr, n, n + k)
        _expand(row, layout.row_offset, node, k, lp, s)
        for c in range(k):
            lc = s[c]
            if lc >= log_t:
                ref = children[c0 + c]
                if ref < V:
                    if found < room:
                        out_lp[found] = lc
                        out_ref[found] = ref
                    found += 1
                else:
                    sv[n] = lc
                    sr[n] = ref - V
                    n += 1
    return found


@njit(**JIT)
def sort_by_marginal(lp, labels):
    """Sorts one example's found labels in place by descending log marginal ``lp`` (ties: by
    ascending label id), the order :func:`threshold_fill` promises."""
    order = np.argsort(labels)  # ascending id first, then a stable sort by marginal
    ids = labels[order]
    vs = lp[order]
    o2 = np.argsort(-vs, kind="mergesort")
    lp[:] = vs[o2]
    labels[:] = ids[o2]


@njit(**PARALLEL)
def topk_search(h, W, b, layout, K, vals, idx):
    """Exact top-``K`` labels of each row of ``h`` by marginal: writes ``vals (B, K)`` (log
    marginals, float64 accumulation) and ``idx (B, K)`` int64, descending. ``K <= num_classes``."""
    for i in prange(h.shape[0]):
        topk_one(DenseRow(h[i], W, b), layout, K, vals[i], idx[i])


@njit(**PARALLEL)
def threshold_count(h, W, b, layout, log_t, counts):
    """``counts[i]``: how many labels of example ``i`` have log marginal ``>= log_t``."""
    empty_lp = np.empty(0, np.float64)
    empty_ref = np.empty(0, np.int64)
    for i in prange(h.shape[0]):
        counts[i] = threshold_one(DenseRow(h[i], W, b), layout, log_t, empty_lp, empty_ref)


@njit(**PARALLEL)
def threshold_fill(h, W, b, layout, log_t, start, lp, labels):
    """The labels :func:`threshold_count` counted, into ``labels[start[i]:start[i + 1]]`` with
    their log marginals in ``lp``, each example's sorted by descending marginal (ties: label id)."""
    for i in prange(h.shape[0]):
        a, z = start[i], start[i + 1]
        threshold_one(DenseRow(h[i], W, b), layout, log_t, lp[a:z], labels[a:z])
        sort_by_marginal(lp[a:z], labels[a:z])


# ---------------------------------------------------------------------------- (f) all marginals
@njit(**PARALLEL)
def log_marginals_all(ls, layout, out):
    """Every label's log marginal: ``out (B, V)`` from ``ls (B, R)``, the log-sigmoid of every
    row's score (computed beforehand with BLAS), by one top-down pass over the breadth-first
    numbered nodes (a parent's value is final before its children's)."""
    V = layout.num_classes
    child_offset, children, row_offset = layout.child_offset, layout.children, layout.row_offset
    N = child_offset.shape[0] - 1
    for i in prange(ls.shape[0]):
        node_lp = np.empty(N, np.float64)
        node_lp[0] = 0.0
        li = ls[i]
        for node in range(N):
            lp = node_lp[node]
            c0 = child_offset[node]
            ro = row_offset[node]
            deterministic = row_offset[node + 1] == ro
            for c in range(child_offset[node + 1] - c0):
                lc = lp if deterministic else lp + li[ro + c]
                ref = children[c0 + c]
                if ref < V:
                    out[i, ref] = lc
                else:
                    node_lp[ref - V] = lc

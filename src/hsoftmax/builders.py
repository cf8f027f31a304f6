"""Tree builders: from counts, a class count or a taxonomy to the flat arrays a :class:`~hsoftmax.Tree`
validates.

A builder only computes a CSR child table (see :mod:`hsoftmax.tree` for the layout) and returns it
as :class:`TreeArrays`; it never checks the structure it made. ``Tree(*arrays)`` does that, and
renumbers the internal nodes breadth-first, so a builder may number them in any order as long as
the root is node ``0``. The public entry points are the classmethods :meth:`Tree.huffman
<hsoftmax.Tree.huffman>`, :meth:`~hsoftmax.Tree.balanced`, :meth:`~hsoftmax.Tree.two_level` and
:meth:`~hsoftmax.Tree.from_paths`, which call the functions here.

>>> a = huffman([5, 3, 1, 1])
>>> a.num_classes, a.child_offset.tolist(), a.children.tolist()   # root: class 0 | node 1
(4, [0, 2, 4, 6], [0, 5, 6, 1, 2, 3])
>>> from hsoftmax import Tree
>>> Tree(*a) == Tree.huffman([5, 3, 1, 1])
True

The value checks shared with :class:`~hsoftmax.Tree` (number of classes, labels, counts) live here
too, so that this module depends on nothing but numpy.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "TreeArrays",
    "huffman",
    "balanced",
    "two_level",
    "from_paths",
    "from_embeddings",
    "check_counts",
    "scale_counts",
    "split_counts",
    "check_index",
    "check_num_classes",
    "check_fits_in_memory",
    "check_labels",
    "concat_ranges",
    "MAX_CLASSES",
    "MAX_NODES",
]

# Class and internal-node ids are int32 in the padded decision arrays (and word2vec's word ids are
# int32): a tree with more than 2**31 - 1 of either could not be served, so it is refused before
# anything is built.
MAX_CLASSES = 2**31 - 1
MAX_NODES = 2**31 - 1

# Peak bytes per class of building a Tree (tracemalloc, numpy 2.4, V = 2e6, the Tree's validation
# and derived arrays included: measured 194, 154 and 57), plus a 10-20% margin. Used only to
# refuse, up front, a tree that needs more than all of the machine's memory:
# ``Tree.balanced(2**30)`` would otherwise run until the out-of-memory killer ends the process.
_PEAK_BYTES_PER_CLASS = {"huffman": 220, "balanced": 170, "two_level": 70}


class TreeArrays(NamedTuple):
    """What a builder returns: the arguments of ``Tree(...)``, in order."""

    num_classes: int
    child_offset: np.ndarray  # (num_nodes + 1,) CSR offsets into children
    children: np.ndarray  # refs: class c -> c, internal node j -> num_classes + j
    labels: Sequence[str] | None = None
    node_names: Sequence[str | None] | None = None


# ---------------------------------------------------------------------------- value checks
def check_counts(counts: Any, name: str = "counts") -> np.ndarray:
    """``counts`` as a 1-D float64 array of finite, non-negative values (at least one).

    Any iterable of real numbers is accepted: a list, tuple, numpy array (of any integer or float
    dtype), tensor, generator, ``dict.values()`` or list of numpy scalars. Not accepted: strings,
    booleans, sets (no order says which count is which class's) and mappings (the builders turn a
    ``label -> count`` mapping into labels and counts with :func:`split_counts` first).
    """
    if isinstance(counts, (str, bytes)):
        raise TypeError(f"{name} must be an iterable of numbers, got {type(counts).__name__}")
    if isinstance(counts, (AbstractSet, Mapping)):
        raise TypeError(
            f"{name} must be an ordered iterable of numbers (count i is class i's), got a {type(counts).__name__}"
        )
    if not isinstance(counts, Sequence) and not hasattr(counts, "__array__"):
        if not isinstance(counts, Iterable):
            raise TypeError(f"{name} must be an iterable of numbers, got {type(counts).__name__}")
        counts = list(counts)  # a generator or a dict view: numpy needs a sequence
    c = np.asarray(counts)
    if c.dtype == object:
        c = _object_counts(c, name)
    if c.ndim != 1:
        raise ValueError(f"{name} must be a 1-D sequence, got shape {c.shape}")
    is_real = np.issubdtype(c.dtype, np.integer) or np.issubdtype(c.dtype, np.floating)
    if c.size and (c.dtype == np.bool_ or not is_real):
        raise TypeError(f"{name} must be real numbers, got {c.dtype} values such as {c.ravel()[0]!r}")
    c = c.astype(np.float64)
    if c.size == 0:
        raise ValueError(f"{name} is empty: a tree needs at least one class")
    if not np.all(np.isfinite(c)):
        bad = int(np.flatnonzero(~np.isfinite(c))[0])
        raise ValueError(f"{name}[{bad}] is not finite ({c[bad]})")
    if np.any(c < 0):
        bad = int(np.flatnonzero(c < 0)[0])
        raise ValueError(f"{name}[{bad}] is negative ({c[bad]})")
    return c


def _object_counts(c: np.ndarray, name: str) -> np.ndarray:
    """An object array (``Fraction``, ``Decimal``, ``None``, mixed types) as floats, or a clear error."""
    flat = c.ravel()
    for i, x in enumerate(flat.tolist()):
        if isinstance(x, bool) or not isinstance(x, numbers.Real):
            raise TypeError(f"{name}[{i}] is not a real number: {x!r}")
    return np.array([float(x) for x in flat.tolist()], dtype=np.float64).reshape(c.shape)


def split_counts(counts: Any, labels: Sequence[str] | None) -> tuple[Any, Sequence[str] | None]:
    """``(counts, labels)``, where a mapping ``label -> count`` (a ``collections.Counter``, a
    dict) gives both: its keys are the labels, in the mapping's order, its values the counts."""
    if not isinstance(counts, Mapping):
        return counts, labels
    if labels is not None:
        raise TypeError(
            "counts is a mapping (label -> count), which names the classes itself: pass labels=None, "
            "or pass the counts as a sequence in the order of labels"
        )
    keys = list(counts.keys())
    for key in keys:
        if not isinstance(key, str):
            raise TypeError(f"counts is a mapping, so its keys are the class labels and must be strings; got {key!r}")
    return [counts[k] for k in keys], keys


def check_index(value: Any, name: str, minimum: int) -> int:
    """An integer argument (any ``numbers.Integral`` such as ``np.int64``, never a ``bool``, a
    float or a string) that is at least ``minimum``, as a Python int."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_num_classes(num_classes: Any) -> int:
    """A positive int, at most :data:`MAX_CLASSES` (``bool`` is refused: ``True`` classes is a bug, not 1)."""
    V = check_index(num_classes, "num_classes", 1)
    if V > MAX_CLASSES:
        raise ValueError(
            f"num_classes={V} is too large: class ids are int32, so a tree has at most {MAX_CLASSES} classes"
        )
    return V


def check_fits_in_memory(num_classes: int, builder: str) -> None:
    """Refuse, before allocating anything, a build that needs more than the machine's memory."""
    available = _memory_bytes()
    need = num_classes * _PEAK_BYTES_PER_CLASS[builder]
    if available is not None and need > available:
        raise ValueError(
            f"a {builder} tree over {num_classes} classes needs about {need / 2**30:.1f} GiB to build, "
            f"more than this machine's {available / 2**30:.1f} GiB of memory"
        )


def _memory_bytes() -> int | None:
    """Physical memory, or the cgroup's limit when that is lower; ``None`` where unknown."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        if limit.isdigit():
            total = min(total, int(limit))
    except OSError:
        pass
    return total if total > 0 else None


def check_labels(labels: Sequence[str] | None, num_classes: int) -> tuple[str, ...] | None:
    """``num_classes`` unique strings as a tuple of plain ``str``, or ``None``.

    Only strings, so that a label comes back from a saved file exactly as it went in (a number
    ``5`` would come back as ``'5'``); a subclass such as ``numpy.str_`` becomes a plain ``str``.
    """
    if labels is None:
        return None
    if isinstance(labels, (str, bytes)):
        raise TypeError("labels must be a sequence of strings, not a string")
    labels = tuple(labels)
    if len(labels) != num_classes:
        raise ValueError(f"got {len(labels)} labels for {num_classes} classes")
    for i, lab in enumerate(labels):
        if not isinstance(lab, str):
            raise TypeError(f"labels[{i}] must be a str, got {type(lab).__name__} {lab!r}")
    labels = tuple(str.__str__(lab) for lab in labels)
    if len(set(labels)) != num_classes:
        seen: set[str] = set()
        for lab in labels:
            if lab in seen:
                raise ValueError(f"duplicate label {lab!r}")
            seen.add(lab)
    return labels


def _check_arity(arity: Any, num_classes: int) -> int:
    # More children than classes builds the same tree as ``num_classes`` children; clamping keeps
    # an absurd arity (10**30) from overflowing the int64 arithmetic.
    return min(check_index(arity, "arity", 2), max(num_classes, 2))


def concat_ranges(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, e)`` for each pair, vectorised.

    >>> concat_ranges(np.array([0, 5]), np.array([2, 8])).tolist()
    [0, 1, 5, 6, 7]
    """
    lengths = ends - starts
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    shift = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
    return np.arange(total, dtype=np.int64) + shift


# ---------------------------------------------------------------------------- builders
def _single_class(labels: Sequence[str] | None) -> TreeArrays:
    """One class under the root: the only tree with a single class."""
    return TreeArrays(1, np.array([0, 1]), np.array([0]), labels)


def _from_edges(V: int, N: int, nodes: np.ndarray, kids: np.ndarray, labels: Sequence[str] | None) -> TreeArrays:
    """From (parent internal node, child ref) edge lists, keeping edge order per parent."""
    order = np.argsort(nodes, kind="stable")
    off = np.zeros(N + 1, dtype=np.int64)
    np.cumsum(np.bincount(nodes, minlength=N), out=off[1:])
    return TreeArrays(V, off, kids[order], labels)


def huffman(counts: Any, arity: int = 2, labels: Sequence[str] | None = None) -> TreeArrays:
    """The optimal ``arity``-ary prefix code for ``counts``; ties broken by class index.

    See :meth:`hsoftmax.Tree.huffman`.
    """
    counts, labels = split_counts(counts, labels)
    c = scale_counts(check_counts(counts))
    V = c.size
    k = _check_arity(arity, V)
    check_num_classes(V)
    check_fits_in_memory(V, "huffman")
    if V == 1:
        return _single_class(labels)
    order = np.argsort(c, kind="stable")
    leaf_w = c[order]
    # Two-queue merge (O(V) after the sort): leaves in ascending order, merged nodes are
    # created in non-decreasing weight, so the k smallest are always at the two fronts.
    num_internal = -(-(V - 1) // (k - 1))
    node_w = np.empty(num_internal, dtype=np.float64)
    kids = np.empty(V + num_internal, dtype=np.int64)  # refs in merge order
    off = np.zeros(num_internal + 1, dtype=np.int64)
    first = ((V - 2) % (k - 1)) + 2  # the first merge is smaller so every later one is full
    if V >= _HUFFMAN_COMPILED_FROM:
        pos = _huffman_merge_compiled(leaf_w, order, k, first, kids, off, node_w)
    else:
        pos = _huffman_merge(leaf_w, order, k, first, kids, off, node_w)
    # Merge order numbers the root last; reverse so the root is internal node 0.
    rev = num_internal - 1 - np.arange(num_internal)
    ch = kids[:pos].copy()
    internal = ch >= V
    ch[internal] = V + rev[ch[internal] - V]
    starts, ends = off[:-1][::-1], off[1:][::-1]
    new_off = np.zeros(num_internal + 1, dtype=np.int64)
    np.cumsum(ends - starts, out=new_off[1:])
    return TreeArrays(V, new_off, ch[concat_ranges(starts, ends)], labels)


# From this many classes Huffman's merge runs compiled (numba, a one-off compile of about a
# second, then cached on disk): the Python loop costs about 3 s per million classes.
_HUFFMAN_COMPILED_FROM = 200_000


def _huffman_merge(
    leaf_w: np.ndarray,
    order: np.ndarray,
    k: int,
    first: int,
    kids: np.ndarray,
    off: np.ndarray,
    node_w: np.ndarray,
) -> int:
    """The two-queue merge in Python; fills ``kids``/``off``/``node_w`` and returns the refs written."""
    V, num_internal = leaf_w.size, node_w.size
    li = ni = made = pos = 0
    lw = leaf_w.tolist()
    lo = order.tolist()
    nw = node_w  # local alias
    while made < num_internal:
        take = first if made == 0 else k
        w = 0.0
        for _ in range(take):
            if li < V and (ni >= made or lw[li] <= nw[ni]):
                w += lw[li]
                kids[pos] = lo[li]
                li += 1
            else:
                w += nw[ni]
                kids[pos] = V + ni
                ni += 1
            pos += 1
        nw[made] = w
        made += 1
        off[made] = pos
    return pos


def _huffman_merge_compiled(
    leaf_w: np.ndarray,
    order: np.ndarray,
    k: int,
    first: int,
    kids: np.ndarray,
    off: np.ndarray,
    node_w: np.ndarray,
) -> int:
    """The same merge, compiled (:func:`hsoftmax.cluster_kernels.huffman_merge`): the same
    comparisons and sums in the same order, so the same tree."""
    from .cluster_kernels import huffman_merge

    return int(huffman_merge(leaf_w, order.astype(np.int64), k, first, kids, off, node_w))


def balanced(num_classes: int, arity: int = 2, labels: Sequence[str] | None = None) -> TreeArrays:
    """A complete ``arity``-ary tree over classes in index order. See :meth:`hsoftmax.Tree.balanced`."""
    V = check_num_classes(num_classes)
    k = _check_arity(arity, V)
    check_fits_in_memory(V, "balanced")
    if V == 1:
        return _single_class(labels)
    # Split [0, V) into k near-equal contiguous ranges, level by level.
    starts = np.zeros(1, dtype=np.int64)
    sizes = np.full(1, V, dtype=np.int64)
    next_id = 1
    node_ids = np.zeros(1, dtype=np.int64)
    all_nodes, all_children = [], []
    while starts.size:
        nkids = np.minimum(sizes, k)
        parts_owner = np.repeat(np.arange(starts.size), nkids)
        rank = np.arange(parts_owner.size) - np.repeat(np.cumsum(nkids) - nkids, nkids)
        base, rem = sizes[parts_owner] // nkids[parts_owner], sizes[parts_owner] % nkids[parts_owner]
        psize = base + (rank < rem)
        pstart = starts[parts_owner] + rank * base + np.minimum(rank, rem)
        leaf = psize == 1
        refs = np.where(leaf, pstart, 0)
        n_int = int((~leaf).sum())
        new_ids = np.arange(next_id, next_id + n_int)
        next_id += n_int
        refs[~leaf] = V + new_ids
        all_nodes.append(np.repeat(node_ids, nkids))
        all_children.append(refs)
        starts, sizes, node_ids = pstart[~leaf], psize[~leaf], new_ids
    return _from_edges(V, next_id, np.concatenate(all_nodes), np.concatenate(all_children), labels)


def two_level(
    num_classes: int,
    num_clusters: int | None = None,
    counts: Any = None,
    labels: Sequence[str] | None = None,
) -> TreeArrays:
    """Root -> clusters -> classes. See :meth:`hsoftmax.Tree.two_level`."""
    V = check_num_classes(num_classes)
    check_fits_in_memory(V, "two_level")
    C = math.isqrt(V - 1) + 1 if num_clusters is None else check_index(num_clusters, "num_clusters", 1)
    if C > V:
        raise ValueError(f"num_clusters must be in [1, num_classes={V}], got {C}")
    if counts is not None:
        counts, labels = split_counts(counts, labels)
    order, cluster = _cluster_classes(V, C, counts)
    _, cluster = np.unique(cluster, return_inverse=True)  # drop clusters left empty
    C = int(cluster.max()) + 1
    nodes = np.concatenate([np.zeros(C, dtype=np.int64), 1 + cluster])
    kids = np.concatenate([V + 1 + np.arange(C), order])
    return _from_edges(V, C + 1, nodes, kids, labels)


def scale_counts(c: np.ndarray) -> np.ndarray:
    """``c`` times a power of two that brings its maximum into ``[0.5, 1)``.

    Sums of the scaled counts stay below ``len(c)``, so they cannot overflow (``[1e308] * 10``
    sums to ``inf``), and scaling by a power of two is exact, so every comparison and sum the
    builders make gives the same answer as on the original counts.
    """
    top = float(c.max())
    if top == 0.0:
        return c
    return np.ldexp(c, -math.frexp(top)[1])


def _cluster_classes(V: int, C: int, counts: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(order, cluster)``: the classes in cluster order and the cluster of each, in that order.

    Without counts: contiguous clusters of near-equal size. With counts: classes with a positive
    count sorted by frequency and cut where the probability mass before them crosses a multiple
    of ``1/C``; the classes with a zero count (no mass to bin by) follow in index order, spread
    over the clusters by :func:`_spread_evenly`.
    """
    if counts is None:
        return np.arange(V), (np.arange(V) * C) // V
    c = scale_counts(check_counts(counts))
    if c.size != V:
        raise ValueError(f"counts has {c.size} entries for {V} classes")
    order = np.argsort(-c, kind="stable")
    w = c[order]
    total = w.sum()
    if total <= 0:
        return order, (np.arange(V) * C) // V
    num_positive = int(np.count_nonzero(w))
    w = w[:num_positive]
    before = np.cumsum(w) - w  # mass strictly before each class
    cluster = np.minimum((before * C / total).astype(np.int64), C - 1)
    zeros = _spread_evenly(np.bincount(cluster, minlength=C), V - num_positive)
    return order, np.concatenate([cluster, zeros])


def _spread_evenly(sizes: np.ndarray, extra: int) -> np.ndarray:
    """The cluster of each of ``extra`` added classes, filling the smallest clusters first.

    Water-filling: every cluster is raised to a common level ``L`` (the smallest one that takes
    them all), so the largest cluster is as small as it can be (the device path pads every cluster
    to the largest). A cluster already above the level gets none; the few left over once all are
    at ``L - 1`` go to the last clusters, which hold the rarest classes.
    """
    if extra == 0:
        return np.zeros(0, dtype=np.int64)
    lo, hi = 0, int(sizes.max()) + extra  # room(hi) >= extra
    while lo < hi:  # smallest L with room(L) >= extra, room(L) = sum(max(L - size, 0))
        mid = (lo + hi) // 2
        if int(np.maximum(mid - sizes, 0).sum()) >= extra:
            hi = mid
        else:
            lo = mid + 1
    fill = np.maximum(lo - 1 - sizes, 0)
    left = extra - int(fill.sum())  # 1 <= left <= clusters at level L - 1 (L is the smallest level)
    at_level = np.flatnonzero(sizes + fill == lo - 1)
    fill[at_level[at_level.size - left :]] += 1
    return np.repeat(np.arange(sizes.size), fill)


def from_paths(paths: Sequence[Sequence[str]], labels: Sequence[str] | None = None) -> TreeArrays:
    """A user taxonomy, internal nodes numbered in order of first appearance (root ``0``, unnamed).

    See :meth:`hsoftmax.Tree.from_paths`.

    >>> a = from_paths([["fruit"], ["veg"], ["fruit"]])
    >>> a.child_offset.tolist(), a.children.tolist(), a.node_names
    ([0, 2, 4, 5], [4, 5, 0, 2, 1], [None, 'fruit', 'veg'])
    """
    if isinstance(paths, (str, bytes)):
        raise TypeError("paths must be a sequence of sequences of node names")
    paths = list(paths)
    V = len(paths)
    if V == 0:
        raise ValueError("paths is empty: a tree needs at least one class")
    labels_t = check_labels(labels, V)
    names, child_lists = _link_paths(paths)
    if labels_t is not None:
        clash = set(labels_t) & set(names[1:])
        if clash:
            raise ValueError(f"label {sorted(clash)[0]!r} is also used as an internal node name")
    off = np.zeros(len(child_lists) + 1, dtype=np.int64)
    np.cumsum([len(c) for c in child_lists], out=off[1:])
    ch = np.fromiter((r for c in child_lists for r in c), dtype=np.int64, count=int(off[-1]))
    return TreeArrays(V, off, ch, labels_t, names)


def _link_paths(paths: list[Sequence[str]]) -> tuple[list[str | None], list[list[int]]]:
    """``(names, child_lists)``: each internal node's name and child refs, nodes numbered in order
    of first appearance; a name must keep one parent and appear at most once on a path."""
    V = len(paths)
    ids: dict[str, int] = {}
    names: list[str | None] = [None]
    parent_of: dict[int, int] = {}
    child_lists: list[list[int]] = [[]]
    for i, path in enumerate(paths):
        if isinstance(path, (str, bytes)):
            raise TypeError(f"paths[{i}] must be a sequence of node names, not a string")
        prev = 0
        on_path: set[int] = set()
        for name in path:
            if not isinstance(name, str):
                raise TypeError(f"paths[{i}] contains {name!r}: node names must be strings")
            j = ids.get(name)
            if j is not None and j in on_path:
                raise ValueError(f"node {name!r} appears twice on paths[{i}]: a cycle")
            if j is None:
                j = ids[name] = len(names)
                names.append(name)
                child_lists.append([])
                parent_of[j] = prev
                child_lists[prev].append(V + j)
            elif parent_of[j] != prev:
                raise ValueError(
                    f"node {name!r} has two parents: {names[parent_of[j]]!r} and {names[prev]!r} (paths[{i}])"
                )
            on_path.add(j)
            prev = j
        child_lists[prev].append(i)
    return names, child_lists


# ---------------------------------------------------------------------------- learned trees


def from_embeddings(
    vectors: Any,
    arity: int = 2,
    counts: Any = None,
    seed: int = 0,
    labels: Sequence[str] | None = None,
    iterations: int = 4,
) -> TreeArrays:
    """A tree from class vectors by recursive balanced k-means. See :meth:`hsoftmax.Tree.from_embeddings`.

    Level-synchronous: every node of one depth is split in the same few numpy passes over the
    classes (no Python work per node), so the cost is ``O(V * arity * dim * iterations)`` per
    level and the memory ``O(V * dim)``.
    """
    X = _check_vectors(vectors)
    V = X.shape[0]
    check_num_classes(V)
    k = _check_arity(arity, V)
    iterations = check_index(iterations, "iterations", 1)
    seed = check_index(seed, "seed", 0)
    if counts is not None:
        counts, labels = split_counts(counts, labels)
        c = check_counts(counts)
        if c.size != V:
            raise ValueError(f"counts has {c.size} entries for {V} classes")
        total = c.sum()
        w = c / total if total > 0 else np.ones(V)
        by_mass = total > 0
    else:
        w, by_mass = np.ones(V), False
    if V == 1:
        return _single_class(labels)
    rng = np.random.default_rng(seed)
    perm = np.arange(V)  # classes in segment order: each segment is one node's classes
    seg_start = np.zeros(1, dtype=np.int64)
    seg_size = np.full(1, V, dtype=np.int64)
    seg_node = np.zeros(1, dtype=np.int64)
    next_id = 1
    edge_nodes: list[np.ndarray] = []
    edge_kids: list[np.ndarray] = []
    while seg_size.size:
        part = _split_level(X, w, by_mass, perm, seg_start, seg_size, k, iterations, rng)
        # Children of each segment, in part order: reorder the classes so each part is contiguous.
        pos = concat_ranges(seg_start, seg_start + seg_size)
        group = np.repeat(np.arange(seg_size.size), seg_size) * k + part
        order = np.argsort(group, kind="stable")
        perm[pos] = perm[pos[order]]
        sizes = np.bincount(group, minlength=seg_size.size * k)
        present = np.flatnonzero(sizes)
        psize = sizes[present]
        pseg = present // k
        pstart = seg_start[pseg] + (np.cumsum(psize) - psize) - (np.cumsum(seg_size) - seg_size)[pseg]
        leaf = psize == 1
        refs = np.where(leaf, perm[pstart], 0)
        n_int = int(np.count_nonzero(~leaf))
        new_ids = np.arange(next_id, next_id + n_int)
        next_id += n_int
        refs[~leaf] = V + new_ids
        edge_nodes.append(seg_node[pseg])
        edge_kids.append(refs)
        seg_start, seg_size, seg_node = pstart[~leaf], psize[~leaf], new_ids
    return _from_edges(V, next_id, np.concatenate(edge_nodes), np.concatenate(edge_kids), labels)


def _check_vectors(vectors: Any) -> np.ndarray:
    """``vectors`` as a C-contiguous ``(V, dim)`` float32 array of finite values."""
    if isinstance(vectors, (str, bytes)):
        raise TypeError("vectors must be a 2-D array of numbers, not a string")
    X = np.asarray(vectors)
    if X.ndim != 2:
        raise ValueError(f"vectors must be 2-D (one row per class), got shape {X.shape}")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"vectors must have at least one class and one dimension, got shape {X.shape}")
    if X.dtype == np.bool_ or not (np.issubdtype(X.dtype, np.integer) or np.issubdtype(X.dtype, np.floating)):
        raise TypeError(f"vectors must be real numbers, got {X.dtype}")
    # float32: the clustering only compares distances, and half the bytes of float64 at V = 10M.
    X = np.ascontiguousarray(X, dtype=np.float32)
    finite = np.isfinite(X).all(axis=1)
    if not finite.all():
        raise ValueError(f"vectors[{int(np.flatnonzero(~finite)[0])}] is not finite (or overflows float32)")
    return X


def _split_level(
    X: np.ndarray,
    w: np.ndarray,
    by_mass: bool,
    perm: np.ndarray,
    seg_start: np.ndarray,
    seg_size: np.ndarray,
    k: int,
    iterations: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """The part (``0..k-1``) of every class of every segment of one level, in segment order.

    A segment of at most ``k`` classes gives each class its own part (they become leaves). A
    larger one is split by balanced k-means: centroids start at ``k`` distinct random members,
    then each of ``iterations`` rounds assigns the classes under the capacity constraint
    (:func:`_balanced_assign`) and moves every centroid to the mean of its part.
    """
    S = seg_size.size
    owner = np.repeat(np.arange(S), seg_size)
    first = np.cumsum(seg_size) - seg_size  # offset of each segment in level order
    rank = np.arange(owner.size) - first[owner]
    part = np.minimum(rank, k - 1)  # final for segments of <= k classes
    big = np.flatnonzero(seg_size > k)
    if big.size == 0:
        return part
    sel = concat_ranges(first[big], first[big] + seg_size[big])  # level-order positions to cluster
    n_big = seg_size[big]
    sid = np.repeat(np.arange(big.size), n_big)
    classes = perm[seg_start[sid] + rank[sel]]
    Xs, ws = X[classes], w[classes]  # one gather per level: the passes below read it in order
    # Initial centroids: k distinct random members per segment.
    big_first = np.cumsum(n_big) - n_big
    C = Xs[(big_first[:, None] + _distinct_picks(n_big, k, rng)).ravel()].reshape(big.size, k, -1)
    cap = _capacities(ws, sid, big.size, n_big, k, by_mass)
    # With masses, classes with a zero count have no mass to balance: they are split by size on
    # their own, so they spread evenly instead of following wherever the mass leaves room.
    massless = ws == 0 if by_mass else np.zeros(sid.size, dtype=bool)
    massless_cap = _capacities(ws, sid, big.size, np.bincount(sid[massless], minlength=big.size), k, False)
    assign = np.zeros(sid.size, dtype=np.int64)
    cost = _centroid_costs(Xs, sid, C)
    for it in range(iterations):
        if it:
            C = _part_means(Xs, sid * k + assign, C)
            cost = _centroid_costs(Xs, sid, C)
        if by_mass:
            assign[~massless] = _assign(cost[~massless], sid[~massless], ws[~massless], cap, True)
            assign[massless] = _assign(cost[massless], sid[massless], ws[massless] + 1, massless_cap, False)
        else:
            assign = _assign(cost, sid, ws, cap, False)
    if by_mass:
        # A mass-balanced split can leave a segment in one part (all its mass in one class that
        # the others follow): split those by size instead, so every node makes progress.
        parts_used = np.zeros((big.size, k), dtype=bool)
        parts_used[sid, assign] = True
        stuck = parts_used.sum(axis=1) < 2
        if stuck.any():
            unit_cap = _capacities(ws, sid, big.size, n_big, k, False)
            by_size = _assign(cost, sid, np.ones(sid.size), unit_cap, False)
            assign = np.where(stuck[sid], by_size, assign)
    part[sel] = assign
    return part


def _distinct_picks(n: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """``(S, k)``: ``k`` distinct uniform random positions in ``[0, n[s])`` for each segment
    (Floyd's sampling, all segments at once: ``O(S * k^2)``, no sort of the segments' members)."""
    picks = np.empty((n.size, k), dtype=np.int64)
    for i in range(k):
        top = n - k + i  # step i draws from [0, top]; a value drawn before is replaced by top
        t = np.minimum((rng.random(n.size) * (top + 1)).astype(np.int64), top)
        seen = (picks[:, :i] == t[:, None]).any(axis=1)
        picks[:, i] = np.where(seen, top, t)
    return picks


def _capacities(w: np.ndarray, sid: np.ndarray, S: int, n: np.ndarray, k: int, by_mass: bool) -> np.ndarray:
    """``(S, k)`` room of each part: near-equal class counts (they differ by at most one), or an
    equal share of the segment's mass."""
    if not by_mass:
        rank = np.arange(k)
        return ((n[:, None] // k) + (rank < (n[:, None] % k))).astype(np.float64)
    mass = np.bincount(sid, weights=w, minlength=S)
    return np.repeat(mass[:, None] / k, k, axis=1)


def _centroid_costs(Xs: np.ndarray, sid: np.ndarray, C: np.ndarray) -> np.ndarray:
    """``(n, k)`` squared distance of each point ``Xs[i]`` to each centroid of its
    segment, less ``|x|^2`` (the same for every centroid of a point, so it changes no comparison)."""
    from .cluster_kernels import centroid_costs

    cost = np.empty((sid.size, C.shape[1]), dtype=np.float32)
    sq = np.einsum("skd,skd->sk", C, C)
    centroid_costs(Xs, sid, C, sq, cost)
    return cost


def _part_means(Xs: np.ndarray, group: np.ndarray, C: np.ndarray) -> np.ndarray:
    """New centroids: the mean of each part's points (an empty part keeps its centroid)."""
    from .cluster_kernels import part_means

    S, k, d = C.shape
    out = C.reshape(S * k, d).copy()
    part_means(Xs, group, out, np.zeros(S * k, dtype=np.int64))
    return out.reshape(S, k, d)


def _assign(cost: np.ndarray, sid: np.ndarray, w: np.ndarray, cap: np.ndarray, by_mass: bool) -> np.ndarray:
    """:func:`_balanced_assign`, or for two parts one sort per segment (compiled)."""
    if cost.shape[1] != 2:
        return _balanced_assign(cost, sid, w, cap, heavy_first=by_mass)
    if by_mass:
        from .cluster_kernels import split_two_by_mass

        size = np.bincount(sid, minlength=cap.shape[0])
        part = np.empty(sid.size, dtype=np.int64)
        split_two_by_mass(cost[:, 0] - cost[:, 1], w, np.cumsum(size) - size, size, part)
        return part
    # Two parts of fixed sizes: the optimal split sorts each segment by how much nearer part 0
    # is and gives part 0 the first ``cap[:, 0]`` (what the greedy rounds give, in one pass).
    from .cluster_kernels import split_two

    size = np.bincount(sid, minlength=cap.shape[0])
    part = np.empty(sid.size, dtype=np.int64)
    split_two(cost[:, 0] - cost[:, 1], np.cumsum(size) - size, size, cap[:, 0].astype(np.int64), part)
    return part


def _balanced_assign(
    cost: np.ndarray, sid: np.ndarray, w: np.ndarray, cap: np.ndarray, heavy_first: bool
) -> np.ndarray:
    """A part per point, each part taking at most its capacity ``cap[segment, part]`` of weight.

    Greedy by regret, in rounds: each unplaced point asks for the nearest part still open in
    its segment; a part takes its askers in order of regret (how much farther their next choice
    is) while it has room, and closes once it turns one away. With ``k = 2`` this is exactly the
    optimal balanced split (sort by the difference of the two distances and cut). Unit weights
    and integer capacities summing to the segment's size fill every part exactly; with masses a
    part takes the asker that crosses its share, and the last open part of a segment takes all
    that is left. At most ``k`` rounds, as every round places all its askers or closes a part.
    ``heavy_first`` (masses): an asker heavier than the part's room goes first, so a class that
    outweighs a share of its segment gets a part to itself (a short path, as in Huffman's tree).
    """
    n, k = cost.shape
    S = cap.shape[0]
    room = cap.astype(np.float64).ravel()
    is_open = np.ones(S * k, dtype=bool)
    part = np.zeros(n, dtype=np.int64)
    todo = np.arange(n)
    while todo.size:
        s = sid[todo]
        c = np.where(is_open.reshape(S, k)[s], cost[todo], np.inf)
        best = np.argmin(c, axis=1)
        rows = np.arange(todo.size)
        c_best = c[rows, best]
        c[rows, best] = np.inf
        regret = c.min(axis=1) - c_best  # inf when only one part is open: it must take them
        group = s * k + best
        heavy = w[todo] >= room[group] if heavy_first else np.zeros(todo.size, dtype=bool)
        order = np.lexsort((-regret, ~heavy, group))
        g, wo = group[order], w[todo[order]]
        start = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
        csum = np.cumsum(wo)
        before = csum - wo - np.repeat(csum[start] - wo[start], np.diff(np.r_[start, g.size]))
        last_open = is_open.reshape(S, k).sum(axis=1)[s[order]] == 1
        take = (before < room[g]) | last_open
        placed = todo[order[take]]
        part[placed] = best[order[take]]
        room -= np.bincount(g[take], weights=wo[take], minlength=S * k)
        is_open[g[~take]] = False
        is_open &= room > 0
        todo = todo[order[~take]]
        if todo.size:  # a segment whose parts all closed with points left reopens its roomiest
            left = np.zeros(S, dtype=bool)
            left[sid[todo]] = True
            dead = left & ~is_open.reshape(S, k).any(axis=1)
            if dead.any():
                roomiest = np.argmax(room.reshape(S, k)[dead], axis=1)
                is_open[np.flatnonzero(dead) * k + roomiest] = True
    return part

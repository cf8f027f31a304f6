"""Compiled inner loops of the tree builders (numba; no torch), imported only when used.

:func:`centroid_costs` and :func:`part_means` are the two ``O(n * k * dim)`` passes of
:func:`hsoftmax.builders.from_embeddings`'s balanced k-means, and :func:`huffman_merge` is the
two-queue Huffman merge: in numpy they would need ``(n, k, dim)`` temporaries or a Python loop
per class.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .kernels.node import JIT, dot

# No fastmath in the merge and the splits: the Huffman merge's sums must be made in the order the
# pure-Python merge makes them (so ties break alike). The distance kernel may reassociate its dot
# products (JIT): any order is as good a distance, and one build always runs the same code.
_EXACT = dict(nogil=True, cache=True)


@njit(**JIT)
def centroid_costs(X, sid, C, sq, cost):  # pragma: no cover - compiled
    """``cost[i, j] = |C[sid[i], j]|^2 - 2 X[i] . C[sid[i], j]`` (``|x - c|^2 - |x|^2``)."""
    n, k = sid.size, C.shape[1]
    for i in range(n):
        x = X[i]
        s = sid[i]
        for j in range(k):
            cost[i, j] = sq[s, j] - 2.0 * dot(C[s, j], x)


@njit(**_EXACT)
def part_means(X, group, means, num):  # pragma: no cover - compiled
    """``means[g]``: the running mean of the rows ``X[i]`` with ``group[i] == g``, ``num[g]`` their
    number (the rows of a group with none are left as they were).

    A running mean (``m += (x - m) / n``) rather than a sum: it stays in float32 without the
    error growth of a float32 sum over millions of rows, and needs no float64 table.
    """
    d = X.shape[1]
    for i in range(group.size):
        g = group[i]
        x = X[i]
        num[g] += 1
        n = num[g]
        m = means[g]
        if n == 1:
            for t in range(d):
                m[t] = x[t]
        else:
            inv = np.float32(1.0) / np.float32(n)
            for t in range(d):
                m[t] += (x[t] - m[t]) * inv


# Segments up to this size are ordered by insertion sort into a reused buffer: most segments
# are tiny, and a fresh argsort allocates per segment.
_SMALL = 32


@njit(inline="always", **_EXACT)
def _stable_order(x, small):  # pragma: no cover - compiled
    """Indices that sort ``x`` stably (ties by position); ``small`` is scratch for short ``x``."""
    n = x.size
    if n > small.size:
        return np.argsort(x, kind="mergesort")
    for i in range(n):
        j = i
        while j > 0 and x[small[j - 1]] > x[i]:
            small[j] = small[j - 1]
            j -= 1
        small[j] = i
    return small


@njit(**_EXACT)
def split_two(diff, first, size, room, part):  # pragma: no cover - compiled
    """Per segment ``[first[s], first[s] + size[s])``: the ``room[s]`` points with the smallest
    ``diff`` get part 0, the others part 1 (a stable sort, so ties go by position)."""
    small = np.empty(_SMALL, dtype=np.int64)
    for s in range(first.size):
        a, n, m = first[s], size[s], room[s]
        if n <= _SMALL:
            order = _stable_order(diff[a : a + n], small)
            for r in range(n):
                part[a + order[r]] = 0 if r < m else 1
            continue
        # A large segment needs only the m-th smallest value (a selection, O(n)), not a sort:
        # part 0 is everything below it plus, in position order, enough of its ties.
        cut = np.partition(diff[a : a + n], m - 1)[m - 1]
        below = 0
        for i in range(a, a + n):
            below += diff[i] < cut
        ties = m - below
        for i in range(a, a + n):
            if diff[i] < cut:
                part[i] = 0
            elif diff[i] == cut and ties > 0:
                part[i] = 0
                ties -= 1
            else:
                part[i] = 1


@njit(**_EXACT)
def split_two_by_mass(diff, w, first, size, part):  # pragma: no cover - compiled
    """Per segment, two parts of near-equal mass ``w`` along the order of ``diff`` (Fano's split).

    A class with at least half the segment's mass goes alone to its nearer part (``diff < 0``:
    part 0). Otherwise part 0 is the prefix of the ``diff`` order whose mass is nearest half the
    total, cut so that both parts have a class.
    """
    small = np.empty(_SMALL, dtype=np.int64)
    for s in range(first.size):
        a, n = first[s], size[s]
        total = 0.0
        heaviest = a
        for i in range(a, a + n):
            total += w[i]
            if w[i] > w[heaviest]:
                heaviest = i
        if w[heaviest] >= 0.5 * total:
            near = 0 if diff[heaviest] < 0 else 1
            for i in range(a, a + n):
                part[i] = 1 - near
            part[heaviest] = near
            continue
        order = _stable_order(diff[a : a + n], small)
        cut, before = 1, 0.0
        for r in range(n - 1):
            after = before + w[a + order[r]]
            cut = r + 1
            if after >= 0.5 * total:
                if 0.5 * total - before < after - 0.5 * total and r > 0:
                    cut = r  # the prefix without this class is nearer half
                break
            before = after
        for r in range(n):
            part[a + order[r]] = 0 if r < cut else 1


@njit(**_EXACT)
def huffman_merge(leaf_w, leaf_id, k, first, kids, off, node_w):  # pragma: no cover - compiled
    """The two-queue Huffman merge on ascending leaf weights; see :func:`hsoftmax.builders.huffman`.

    Fills ``kids`` (refs in merge order, internal node ``m`` as ``V + m``), ``off`` (CSR
    offsets, merge order) and ``node_w``; returns the number of refs written.
    """
    V = leaf_w.size
    num_internal = node_w.size
    li = 0
    ni = 0
    pos = 0
    for made in range(num_internal):
        take = first if made == 0 else k
        w = 0.0
        for _ in range(take):
            if li < V and (ni >= made or leaf_w[li] <= node_w[ni]):
                w += leaf_w[li]
                kids[pos] = leaf_id[li]
                li += 1
            else:
                w += node_w[ni]
                kids[pos] = V + ni
                ni += 1
            pos += 1
        node_w[made] = w
        off[made + 1] = pos
    return pos


__all__ = ["centroid_costs", "part_means", "split_two", "split_two_by_mass", "huffman_merge"]

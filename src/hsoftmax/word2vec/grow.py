"""Growing a word2vec tree for new words while the old words keep their paths (continued training).

gensim's ``build_vocab(update=True)`` rebuilds the Huffman tree from scratch and only appends rows
to ``syn1``, so a trained inner-node row ends up deciding between other words than it was trained
for. Here the old tree is kept as it is and a Huffman tree of the new words is **grafted** onto it:
one old ref ``x`` (a word or an inner node) is replaced by a new binary node ``g`` whose children
are ``x`` (choice 0) and the new words' subtree (choice 1). When ``x`` is the old root, ``g`` is the
new root.

* Every old word not under ``x`` keeps its path exactly: the same inner nodes, the same choices,
  the same ``syn1`` rows (moved to the new tree's numbering, see :func:`graft`).
* An old word under ``x`` keeps its path with one decision inserted (at ``g``, choice 0).
* A new word's path is ``x``'s path, then ``g`` (choice 1), then its path in the new subtree.

**Where to graft.** Grafting at ``x`` adds ``W(x) + W_new * depth(x)`` to the total code length
(counts x edges) beyond the new subtree's own cost, where ``W(x)`` is the count below ``x`` and
``W_new`` the new words' total count: every word under ``x`` gets one edge more, every new word
sits ``depth(x) + 1`` edges below the root. The graft point minimises that sum over every ref of
the old tree (the root included, which costs ``W_old``; a rare deep word costs little when the new
words are rare, the usual case), so it is the best single graft. Its cost against a Huffman tree
rebuilt over all the counts (the optimum, which moves every old row) is the price of keeping the
trained rows: :func:`graft` reports both mean code lengths, and the benchmark prints them.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..builders import concat_ranges
from ..tree import Tree

__all__ = ["Graft", "graft"]


class Graft(NamedTuple):
    """What :func:`graft` returns."""

    tree: Tree  #: the grown tree: old words are classes ``0..V_old-1``, new words follow
    row_map: np.ndarray  #: ``(old num_params,)``: the new ``syn1`` row of each old row
    point: int  #: the old ref that the new node ``g`` took the place of (class, or V_old + node)
    code_length: float  #: mean code length of the grown tree under ``counts``
    rebuilt_code_length: float  #: the same for a Huffman tree rebuilt over ``counts``


def graft(old: Tree, counts: np.ndarray, subtree: Tree | None = None) -> Graft:
    """Grow ``old`` (classes ``0..V_old-1``) by the classes ``V_old..len(counts)-1``.

    >>> old = Tree.huffman([50, 30, 10, 10])
    >>> g = graft(old, np.array([50, 30, 10, 10, 4, 2]))
    >>> g.tree.num_classes, g.row_map.shape
    (6, (3,))
    >>> [len(old.path(i)[0]) for i in range(4)], [len(g.tree.path(i)[0]) for i in range(6)]
    ([1, 2, 3, 3], [1, 2, 4, 3, 5, 5])

    Args:
        old: the trained tree; class ``i`` is word ``i``.
        counts: ``(V,)`` counts of all words, old ones first (any non-negative numbers).
        subtree: the tree over the new words (default: a Huffman tree over their counts).

    Returns:
        a :class:`Graft`; ``syn1_new[row_map] = syn1_old`` carries the trained rows over.
    """
    counts = np.asarray(counts, dtype=np.float64)
    V0, V = old.num_classes, counts.size
    if V <= V0:
        raise ValueError(f"graft needs new classes: counts has {V} entries for a tree of {V0} classes")
    new = subtree if subtree is not None else Tree.huffman(counts[V0:])
    if new.num_classes != V - V0:
        raise ValueError(f"the new words' subtree has {new.num_classes} classes for {V - V0} new words")
    weight, depth = _weights_and_depths(old, counts[:V0])
    point = int(np.argmin(weight + counts[V0:].sum() * depth))  # ties: the first ref (classes first)
    tree = Tree(V, *_grafted_table(old, new, V, point))
    row_map = _row_map(old, tree, point)
    return Graft(
        tree,
        row_map,
        point,
        tree.expected_code_length(counts),
        Tree.huffman(counts).expected_code_length(counts),
    )


def _weights_and_depths(tree: Tree, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Count below and depth (edges from the root) of every ref: classes, then inner nodes."""
    V, N = tree.num_classes, tree.num_nodes
    node_weight = np.zeros(N)
    cls = np.arange(V)
    cur = tree.parent[cls]
    while cls.size:  # every class adds its count to each of its ancestors, a level at a time
        np.add.at(node_weight, cur, counts[cls])
        cur = tree.parent[V + cur]
        keep = cur >= 0
        cls, cur = cls[keep], cur[keep]
    return np.concatenate([counts, node_weight]), np.concatenate([tree.class_depth, tree.node_depth]).astype(float)


def _grafted_table(old: Tree, new: Tree, V: int, point: int) -> tuple[np.ndarray, np.ndarray]:
    """The CSR child table of the grown tree (any node numbering with the root at 0: ``Tree``
    renumbers it breadth-first). ``point`` is an old ref."""
    V0, N0 = old.num_classes, old.num_nodes
    at_root = point == V0  # the old root: the new node is the new root
    shift = 1 if at_root else 0  # old inner node j gets id j + shift
    g = 0 if at_root else N0
    sub0 = N0 + 1  # the new subtree's inner nodes follow

    def old_ref(r: np.ndarray) -> np.ndarray:  # old refs in the grown tree's id space
        return np.where(r < V0, r, r - V0 + shift + V)

    old_children = old_ref(np.asarray(old.children, dtype=np.int64))
    new_children = np.asarray(new.children, dtype=np.int64)
    new_children = np.where(
        new_children < new.num_classes, new_children + V0, new_children - new.num_classes + sub0 + V
    )
    if new.num_classes == 1:  # a single new word hangs from g directly
        sub_root, new_children, new_arity = V0, new_children[:0], np.zeros(0, dtype=np.int64)
    else:
        sub_root, new_arity = V + sub0, np.diff(new.child_offset)
    x = int(old_ref(np.array([point]))[0])
    if not at_root:  # g takes x's place among its parent's children
        old_children[old_children == x] = V + g
    g_children = np.array([x, sub_root], dtype=np.int64)
    old_arity = np.diff(old.child_offset)
    parts = [old_children, g_children, new_children]
    arity = [old_arity, [2], new_arity]
    if at_root:  # ids: g (0), then the old nodes, then the new subtree's
        parts, arity = [g_children, old_children, new_children], [[2], old_arity, new_arity]
    off = np.zeros(N0 + 1 + len(new_arity) + 1, dtype=np.int64)
    np.cumsum(np.concatenate(arity), out=off[1:])
    return off, np.concatenate(parts)


def _row_map(old: Tree, tree: Tree, point: int) -> np.ndarray:
    """The grown tree's ``syn1`` row of every old row: an old inner node is found again as the
    ancestor, at its new depth, of a word below it (one level deeper when it is under ``point``)."""
    V0, N0 = old.num_classes, old.num_nodes
    rep = np.zeros(N0, dtype=np.int64)  # a class below each old inner node
    cls = np.arange(V0)
    cur = old.parent[cls]
    while cls.size:
        rep[cur] = cls
        cur = old.parent[V0 + cur]
        keep = cur >= 0
        cls, cur = cls[keep], cur[keep]
    depth = np.asarray(old.node_depth, dtype=np.int64)
    if point >= V0:  # an inner node: the nodes in its subtree move one level down
        x = point - V0
        under = (depth >= depth[x]) & (_ancestor_at(old, rep, np.full(N0, depth[x])) == x)
        depth = depth + under
    nodes = _ancestor_at(tree, rep, depth)
    old_rows = np.diff(old.param_offset)
    if not np.array_equal(np.diff(tree.param_offset)[nodes], old_rows):  # a broken graft, never expected
        raise AssertionError("grafting changed the arity of an old node")
    return concat_ranges(tree.param_offset[nodes], tree.param_offset[nodes] + old_rows)


def _ancestor_at(tree: Tree, classes: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """The inner node at ``depth[i]`` on the path of ``classes[i]`` (vectorised walk upwards)."""
    V = tree.num_classes
    cur = np.asarray(tree.parent, dtype=np.int64)[classes]
    node_depth = np.asarray(tree.node_depth)
    parent = np.asarray(tree.parent)
    while True:
        up = node_depth[cur] > depth
        if not up.any():
            return cur
        cur[up] = parent[V + cur[up]]

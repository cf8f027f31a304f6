"""The label hierarchy: one flat, validated, immutable representation for every tree.

Every consumer (the torch layer, the word2vec kernels, the CLI) reads the same few integer
arrays, built once by a builder and never changed afterwards:

* **Classes** are ``0 .. num_classes-1``; **internal nodes** are ``0 .. num_nodes-1``, the root is
  internal node ``0`` and nodes are numbered breadth-first, so a parent's id is always smaller
  than its children's.
* A **ref** names any node in one id space: class ``c`` is ref ``c`` and internal node ``j`` is
  ref ``num_classes + j``.
* ``child_offset`` (``num_nodes + 1``) and ``children`` (refs) are a CSR child table: the children
  of node ``j`` are ``children[child_offset[j]:child_offset[j + 1]]``, in a fixed order; the
  position of a child in that slice is its **choice** index.
* ``param_offset`` (``num_nodes + 1``) says where each node's parameters live in a layer's weight
  table: a node with one child has none (it is taken with probability 1), a binary node has one
  row (a sigmoid decides between its children, as in word2vec), a node with ``k > 2`` children has
  ``k`` rows (a softmax over the siblings).
* ``decision_nodes`` / ``decision_choices`` (``num_classes x max_decisions``, padded with 0) and
  ``decision_lengths`` list, per class, the internal nodes with two or more children on the path
  from the root and the choice taken at each: the only steps that carry probability. This is
  what training and single-target scoring read.

Builders: :meth:`Tree.huffman`, :meth:`Tree.balanced`, :meth:`Tree.two_level`,
:meth:`Tree.from_paths`; :meth:`Tree.save` / :meth:`Tree.load` write and read a portable
``.npz`` file (no pickle).
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["Tree"]

_FORMAT_VERSION = 1


def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    a.setflags(write=False)
    return a


def _check_counts(counts: Any, name: str = "counts") -> np.ndarray:
    c = np.asarray(counts, dtype=np.float64)
    if c.ndim != 1:
        raise ValueError(f"{name} must be a 1-D sequence, got shape {c.shape}")
    if c.size == 0:
        raise ValueError(f"{name} is empty: a tree needs at least one class")
    if not np.all(np.isfinite(c)):
        bad = int(np.flatnonzero(~np.isfinite(c))[0])
        raise ValueError(f"{name}[{bad}] is not finite ({c[bad]})")
    if np.any(c < 0):
        bad = int(np.flatnonzero(c < 0)[0])
        raise ValueError(f"{name}[{bad}] is negative ({c[bad]})")
    return c


def _check_num_classes(num_classes: Any) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
        raise TypeError(f"num_classes must be an int, got {type(num_classes).__name__}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return int(num_classes)


def _check_arity(arity: Any) -> int:
    if isinstance(arity, bool) or not isinstance(arity, (int, np.integer)):
        raise TypeError(f"arity must be an int, got {type(arity).__name__}")
    if arity < 2:
        raise ValueError(f"arity must be >= 2, got {arity}")
    return int(arity)


def _check_labels(labels: Sequence[str] | None, num_classes: int) -> tuple[str, ...] | None:
    if labels is None:
        return None
    labels = tuple(labels)
    if len(labels) != num_classes:
        raise ValueError(f"got {len(labels)} labels for {num_classes} classes")
    for i, lab in enumerate(labels):
        if not isinstance(lab, str):
            raise TypeError(f"labels[{i}] must be a str, got {type(lab).__name__}")
    if len(set(labels)) != num_classes:
        seen: set[str] = set()
        for lab in labels:
            if lab in seen:
                raise ValueError(f"duplicate label {lab!r}")
            seen.add(lab)
    return labels


class Tree:
    """An immutable label hierarchy over classes ``0..num_classes-1``.

    Build one with :meth:`huffman`, :meth:`balanced`, :meth:`two_level` or :meth:`from_paths`
    (or :meth:`load`); the constructor itself takes the raw CSR child table and validates it.

    >>> t = Tree.huffman([5, 3, 1, 1])
    >>> t.num_classes, t.num_nodes, t.depth
    (4, 3, 3)
    >>> nodes, choices = t.path(0)   # the most frequent class has the shortest code
    >>> len(nodes)
    1
    >>> Tree.balanced(8, arity=2).depth
    3
    >>> t = Tree.from_paths([["animal", "dog"], ["animal", "dog"], ["animal"], []],
    ...                     labels=["poodle", "collie", "cat", "rock"])
    >>> [t.node_names[j] for j in t.path(2)[0]]
    [None, 'animal']

    Args:
        num_classes: number of leaves.
        child_offset: ``(num_nodes + 1,)`` CSR offsets into ``children``.
        children: refs (class ``c`` -> ``c``, internal node ``j`` -> ``num_classes + j``); node 0 is
            the root. Any numbering of internal nodes is accepted; it is renumbered breadth-first.
        labels: optional class names (unique strings).
        node_names: optional internal-node names (``None`` for unnamed nodes).

    Raises:
        ValueError: a class or node is missing, duplicated, unreachable (an orphan or a cycle),
            a node has no children, or labels/names clash.
    """

    def __init__(
        self,
        num_classes: int,
        child_offset: Any,
        children: Any,
        labels: Sequence[str] | None = None,
        node_names: Sequence[str | None] | None = None,
    ) -> None:
        V = _check_num_classes(num_classes)
        off = np.asarray(child_offset)
        ch = np.asarray(children)
        if off.ndim != 1 or ch.ndim != 1:
            raise ValueError("child_offset and children must be 1-D arrays")
        if off.size and not np.issubdtype(off.dtype, np.integer):
            raise TypeError(f"child_offset must be integers, got {off.dtype}")
        if ch.size and not np.issubdtype(ch.dtype, np.integer):
            raise TypeError(f"children must be integers, got {ch.dtype}")
        off = off.astype(np.int64)
        ch = ch.astype(np.int64)
        N = off.size - 1
        if N < 1:
            raise ValueError("a tree needs a root: child_offset must have at least 2 entries")
        if off[0] != 0 or off[-1] != ch.size or np.any(np.diff(off) < 0):
            raise ValueError("child_offset must start at 0, be non-decreasing and end at len(children)")
        arity = np.diff(off)
        if np.any(arity == 0):
            raise ValueError(f"internal node {int(np.flatnonzero(arity == 0)[0])} has no children")
        if ch.size and (ch.min() < 0 or ch.max() >= V + N):
            bad = int(ch[(ch < 0) | (ch >= V + N)][0])
            raise ValueError(f"child ref {bad} is out of range [0, {V + N})")
        seen = np.bincount(ch, minlength=V + N)
        if np.any(seen[:V] > 1):
            raise ValueError(f"class {int(np.flatnonzero(seen[:V] > 1)[0])} appears more than once (duplicate leaf)")
        if np.any(seen[:V] == 0):
            raise ValueError(f"class {int(np.flatnonzero(seen[:V] == 0)[0])} is missing from the tree")
        if seen[V] != 0:
            raise ValueError("the root (internal node 0) appears as a child: the tree has a cycle")
        if np.any(seen[V + 1 :] > 1):
            j = int(np.flatnonzero(seen[V + 1 :] > 1)[0]) + 1
            raise ValueError(f"internal node {j} has more than one parent")
        if np.any(seen[V + 1 :] == 0):
            j = int(np.flatnonzero(seen[V + 1 :] == 0)[0]) + 1
            raise ValueError(f"internal node {j} is an orphan: no parent points to it")
        labels_t = _check_labels(labels, V)
        if node_names is not None:
            node_names = tuple(node_names)
            if len(node_names) != N:
                raise ValueError(f"got {len(node_names)} node names for {N} internal nodes")

        # Breadth-first renumbering; a node reached from the root is visited once, so anything
        # left unvisited sits on a cycle cut off from the root.
        order = [np.zeros(1, dtype=np.int64)]
        frontier = order[0]
        visited = 1
        while frontier.size:
            starts, ends = off[frontier], off[frontier + 1]
            kids = ch[_ranges(starts, ends)]
            frontier = kids[kids >= V] - V
            visited += frontier.size
            if visited > N:
                raise ValueError("the tree has a cycle")
            if frontier.size:
                order.append(frontier)
        bfs = np.concatenate(order)
        if bfs.size != N:
            missing = np.setdiff1d(np.arange(N), bfs)[0]
            raise ValueError(f"internal node {int(missing)} is not reachable from the root (a cycle)")
        new_id = np.empty(N, dtype=np.int64)
        new_id[bfs] = np.arange(N)
        new_arity = arity[bfs]
        new_off = np.zeros(N + 1, dtype=np.int64)
        np.cumsum(new_arity, out=new_off[1:])
        new_ch = ch[_ranges(off[bfs], off[bfs + 1])]
        internal = new_ch >= V
        new_ch[internal] = new_id[new_ch[internal] - V] + V
        if node_names is not None:
            node_names = tuple(node_names[int(j)] for j in bfs)
            _check_node_names(node_names, labels_t)

        self._num_classes = V
        self._child_offset = _readonly(new_off)
        self._children = _readonly(new_ch)
        self._labels = labels_t
        self._node_names = node_names
        self._build_derived()

    # ------------------------------------------------------------------ derived arrays
    def _build_derived(self) -> None:
        V, off, ch = self._num_classes, self._child_offset, self._children
        N = off.size - 1
        arity = np.diff(off)
        parent = np.full(V + N, -1, dtype=np.int64)
        choice = np.zeros(V + N, dtype=np.int64)
        owner = np.repeat(np.arange(N), arity)
        parent[ch] = owner
        choice[ch] = np.arange(ch.size) - off[owner]
        rows = np.where(arity == 1, 0, np.where(arity == 2, 1, arity))
        poff = np.zeros(N + 1, dtype=np.int64)
        np.cumsum(rows, out=poff[1:])

        # Nodes are numbered breadth-first, so each level is a contiguous id block and the
        # internal children of block [a, b) are exactly the next block.
        node_depth = np.zeros(N, dtype=np.int64)
        node_dec = np.zeros(N, dtype=np.int64)  # decisions (arity >= 2 nodes) strictly above
        a, b, level = 0, 1, 0
        while a < b:
            node_depth[a:b] = level
            kids = ch[off[a] : off[b]]
            kids = kids[kids >= V] - V
            if kids.size:
                p = parent[V + kids]
                node_dec[kids] = node_dec[p] + (arity[p] >= 2)
            a, b, level = b, b + kids.size, level + 1
        cp = parent[:V]
        class_depth = node_depth[cp] + 1
        class_dec = node_dec[cp] + (arity[cp] >= 2)

        self._parent = _readonly(parent)
        self._choice = _readonly(choice)
        self._arity = _readonly(arity)
        self._param_offset = _readonly(poff)
        self._node_depth = _readonly(node_depth)
        self._node_decisions = _readonly(node_dec)
        self._class_depth = _readonly(class_depth)
        self._decision_lengths = _readonly(class_dec)
        # The padded (V, max_decisions) arrays are built on first use: a consumer that walks
        # ``parent``/``choice`` itself (the word2vec trainer) never pays for them.
        self._decisions: tuple[np.ndarray, np.ndarray] | None = None

    def _decision_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if self._decisions is None:
            V, parent, choice, arity = self._num_classes, self._parent, self._choice, self._arity
            node_dec = self._node_decisions
            D = max(int(self._decision_lengths.max()), 1)
            # Walk every class up to the root at once; a deciding node lands at the column
            # given by the number of decisions above it.
            dn = np.zeros((V, D), dtype=np.int32)
            dc = np.zeros((V, D), dtype=np.int32)
            cls = np.arange(V)
            ref = cls.copy()
            cur = parent[:V].copy()
            while cls.size:
                dec = arity[cur] >= 2
                dn[cls[dec], node_dec[cur[dec]]] = cur[dec]
                dc[cls[dec], node_dec[cur[dec]]] = choice[ref[dec]]
                ref = V + cur
                cur = parent[ref]
                keep = cur >= 0
                cls, ref, cur = cls[keep], ref[keep], cur[keep]
            self._decisions = (_readonly(dn), _readonly(dc))
        return self._decisions

    # ------------------------------------------------------------------ builders
    @classmethod
    def huffman(cls, counts: Any, arity: int = 2, labels: Sequence[str] | None = None) -> "Tree":
        """Huffman tree from class counts: frequent classes get short codes.

        This is word2vec's and fastText's tree (``arity=2``); ``arity=k`` builds the optimal
        k-ary code. The expected code length under ``counts`` is minimal. Ties are broken by class
        index, so the tree is deterministic.

        >>> t = Tree.huffman([10, 1, 1, 1, 1])
        >>> [len(t.path(i)[0]) for i in range(5)]
        [1, 3, 3, 3, 3]
        >>> Tree.huffman([1, 1, 1, 1, 1, 1, 1], arity=3).depth
        2
        """
        c = _check_counts(counts)
        k = _check_arity(arity)
        V = c.size
        if V == 1:
            return cls(1, [0, 1], [0], labels=labels)
        order = np.argsort(c, kind="stable")
        leaf_w = c[order]
        # Two-queue merge (O(V) after the sort): leaves in ascending order, merged nodes are
        # created in non-decreasing weight, so the k smallest are always at the two fronts.
        num_internal = -(-(V - 1) // (k - 1))
        node_w = np.empty(num_internal, dtype=np.float64)
        kids = np.empty(V + num_internal, dtype=np.int64)  # refs in merge order
        off = np.zeros(num_internal + 1, dtype=np.int64)
        first = ((V - 2) % (k - 1)) + 2  # the first merge is smaller so every later one is full
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
        # Merge order numbers the root last; reverse so the root is internal node 0.
        rev = num_internal - 1 - np.arange(num_internal)
        ch = kids[:pos].copy()
        internal = ch >= V
        ch[internal] = V + rev[ch[internal] - V]
        starts, ends = off[:-1][::-1], off[1:][::-1]
        new_off = np.zeros(num_internal + 1, dtype=np.int64)
        np.cumsum(ends - starts, out=new_off[1:])
        return cls(V, new_off, ch[_ranges(starts, ends)], labels=labels)

    @classmethod
    def balanced(cls, num_classes: int, arity: int = 2, labels: Sequence[str] | None = None) -> "Tree":
        """A complete tree of depth ``ceil(log_arity(num_classes))`` over classes in index order.

        >>> t = Tree.balanced(10, arity=3)
        >>> t.depth, t.num_nodes
        (3, 5)
        """
        V = _check_num_classes(num_classes)
        k = _check_arity(arity)
        if V == 1:
            return cls(1, [0, 1], [0], labels=labels)
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
        return cls._from_edges(V, next_id, np.concatenate(all_nodes), np.concatenate(all_children), labels)

    @classmethod
    def two_level(
        cls,
        num_classes: int,
        num_clusters: int | None = None,
        counts: Any = None,
        labels: Sequence[str] | None = None,
    ) -> "Tree":
        """Root -> clusters -> classes: the class-factored softmax (Theano's ``h_softmax``).

        ``num_clusters`` defaults to ``ceil(sqrt(num_classes))``. Without ``counts`` the classes
        are cut into contiguous clusters of near-equal size; with ``counts`` they are sorted by
        frequency and binned so that every cluster holds roughly equal probability mass
        (frequent classes get small clusters), as in Mikolov et al.'s class-based RNNLM. A class
        heavier than one cluster's share gets a cluster to itself, so there may be fewer clusters.

        >>> t = Tree.two_level(100)
        >>> t.num_nodes, t.depth        # root + 10 clusters
        (11, 2)
        >>> t = Tree.two_level(6, num_clusters=2, counts=[50, 30, 8, 6, 4, 2])
        >>> [int(t.path(i)[0][1]) for i in range(6)]     # the cluster of each class
        [1, 2, 2, 2, 2, 2]
        """
        V = _check_num_classes(num_classes)
        C = math.isqrt(V - 1) + 1 if num_clusters is None else num_clusters
        if isinstance(C, bool) or not isinstance(C, (int, np.integer)):
            raise TypeError(f"num_clusters must be an int, got {type(C).__name__}")
        if not 1 <= C <= V:
            raise ValueError(f"num_clusters must be in [1, num_classes={V}], got {C}")
        if counts is None:
            order = np.arange(V)
            cluster = (np.arange(V) * C) // V
        else:
            c = _check_counts(counts)
            if c.size != V:
                raise ValueError(f"counts has {c.size} entries for {V} classes")
            order = np.argsort(-c, kind="stable")
            w = c[order]
            total = w.sum()
            if total <= 0:
                cluster = (np.arange(V) * C) // V
            else:
                before = np.cumsum(w) - w  # mass strictly before each class
                cluster = np.minimum((before * C / total).astype(np.int64), C - 1)
        _, cluster = np.unique(cluster, return_inverse=True)
        C = int(cluster.max()) + 1
        nodes = np.concatenate([np.zeros(C, dtype=np.int64), 1 + cluster])
        kids = np.concatenate([V + 1 + np.arange(C), order])
        return cls._from_edges(V, C + 1, nodes, kids, labels)

    @classmethod
    def from_paths(
        cls, paths: Sequence[Sequence[str]], labels: Sequence[str] | None = None
    ) -> "Tree":
        """A user taxonomy: ``paths[i]`` names the internal nodes from the top level down to class
        ``i``'s parent (empty: class ``i`` hangs from the unnamed root). Depths may differ.

        Node names are global: the same name always means the same node, so a name reached from two
        different parents, a name repeated on one path (a cycle) or a class label reused as a node
        name is an error. Children keep the order in which they first appear.

        >>> t = Tree.from_paths([["fruit"], ["fruit"], ["veg", "root veg"], ["veg"]])
        >>> t.num_nodes, t.depth
        (4, 3)
        >>> t.node_names
        (None, 'fruit', 'veg', 'root veg')
        """
        if isinstance(paths, (str, bytes)):
            raise TypeError("paths must be a sequence of sequences of node names")
        paths = list(paths)
        V = len(paths)
        if V == 0:
            raise ValueError("paths is empty: a tree needs at least one class")
        labels_t = _check_labels(labels, V)
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
                        f"node {name!r} has two parents: {names[parent_of[j]]!r} and {names[prev]!r} "
                        f"(paths[{i}])"
                    )
                on_path.add(j)
                prev = j
            child_lists[prev].append(i)
        if labels_t is not None:
            clash = set(labels_t) & set(ids)
            if clash:
                raise ValueError(f"label {sorted(clash)[0]!r} is also used as an internal node name")
        off = np.zeros(len(child_lists) + 1, dtype=np.int64)
        np.cumsum([len(c) for c in child_lists], out=off[1:])
        ch = np.fromiter((r for c in child_lists for r in c), dtype=np.int64, count=int(off[-1]))
        return cls(V, off, ch, labels=labels_t, node_names=names)

    @classmethod
    def _from_edges(cls, V: int, N: int, nodes: np.ndarray, kids: np.ndarray, labels) -> "Tree":
        """Build from (parent internal node, child ref) edge lists, keeping edge order per parent."""
        order = np.argsort(nodes, kind="stable")
        off = np.zeros(N + 1, dtype=np.int64)
        np.cumsum(np.bincount(nodes, minlength=N), out=off[1:])
        return cls(V, off, kids[order], labels=labels)

    # ------------------------------------------------------------------ save / load
    def save(self, path: str | os.PathLike) -> None:
        """Write the tree to a portable ``.npz`` file (no pickle), atomically.

        >>> import tempfile, os
        >>> d = tempfile.mkdtemp(); f = os.path.join(d, "t.npz")
        >>> Tree.huffman([3, 2, 1], labels=["a", "b", "c"]).save(f)
        >>> Tree.load(f).labels
        ('a', 'b', 'c')
        """
        arrays: dict[str, np.ndarray] = {
            "format_version": np.array(_FORMAT_VERSION),
            "num_classes": np.array(self._num_classes),
            "child_offset": np.asarray(self._child_offset),
            "children": np.asarray(self._children),
        }
        if self._labels is not None:
            arrays["labels"] = np.array(self._labels, dtype=str)
        if self._node_names is not None:
            arrays["node_names"] = np.array([n or "" for n in self._node_names], dtype=str)
            arrays["node_named"] = np.array([n is not None for n in self._node_names])
        path = os.fspath(path)
        directory = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tree-", suffix=".npz.tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez_compressed(f, **arrays)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Tree":
        """Read a tree written by :meth:`save`; the arrays are validated like any new tree."""
        try:
            with np.load(os.fspath(path), allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
        except (OSError, ValueError) as e:
            raise ValueError(f"{os.fspath(path)!r} is not a readable hsoftmax tree file: {e}") from e
        return cls.from_state(data)

    def state(self) -> dict[str, np.ndarray]:
        """The arrays that define the tree (what :meth:`save` writes), for embedding in other files."""
        out = {
            "format_version": np.array(_FORMAT_VERSION),
            "num_classes": np.array(self._num_classes),
            "child_offset": np.array(self._child_offset),
            "children": np.array(self._children),
        }
        if self._labels is not None:
            out["labels"] = np.array(self._labels, dtype=str)
        if self._node_names is not None:
            out["node_names"] = np.array([n or "" for n in self._node_names], dtype=str)
            out["node_named"] = np.array([n is not None for n in self._node_names])
        return out

    @classmethod
    def from_state(cls, data: dict[str, Any]) -> "Tree":
        """Inverse of :meth:`state`."""
        for key in ("format_version", "num_classes", "child_offset", "children"):
            if key not in data:
                raise ValueError(f"tree data is missing {key!r}")
        version = int(np.asarray(data["format_version"]))
        if version != _FORMAT_VERSION:
            raise ValueError(f"unsupported tree format version {version}")
        labels = None
        if "labels" in data:
            labels = [str(s) for s in np.asarray(data["labels"]).tolist()]
        names = None
        if "node_names" in data:
            named = np.asarray(data["node_named"]).tolist()
            names = [str(s) if ok else None for s, ok in zip(np.asarray(data["node_names"]).tolist(), named)]
        return cls(
            int(np.asarray(data["num_classes"])),
            np.asarray(data["child_offset"]),
            np.asarray(data["children"]),
            labels=labels,
            node_names=names,
        )

    # ------------------------------------------------------------------ inspection
    @property
    def num_classes(self) -> int:
        """Number of classes (leaves)."""
        return self._num_classes

    @property
    def num_nodes(self) -> int:
        """Number of internal nodes, the root included."""
        return self._child_offset.size - 1

    @property
    def num_params(self) -> int:
        """Rows of a layer's weight table: 1 per binary node, k per k-ary node, 0 per 1-child node."""
        return int(self._param_offset[-1])

    @property
    def depth(self) -> int:
        """Longest root-to-class path, in edges (single-child nodes included)."""
        return int(self._class_depth.max())

    @property
    def max_decisions(self) -> int:
        """Longest path counted in decisions (nodes with two or more children): the padded width."""
        return int(self._decision_lengths.max())

    @property
    def labels(self) -> tuple[str, ...] | None:
        """Class names, or ``None``."""
        return self._labels

    @property
    def node_names(self) -> tuple[str | None, ...] | None:
        """Internal-node names (``None`` for unnamed ones, the root of a taxonomy included), or ``None``."""
        return self._node_names

    @property
    def is_binary(self) -> bool:
        """Every internal node has at most two children (word2vec's sigmoid-per-node case)."""
        return bool(self._arity.max() <= 2)

    @property
    def is_two_level(self) -> bool:
        """Root -> internal nodes -> classes only (the two-matmul case)."""
        V = self._num_classes
        root_kids = self._children[: self._child_offset[1]]
        return bool(np.all(root_kids >= V) and np.all(self._children[self._child_offset[1] :] < V))

    child_offset = property(lambda self: self._child_offset, doc="CSR offsets of the child table.")
    children = property(lambda self: self._children, doc="Child refs (class c -> c, node j -> num_classes + j).")
    arity = property(lambda self: self._arity, doc="Number of children of each internal node.")
    param_offset = property(lambda self: self._param_offset, doc="First weight row of each node.")
    parent = property(lambda self: self._parent, doc="Parent internal node of each ref (-1 for the root).")
    choice = property(lambda self: self._choice, doc="Child index of each ref within its parent.")
    node_depth = property(lambda self: self._node_depth, doc="Depth of each internal node (root 0).")
    class_depth = property(lambda self: self._class_depth, doc="Depth of each class in edges.")
    decision_nodes = property(lambda self: self._decision_arrays()[0],
                              doc="(V, max_decisions) nodes deciding each class, padded with 0 (built on first use).")
    decision_choices = property(lambda self: self._decision_arrays()[1],
                                doc="(V, max_decisions) choice at each decision, padded with 0 (built on first use).")
    decision_lengths = property(lambda self: self._decision_lengths, doc="(V,) number of decisions per class.")

    def path(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """``(nodes, choices)``: internal nodes from the root down to class ``i``'s parent and the
        child index taken at each (single-child nodes included)."""
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"class index must be an int, got {type(i).__name__}")
        if not 0 <= i < self._num_classes:
            raise ValueError(f"class {i} is out of range [0, {self._num_classes})")
        V = self._num_classes
        nodes, choices = [], []
        ref = int(i)
        while self._parent[ref] >= 0:
            nodes.append(int(self._parent[ref]))
            choices.append(int(self._choice[ref]))
            ref = V + nodes[-1]
        return np.array(nodes[::-1], dtype=np.int64), np.array(choices[::-1], dtype=np.int64)

    def index(self, label: str) -> int:
        """Class index of a label."""
        if self._labels is None:
            raise ValueError("this tree has no labels")
        if not hasattr(self, "_label_index"):
            self._label_index = {lab: i for i, lab in enumerate(self._labels)}
        try:
            return self._label_index[label]
        except KeyError:
            raise ValueError(f"unknown label {label!r}") from None

    def expected_code_length(self, counts: Any) -> float:
        """Mean number of edges from the root to a class, weighted by ``counts``."""
        c = _check_counts(counts)
        if c.size != self._num_classes:
            raise ValueError(f"counts has {c.size} entries for {self._num_classes} classes")
        return float((c * self._class_depth).sum() / c.sum())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Tree):
            return NotImplemented
        return (
            self._num_classes == other._num_classes
            and np.array_equal(self._child_offset, other._child_offset)
            and np.array_equal(self._children, other._children)
            and self._labels == other._labels
            and self._node_names == other._node_names
        )

    def __hash__(self) -> int:
        return hash((self._num_classes, self._children.tobytes()))

    def __repr__(self) -> str:
        return (
            f"Tree(num_classes={self.num_classes}, num_nodes={self.num_nodes}, depth={self.depth}, "
            f"max_arity={int(self._arity.max())}, num_params={self.num_params})"
        )

    def __getstate__(self) -> dict[str, Any]:
        return self.state()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(Tree.from_state(state).__dict__)


def _check_node_names(names: tuple[str | None, ...], labels: tuple[str, ...] | None) -> None:
    named = [n for n in names if n is not None]
    if len(set(named)) != len(named):
        seen: set[str] = set()
        for n in named:
            if n in seen:
                raise ValueError(f"duplicate internal node name {n!r}")
            seen.add(n)
    if labels is not None:
        clash = set(named) & set(labels)
        if clash:
            raise ValueError(f"label {sorted(clash)[0]!r} is also used as an internal node name")


def _ranges(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, e)`` for each pair, vectorised."""
    lengths = ends - starts
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    shift = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
    return np.arange(total, dtype=np.int64) + shift

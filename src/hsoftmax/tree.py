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
:meth:`Tree.from_paths`, :meth:`Tree.from_embeddings` (the algorithms are in :mod:`hsoftmax.builders`,
which only produces the child table; ``Tree`` validates it). :meth:`Tree.save` / :meth:`Tree.load` write and read a
portable ``.npz`` file (no pickle) holding :meth:`Tree.state`.
"""

from __future__ import annotations

import functools
import numbers
import operator
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from . import builders
from .builders import (
    MAX_NODES,
    check_counts,
    check_labels,
    check_num_classes,
    concat_ranges,
    scale_counts,
)
from .files import READ_ERRORS, NpzReader, atomic_path, decode_strings, encode_strings

__all__ = ["Tree", "TreeSummary"]

# 2: labels and node names as UTF-8 bytes plus offsets (1 stored numpy 'U' arrays, which drop
# trailing NUL characters).
_FORMAT_VERSION = 2

# key -> (dtype kinds, ndim) of every array a tree's state may hold ("u1": exactly uint8).
_STATE_ARRAYS = {
    "format_version": ("iu", 0),
    "num_classes": ("iu", 0),
    "child_offset": ("iu", 1),
    "children": ("iu", 1),
    "label_bytes": ("u1", 1),
    "label_offset": ("iu", 1),
    "node_name_bytes": ("u1", 1),
    "node_name_offset": ("iu", 1),
    "node_named": ("b", 1),
    "labels": ("U", 1),  # format 1
    "node_names": ("U", 1),  # format 1
}
# Keys that come together, per format version.
_STATE_GROUPS = {
    1: [("labels",), ("node_names", "node_named")],
    2: [("label_bytes", "label_offset"), ("node_name_bytes", "node_name_offset", "node_named")],
}


def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    a.setflags(write=False)
    return a


class TreeSummary(NamedTuple):
    """What :meth:`Tree.describe` reports; ``str()`` gives it as three lines of text."""

    num_classes: int
    num_nodes: int
    num_params: int
    depth: int  # longest root-to-class path, in edges
    mean_depth: float  # unweighted mean over the classes
    depth_histogram: dict[int, int]  # depth -> number of classes at that depth
    arity_histogram: dict[int, int]  # children -> number of internal nodes with that many
    expected_code_length: float | None  # mean depth weighted by the counts given, else None

    def __str__(self) -> str:
        head = (
            f"{self.num_classes} classes, {self.num_nodes} internal nodes, {self.num_params} parameter rows, "
            f"depth {self.depth} (mean {self.mean_depth:.1f})"
        )
        if self.expected_code_length is not None:
            head += f", expected code length {self.expected_code_length:.3f}"
        depths = " ".join(f"{d}:{n}" for d, n in self.depth_histogram.items())
        arities = " ".join(f"{a}:{n}" for a, n in self.arity_histogram.items())
        return f"{head}\nclasses per depth: {depths}\nnodes per arity: {arities}"


class _Derived(NamedTuple):
    """The arrays computed once from the child table (all read-only; ``V`` classes, ``N`` nodes)."""

    arity: np.ndarray  # (N,) children per internal node
    param_offset: np.ndarray  # (N + 1,) first weight row per node: 0, 1 or k rows each
    parent: np.ndarray  # (V + N,) parent node of each ref, -1 for the root
    choice: np.ndarray  # (V + N,) position of each ref among its parent's children
    node_depth: np.ndarray  # (N,) edges from the root
    node_decisions: np.ndarray  # (N,) deciding nodes (two or more children) strictly above
    class_depth: np.ndarray  # (V,) edges from the root
    decision_lengths: np.ndarray  # (V,) deciding nodes on the path


def _derived_array(name: str, doc: str) -> property:
    return property(operator.attrgetter(f"_derived.{name}"), doc=doc)


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
        labels: optional class names (unique ``str``: any string, saved and loaded losslessly).
        node_names: optional internal-node names (``str``, or ``None`` for unnamed nodes).

    Raises:
        ValueError: a class or node is missing, duplicated, unreachable (an orphan or a cycle),
            a node has no children, labels/names clash, or there are more than ``2**31 - 1``
            classes or nodes (ids are int32 downstream).
        TypeError: ``num_classes`` is not an integer, the arrays are not integers, or a label or
            node name is not a ``str``.
    """

    def __init__(
        self,
        num_classes: int,
        child_offset: Any,
        children: Any,
        labels: Sequence[str] | None = None,
        node_names: Sequence[str | None] | None = None,
    ) -> None:
        V = check_num_classes(num_classes)
        off, ch = _as_index_arrays(child_offset, children)
        _check_offsets(off, ch)
        N = off.size - 1
        if N > MAX_NODES:
            raise ValueError(f"{N} internal nodes is too many: node ids are int32 (at most {MAX_NODES})")
        _check_each_ref_once(ch, V, N)
        labels_t = check_labels(labels, V)
        names = _node_names_tuple(node_names, N)
        bfs = _breadth_first_order(off, ch, V)
        off, ch = _renumber(off, ch, V, bfs)
        if names is not None:
            names = tuple(names[int(j)] for j in bfs)
            _check_node_names(names, labels_t)
        self._num_classes = V
        self._child_offset = _readonly(off)
        self._children = _readonly(ch)
        self._labels = labels_t
        self._node_names = names
        self._derived = _derive(V, off, ch)

    # ------------------------------------------------------------------ builders
    @classmethod
    def huffman(cls, counts: Any, arity: int = 2, labels: Sequence[str] | None = None) -> Tree:
        """Huffman tree from class counts: frequent classes get short codes.

        This is word2vec's and fastText's tree (``arity=2``); ``arity=k`` builds the optimal
        k-ary code. The expected code length under ``counts`` is minimal. Ties are broken by class
        index, so the tree is deterministic.

        ``counts`` is any iterable of non-negative real numbers (list, numpy array, generator,
        ``dict.values()``), count ``i`` being class ``i``'s; or a mapping ``label -> count`` such
        as a ``collections.Counter``, whose keys become the labels (in the mapping's order; then
        ``labels`` must be ``None``). ``arity`` is any integer (``numbers.Integral``).

        >>> t = Tree.huffman([10, 1, 1, 1, 1])
        >>> [len(t.path(i)[0]) for i in range(5)]
        [1, 3, 3, 3, 3]
        >>> Tree.huffman([1, 1, 1, 1, 1, 1, 1], arity=3).depth
        2
        """
        return cls(*builders.huffman(counts, arity, labels))

    @classmethod
    def balanced(cls, num_classes: int, arity: int = 2, labels: Sequence[str] | None = None) -> Tree:
        """A complete tree of depth ``ceil(log_arity(num_classes))`` over classes in index order.

        >>> t = Tree.balanced(10, arity=3)
        >>> t.depth, t.num_nodes
        (3, 5)
        """
        return cls(*builders.balanced(num_classes, arity, labels))

    @classmethod
    def two_level(
        cls,
        num_classes: int,
        num_clusters: int | None = None,
        counts: Any = None,
        labels: Sequence[str] | None = None,
    ) -> Tree:
        """Root -> clusters -> classes: the class-factored softmax (Theano's ``h_softmax``).

        ``num_clusters`` defaults to ``ceil(sqrt(num_classes))``. Without ``counts`` the classes
        are cut into contiguous clusters of near-equal size; with ``counts`` they are sorted by
        frequency and binned so that every cluster holds roughly equal probability mass
        (frequent classes get small clusters), as in Mikolov et al.'s class-based RNNLM. A class
        heavier than one cluster's share gets a cluster to itself, so there may be fewer clusters.
        Classes with a zero count carry no mass to bin by: they are spread over the clusters,
        smallest clusters first, so that the largest cluster stays as small as possible.
        ``counts`` is accepted in the forms :meth:`huffman` takes (a ``label -> count`` mapping
        included).

        >>> t = Tree.two_level(100)
        >>> t.num_nodes, t.depth        # root + 10 clusters
        (11, 2)
        >>> t = Tree.two_level(6, num_clusters=2, counts=[50, 30, 8, 6, 4, 2])
        >>> [int(t.path(i)[0][1]) for i in range(6)]     # the cluster of each class
        [1, 2, 2, 2, 2, 2]
        """
        return cls(*builders.two_level(num_classes, num_clusters, counts, labels))

    @classmethod
    def from_paths(cls, paths: Sequence[Sequence[str]], labels: Sequence[str] | None = None) -> Tree:
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
        return cls(*builders.from_paths(paths, labels))

    @classmethod
    def from_embeddings(
        cls,
        vectors: Any,
        arity: int = 2,
        counts: Any = None,
        seed: int = 0,
        labels: Sequence[str] | None = None,
        iterations: int = 4,
    ) -> Tree:
        """A tree learned from class vectors: recursive balanced k-means, as Mnih & Hinton built
        their HLBL trees from learned word representations.

        ``vectors`` is ``(num_classes, dim)`` (a class's output embedding, the mean hidden state
        of its examples, its word2vec vector, ...). The root's classes are split into ``arity``
        parts by k-means under a balance constraint, then each part likewise, until parts are
        single classes; similar classes therefore share long path prefixes, so the node decisions
        near the leaves separate look-alikes. All nodes of one depth are split together, in a few
        vectorized passes (``O(num_classes * arity * dim * iterations)`` per level).

        * Without ``counts`` every split is balanced by size (part sizes differ by at most one),
          so the depth is ``ceil(log_arity(num_classes))``, as in :meth:`balanced`.
        * With ``counts`` each split balances probability mass instead (a class heavier than a
          part's share gets a part to itself), so frequent classes keep short paths and the
          expected code length comes near Huffman's, while similar classes still go together.

        Deterministic given ``seed`` (the initial centroids are random members of each node).

        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> centers = rng.normal(size=(4, 8))
        >>> vecs = np.repeat(centers, 2, axis=0) + 0.01 * rng.normal(size=(8, 8))  # 4 pairs
        >>> t = Tree.from_embeddings(vecs)
        >>> t.depth, all(t.parent[2 * i] == t.parent[2 * i + 1] for i in range(4))
        (3, True)
        >>> zipf = 1 / np.arange(1, 10_001)
        >>> learned = Tree.from_embeddings(rng.normal(size=(10_000, 16)), counts=zipf)
        >>> round(learned.expected_code_length(zipf), 2), round(Tree.huffman(zipf).expected_code_length(zipf), 2)
        (10.01, 9.56)
        >>> round(Tree.balanced(10_000).expected_code_length(zipf), 2)
        13.45

        Args:
            vectors: ``(num_classes, dim)`` real numbers (computed in float32).
            arity: children per node (``>= 2``).
            counts: optional class counts, in any form :meth:`huffman` takes.
            seed: seed of the initial centroids.
            labels: optional class names.
            iterations: k-means rounds per split (assign, then move the centroids).
        """
        return cls(*builders.from_embeddings(vectors, arity, counts, seed, labels, iterations))

    # ------------------------------------------------------------------ state, save / load
    def state(self) -> dict[str, np.ndarray]:
        """The arrays that define the tree: what :meth:`save` writes, for embedding in other files.

        Plain integer, ``uint8`` and ``bool`` arrays, nothing that needs pickle. Labels and node
        names are stored losslessly as UTF-8 bytes (``surrogatepass``, so that any ``str``, even
        one with a lone surrogate, comes back as it went in) plus ``(n + 1,)`` offsets:
        ``label_bytes[label_offset[i]:label_offset[i + 1]]`` is label ``i``. ``node_named`` says
        which internal nodes have a name (an unnamed one has an empty slice).
        """
        out = {
            "format_version": np.array(_FORMAT_VERSION, dtype=np.int64),
            "num_classes": np.array(self._num_classes, dtype=np.int64),
            "child_offset": np.array(self._child_offset),
            "children": np.array(self._children),
        }
        if self._labels is not None:
            out["label_bytes"], out["label_offset"] = encode_strings(self._labels)
        if self._node_names is not None:
            names = (n or "" for n in self._node_names)
            out["node_name_bytes"], out["node_name_offset"] = encode_strings(names)
            out["node_named"] = np.array([n is not None for n in self._node_names], dtype=bool)
        return out

    @classmethod
    def from_state(cls, data: Mapping[str, Any]) -> Tree:
        """Inverse of :meth:`state` (keys it does not know are ignored).

        Every array's dtype and shape is checked against the claimed sizes before anything
        proportional to them is built, so a few bytes claiming ``num_classes=10**8`` fail at once;
        then the arrays are validated like any new tree. Also reads format 1 (labels and names as
        numpy ``'U'`` arrays, as written before format 2).
        """
        arrays = {k: np.asarray(v) for k, v in data.items() if k in _STATE_ARRAYS}
        layout = {k: (a.dtype, a.shape) for k, a in arrays.items()}
        version, V = _check_state_layout(layout, arrays.__getitem__)
        if version == 1:
            labels, names = _strings_v1(arrays)
        else:
            labels = names = None
            if "label_bytes" in arrays:
                labels = decode_strings(arrays["label_bytes"], arrays["label_offset"], "label")
            if "node_name_bytes" in arrays:
                names = _decode_names(arrays)
        return cls(V, arrays["child_offset"], arrays["children"], labels=labels, node_names=names)

    def save(self, path: str | os.PathLike) -> None:
        """Write :meth:`state` to a portable ``.npz`` file (no pickle), atomically.

        >>> import tempfile, os
        >>> d = tempfile.mkdtemp(); f = os.path.join(d, "t.npz")
        >>> Tree.huffman([3, 2, 1], labels=["a", "b", "c"]).save(f)
        >>> Tree.load(f).labels
        ('a', 'b', 'c')
        """
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            # numpy >= 2.1's stubs add allow_pickle=, which a **dict could in principle fill; passing
            # it explicitly would store an "allow_pickle" array on the numpy < 2.1 we support.
            np.savez_compressed(f, **self.state())  # type: ignore[arg-type]

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tree:
        """Read a tree written by :meth:`save` (:meth:`from_state` of the file's arrays).

        The file is not trusted: its array headers are checked against each other and against the
        archive before any data is read (a small file costs small memory), and any problem, from
        a truncated or bit-flipped archive to arrays that do not form a tree, is one ``ValueError``
        naming the file.
        """
        name = os.fspath(path)
        try:
            with NpzReader(name) as z:
                unknown = sorted(set(z.headers) - set(_STATE_ARRAYS))
                if unknown:
                    raise ValueError(f"unexpected array {unknown[0]!r}")
                layout = {k: (h.dtype, h.shape) for k, h in z.headers.items()}
                _check_state_layout(layout, z.read)
                data = {k: z.read(k) for k in z.headers}
            return cls.from_state(data)
        except (*READ_ERRORS, TypeError) as e:
            raise ValueError(f"{name!r} is not a readable hsoftmax tree file: {e}") from e

    def __getstate__(self) -> dict[str, Any]:
        return self.state()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(Tree.from_state(state).__dict__)

    # ------------------------------------------------------------------ sizes and shape
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
        return int(self.param_offset[-1])

    @property
    def depth(self) -> int:
        """Longest root-to-class path, in edges (single-child nodes included)."""
        return int(self.class_depth.max())

    @property
    def max_decisions(self) -> int:
        """Longest path counted in decisions (nodes with two or more children): the padded width."""
        return int(self.decision_lengths.max())

    @property
    def is_binary(self) -> bool:
        """Every internal node has at most two children (word2vec's sigmoid-per-node case)."""
        return bool(self.arity.max() <= 2)

    @property
    def is_two_level(self) -> bool:
        """Root -> internal nodes -> classes only (the two-matmul case)."""
        V, split = self._num_classes, self._child_offset[1]
        return bool(np.all(self._children[:split] >= V) and np.all(self._children[split:] < V))

    # ------------------------------------------------------------------ names
    @property
    def labels(self) -> tuple[str, ...] | None:
        """Class names, or ``None``."""
        return self._labels

    @property
    def node_names(self) -> tuple[str | None, ...] | None:
        """Internal-node names (``None`` for unnamed ones, the root of a taxonomy included), or ``None``."""
        return self._node_names

    # ------------------------------------------------------------------ arrays (read-only)
    # The child table, as validated and renumbered.
    child_offset = property(operator.attrgetter("_child_offset"), doc="CSR offsets of the child table.")
    children = property(operator.attrgetter("_children"), doc="Child refs (class c -> c, node j -> num_classes + j).")
    # Per internal node.
    arity = _derived_array("arity", "Number of children of each internal node.")
    param_offset = _derived_array("param_offset", "First weight row of each node (num_nodes + 1,).")
    node_depth = _derived_array("node_depth", "Depth of each internal node (root 0).")
    node_decisions = _derived_array(
        "node_decisions", "Decisions (nodes with two or more children) strictly above each internal node."
    )
    # Per ref (classes, then internal nodes).
    parent = _derived_array("parent", "Parent internal node of each ref (-1 for the root).")
    choice = _derived_array("choice", "Child index of each ref within its parent.")
    # Per class.
    class_depth = _derived_array("class_depth", "Depth of each class in edges.")
    decision_lengths = _derived_array("decision_lengths", "(V,) number of decisions per class.")
    decision_nodes = property(
        lambda self: self._padded_decisions[0],
        doc="(V, max_decisions) nodes deciding each class, padded with 0 (built on first use).",
    )
    decision_choices = property(
        lambda self: self._padded_decisions[1],
        doc="(V, max_decisions) choice at each decision, padded with 0 (built on first use).",
    )

    @functools.cached_property
    def _padded_decisions(self) -> tuple[np.ndarray, np.ndarray]:
        # Built on first use: a consumer that walks ``parent``/``choice`` itself (the word2vec
        # trainer) never pays for the (V, max_decisions) arrays.
        return _build_padded_decisions(self._num_classes, self._derived)

    # ------------------------------------------------------------------ queries
    def path(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """``(nodes, choices)``: internal nodes from the root down to class ``i``'s parent and the
        child index taken at each (single-child nodes included)."""
        if isinstance(i, bool) or not isinstance(i, numbers.Integral):
            raise TypeError(f"class index must be an int, got {type(i).__name__}")
        if not 0 <= i < self._num_classes:
            raise ValueError(f"class {i} is out of range [0, {self._num_classes})")
        V, parent, choice = self._num_classes, self.parent, self.choice
        nodes, choices = [], []
        ref = int(i)
        while parent[ref] >= 0:
            nodes.append(int(parent[ref]))
            choices.append(int(choice[ref]))
            ref = V + nodes[-1]
        return np.array(nodes[::-1], dtype=np.int64), np.array(choices[::-1], dtype=np.int64)

    def index(self, label: str) -> int:
        """Class index of a label."""
        if self._labels is None:
            raise ValueError("this tree has no labels")
        try:
            return self._label_index[label]
        except KeyError:
            raise ValueError(f"unknown label {label!r}") from None

    @functools.cached_property
    def _label_index(self) -> dict[str, int]:
        return {lab: i for i, lab in enumerate(self._labels or ())}

    def expected_code_length(self, counts: Any) -> float:
        """Mean number of edges from the root to a class, weighted by ``counts``."""
        c = scale_counts(check_counts(counts))  # scaled: a sum of huge counts must not overflow
        if c.size != self._num_classes:
            raise ValueError(f"counts has {c.size} entries for {self._num_classes} classes")
        total = c.sum()
        if total == 0:
            raise ValueError("counts are all zero: there is no mean to take")
        return float((c * self.class_depth).sum() / total)

    # ------------------------------------------------------------------ inspection
    def depth_histogram(self) -> dict[int, int]:
        """Number of classes at each depth (edges from the root), for the depths that occur.

        >>> Tree.huffman([10, 1, 1, 1, 1]).depth_histogram()
        {1: 1, 3: 4}
        """
        counts = np.bincount(self.class_depth)
        return {int(d): int(counts[d]) for d in np.flatnonzero(counts)}

    def arity_histogram(self) -> dict[int, int]:
        """Number of internal nodes with each number of children, for the arities that occur.

        >>> Tree.balanced(10, arity=3).arity_histogram()
        {2: 1, 3: 4}
        """
        counts = np.bincount(self.arity)
        return {int(a): int(counts[a]) for a in np.flatnonzero(counts)}

    def describe(self, counts: Any = None) -> TreeSummary:
        """Sizes, depth and arity histograms, and (given ``counts``) the expected code length.

        >>> s = Tree.huffman([10, 1, 1, 1, 1]).describe(counts=[10, 1, 1, 1, 1])
        >>> s.depth_histogram, s.arity_histogram, s.expected_code_length
        ({1: 1, 3: 4}, {2: 4}, 1.5714285714285714)
        >>> print(s)
        5 classes, 4 internal nodes, 4 parameter rows, depth 3 (mean 2.6), expected code length 1.571
        classes per depth: 1:1 3:4
        nodes per arity: 2:4
        """
        return TreeSummary(
            num_classes=self._num_classes,
            num_nodes=self.num_nodes,
            num_params=self.num_params,
            depth=self.depth,
            mean_depth=float(self.class_depth.mean()),
            depth_histogram=self.depth_histogram(),
            arity_histogram=self.arity_histogram(),
            expected_code_length=None if counts is None else self.expected_code_length(counts),
        )

    @functools.cached_property
    def _subtree_classes(self) -> np.ndarray:
        """``(num_nodes,)`` number of classes under each internal node."""
        V, N = self._num_classes, self.num_nodes
        under = np.bincount(self.parent[:V], minlength=N)
        # Breadth-first numbering: every child has a larger id than its parent, so adding the
        # nodes into their parents from the last id down totals each subtree before it is used.
        parent = self.parent[V:]
        for depth in range(int(self.node_depth.max()), 0, -1):
            level = np.flatnonzero(self.node_depth == depth)
            np.add.at(under, parent[level], under[level])
        return _readonly(under)

    def render(self, node: int | str = 0, max_depth: int | None = 3, max_children: int | None = 10) -> str:
        """A text drawing of the subtree under internal node ``node`` (an id or a node name).

        An internal node reads ``[id] name (children, classes under it)``, a class ``id label``.
        At most ``max_children`` children are drawn per node (the rest are counted on a
        ``… N more`` line) and ``max_depth`` levels below ``node`` (a node cut off there ends in
        ``…``); ``None`` draws everything.

        >>> t = Tree.from_paths([["fruit"], ["fruit"], ["fruit"], ["veg"]],
        ...                     labels=["apple", "pear", "fig", "leek"])
        >>> print(t.render(max_children=2))
        [0] (2 children, 4 classes)
        ├── [1] fruit (3 children, 3 classes)
        │   ├── 0 apple
        │   ├── 1 pear
        │   └── … 1 more
        └── [2] veg (1 child, 1 class)
            └── 3 leek
        >>> print(t.render("fruit", max_depth=0))
        [1] fruit (3 children, 3 classes) …
        """
        j = self._node_id(node)
        if max_depth is not None:
            max_depth = builders.check_index(max_depth, "max_depth", 0)
        if max_children is not None:
            max_children = builders.check_index(max_children, "max_children", 1)
        lines: list[str] = []
        self._render_into(lines, self._num_classes + j, "", "", max_depth, max_children)
        return "\n".join(lines)

    def _node_id(self, node: int | str) -> int:
        if isinstance(node, str):
            if self._node_names is None or node not in self._node_names:
                raise ValueError(f"no internal node is named {node!r}")
            return self._node_names.index(node)
        j = builders.check_index(node, "node", 0)
        if j >= self.num_nodes:
            raise ValueError(f"node {j} is out of range [0, {self.num_nodes})")
        return j

    def _ref_text(self, ref: int) -> str:
        V = self._num_classes
        if ref < V:
            return f"{ref} {self._labels[ref]}" if self._labels is not None else str(ref)
        j = ref - V
        name = self._node_names[j] if self._node_names is not None else None
        k, n = int(self.arity[j]), int(self._subtree_classes[j])
        size = f"({k} child{'ren' if k != 1 else ''}, {n} class{'es' if n != 1 else ''})"
        return f"[{j}] {name} {size}" if name is not None else f"[{j}] {size}"

    def _render_into(
        self, lines: list[str], ref: int, lead: str, indent: str, max_depth: int | None, max_children: int | None
    ) -> None:
        """Append ``ref``'s line (after ``lead``) and, below it, its children's (after ``indent``)."""
        V = self._num_classes
        text = self._ref_text(ref)
        if ref >= V and max_depth == 0:
            lines.append(lead + text + " …")
            return
        lines.append(lead + text)
        if ref < V:
            return
        j = ref - V
        kids = self._children[self._child_offset[j] : self._child_offset[j + 1]].tolist()
        shown = kids if max_children is None else kids[:max_children]
        hidden = len(kids) - len(shown)
        below = None if max_depth is None else max_depth - 1
        for i, kid in enumerate(shown):
            last = i == len(shown) - 1 and not hidden
            branch, extend = ("└── ", "    ") if last else ("├── ", "│   ")
            self._render_into(lines, kid, indent + branch, indent + extend, below, max_children)
        if hidden:
            lines.append(f"{indent}└── … {hidden} more")

    # ------------------------------------------------------------------ identity
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
            f"max_arity={int(self.arity.max())}, num_params={self.num_params})"
        )


# ---------------------------------------------------------------------------- validation steps
def _as_index_arrays(child_offset: Any, children: Any) -> tuple[np.ndarray, np.ndarray]:
    """Both arrays as 1-D int64 (any integer dtype is accepted; an empty list has no dtype)."""
    off = np.asarray(child_offset)
    ch = np.asarray(children)
    if off.ndim != 1 or ch.ndim != 1:
        raise ValueError("child_offset and children must be 1-D arrays")
    if off.size and not np.issubdtype(off.dtype, np.integer):
        raise TypeError(f"child_offset must be integers, got {off.dtype}")
    if ch.size and not np.issubdtype(ch.dtype, np.integer):
        raise TypeError(f"children must be integers, got {ch.dtype}")
    return off.astype(np.int64), ch.astype(np.int64)


def _check_offsets(off: np.ndarray, ch: np.ndarray) -> None:
    """A root exists, the offsets are a CSR index into ``ch`` and no node is childless."""
    if off.size < 2:
        raise ValueError("a tree needs a root: child_offset must have at least 2 entries")
    if off[0] != 0 or off[-1] != ch.size or np.any(np.diff(off) < 0):
        raise ValueError("child_offset must start at 0, be non-decreasing and end at len(children)")
    arity = np.diff(off)
    if np.any(arity == 0):
        raise ValueError(f"internal node {int(np.flatnonzero(arity == 0)[0])} has no children")


def _check_each_ref_once(ch: np.ndarray, V: int, N: int) -> None:
    """Every class and every non-root node is a child exactly once; the root never is.

    Costs memory in proportion to ``ch``, never to the claimed ``V``: a small file claiming
    ``num_classes=10**8`` must fail fast, not allocate a count per claimed class.
    """
    if ch.size and (ch.min() < 0 or ch.max() >= V + N):
        bad = int(ch[(ch < 0) | (ch >= V + N)][0])
        raise ValueError(f"child ref {bad} is out of range [0, {V + N})")
    if ch.size == V + N - 1:  # the size a valid tree has: a count per ref costs no more than ch
        seen = np.bincount(ch, minlength=V + N)
        if np.all(seen[:V] == 1) and seen[V] == 0 and np.all(seen[V + 1 :] == 1):
            return
    raise ValueError(_first_ref_problem(ch, V, N))


def _first_ref_problem(ch: np.ndarray, V: int, N: int) -> str:
    """What is wrong with refs that are not each class and non-root node exactly once, checked in a
    fixed order (duplicate class, missing class, root as a child, two parents, orphan), from the
    sorted distinct refs only."""
    refs, times = np.unique(ch, return_counts=True)
    is_class = refs < V
    dup = refs[is_class & (times > 1)]
    if dup.size:
        return f"class {int(dup[0])} appears more than once (duplicate leaf)"
    classes = refs[is_class]
    if classes.size < V:
        gaps = np.flatnonzero(classes != np.arange(classes.size))
        return f"class {int(gaps[0]) if gaps.size else classes.size} is missing from the tree"
    if np.any(refs == V):
        return "the root (internal node 0) appears as a child: the tree has a cycle"
    nodes, node_times = refs[refs > V] - V, times[refs > V]
    if np.any(node_times > 1):
        return f"internal node {int(nodes[node_times > 1][0])} has more than one parent"
    gaps = np.flatnonzero(nodes != np.arange(1, nodes.size + 1))
    orphan = int(gaps[0]) + 1 if gaps.size else nodes.size + 1
    return f"internal node {orphan} is an orphan: no parent points to it"


def _node_names_tuple(node_names: Sequence[str | None] | None, N: int) -> tuple[str | None, ...] | None:
    """The names as a tuple of ``str`` (plain ``str``, not a subclass) or ``None``.

    Only strings: a name must come back from :meth:`Tree.save` as it went in, and ``5`` would
    come back as ``'5'``.
    """
    if node_names is None:
        return None
    if isinstance(node_names, (str, bytes)):
        raise TypeError("node_names must be a sequence of names, not a string")
    names = tuple(node_names)
    if len(names) != N:
        raise ValueError(f"got {len(names)} node names for {N} internal nodes")
    for j, name in enumerate(names):
        if name is not None and not isinstance(name, str):
            raise TypeError(f"node_names[{j}] must be a str or None, got {type(name).__name__} {name!r}")
    return tuple(None if n is None else str.__str__(n) for n in names)


def _breadth_first_order(off: np.ndarray, ch: np.ndarray, V: int) -> np.ndarray:
    """Internal nodes in breadth-first order from the root.

    With one parent per node (checked before), a node reached from the root is visited once, so
    anything left unvisited sits on a cycle cut off from the root.
    """
    N = off.size - 1
    order = [np.zeros(1, dtype=np.int64)]
    frontier = order[0]
    visited = 1
    while frontier.size:
        kids = ch[concat_ranges(off[frontier], off[frontier + 1])]
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
    return bfs


def _renumber(off: np.ndarray, ch: np.ndarray, V: int, bfs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The child table with internal node ``bfs[j]`` renamed ``j`` (children keep their order)."""
    N = off.size - 1
    new_id = np.empty(N, dtype=np.int64)
    new_id[bfs] = np.arange(N)
    new_off = np.zeros(N + 1, dtype=np.int64)
    np.cumsum(np.diff(off)[bfs], out=new_off[1:])
    new_ch = ch[concat_ranges(off[bfs], off[bfs + 1])]
    internal = new_ch >= V
    new_ch[internal] = new_id[new_ch[internal] - V] + V
    return new_off, new_ch


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


# ---------------------------------------------------------------------------- state layout and strings
def _check_state_layout(
    layout: Mapping[str, tuple[np.dtype, tuple[int, ...]]], read: Callable[[str], np.ndarray]
) -> tuple[int, int]:
    """``(format_version, num_classes)`` once every array's dtype and shape fits the claimed sizes.

    Looks at dtypes and shapes only (``read`` fetches the two scalars), so it costs nothing
    however large the claimed sizes are: after it, every array is as long as ``num_classes`` and
    the number of internal nodes say, and those are bounded by the data actually present.
    """
    for key in ("format_version", "num_classes", "child_offset", "children"):
        if key not in layout:
            raise ValueError(f"tree data is missing {key!r}")
    for key, (dtype, shape) in layout.items():
        kinds, ndim = _STATE_ARRAYS[key]
        ok = dtype == np.uint8 if kinds == "u1" else dtype.kind in kinds
        if not ok or len(shape) != ndim:
            want = {"iu": "integers", "u1": "uint8 bytes", "b": "booleans", "U": "strings"}[kinds]
            raise ValueError(f"tree array {key!r} must be {ndim}-D {want}, got {dtype} of shape {shape}")
    version = int(read("format_version"))
    if version not in _STATE_GROUPS:
        raise ValueError(f"unsupported tree format version {version}")
    for group in _STATE_GROUPS[version]:
        present = [k for k in group if k in layout]
        if present and len(present) != len(group):
            raise ValueError(f"tree data has {present[0]!r} without {min(set(group) - set(present))!r}")
    others = {k for v, groups in _STATE_GROUPS.items() if v != version for g in groups for k in g}
    others -= {k for g in _STATE_GROUPS[version] for k in g}
    if others & set(layout):
        raise ValueError(f"tree data of format {version} has {min(others & set(layout))!r}")
    V = check_num_classes(int(read("num_classes")))
    N = layout["child_offset"][1][0] - 1
    if N < 1:
        raise ValueError("a tree needs a root: child_offset must have at least 2 entries")
    expected = {
        "children": V + N - 1,
        "label_offset": V + 1,
        "labels": V,
        "node_name_offset": N + 1,
        "node_named": N,
        "node_names": N,
    }
    for key, n in expected.items():
        if key in layout and layout[key][1][0] != n:
            raise ValueError(
                f"tree array {key!r} has {layout[key][1][0]} entries, but a tree of {V} classes and "
                f"{N} internal nodes has {n}"
            )
    return version, V


def _decode_names(arrays: Mapping[str, np.ndarray]) -> list[str | None]:
    """Node names of a format-2 state: ``None`` where ``node_named`` is false (an empty slice)."""
    off = arrays["node_name_offset"].astype(np.int64)
    named = arrays["node_named"]
    texts = decode_strings(arrays["node_name_bytes"], off, "node name")
    stray = ~named & (np.diff(off) != 0)
    if np.any(stray):
        j = int(np.flatnonzero(stray)[0])
        raise ValueError(f"internal node {j} is marked unnamed but has a name")
    return [t if ok else None for t, ok in zip(texts, named.tolist())]


def _strings_v1(arrays: Mapping[str, np.ndarray]) -> tuple[list[str] | None, list[str | None] | None]:
    """Labels and names of a format-1 state ('U' arrays: what format 1 could not keep is lost)."""
    labels = names = None
    if "labels" in arrays:
        labels = [str(s) for s in arrays["labels"].tolist()]
    if "node_names" in arrays:
        named = arrays["node_named"].tolist()
        names = [str(s) if ok else None for s, ok in zip(arrays["node_names"].tolist(), named)]
    return labels, names


# ---------------------------------------------------------------------------- derived arrays
def _derive(V: int, off: np.ndarray, ch: np.ndarray) -> _Derived:
    """Everything the consumers read besides the child table, from a breadth-first child table."""
    arity = np.diff(off)
    parent, choice = _parents_and_choices(V, off, ch)
    node_depth, node_dec = _node_levels(V, off, ch, parent, arity)
    class_parent = parent[:V]
    derived = _Derived(
        arity=arity,
        param_offset=_param_offsets(arity),
        parent=parent,
        choice=choice,
        node_depth=node_depth,
        node_decisions=node_dec,
        class_depth=node_depth[class_parent] + 1,
        decision_lengths=node_dec[class_parent] + (arity[class_parent] >= 2),
    )
    return _Derived(*map(_readonly, derived))


def _parents_and_choices(V: int, off: np.ndarray, ch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    N = off.size - 1
    parent = np.full(V + N, -1, dtype=np.int64)
    choice = np.zeros(V + N, dtype=np.int64)
    owner = np.repeat(np.arange(N), np.diff(off))
    parent[ch] = owner
    choice[ch] = np.arange(ch.size) - off[owner]
    return parent, choice


def _param_offsets(arity: np.ndarray) -> np.ndarray:
    # One child: no parameters (taken with probability 1); two: one sigmoid row; k: k softmax rows.
    rows = np.where(arity == 1, 0, np.where(arity == 2, 1, arity))
    poff = np.zeros(arity.size + 1, dtype=np.int64)
    np.cumsum(rows, out=poff[1:])
    return poff


def _node_levels(
    V: int, off: np.ndarray, ch: np.ndarray, parent: np.ndarray, arity: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``(node_depth, node_decisions)`` level by level.

    Nodes are numbered breadth-first, so each level is a contiguous id block and the internal
    children of block ``[a, b)`` are exactly the next block.
    """
    N = off.size - 1
    node_depth = np.zeros(N, dtype=np.int64)
    node_dec = np.zeros(N, dtype=np.int64)
    a, b, level = 0, 1, 0
    while a < b:
        node_depth[a:b] = level
        kids = ch[off[a] : off[b]]
        kids = kids[kids >= V] - V
        if kids.size:
            p = parent[V + kids]
            node_dec[kids] = node_dec[p] + (arity[p] >= 2)
        a, b, level = b, b + kids.size, level + 1
    return node_depth, node_dec


def _build_padded_decisions(V: int, d: _Derived) -> tuple[np.ndarray, np.ndarray]:
    """``(decision_nodes, decision_choices)``, ``(V, max(max_decisions, 1))`` int32 padded with 0.

    Walks every class up to the root at once; a deciding node lands at the column given by the
    number of decisions above it.
    """
    D = max(int(d.decision_lengths.max()), 1)
    dn = np.zeros((V, D), dtype=np.int32)
    dc = np.zeros((V, D), dtype=np.int32)
    cls = np.arange(V)
    ref = cls.copy()
    cur = d.parent[:V].copy()
    while cls.size:
        dec = d.arity[cur] >= 2
        dn[cls[dec], d.node_decisions[cur[dec]]] = cur[dec]
        dc[cls[dec], d.node_decisions[cur[dec]]] = d.choice[ref[dec]]
        ref = V + cur
        cur = d.parent[ref]
        keep = cur >= 0
        cls, ref, cur = cls[keep], ref[keep], cur[keep]
    return _readonly(dn), _readonly(dc)

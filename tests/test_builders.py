"""hsoftmax.builders and the Tree classmethods that call them: optimal Huffman codes, balanced
depth, two-level cluster balance, taxonomies from paths, and each builder's input checks."""

from __future__ import annotations

import heapq
import inspect
import math
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hsoftmax import Tree, builders


def test_builders_return_the_constructor_arguments_in_order():
    # Tree.x is cls(*builders.x(...)): the NamedTuple's fields must be __init__'s parameters.
    params = list(inspect.signature(Tree.__init__).parameters)[1:]
    assert list(builders.TreeArrays._fields) == params
    a = builders.from_paths([["x"], ["x"], []], labels=["a", "b", "c"])
    assert isinstance(a, builders.TreeArrays)
    assert Tree(*a) == Tree.from_paths([["x"], ["x"], []], labels=["a", "b", "c"])
    assert Tree(*builders.huffman([5, 3, 1, 1], arity=3)) == Tree.huffman([5, 3, 1, 1], arity=3)


def test_builders_import_no_torch():
    code = "import sys, hsoftmax.builders, hsoftmax.tree; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------- Huffman
def optimal_code_length(counts, arity=2) -> float:
    """Expected code length of an optimal prefix code, by an independent heap computation:
    the total cost is the sum of the weights of all merged nodes (zero-weight dummies pad the
    leaves so every merge takes ``arity`` items)."""
    w = [float(c) for c in counts]
    while (len(w) - 1) % (arity - 1):
        w.append(0.0)
    heapq.heapify(w)
    cost = 0.0
    while len(w) > 1:
        merged = sum(heapq.heappop(w) for _ in range(arity))
        cost += merged
        heapq.heappush(w, merged)
    return cost / sum(counts)


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.integers(1, 10_000), min_size=2, max_size=200),
    st.integers(2, 5),
)
def test_huffman_is_optimal(counts, arity):
    t = Tree.huffman(counts, arity=arity)
    assert t.expected_code_length(counts) == pytest.approx(optimal_code_length(counts, arity), rel=1e-12)
    assert int(t.arity.max()) <= arity


def test_huffman_frequent_classes_get_short_codes():
    counts = np.random.default_rng(1).zipf(1.2, 500).astype(float)
    t = Tree.huffman(counts)
    order = np.argsort(-counts, kind="stable")
    depths = t.class_depth[order]
    assert np.all(np.diff(depths) >= 0) or np.corrcoef(counts, t.class_depth)[0, 1] < 0
    assert t.class_depth[np.argmax(counts)] == t.class_depth.min()
    assert t.is_binary and t.num_nodes == 499


def test_huffman_is_deterministic_and_word2vec_sized():
    counts = [5, 5, 5, 5, 1, 1]
    assert Tree.huffman(counts) == Tree.huffman(counts)
    # Equal counts: a balanced code.
    t = Tree.huffman([1] * 8)
    assert set(t.class_depth.tolist()) == {3}


def test_large_huffman_builds_quickly_and_correctly():
    counts = 1e6 / np.arange(1, 200_001)
    t = Tree.huffman(counts)
    assert t.num_nodes == 199_999
    # Zipf: depth grows like log V; the most frequent class sits near the root.
    assert t.depth < 40 and t.class_depth[0] <= 4


# ---------------------------------------------------------------------------- balanced / two-level
@pytest.mark.parametrize("V,k", [(1, 2), (2, 2), (7, 2), (8, 2), (9, 2), (100, 3), (1000, 10)])
def test_balanced_depth(V, k):
    t = Tree.balanced(V, arity=k)
    assert t.depth == (0 if V == 1 else math.ceil(math.log(V) / math.log(k) - 1e-9)) or V == 1
    assert int(t.arity.max()) <= k
    assert t.class_depth.max() - t.class_depth.min() <= 1


def test_two_level_defaults():
    t = Tree.two_level(1000)
    assert t.num_nodes == 1 + math.ceil(math.sqrt(1000))
    assert t.is_two_level and t.depth == 2


def test_two_level_frequency_binning_balances_mass():
    rng = np.random.default_rng(3)
    counts = rng.zipf(1.1, 5000).astype(float)
    counts = np.minimum(counts, 1e6)
    C = 50
    t = Tree.two_level(5000, num_clusters=C, counts=counts)
    assert t.is_two_level
    cluster = np.asarray(t.parent)[:5000]
    mass = np.bincount(cluster, weights=counts)[1:]
    share = counts.sum() / C
    # A cluster overshoots its share by at most one class; clusters never mix a heavy class in.
    assert np.all(mass <= share + counts.max() + 1e-9)
    # Within a cluster classes are ordered by frequency, and frequent ones sit in small clusters.
    sizes = np.bincount(cluster)[1:]
    assert sizes[0] <= sizes[-1]


def test_two_level_validation():
    with pytest.raises(ValueError, match="num_clusters"):
        Tree.two_level(10, num_clusters=11)
    with pytest.raises(ValueError, match="counts has 3 entries"):
        Tree.two_level(10, counts=[1, 2, 3])


# ---------------------------------------------------------------------------- taxonomy
def test_from_paths_ragged_and_named():
    t = Tree.from_paths(
        [["animal", "dog"], ["animal", "dog"], ["animal"], []],
        labels=["poodle", "collie", "cat", "rock"],
    )
    assert t.num_classes == 4 and t.num_nodes == 3 and t.depth == 3
    assert t.node_names == (None, "animal", "dog")
    assert t.index("cat") == 2
    nodes, _ = t.path(0)
    assert [t.node_names[n] for n in nodes] == [None, "animal", "dog"]


@pytest.mark.parametrize(
    "paths,labels,match",
    [
        ([["a"], ["b", "a"]], None, "two parents"),
        ([["a", "b", "a"]], None, "appears twice"),
        ([["a"], ["b"]], ["a", "x"], "also used as an internal node name"),
        ([["a"], ["b"]], ["x", "x"], "duplicate label"),
        ([["a"], ["b"]], ["x"], "2 classes"),
        ([], None, "empty"),
    ],
)
def test_from_paths_errors(paths, labels, match):
    with pytest.raises(ValueError, match=match):
        Tree.from_paths(paths, labels=labels)


def test_from_paths_type_errors():
    with pytest.raises(TypeError):
        Tree.from_paths(["abc"])
    with pytest.raises(TypeError):
        Tree.from_paths([[1, 2]])


# ---------------------------------------------------------------------------- input checks
@pytest.mark.parametrize(
    "counts,match",
    [
        ([], "empty"),
        ([1, -1], "negative"),
        ([1, float("nan")], "not finite"),
        ([1, float("inf")], "not finite"),
        ([[1, 2]], "1-D"),
    ],
)
def test_bad_counts(counts, match):
    with pytest.raises(ValueError, match=match):
        Tree.huffman(counts)


def test_bad_arguments():
    with pytest.raises(ValueError, match="arity"):
        Tree.huffman([1, 2], arity=1)
    with pytest.raises(TypeError):
        Tree.balanced(3.5)


# ---------------------------------------------------------------------------- accepted inputs (issue 9)
def test_counts_from_any_iterable_of_real_numbers():
    from collections import Counter
    from fractions import Fraction

    expected = Tree.huffman([5, 3, 1, 1])
    d = {"a": 5, "b": 3, "c": 1, "d": 1}
    for counts in [
        (5, 3, 1, 1),
        np.array([5, 3, 1, 1], dtype=np.int16),
        np.array([5, 3, 1, 1], dtype=np.float32),
        [np.int64(5), np.float32(3), np.uint8(1), 1],
        (x for x in [5, 3, 1, 1]),
        d.values(),
        [Fraction(5), 3, 1, 1.0],
    ]:
        assert Tree.huffman(counts) == expected, type(counts)
    # A mapping label -> count names the classes: keys are the labels, in the mapping's order.
    t = Tree.huffman(Counter("abracadabra"))
    assert t.labels == ("a", "b", "r", "c", "d")
    assert t == Tree.huffman([5, 2, 2, 1, 1], labels=["a", "b", "r", "c", "d"])
    assert Tree.two_level(4, 2, counts=d) == Tree.two_level(4, 2, counts=[5, 3, 1, 1], labels=list(d))


@pytest.mark.parametrize(
    "counts,match",
    [
        ("5311", "iterable of numbers"),
        ({5, 3, 1}, "ordered iterable"),
        ({"a": 1}.keys(), "ordered iterable"),
        ([1, "2"], "real numbers"),
        ([1, None], r"counts\[1\] is not a real number"),
        ([True, False], "real numbers"),
        ([1 + 2j, 1], "real numbers"),
        (5, "iterable of numbers"),
        ({1: 5, 2: 3}, "keys are the class labels and must be strings"),
    ],
)
def test_counts_that_are_not_numbers_are_a_type_error(counts, match):
    with pytest.raises(TypeError, match=match):
        Tree.huffman(counts)


def test_mapping_counts_and_labels_together_are_refused():
    with pytest.raises(TypeError, match="mapping"):
        Tree.huffman({"a": 1, "b": 2}, labels=["a", "b"])


def test_integer_like_arguments():
    assert Tree.balanced(np.int64(32), arity=np.int32(4)) == Tree.balanced(32, arity=4)
    assert Tree.huffman([1, 2, 3], arity=np.uint8(3)) == Tree.huffman([1, 2, 3], arity=3)
    assert Tree.two_level(np.int64(10), num_clusters=np.int16(3)) == Tree.two_level(10, 3)
    assert Tree.balanced(4).path(np.int32(3))[0].tolist() == Tree.balanced(4).path(3)[0].tolist()
    # An arity above the class count is the flat tree (and never overflows).
    assert Tree.balanced(5, arity=10**30) == Tree.balanced(5, arity=5)
    assert Tree.huffman([1, 2, 3], arity=10**30) == Tree.huffman([1, 2, 3], arity=3)
    for call in [
        lambda: Tree.balanced("32"),
        lambda: Tree.balanced(32.0),
        lambda: Tree.balanced(True),
        lambda: Tree.balanced(8, arity=2.0),
        lambda: Tree.balanced(8, arity="2"),
        lambda: Tree.huffman([1, 2], arity=True),
        lambda: Tree.two_level(10, num_clusters=3.0),
        lambda: Tree.two_level(10, num_clusters="3"),
    ]:
        with pytest.raises(TypeError, match="must be an int"):
            call()


# ---------------------------------------------------------------------------- sizes that cannot fit (issue 13)
@pytest.mark.parametrize(
    "call",
    [lambda: Tree.balanced(2**40), lambda: Tree.two_level(2**40), lambda: Tree.balanced(2**31, arity=16)],
)
def test_absurd_sizes_are_refused_up_front(call):
    with pytest.raises(ValueError, match="too large: class ids are int32"):
        call()


def test_a_tree_larger_than_memory_is_refused_before_building(monkeypatch):
    monkeypatch.setattr(builders, "_memory_bytes", lambda: 1 << 20)  # a 1 MiB machine
    for call in [
        lambda: Tree.balanced(100_000),
        lambda: Tree.two_level(100_000),
        lambda: Tree.huffman(np.ones(100_000)),
    ]:
        with pytest.raises(ValueError, match=r"needs about .* GiB to build, more than this machine's"):
            call()
    assert Tree.balanced(1000).num_classes == 1000  # small trees still fit
    monkeypatch.setattr(builders, "_memory_bytes", lambda: None)  # unknown: no refusal
    assert Tree.balanced(100_000).num_classes == 100_000


# ---------------------------------------------------------------------------- counts at the edges of float64
def test_two_level_huge_counts_do_not_overflow():
    # [1e308] * 10 summed to inf and built clusters [9, 1]; equal counts mean equal clusters.
    t = Tree.two_level(10, counts=[1e308] * 10)
    assert t == Tree.two_level(10, counts=[1] * 10)
    assert np.bincount(t.parent[:10])[1:].tolist() == [3, 2, 3, 2]
    assert Tree.two_level(10, counts=[5e-324] * 10) == t  # subnormal counts too


def test_huffman_huge_counts_build_the_same_tree():
    rng = np.random.default_rng(0)
    counts = rng.integers(1, 1000, 50).astype(float)
    t = Tree.huffman(counts * 2.0**1012)  # merged sums overflowed to inf
    assert t == Tree.huffman(counts)
    assert t.expected_code_length(counts * 2.0**1012) == pytest.approx(t.expected_code_length(counts))
    with pytest.raises(ValueError, match="all zero"):
        t.expected_code_length(np.zeros(50))


# ---------------------------------------------------------------------------- zero counts (issue 9)
def test_two_level_spreads_zero_count_classes():
    # 100 seen classes and 2,900 unseen ones: the unseen classes all went to the last cluster
    # (2,901 children); spread, no cluster exceeds the even share.
    V, C = 3000, 55
    counts = np.r_[np.ones(100), np.zeros(2900)]
    t = Tree.two_level(V, num_clusters=C, counts=counts)
    sizes = np.bincount(t.parent[:V])[1:]
    assert t.is_two_level and sizes.size == C
    assert sizes.max() == math.ceil(V / C) and sizes.max() - sizes.min() <= 1
    # The seen classes keep their frequency binning: each cluster still holds ~1/C of the mass.
    mass = np.bincount(t.parent[:V], weights=counts)[1:]
    assert mass.max() - mass.min() <= 1


def test_two_level_zero_counts_keep_the_binning_of_the_others():
    rng = np.random.default_rng(5)
    seen = np.minimum(rng.zipf(1.3, 400), 10_000).astype(float)
    counts = np.r_[seen, np.zeros(4000)]
    V, C = counts.size, 60
    t = Tree.two_level(V, num_clusters=C, counts=counts)
    cluster = np.asarray(t.parent)[:V]
    # The seen classes are grouped as without the unseen ones (cluster ids differ: a cluster that
    # binning left empty and unseen classes filled is now counted).
    alone = Tree.two_level(seen.size, num_clusters=C, counts=seen)
    groups = np.unique(cluster[:400], return_inverse=True)[1]
    assert np.array_equal(groups, np.unique(np.asarray(alone.parent)[:400], return_inverse=True)[1])
    sizes = np.bincount(cluster)[1:]
    seen_sizes = np.bincount(cluster[:400], minlength=sizes.size + 1)[1:]
    # Water-filling: a cluster gets unseen classes only up to one common level, and that level is
    # the lowest that takes them all.
    level = sizes[seen_sizes < sizes].max()
    assert np.all((sizes == seen_sizes) | (sizes >= level - 1))
    assert np.all(sizes <= np.maximum(seen_sizes, level))
    assert sizes.max() <= max(seen_sizes.max(), math.ceil(V / C))
    # Unseen classes follow the seen ones within a cluster.
    for j in range(1, t.num_nodes):
        kids = t.children[t.child_offset[j] : t.child_offset[j + 1]]
        assert np.all(np.diff(counts[kids] == 0) >= 0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 50), min_size=1, max_size=300), st.integers(1, 30))
def test_two_level_cluster_sizes_with_zero_counts(counts, C):
    V = len(counts)
    C = min(C, V)
    t = Tree.two_level(V, num_clusters=C, counts=counts)
    assert t.num_classes == V and (V == 1 or t.is_two_level)
    if sum(counts) > 0:
        pos = [c for c in counts if c > 0]
        seen_only = Tree.two_level(len(pos), num_clusters=min(C, len(pos)), counts=pos)
        biggest_seen = int(np.bincount(seen_only.parent[: len(pos)]).max())
        assert int(np.bincount(t.parent[:V]).max()) <= max(biggest_seen, math.ceil(V / C))


# ---------------------------------------------------------------------------- Huffman, compiled
@pytest.mark.parametrize("arity", [2, 3, 7])
def test_compiled_huffman_merge_builds_the_python_merges_tree(arity, monkeypatch):
    # Large inputs run the numba merge; it must make the same comparisons (ties included).
    rng = np.random.default_rng(arity)
    for counts in (rng.integers(0, 4, 3000).astype(float), rng.random(3000), np.ones(3000)):
        python = builders.huffman(counts, arity)
        monkeypatch.setattr(builders, "_HUFFMAN_COMPILED_FROM", 1)
        compiled = builders.huffman(counts, arity)
        monkeypatch.undo()
        assert np.array_equal(python.child_offset, compiled.child_offset)
        assert np.array_equal(python.children, compiled.children)
    assert Tree.huffman(counts, arity).expected_code_length(counts) == pytest.approx(optimal_code_length(counts, arity))


# ---------------------------------------------------------------------------- from_embeddings
def split_sizes(t: Tree) -> list[list[int]]:
    """Classes under each child of each internal node."""
    V = t.num_classes
    under = t._subtree_classes
    return [
        [1 if r < V else int(under[r - V]) for r in t.children[t.child_offset[j] : t.child_offset[j + 1]]]
        for j in range(t.num_nodes)
    ]


@pytest.mark.parametrize("V, arity", [(2, 2), (3, 2), (7, 2), (100, 2), (257, 2), (50, 3), (1000, 4), (333, 16)])
def test_from_embeddings_splits_by_size_within_one(V, arity):
    X = np.random.default_rng(V).normal(size=(V, 5))
    t = Tree.from_embeddings(X, arity=arity)
    assert t.num_classes == V  # the constructor checked every class appears exactly once
    for sizes in split_sizes(t):
        assert len(sizes) == min(arity, sum(sizes))
        assert max(sizes) - min(sizes) <= 1, sizes
    assert t.depth == Tree.balanced(V, arity).depth


def test_from_embeddings_is_deterministic_by_seed():
    X = np.random.default_rng(0).normal(size=(500, 8))
    a, b = Tree.from_embeddings(X, seed=3), Tree.from_embeddings(X.copy(), seed=3)
    assert a == b
    assert Tree.from_embeddings(X, seed=4) != a
    counts = np.arange(500.0)
    assert Tree.from_embeddings(X, counts=counts, seed=1) == Tree.from_embeddings(X, counts=counts, seed=1)


def sibling_rate(t: Tree, pairs: np.ndarray) -> float:
    return float(np.mean(t.parent[pairs[:, 0]] == t.parent[pairs[:, 1]]))


@pytest.mark.parametrize("arity", [2, 4])
def test_from_embeddings_puts_similar_vectors_together(arity):
    # 128 tight pairs around random centres: most pairs end up as siblings (a balanced cut may
    # still fall between the two of a pair), where a tree that ignores the vectors makes about
    # one pair in 255 siblings.
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(128, 16))
    X = np.repeat(centres, 2, axis=0) + 0.05 * rng.normal(size=(256, 16))
    shuffle = rng.permutation(256)
    X = X[shuffle]
    where = np.empty(256, dtype=np.int64)
    where[shuffle] = np.arange(256)
    pairs = where.reshape(128, 2)  # the two rows of each centre, after the shuffle
    learned = sibling_rate(Tree.from_embeddings(X, arity=arity), pairs)
    assert learned >= 0.6
    assert sibling_rate(Tree.balanced(256, arity), pairs) <= 0.1
    # With counts too, similarity still decides who goes together (mass cuts split more pairs).
    counts = rng.integers(1, 5, 256)
    assert sibling_rate(Tree.from_embeddings(X, arity=arity, counts=counts), pairs) >= 0.25


def test_from_embeddings_with_counts_comes_near_huffman():
    # Zipf counts: the mass-balanced splits keep the expected code length within one decision of
    # the optimum (Huffman) and far below the size-balanced tree's.
    V = 20_000
    zipf = 1.0 / np.arange(1, V + 1)
    X = np.random.default_rng(2).normal(size=(V, 8))
    learned = Tree.from_embeddings(X, counts=zipf).expected_code_length(zipf)
    huffman = Tree.huffman(zipf).expected_code_length(zipf)
    by_size = Tree.from_embeddings(X).expected_code_length(zipf)
    assert huffman <= learned <= huffman + 1.0
    assert learned < by_size - 3.0
    # A class heavier than half the mass gets a leaf under the root, as Huffman gives it.
    heavy = np.r_[10.0 * V, np.ones(V - 1)]
    t = Tree.from_embeddings(X, counts=heavy)
    assert t.class_depth[0] == 1


def test_from_embeddings_mass_splits_with_zero_counts_stay_balanced_by_size():
    # Classes with no count carry no mass: among themselves they split by size.
    V = 600
    counts = np.r_[np.ones(100), np.zeros(V - 100)]
    t = Tree.from_embeddings(np.random.default_rng(3).normal(size=(V, 4)), counts=counts)
    assert t.num_classes == V
    assert t.depth <= 2 + math.ceil(math.log2(V))


def test_from_embeddings_labels_and_counter():
    from collections import Counter

    X = np.eye(3)
    t = Tree.from_embeddings(X, counts=Counter({"a": 5, "b": 1, "c": 1}))
    assert t.labels == ("a", "b", "c")
    assert Tree.from_embeddings(X, labels=["x", "y", "z"]).labels == ("x", "y", "z")
    assert Tree.from_embeddings([[1.0]]).num_classes == 1


@pytest.mark.parametrize(
    "kw, error, match",
    [
        ({"vectors": np.zeros(5)}, ValueError, "2-D"),
        ({"vectors": np.zeros((0, 3))}, ValueError, "at least one class"),
        ({"vectors": np.array([[1.0, np.nan]])}, ValueError, r"vectors\[0\] is not finite"),
        ({"vectors": np.array([["a"]])}, TypeError, "real numbers"),
        ({"vectors": "abc"}, TypeError, "not a string"),
        ({"vectors": np.ones((4, 2)), "arity": 1}, ValueError, "arity"),
        ({"vectors": np.ones((4, 2)), "counts": [1, 2]}, ValueError, "2 entries for 4 classes"),
        ({"vectors": np.ones((4, 2)), "seed": -1}, ValueError, "seed"),
        ({"vectors": np.ones((4, 2)), "iterations": 0}, ValueError, "iterations"),
    ],
)
def test_from_embeddings_rejects_bad_input(kw, error, match):
    with pytest.raises(error, match=match):
        Tree.from_embeddings(**kw)


def test_from_embeddings_handles_identical_vectors():
    # No geometry at all (every vector the same): still a valid, size-balanced tree.
    t = Tree.from_embeddings(np.ones((37, 3)), arity=3)
    assert all(max(s) - min(s) <= 1 for s in split_sizes(t))


def test_two_part_split_by_selection_equals_the_stable_sort():
    # Large segments take the m smallest by a selection and ties by position: the same parts as
    # a stable sort that gives part 0 its first m.
    from hsoftmax import cluster_kernels

    rng = np.random.default_rng(0)
    for trial in range(100):
        n = int(rng.integers(2, 300))
        m = int(rng.integers(1, n))
        diff = (rng.integers(0, 4, n) if trial % 2 else rng.normal(size=n)).astype(np.float32)
        part = np.empty(n, dtype=np.int64)
        cluster_kernels.split_two(diff, np.array([0]), np.array([n]), np.array([m]), part)
        expected = np.ones(n, dtype=np.int64)
        expected[np.argsort(diff, kind="stable")[:m]] = 0
        assert np.array_equal(part, expected), (n, m)


def test_distinct_picks_are_distinct_and_in_range():
    rng = np.random.default_rng(0)
    n = np.array([2, 3, 5, 17, 1000])
    for k in (2, 3):
        for _ in range(50):
            picks = builders._distinct_picks(n[n >= k], k, rng)
            assert np.all(picks >= 0) and np.all(picks < n[n >= k][:, None])
            assert all(len(set(row)) == k for row in picks.tolist())

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

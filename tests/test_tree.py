"""Tree: builders, invariants, validation, save/load."""

from __future__ import annotations

import heapq
import math
import os
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hsoftmax import Tree
from conftest import named_trees, trees


def check_invariants(t: Tree) -> None:
    """Every structural promise of the flat arrays, checked from first principles."""
    V, N = t.num_classes, t.num_nodes
    off, ch = np.asarray(t.child_offset), np.asarray(t.children)
    assert off[0] == 0 and off[-1] == ch.size == V + N - 1
    assert sorted(ch.tolist()) == list(range(V)) + list(range(V + 1, V + N))
    # BFS numbering: a parent's id is smaller than its children's.
    for j in range(N):
        for r in ch[off[j] : off[j + 1]]:
            if r >= V:
                assert r - V > j
    for i in range(V):
        nodes, choices = t.path(i)
        # Following the choices from the root reaches class i.
        ref = V
        for n, c in zip(nodes, choices):
            assert ref == V + n
            ref = int(ch[off[n] + c])
        assert ref == i
        assert len(nodes) == t.class_depth[i]
        # The decision arrays are the path without its single-child nodes.
        deciding = [(n, c) for n, c in zip(nodes, choices) if t.arity[n] >= 2]
        L = int(t.decision_lengths[i])
        assert L == len(deciding)
        assert list(zip(t.decision_nodes[i, :L].tolist(), t.decision_choices[i, :L].tolist())) == deciding
    assert t.depth == max(len(t.path(i)[0]) for i in range(V))
    rows = np.where(t.arity == 1, 0, np.where(t.arity == 2, 1, t.arity))
    assert t.num_params == rows.sum()
    assert np.array_equal(np.diff(t.param_offset), rows)


@pytest.mark.parametrize("name", list(named_trees()))
def test_named_trees_invariants(name):
    check_invariants(named_trees()[name])


@settings(max_examples=60, deadline=None)
@given(trees())
def test_random_trees_invariants(t):
    check_invariants(t)


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


def test_single_child_nodes_cost_nothing():
    t = Tree.from_paths([["a", "b"], ["a", "b", "c"], ["d"]])
    # a has one child (b); c has one child (class 1); d has one child (class 2).
    assert t.num_params == 2  # one row each for the binary root (a | d) and b (class 0 | c)
    assert t.decision_lengths.tolist() == [2, 2, 1]
    assert t.depth == 4


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


# ---------------------------------------------------------------------------- raw validation
@pytest.mark.parametrize(
    "V,off,ch,match",
    [
        (3, [0, 2], [0, 1], "class 2 is missing"),
        (2, [0, 3], [0, 1, 1], "class 1 appears more than once"),
        (2, [0, 2, 3], [0, 1, 2], "root .* appears as a child: the tree has a cycle"),
        (2, [0, 2, 2], [0, 1], "has no children"),
        (2, [0, 1, 3], [0, 1, 3], "cycle|parent"),
        (2, [0, 2, 3, 4], [0, 1, 4, 3], "not reachable|cycle|orphan"),
        (2, [0, 2, 3], [0, 1, 1], "orphan|more than once"),
        (2, [0, 2], [0, 7], "out of range"),
        (0, [0, 1], [0], "num_classes"),
    ],
)
def test_constructor_rejects_malformed(V, off, ch, match):
    with pytest.raises(ValueError, match=match):
        Tree(V, off, ch)


def test_constructor_orphan_and_cycle_cut_from_root():
    # Root has classes 0,1; nodes 1 and 2 point at each other (a cycle nobody reaches).
    with pytest.raises(ValueError, match="not reachable|cycle"):
        Tree(3, [0, 2, 3, 5], [0, 1, 5, 2, 4])


@pytest.mark.parametrize(
    "counts,match",
    [([], "empty"), ([1, -1], "negative"), ([1, float("nan")], "not finite"), ([1, float("inf")], "not finite"), ([[1, 2]], "1-D")],
)
def test_bad_counts(counts, match):
    with pytest.raises(ValueError, match=match):
        Tree.huffman(counts)


def test_bad_arguments():
    with pytest.raises(ValueError, match="arity"):
        Tree.huffman([1, 2], arity=1)
    with pytest.raises(TypeError):
        Tree.balanced(3.5)
    with pytest.raises(ValueError, match="duplicate label"):
        Tree.huffman([1, 2], labels=["a", "a"])
    with pytest.raises(ValueError, match="out of range"):
        Tree.balanced(4).path(4)


# ---------------------------------------------------------------------------- persistence
@pytest.mark.parametrize("name", list(named_trees()))
def test_save_load_roundtrip(tmp_path, name):
    t = named_trees()[name]
    f = tmp_path / "tree.npz"
    t.save(f)
    u = Tree.load(f)
    assert u == t
    assert np.array_equal(u.decision_nodes, t.decision_nodes)
    assert pickle.loads(pickle.dumps(t)) == t


def test_save_load_labels_and_names(tmp_path):
    t = Tree.from_paths([["x"], ["x"], []], labels=["a", "b", "c"])
    t.save(tmp_path / "t.npz")
    u = Tree.load(tmp_path / "t.npz")
    assert u.labels == ("a", "b", "c") and u.node_names == (None, "x")


def test_save_is_atomic(tmp_path, monkeypatch):
    f = tmp_path / "t.npz"
    Tree.balanced(4).save(f)
    before = f.read_bytes()

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(np, "savez_compressed", boom)
    with pytest.raises(RuntimeError):
        Tree.balanced(8).save(f)
    assert f.read_bytes() == before
    assert os.listdir(tmp_path) == ["t.npz"]


def test_load_rejects_garbage(tmp_path):
    f = tmp_path / "bad.npz"
    f.write_bytes(b"not a tree")
    with pytest.raises(ValueError, match="not a readable hsoftmax tree"):
        Tree.load(f)
    np.savez(tmp_path / "partial.npz", num_classes=np.array(3))
    with pytest.raises(ValueError, match="missing"):
        Tree.load(tmp_path / "partial.npz")
    # A file whose arrays describe a broken tree is validated like any other input.
    np.savez(
        tmp_path / "dup.npz", format_version=np.array(1), num_classes=np.array(2),
        child_offset=np.array([0, 2]), children=np.array([0, 0]),
    )
    with pytest.raises(ValueError, match="more than once"):
        Tree.load(tmp_path / "dup.npz")


def test_large_huffman_builds_quickly_and_correctly():
    counts = 1e6 / np.arange(1, 200_001)
    t = Tree.huffman(counts)
    assert t.num_nodes == 199_999
    # Zipf: depth grows like log V; the most frequent class sits near the root.
    assert t.depth < 40 and t.class_depth[0] <= 4

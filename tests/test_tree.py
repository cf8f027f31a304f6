"""Tree: invariants of the served arrays, validation, state, save/load (the builders are in
test_builders.py)."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
from hypothesis import given, settings

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
        # node_decisions: the deciding nodes strictly above each node on the path.
        assert [int(t.node_decisions[n]) for n, _ in deciding] == list(range(L))
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


# ---------------------------------------------------------------------------- served arrays
ARRAYS = ["child_offset", "children", "arity", "param_offset", "node_depth", "node_decisions", "parent",
          "choice", "class_depth", "decision_lengths", "decision_nodes", "decision_choices"]


@pytest.mark.parametrize("name", ARRAYS)
def test_served_arrays_are_read_only(name):
    a = getattr(named_trees()["taxonomy"], name)
    assert isinstance(a, np.ndarray) and not a.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        a[..., 0] = 1


def test_padded_decisions_are_built_on_first_use_only():
    t = Tree.huffman([5, 3, 1, 1])
    assert "_padded_decisions" not in vars(t)  # a consumer walking parent/choice never pays
    nodes = t.decision_nodes
    assert "_padded_decisions" in vars(t)
    assert t.decision_nodes is nodes and nodes.shape == (4, t.max_decisions)
    # Pickling carries the definition, not the cache.
    assert "_padded_decisions" not in vars(pickle.loads(pickle.dumps(t)))


def test_word2vec_kernels_name_for_node_decisions():
    t = named_trees()["chain"]
    assert t._node_decisions is t.node_decisions


def test_state_is_what_save_writes(tmp_path):
    t = named_trees()["chain"]
    t.save(tmp_path / "t.npz")
    with np.load(tmp_path / "t.npz", allow_pickle=False) as z:
        saved = {k: z[k] for k in z.files}
    state = t.state()
    assert saved.keys() == state.keys()
    assert all(np.array_equal(saved[k], state[k]) for k in state)
    assert Tree.from_state(state) == t


def test_single_child_nodes_cost_nothing():
    t = Tree.from_paths([["a", "b"], ["a", "b", "c"], ["d"]])
    # a has one child (b); c has one child (class 1); d has one child (class 2).
    assert t.num_params == 2  # one row each for the binary root (a | d) and b (class 0 | c)
    assert t.decision_lengths.tolist() == [2, 2, 1]
    assert t.depth == 4


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


@pytest.mark.parametrize(
    "args,kw,error,match",
    [
        ((2, [[0, 2]], [0, 1]), {}, ValueError, "must be 1-D"),
        ((2, [0.0, 2.0], [0, 1]), {}, TypeError, "child_offset must be integers"),
        ((2, [0, 2], [0.0, 1.0]), {}, TypeError, "children must be integers"),
        ((2, [0], []), {}, ValueError, "needs a root"),
        ((2, [1, 2], [0, 1]), {}, ValueError, "must start at 0"),
        ((2.0, [0, 2], [0, 1]), {}, TypeError, "num_classes must be an int"),
        ((2, [0, 2], [0, 1]), {"node_names": ["a", "b"]}, ValueError, "2 node names for 1 internal nodes"),
        ((2, [0, 1, 3], [3, 0, 1]), {"node_names": ["a", "a"]}, ValueError, "duplicate internal node name 'a'"),
        ((2, [0, 1, 3], [3, 0, 1]), {"node_names": [None, "x"], "labels": ["x", "y"]}, ValueError,
         "label 'x' is also used as an internal node name"),
    ],
)
def test_constructor_rejects_bad_arguments(args, kw, error, match):
    with pytest.raises(error, match=match):
        Tree(*args, **kw)


def test_constructor_renumbers_breadth_first_and_keeps_names():
    # Node 2 is the root's child and node 1 the grandchild: ids swap, names follow their nodes.
    t = Tree(3, [0, 2, 3, 5], [0, 5, 2, 4, 1], node_names=[None, "low", "high"])
    assert t.child_offset.tolist() == [0, 2, 4, 5] and t.children.tolist() == [0, 4, 5, 1, 2]
    assert t.node_names == (None, "high", "low")
    assert t.path(2)[0].tolist() == [0, 1, 2]


def test_constructor_orphan_and_cycle_cut_from_root():
    # Root has classes 0,1; nodes 1 and 2 point at each other (a cycle nobody reaches).
    with pytest.raises(ValueError, match="not reachable|cycle"):
        Tree(3, [0, 2, 3, 5], [0, 1, 5, 2, 4])


def test_bad_labels_and_class_index():
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

"""Tree: invariants of the served arrays, validation, state, save/load (the builders are in
test_builders.py)."""

from __future__ import annotations

import os
import pickle
import struct
import tracemalloc
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import named_trees, trees
from hsoftmax import Tree


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
        assert len(deciding) == L
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
ARRAYS = [
    "child_offset",
    "children",
    "arity",
    "param_offset",
    "node_depth",
    "node_decisions",
    "parent",
    "choice",
    "class_depth",
    "decision_lengths",
    "decision_nodes",
    "decision_choices",
]


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
        (
            (2, [0, 1, 3], [3, 0, 1]),
            {"node_names": [None, "x"], "labels": ["x", "y"]},
            ValueError,
            "label 'x' is also used as an internal node name",
        ),
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
    with pytest.raises(ValueError, match=r"not reachable|cycle"):
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
        tmp_path / "dup.npz",
        format_version=np.array(1),
        num_classes=np.array(2),
        child_offset=np.array([0, 2]),
        children=np.array([0, 0]),
    )
    with pytest.raises(ValueError, match="more than once"):
        Tree.load(tmp_path / "dup.npz")


# ---------------------------------------------------------------------------- lossless strings (issue 13)
ODD_STRINGS = ["a\x00", "a", "", "\x00", "b\x00\x00", "\ud800", "\U0001f600", "é", " a ", "x\ny"]


def test_labels_and_names_round_trip_losslessly(tmp_path):
    t = Tree.huffman([1, 2], labels=["a\x00", "a"])  # saved, then failed to load ("duplicate label")
    t.save(tmp_path / "t.npz")
    assert Tree.load(tmp_path / "t.npz").labels == ("a\x00", "a")
    t = Tree.huffman([1, 2], labels=["a\x00", "b"])  # reloaded as ("a", "b")
    t.save(tmp_path / "t.npz")
    assert Tree.load(tmp_path / "t.npz").labels == ("a\x00", "b")
    # Every odd string, as labels and as node names ("" and None stay apart).
    V = len(ODD_STRINGS)
    paths = [[f"n{s}"] for s in ODD_STRINGS[:-1]] + [[]]
    t = Tree.from_paths(paths, labels=ODD_STRINGS)
    assert None in t.node_names and "n" in t.node_names and "n\x00" in t.node_names
    t.save(tmp_path / "t.npz")
    for u in (Tree.load(tmp_path / "t.npz"), Tree.from_state(t.state()), pickle.loads(pickle.dumps(t))):
        assert u == t and u.labels == tuple(ODD_STRINGS) and u.node_names == t.node_names
        assert u.num_classes == V


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.text(st.sampled_from(["\x00", "a", "\ud800", "é"]) | st.characters()), min_size=1, max_size=8, unique=True
    )
)
def test_any_labels_round_trip(labels):
    t = Tree.balanced(len(labels), labels=labels)
    assert Tree.from_state(t.state()).labels == tuple(labels)


def test_state_is_plain_numbers_and_bytes():
    # What torch.load(weights_only=True) and safetensors can carry once turned into tensors:
    # integer, uint8 and bool arrays only (no 'U' strings, no objects).
    state = Tree.from_paths([["x"], ["x"], []], labels=["a\x00", "b", "c"]).state()
    assert {"label_bytes", "label_offset", "node_name_bytes", "node_name_offset", "node_named"} <= set(state)
    for key, a in state.items():
        assert isinstance(a, np.ndarray) and a.dtype.kind in "iub", key
    assert bytes(state["label_bytes"]) == b"a\x00bc" and state["label_offset"].tolist() == [0, 2, 3, 4]


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"node_names": [None, 5]}, r"node_names\[1\] must be a str or None, got int 5"),
        ({"node_names": [None, 0]}, r"node_names\[1\] must be a str or None"),
        ({"node_names": [None, b"x"]}, r"node_names\[1\] must be a str or None"),
        ({"node_names": "ab"}, "not a string"),
        ({"labels": [0, 1, 2]}, r"labels\[0\] must be a str"),
        ({"labels": "abc"}, "not a string"),
    ],
)
def test_names_that_are_not_strings_are_refused(kw, match):
    with pytest.raises(TypeError, match=match):
        Tree(3, [0, 2, 4], [0, 4, 1, 2], **kw)


def test_string_subclasses_become_plain_strings():
    t = Tree(2, [0, 1, 3], [3, 0, 1], labels=np.array(["a", "b"]), node_names=[None, np.str_("x")])
    assert all(type(s) is str for s in t.labels) and type(t.node_names[1]) is str


def test_load_reads_format_1_files(tmp_path):
    # Written before labels became bytes: 'U' arrays plus the named mask.
    np.savez(
        tmp_path / "v1.npz",
        format_version=np.array(1),
        num_classes=np.array(3),
        child_offset=np.array([0, 2, 4]),
        children=np.array([4, 2, 0, 1]),
        labels=np.array(["a", "b", "c"]),
        node_names=np.array(["", "x"]),
        node_named=np.array([False, True]),
    )
    assert Tree.load(tmp_path / "v1.npz") == Tree.from_paths([["x"], ["x"], []], labels=["a", "b", "c"])


# ---------------------------------------------------------------------------- hostile files (issue 13)
def save_arrays(path, **arrays):
    defaults = {
        "format_version": np.array(2),
        "num_classes": np.array(3),
        "child_offset": np.array([0, 2, 4]),
        "children": np.array([4, 2, 0, 1]),
    }
    np.savez_compressed(path, **{**defaults, **arrays})


@pytest.mark.parametrize("V", [100_000_000, 300_000_000, 2**31 - 1])
def test_small_file_claiming_many_classes_fails_fast_in_small_memory(tmp_path, V):
    f = tmp_path / "claim.npz"
    save_arrays(f, num_classes=np.array(V))
    assert f.stat().st_size < 2048
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=rf"'children' has 4 entries, but a tree of {V} classes"):
            Tree.load(f)
        # The constructor itself costs memory in proportion to the children it was given.
        with pytest.raises(ValueError, match="class 3 is missing"):
            Tree(V, [0, 3], [0, 1, 2])
        assert tracemalloc.get_traced_memory()[1] < 1 << 20
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize(
    "arrays,match",
    [
        ({"num_classes": np.array(3e8)}, "'num_classes' must be 0-D integers, got float64"),
        ({"num_classes": np.array(2**40)}, "too large"),
        ({"num_classes": np.array(-1)}, "num_classes must be >= 1"),
        ({"num_classes": np.array([3])}, "'num_classes' must be 0-D"),
        ({"children": np.array([4.0, 2, 0, 1])}, "'children' must be 1-D integers"),
        ({"child_offset": np.array([0])}, "needs a root"),
        ({"format_version": np.array(7)}, "unsupported tree format version 7"),
        ({"label_bytes": np.frombuffer(b"abc", np.uint8).copy()}, "'label_bytes' without 'label_offset'"),
        (
            {"label_bytes": np.frombuffer(b"abc", np.uint8).copy(), "label_offset": np.array([0, 1, 2])},
            "'label_offset' has 3 entries, but a tree of 3 classes and 2 internal nodes has 4",
        ),
        (
            {"label_bytes": np.frombuffer(b"abc", np.uint8).copy(), "label_offset": np.array([0, 2, 1, 3])},
            "label offsets must",
        ),
        (
            {"label_bytes": np.array([97, 0xFF, 98], np.uint8), "label_offset": np.array([0, 1, 2, 3])},
            "label 1 is not valid UTF-8",
        ),
        (
            {"label_bytes": np.array([97, 98, 99], np.int16), "label_offset": np.array([0, 1, 2, 3])},
            "'label_bytes' must be 1-D uint8 bytes",
        ),
        (
            {
                "node_name_bytes": np.frombuffer(b"rx", np.uint8).copy(),
                "node_name_offset": np.array([0, 1, 2]),
                "node_named": np.array([False, True]),
            },
            "internal node 0 is marked unnamed but has a name",
        ),
        ({"labels": np.array(["a", "b", "c"])}, "format 2 has 'labels'"),
        ({"extra": np.array(1)}, "unexpected array 'extra'"),
        ({"children": np.array([4, 2, 0, 0])}, "class 0 appears more than once"),
    ],
)
def test_load_checks_every_array(tmp_path, arrays, match):
    save_arrays(tmp_path / "t.npz", **arrays)
    with pytest.raises(ValueError, match="not a readable hsoftmax tree file") as e:
        Tree.load(tmp_path / "t.npz")
    assert "t.npz" in str(e.value)
    assert e.match(match)


def saved_tree_bytes(tmp_path) -> tuple[Tree, bytes]:
    t = Tree.from_paths([["x", "y"], ["x"], [], ["z"]], labels=["a\x00", "b", "\ud800c", ""])
    t.save(tmp_path / "t.npz")
    return t, (tmp_path / "t.npz").read_bytes()


def test_load_of_empty_truncated_or_damaged_files_names_the_file(tmp_path):
    _, raw = saved_tree_bytes(tmp_path)
    f = tmp_path / "bad.npz"
    cases = {
        "empty": b"",
        "a few bytes": raw[:3],
        "half": raw[: len(raw) // 2],
        "no end record": raw[:-22],
        "last byte cut": raw[:-1],
        "data flipped": raw[:100] + bytes([raw[100] ^ 0x10]) + raw[101:],
        "zeros": bytes(len(raw)),
    }
    for what, data in cases.items():
        f.write_bytes(data)
        with pytest.raises(ValueError, match=r"'.*bad\.npz' is not a readable hsoftmax tree file: ") as e:
            Tree.load(f)
        assert type(e.value) is ValueError, what
    with pytest.raises(ValueError, match="not a readable"):
        Tree.load(tmp_path / "missing.npz")
    with pytest.raises(ValueError, match="not a readable"):
        Tree.load(tmp_path)  # a directory


def test_a_damaged_directory_cannot_hide_the_labels(tmp_path):
    # A directory entry whose comment length is damaged swallows the entries after it; zipfile
    # then lists fewer arrays, which read as a valid tree without its labels or node names.
    _, raw = saved_tree_bytes(tmp_path)
    with zipfile.ZipFile(tmp_path / "t.npz") as z:
        start, names = z.start_dir, [i.filename for i in z.infolist()]
    entry = start  # walk the directory entries to the one of label_bytes.npy
    for name in names:
        name_len, extra_len, comment_len = struct.unpack_from("<3H", raw, entry + 28)
        if name == "label_bytes.npy":
            break
        entry += 46 + name_len + extra_len + comment_len
    swallow = len(raw) - 22 - (entry + 46 + name_len + extra_len)  # up to the end record
    damaged = bytearray(raw)
    struct.pack_into("<H", damaged, entry + 32, swallow)
    f = tmp_path / "hidden.npz"
    f.write_bytes(bytes(damaged))
    with zipfile.ZipFile(f) as z:
        assert "label_bytes.npy" in z.namelist() and "node_named.npy" not in z.namelist()
    with pytest.raises(ValueError, match="end record says 9"):
        Tree.load(f)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_truncations_and_bit_flips_end_in_value_error_or_the_same_tree(tmp_path, data):
    # Each case is either a ValueError naming the file, or (a flip in a field nothing reads, such
    # as a timestamp) exactly the saved tree: never another exception, never a different tree.
    t, raw = FUZZ_TREE
    if data.draw(st.booleans(), label="truncate"):
        damaged = raw[: data.draw(st.integers(0, len(raw) - 1), label="keep")]
    else:
        b = bytearray(raw)
        bits = data.draw(st.lists(st.integers(0, 8 * len(raw) - 1), min_size=1, max_size=3), label="bits")
        for bit in bits:
            b[bit // 8] ^= 1 << (bit % 8)
        damaged = bytes(b)
    f = tmp_path / "fuzz.npz"
    f.write_bytes(damaged)
    try:
        u = Tree.load(f)
    except ValueError as e:
        message = str(e)
        u = None
    if u is None:
        assert "fuzz.npz" in message
    else:
        assert u == t


def _fuzz_tree() -> tuple[Tree, bytes]:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        from pathlib import Path

        return saved_tree_bytes(Path(d))


FUZZ_TREE = _fuzz_tree()


def test_state_as_tensors_survives_torch_load_weights_only(tmp_path):
    # The layer's checkpoint can carry the state as tensors: torch's default, pickle-free
    # torch.load(weights_only=True) reads them back, and from_state takes them as they come.
    torch = pytest.importorskip("torch")
    t = Tree.from_paths([["x\x00"], ["x\x00"], []], labels=["a\x00", "a", "\ud800"])
    torch.save({k: torch.as_tensor(v) for k, v in t.state().items()}, tmp_path / "t.pt")
    assert Tree.from_state(torch.load(tmp_path / "t.pt", weights_only=True)) == t


# ---------------------------------------------------------------------------- inspection
def test_histograms_count_every_class_and_node():
    t = Tree.huffman(np.arange(1.0, 40.0), arity=3)
    depths, arities = t.depth_histogram(), t.arity_histogram()
    assert sum(depths.values()) == t.num_classes and max(depths) == t.depth
    assert sum(arities.values()) == t.num_nodes
    assert sum(a * n for a, n in arities.items()) == t.num_classes + t.num_nodes - 1  # every edge
    s = t.describe(counts=np.arange(1.0, 40.0))
    assert s.expected_code_length == t.expected_code_length(np.arange(1.0, 40.0))
    assert s.depth_histogram == depths and s.num_params == t.num_params
    assert t.describe().expected_code_length is None
    assert "39 classes" in str(t.describe())


def test_render_draws_every_class_once_when_unlimited():
    t = Tree.from_paths([["a", "b"], ["a"], [], ["c"]], labels=["w", "x", "y", "z"])
    text = t.render(max_depth=None, max_children=None)
    assert text.splitlines()[0] == "[0] (3 children, 4 classes)"
    for c, label in enumerate(t.labels):
        assert sum(line.endswith(f"{c} {label}") for line in text.splitlines()) == 1
    assert len(text.splitlines()) == t.num_classes + t.num_nodes
    assert t.render("b") == "[3] b (1 child, 1 class)\n└── 0 w"


def test_render_elides_wide_and_deep_subtrees():
    t = Tree.balanced(1000, arity=100)
    text = t.render(max_children=3)
    assert text.count("more") == 1 + 3  # the root's and each drawn child's hidden children
    assert "└── … 97 more" in text and "… 7 more" in text
    assert t.render(max_depth=0) == "[0] (100 children, 1000 classes) …"
    with pytest.raises(ValueError, match="out of range"):
        t.render(t.num_nodes)
    with pytest.raises(ValueError, match="named"):
        t.render("nope")
    with pytest.raises(ValueError, match="max_children"):
        t.render(max_children=0)

"""Checkpoints of HierarchicalSoftmax: the standard recipes, and the tree-mismatch rule."""

from __future__ import annotations

import io

import pytest
import torch

from conftest import make_batch, make_layer, named_trees
from hsoftmax import HierarchicalSoftmax, Tree

NAMED = named_trees()
# Labels and node names that a lossy encoding would break: a NUL, a lone surrogate, digits.
LABELED = Tree.from_paths([["5"], ["5"], ["\udc80x"], ["\udc80x"], ["\udc80x"]], labels=["a\x00", "a", "0", "", "é"])


def _same_layer(a: HierarchicalSoftmax, b: HierarchicalSoftmax) -> None:
    assert b.tree == a.tree and b.tree.labels == a.tree.labels and b.tree.node_names == a.tree.node_names
    x = make_batch(a.tree, 4, dtype=a.weight.dtype)[0]
    torch.testing.assert_close(b.log_prob(x), a.log_prob(x), rtol=0, atol=0)


def _weights_only_roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)  # torch's default since 2.6, explicit for 2.3-2.5


def test_state_dict_holds_only_plain_tensors():
    hs = make_layer(LABELED)
    sd = hs.state_dict()
    assert set(sd) == {"table.weight", "table.bias"} | {"tree." + k for k in LABELED.state()}
    for key, value in sd.items():
        assert isinstance(value, torch.Tensor), key
        if key.startswith("tree."):
            assert value.dtype in (torch.int64, torch.int32, torch.uint8, torch.bool), key
    # Copies: writing into a state dict's entries (an EMA helper does) leaves the layer alone.
    sd["tree.children"].zero_()
    assert hs.tree == LABELED and torch.equal(hs.state_dict()["tree.children"], torch.tensor(LABELED.children))


@pytest.mark.parametrize("name", [*NAMED, "labeled"])
def test_torch_save_state_dict_and_default_torch_load(name):
    tree = LABELED if name == "labeled" else NAMED[name]
    hs = make_layer(tree)
    back = make_layer(tree, seed=1)  # other weights, same tree
    back.load_state_dict(_weights_only_roundtrip(hs.state_dict()))
    _same_layer(hs, back)
    # The saved tree itself comes back intact, labels and all.
    assert HierarchicalSoftmax.tree_from_state_dict(_weights_only_roundtrip(hs.state_dict())) == tree


@pytest.mark.parametrize("name", ["huffman", "two_level", "taxonomy", "labeled"])
def test_safetensors_save_file_load_file(name, tmp_path):
    st = pytest.importorskip("safetensors.torch")
    tree = LABELED if name == "labeled" else NAMED[name]
    model = torch.nn.ModuleDict({"body": torch.nn.Linear(3, 6).double(), "head": make_layer(tree)})
    st.save_file(model.state_dict(), tmp_path / "model.safetensors")
    loaded = st.load_file(tmp_path / "model.safetensors")
    other = torch.nn.ModuleDict({"body": torch.nn.Linear(3, 6).double(), "head": make_layer(tree, seed=1)})
    other.load_state_dict(loaded)
    _same_layer(model["head"], other["head"])
    torch.testing.assert_close(other["body"].weight, model["body"].weight, rtol=0, atol=0)
    # Without the tree at hand: build the head from the file.
    head = HierarchicalSoftmax.from_state_dict(loaded, prefix="head.")
    _same_layer(model["head"], head)


def test_torch_save_module_roundtrip_keeps_labels():
    hs = make_layer(LABELED, sparse=True, reduction="sum", ignore_index=3)
    buf = io.BytesIO()
    torch.save(hs, buf)
    buf.seek(0)
    back = torch.load(buf, weights_only=False)
    _same_layer(hs, back)
    assert back.sparse and back.reduction == "sum" and back.ignore_index == 3
    back.load_state_dict(hs.state_dict())  # and it still takes its own checkpoints


# Pairs of trees that differ in one way each; the first two have the same shapes.
OTHER_TREES = {
    "same sizes, other structure": (Tree.from_paths([["a"], ["a"], ["b"], ["b"], ["b"]]), Tree.balanced(5, arity=3)),
    # issue 13: the same number of rows, another number of classes.
    "same rows, other class count": (Tree.huffman([5, 4, 3, 2, 1]), Tree.balanced(4, arity=4)),
    "other labels": (Tree.huffman([5, 4, 3], labels=["x", "y", "z"]), Tree.huffman([5, 4, 3], labels=["x", "z", "y"])),
    "labels vs none": (Tree.huffman([5, 4, 3], labels=["x", "y", "z"]), Tree.huffman([5, 4, 3])),
    "other node names": (Tree.from_paths([["a"], ["a"], ["b"]]), Tree.from_paths([["c"], ["c"], ["b"]])),
    "other size": (Tree.balanced(8), Tree.balanced(9)),
}


@pytest.mark.parametrize("strict", [True, False])
@pytest.mark.parametrize("case", list(OTHER_TREES))
def test_load_state_dict_of_another_tree_raises_and_changes_nothing(case, strict):
    saved_tree, own_tree = OTHER_TREES[case]
    sd = make_layer(saved_tree, d=4).state_dict()
    hs = make_layer(own_tree, d=4, seed=1)
    before = {k: v.clone() for k, v in hs.state_dict().items()}
    with pytest.raises(RuntimeError, match="not this module's") as info:
        hs.load_state_dict(sd, strict=strict)
    assert "from_state_dict" in str(info.value)  # the error names the explicit way
    assert hs.tree is own_tree and hs.num_classes == own_tree.num_classes
    after = hs.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())


def test_nested_mismatch_names_the_prefix():
    model = torch.nn.ModuleDict({"head": make_layer(Tree.balanced(6), d=4)})
    sd = torch.nn.ModuleDict({"head": make_layer(Tree.huffman([6, 5, 4, 3, 2, 1]), d=4)}).state_dict()
    with pytest.raises(RuntimeError, match=r"under 'head\.tree\.'.*prefix='head\.'"):
        model.load_state_dict(sd)


def test_from_state_dict_adopts_the_saved_tree():
    # What load_state_dict used to do silently is now an explicit constructor.
    tree = Tree.from_paths([["a"], ["a"], ["b"], ["b"], ["b"]], labels=list("vwxyz"))
    hs = make_layer(tree)
    other = HierarchicalSoftmax.from_state_dict(hs.state_dict(), sparse=True, reduction="sum")
    _same_layer(hs, other)
    assert other.tree.labels == tuple("vwxyz") and other.weight.dtype == torch.float64
    assert other.sparse and other.reduction == "sum" and other.in_features == 6
    nobias = HierarchicalSoftmax.from_state_dict(HierarchicalSoftmax(3, tree, bias=False).state_dict())
    assert nobias.bias is None and nobias.weight.dtype == torch.float32
    f32 = HierarchicalSoftmax.from_state_dict(hs.state_dict(), dtype=torch.float32)
    assert f32.weight.dtype == torch.float32
    with pytest.raises(KeyError, match=r"no 'head\.table\.weight'"):
        HierarchicalSoftmax.from_state_dict(hs.state_dict(), prefix="head.")
    with pytest.raises(KeyError, match="no tree"):
        HierarchicalSoftmax.tree_from_state_dict({"table.weight": hs.weight})


def test_missing_unknown_and_corrupt_tree_entries():
    tree = NAMED["huffman"]
    hs = make_layer(tree)
    sd = hs.state_dict()
    bare = {k: v for k, v in sd.items() if not k.startswith("tree.")}
    with pytest.raises(RuntimeError, match=r"Missing key\(s\).*tree\.children"):
        make_layer(tree, seed=1).load_state_dict(bare)
    other = make_layer(tree, seed=1)
    result = other.load_state_dict(bare, strict=False)  # nothing to check the tree against
    assert "tree.children" in result.missing_keys and torch.equal(other.weight, hs.weight)
    with pytest.raises(RuntimeError, match=r"Unexpected key\(s\).*tree\.bogus"):
        make_layer(tree).load_state_dict({**sd, "tree.bogus": torch.zeros(1)})
    bad = dict(sd, **{"tree.children": sd["tree.children"].flip(0)[:-1]})
    with pytest.raises(RuntimeError, match="not a valid tree"):
        make_layer(tree).load_state_dict(bad)
    huge = dict(sd, **{"tree.num_classes": torch.tensor(10**8)})  # a few bytes claiming a lot
    with pytest.raises(RuntimeError, match="not a valid tree"):
        make_layer(tree).load_state_dict(huge)


def test_checkpoints_from_before_tree_tensors_still_load():
    # Until now the tree travelled as _extra_state, a dict of numpy arrays (weights_only=False).
    tree = NAMED["taxonomy"]
    hs = make_layer(tree)
    sd = {k: v for k, v in hs.state_dict().items() if not k.startswith("tree.")}
    sd["_extra_state"] = {"tree": tree.state()}
    back = make_layer(tree, seed=1)
    back.load_state_dict(sd)
    _same_layer(hs, back)
    with pytest.raises(RuntimeError, match="not this module's"):
        make_layer(Tree.balanced(tree.num_classes)).load_state_dict(sd)

"""HierarchicalSoftmax: exactness, gradients, training, state, bad input."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from conftest import make_batch, make_layer, named_trees, trees
from hsoftmax import HierarchicalSoftmax, Tree

NAMED = named_trees()
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


# ---------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(NAMED))
def test_log_prob_normalized_and_matches_forward(name, device):
    tree = NAMED[name]
    hs = make_layer(tree, device=device)
    x = make_batch(tree, 7, device=device)[0]
    lp = hs.log_prob(x)
    assert lp.shape == (7, tree.num_classes)
    torch.testing.assert_close(lp.exp().sum(-1), torch.ones(7, dtype=lp.dtype, device=device))
    y = torch.arange(7, device=device) % tree.num_classes
    out, loss = hs(x, y)
    torch.testing.assert_close(out, lp.gather(1, y[:, None]).squeeze(1))
    torch.testing.assert_close(loss, -out.mean())


def test_every_class_scored_by_forward_equals_log_prob():
    for name, tree in NAMED.items():
        hs = make_layer(tree)
        x = make_batch(tree, 1)[0].expand(tree.num_classes, -1)
        y = torch.arange(tree.num_classes)
        torch.testing.assert_close(hs(x, y).output, hs.log_prob(x[:1])[0], msg=name)


@settings(max_examples=40, deadline=None)
@given(trees(), st.integers(0, 2**31 - 1), st.booleans())
def test_random_trees_exact(tree, seed, bias):
    hs = make_layer(tree, seed=seed % 1000, bias=bias)
    x = make_batch(tree, 5, seed=seed % 997)[0]
    lp = hs.log_prob(x)
    torch.testing.assert_close(lp.exp().sum(-1), torch.ones(5, dtype=torch.float64))
    y = torch.from_numpy(np.random.default_rng(seed).integers(0, tree.num_classes, 5))
    torch.testing.assert_close(hs(x, y).output, lp.gather(1, y[:, None]).squeeze(1))
    k = min(3, tree.num_classes)
    vals, idx = hs.topk(x, k)
    ref_vals, _ = lp.topk(k)
    torch.testing.assert_close(vals, ref_vals)
    torch.testing.assert_close(lp.gather(1, idx), ref_vals)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(NAMED))
def test_topk_and_predict_equal_sort_of_log_prob(name, device):
    tree = NAMED[name]
    hs = make_layer(tree, device=device)
    x = make_batch(tree, 9, device=device)[0]
    lp = hs.log_prob(x)
    k = min(5, tree.num_classes)
    vals, idx = hs.topk(x, k)
    ref_vals, ref_idx = lp.topk(k)
    torch.testing.assert_close(vals, ref_vals)
    assert torch.equal(idx, ref_idx)  # random weights: no ties
    assert torch.equal(hs.predict(x), lp.argmax(-1))


def test_topk_all_classes_is_a_full_sort():
    tree = NAMED["taxonomy"]
    hs = make_layer(tree)
    x = make_batch(tree, 3)[0]
    vals, idx = hs.topk(x, tree.num_classes)
    lp = hs.log_prob(x)
    assert torch.equal(idx, lp.argsort(-1, descending=True))
    torch.testing.assert_close(vals, lp.sort(-1, descending=True).values)


def test_one_level_tree_equals_full_softmax():
    V, d = 11, 5
    tree = Tree.from_paths([[] for _ in range(V)])  # the root has every class as a child
    hs = make_layer(tree, d=d)
    x = make_batch(tree, 4, d=d)[0]
    full = F.log_softmax(x @ hs.weight.T + hs.bias, dim=-1)
    torch.testing.assert_close(hs.log_prob(x), full)
    y = torch.tensor([0, 3, 10, 7])
    torch.testing.assert_close(hs(x, y).loss, F.cross_entropy(x @ hs.weight.T + hs.bias, y))


def test_binary_node_is_word2vec_sigmoid():
    tree = Tree.balanced(2)
    hs = make_layer(tree, d=3)
    x = make_batch(tree, 4, d=3)[0]
    s = x @ hs.weight[0] + hs.bias[0]
    torch.testing.assert_close(hs.log_prob(x), torch.stack([F.logsigmoid(-s), F.logsigmoid(s)], -1))


@pytest.mark.parametrize("name", ["huffman", "balanced4", "two_level_counts", "taxonomy"])
def test_sampling_matches_distribution(name):
    tree = NAMED[name]
    hs = make_layer(tree, d=4)
    with torch.no_grad():
        hs.weight.mul_(0.3)  # keep the distribution spread so every class gets draws
    x = make_batch(tree, 1, d=4, seed=5)[0]
    n = 40_000
    draws = hs.sample(x, num_samples=n, generator=torch.Generator().manual_seed(7))
    assert draws.shape == (1, n)
    observed = torch.bincount(draws[0], minlength=tree.num_classes).numpy()
    expected = hs.log_prob(x)[0].exp().detach().numpy() * n
    # Pool rare classes so the chi-square approximation holds.
    rare = expected < 5
    obs = np.append(observed[~rare], observed[rare].sum())
    exp = np.append(expected[~rare], expected[rare].sum())
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    p = chisquare(obs, exp * obs.sum() / exp.sum()).pvalue
    assert p > 1e-4, p


def test_sampling_temperature():
    tree = NAMED["huffman"]
    hs = make_layer(tree, d=4)
    x = make_batch(tree, 2, d=4)[0]
    cold = hs.sample(x, 500, temperature=1e-4, generator=torch.Generator().manual_seed(0))
    # Near zero temperature every node picks its best child: a greedy descent, constant per row.
    assert (cold == cold[:, :1]).all()
    with pytest.raises(ValueError, match="temperature"):
        hs.sample(x, 1, temperature=0.0)
    with pytest.raises(ValueError, match="num_samples"):
        hs.sample(x, 0)


# ---------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("name", ["huffman", "huffman3", "two_level_counts", "taxonomy", "chain"])
def test_gradcheck(name):
    tree = NAMED[name]
    hs = make_layer(tree, d=3)
    x = make_batch(tree, 4, d=3)[0].requires_grad_()
    y = torch.arange(4) % tree.num_classes
    params = (x, hs.weight, hs.bias)

    def fwd(x, w, b):
        return torch.func.functional_call(hs, {"table.weight": w, "table.bias": b}, (x, y)).output

    # The full Jacobian on the taxonomy (binary, k-ary and single-child nodes in one tree); a
    # random projection of it (PyTorch's fast mode) on the others, which costs seconds less each.
    full = name == "taxonomy"
    assert torch.autograd.gradcheck(fwd, params, fast_mode=not full)
    assert torch.autograd.gradcheck(lambda x, w, b: _log_prob_call(hs, x, w, b), params, fast_mode=not full)


def _log_prob_call(hs, x, w, b):
    t = hs.table
    old_w, old_b = t.weight, t.bias
    try:
        del t.weight, t.bias
        t.weight, t.bias = w, b
        return hs.log_prob(x)
    finally:
        del t.weight, t.bias
        t.weight, t.bias = old_w, old_b


@pytest.mark.parametrize("name", ["huffman", "two_level", "taxonomy"])
def test_sparse_gradients_equal_dense(name):
    tree = NAMED[name]
    dense = make_layer(tree)
    sparse = make_layer(tree, sparse=True)
    x = make_batch(tree, 6)[0]
    y = torch.arange(6) % tree.num_classes
    dense(x, y).loss.backward()
    sparse(x, y).loss.backward()
    assert sparse.weight.grad.is_sparse and sparse.bias.grad.is_sparse
    torch.testing.assert_close(sparse.weight.grad.to_dense(), dense.weight.grad)
    torch.testing.assert_close(sparse.bias.grad.to_dense(), dense.bias.grad)


@pytest.mark.parametrize("opt_cls", [torch.optim.SGD, torch.optim.SparseAdam])
def test_sparse_step_touches_only_used_nodes(opt_cls):
    tree = Tree.huffman(np.arange(1, 201, dtype=float))
    hs = make_layer(tree, d=8, dtype=torch.float32, sparse=True)
    opt = opt_cls(hs.parameters(), lr=0.1)
    y = torch.tensor([199, 198])
    before = hs.weight.detach().clone()
    hs(make_batch(tree, 2, d=8, dtype=torch.float32)[0], y).loss.backward()
    opt.step()
    changed = (hs.weight.detach() != before).any(1).nonzero().squeeze(1)
    used = set()
    for c in y.tolist():
        nodes, _ = tree.path(c)
        used |= {int(tree.param_offset[n]) for n in nodes}
    assert set(changed.tolist()) == used
    assert len(used) < 20 < tree.num_params


def test_ignore_index_and_reductions():
    tree = NAMED["huffman"]
    x = make_batch(tree, 6)[0].requires_grad_()
    y = torch.tensor([0, 5, -100, 2, -100, 1])
    hs = make_layer(tree)
    out, loss = hs(x, y)
    assert out[2] == 0 and out[4] == 0
    kept = y != -100
    torch.testing.assert_close(loss, -out[kept].mean())
    loss.backward()
    assert torch.all(x.grad[~kept] == 0) and torch.all(x.grad[kept].abs().sum(1) > 0)
    hs_sum = make_layer(tree, reduction="sum")
    torch.testing.assert_close(hs_sum(x, y).loss, -out.sum())
    hs_none = make_layer(tree, reduction="none", ignore_index=5)
    out5, loss5 = hs_none(x, torch.tensor([0, 5, 1, 2, 3, 1]))
    assert loss5.shape == (6,) and out5[1] == 0
    torch.testing.assert_close(loss5, -out5)
    # Everything ignored: a zero, finite loss.
    assert hs(x, torch.full((6,), -100)).loss.item() == 0.0


def test_multidimensional_input():
    tree = NAMED["two_level"]
    hs = make_layer(tree)
    x = make_batch(tree, 12)[0].view(3, 4, 6)
    y = torch.arange(12).view(3, 4) % tree.num_classes
    out, _loss = hs(x, y)
    assert out.shape == (3, 4)
    assert hs.log_prob(x).shape == (3, 4, tree.num_classes)
    assert hs.topk(x, 2).indices.shape == (3, 4, 2)
    assert hs.predict(x).shape == (3, 4)
    assert hs.sample(x, 5).shape == (3, 4, 5)
    torch.testing.assert_close(out.flatten(), hs(x.view(12, 6), y.flatten()).output)


# ---------------------------------------------------------------------------- training
def test_learns_a_many_class_task():
    """20 Gaussian classes in 10-d behind a small MLP: HS on a Huffman tree matches a full
    softmax head trained the same way (both near the Bayes rate)."""
    g = torch.Generator().manual_seed(0)
    V, d = 20, 10
    centers = torch.randn(V, d, generator=g) * 3
    counts = torch.linspace(1, 5, V)
    tree = Tree.huffman(counts.numpy())

    def batch(n):
        y = torch.multinomial(counts, n, replacement=True, generator=g)
        return centers[y] + torch.randn(n, d, generator=g), y

    accs = {}
    for kind in ("hs", "full"):
        torch.manual_seed(0)
        body = torch.nn.Sequential(torch.nn.Linear(d, 64), torch.nn.Tanh())
        head = HierarchicalSoftmax(64, tree) if kind == "hs" else torch.nn.Linear(64, V)
        opt = torch.optim.Adam([*body.parameters(), *head.parameters()], lr=0.01)
        for _ in range(300):
            x, y = batch(128)
            opt.zero_grad()
            h = body(x)
            loss = head(h, y).loss if kind == "hs" else F.cross_entropy(head(h), y)
            loss.backward()
            opt.step()
        x, y = batch(2000)
        with torch.no_grad():
            h = body(x)
            pred = head.predict(h) if kind == "hs" else head(h).argmax(-1)
        accs[kind] = (pred == y).float().mean().item()
    assert accs["hs"] > 0.97, accs
    assert accs["hs"] > accs["full"] - 0.02, accs


# ---------------------------------------------------------------------------- state
def test_state_dict_roundtrip():
    tree = Tree.from_paths([["a"], ["a"], ["b"], ["b"], ["b"]], labels=list("vwxyz"))
    hs = make_layer(tree)
    sd = hs.state_dict()
    assert set(sd) == {"table.weight", "table.bias"} | {"tree." + k for k in tree.state()}
    assert dict(hs.named_parameters()) == {"table.weight": hs.weight, "table.bias": hs.bias}
    x = make_batch(tree, 3)[0]
    other = HierarchicalSoftmax(6, Tree.balanced(5, arity=3)).double()  # same shapes, other tree
    assert other.weight.shape == hs.weight.shape
    # Another tree is not taken silently (tests/test_checkpoint.py); it is taken explicitly.
    with pytest.raises(RuntimeError, match="not this module's"):
        other.load_state_dict(sd)
    other = HierarchicalSoftmax.from_state_dict(sd)
    assert other.tree == tree and other.tree.labels == tuple("vwxyz")
    torch.testing.assert_close(other.log_prob(x), hs.log_prob(x), rtol=0, atol=0)
    other.load_state_dict(sd)  # strict: no key missing or unexpected
    # Keys of no released layout are refused, not guessed at.
    renamed = {k.removeprefix("table."): v for k, v in sd.items()}
    with pytest.raises(RuntimeError, match="Missing key"):
        other.load_state_dict(renamed)


def test_parameters_live_on_the_node_table():
    from hsoftmax.layer import NodeTable

    hs = make_layer(NAMED["huffman"], sparse=True)
    assert isinstance(hs.table, NodeTable) and isinstance(hs.table, torch.nn.Embedding)
    assert hs.weight is hs.table.weight and hs.bias is hs.table.bias and hs.sparse and hs.table.sparse
    hs.sparse = False  # assignments go through to the table, which DDP reads
    assert hs.table.sparse is False and hs.sparse is False
    w = torch.nn.Parameter(torch.zeros_like(hs.weight))
    hs.weight = w
    assert hs.table.weight is w and "weight" not in hs._parameters
    assert list(hs.parameters()) == [w, hs.bias]
    nobias = HierarchicalSoftmax(4, Tree.balanced(6), bias=False)
    assert nobias.bias is None and [n for n, _ in nobias.named_parameters()] == ["table.weight"]
    bound = 1 / 4**0.5
    assert nobias.weight.abs().max() <= bound and nobias.weight.std() > bound / 4  # Linear-style init


def test_load_state_dict_rejects_mismatched_tree():
    hs = make_layer(Tree.balanced(8))
    with pytest.raises((ValueError, RuntimeError)):
        make_layer(Tree.balanced(9)).load_state_dict(hs.state_dict())


def test_torch_save_module_roundtrip():
    hs = make_layer(NAMED["taxonomy"], sparse=True, reduction="sum")
    buf = io.BytesIO()
    torch.save(hs, buf)
    buf.seek(0)
    back = torch.load(buf, weights_only=False)
    x = make_batch(hs.tree, 4)[0]
    torch.testing.assert_close(back.log_prob(x), hs.log_prob(x), rtol=0, atol=0)
    assert back.sparse and back.reduction == "sum" and back.tree == hs.tree


def test_to_dtype_and_device():
    hs = HierarchicalSoftmax(6, NAMED["huffman"])
    assert hs.weight.dtype == torch.float32
    hs64 = hs.to(torch.float64)
    x = make_batch(hs.tree, 3)[0]
    assert hs64.log_prob(x).dtype == torch.float64
    if torch.cuda.is_available():
        hc = make_layer(NAMED["taxonomy"], device="cuda")
        assert hc.tree_tensors.children.device.type == "cuda"


def test_autocast_and_half_precision_run_in_float32():
    tree = NAMED["huffman3"]
    hs = make_layer(tree, dtype=torch.float32)
    x = make_batch(tree, 5, dtype=torch.float32)[0] * 50  # large logits: fp16 exp would overflow
    y = torch.arange(5) % tree.num_classes
    ref = hs(x, y).output
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, loss = hs(x, y)
    assert out.dtype == torch.float32 and torch.isfinite(loss)
    torch.testing.assert_close(out, ref)
    half = hs(x.half(), y).output
    assert half.dtype == torch.float32 and torch.isfinite(half).all()
    hb = make_layer(tree, dtype=torch.bfloat16)
    assert torch.isfinite(hb(x.bfloat16(), y).loss) and hb(x.bfloat16(), y).output.dtype == torch.float32


# ---------------------------------------------------------------------------- bad input
def test_bad_input_raises_clear_errors():
    tree = NAMED["huffman"]
    hs = make_layer(tree, dtype=torch.float32)
    x = make_batch(tree, 4, dtype=torch.float32)[0]
    with pytest.raises(ValueError, match=r"target 37 is out of range \[0, 37\)"):
        hs(x, torch.tensor([0, 1, 2, 37]))
    with pytest.raises(ValueError, match="out of range"):
        hs(x, torch.tensor([0, 1, -2, 3]))
    with pytest.raises(TypeError, match="integer"):
        hs(x, torch.tensor([0.0, 1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="does not match"):
        hs(x, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="in_features=6"):
        hs(torch.randn(4, 5), torch.tensor([0, 1, 2, 3]))
    with pytest.raises(TypeError, match="floating-point"):
        hs(torch.ones(4, 6, dtype=torch.long), torch.tensor([0, 1, 2, 3]))
    bad = x.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        hs(bad, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="NaN"):
        hs.log_prob(bad)
    for v in (float("inf"), float("-inf")):
        bad = x.clone()
        bad[3, 0] = v
        with pytest.raises(ValueError, match="Inf"):
            hs.topk(bad, 2)
    # Finite values whose sum overflows are still finite input (the quick sum check falls back).
    huge = torch.full((4, 6), torch.finfo(x.dtype).max / 2, dtype=x.dtype)
    assert hs.topk(huge, 1).indices.shape == (4, 1)
    assert hs.topk(torch.full((4, 6), 6e4, dtype=torch.float16), 1).indices.shape == (4, 1)
    with pytest.raises(ValueError, match="k must be"):
        hs.topk(x, 0)
    with pytest.raises(ValueError, match="reduction"):
        HierarchicalSoftmax(6, tree, reduction="avg")
    with pytest.raises(TypeError, match="Tree"):
        HierarchicalSoftmax(6, [1, 2, 3])
    with pytest.raises(ValueError, match="in_features"):
        HierarchicalSoftmax(0, tree)


def test_integer_like_and_real_arguments():
    # As nn.Linear and torch.topk: any integer type (numpy's too), and any real number type.
    tree = NAMED["huffman"]
    hs = HierarchicalSoftmax(np.int64(6), tree, ignore_index=np.int32(-1), fused_sgd_lr=np.float32(0.5)).double()
    assert type(hs.in_features) is int and hs.in_features == 6 and hs.weight.shape == (tree.num_params, 6)
    assert type(hs.ignore_index) is int and type(hs.fused_sgd_lr) is float and hs.fused_sgd_lr == 0.5
    x = make_batch(tree, 4)[0]
    ref = hs.topk(x, 3)
    got = hs.topk(x, np.int64(3))
    assert torch.equal(got.indices, ref.indices) and got.indices.shape == (4, 3)
    assert hs.sample(x, np.uint8(2), temperature=np.float64(0.5)).shape == (4, 2)
    assert hs.sample(x, 2, temperature=1).shape == (4, 2)  # an int temperature is a real number
    hs.fused_sgd_lr = 1  # so is an int rate
    assert hs.fused_sgd_lr == 1.0
    # Strings, bools and floats where an int belongs are type errors, not silently converted.
    for bad in ("6", 6.0, True):
        with pytest.raises(TypeError, match="in_features must be an int"):
            HierarchicalSoftmax(bad, tree)
    with pytest.raises(TypeError, match="ignore_index"):
        HierarchicalSoftmax(6, tree, ignore_index="-100")
    for bad in ("0.1", True, torch.tensor(0.1), [0.1]):
        with pytest.raises(TypeError, match="fused_sgd_lr"):
            HierarchicalSoftmax(6, tree, fused_sgd_lr=bad)
        with pytest.raises(TypeError, match="fused_sgd_lr"):
            hs.fused_sgd_lr = bad
    assert hs.fused_sgd_lr == 1.0  # a rejected assignment changes nothing
    hs.fused_sgd_lr = None
    for bad in ("3", 3.0, True, np.bool_(True)):
        with pytest.raises(TypeError, match="k must be an int"):
            hs.topk(x, bad)
    for bad in ("2", 2.0, False):
        with pytest.raises(TypeError, match="num_samples must be an int"):
            hs.sample(x, bad)
    for bad in ("1.0", True, None):
        with pytest.raises(TypeError, match="temperature"):
            hs.sample(x, 1, temperature=bad)
    with pytest.raises(ValueError, match="k must be"):
        hs.topk(x, np.int64(tree.num_classes + 1))
    with pytest.raises(ValueError, match="in_features"):
        HierarchicalSoftmax(np.int64(-3), tree)


def test_empty_batch():
    hs = make_layer(NAMED["two_level"])
    x = torch.empty(0, 6, dtype=torch.float64, requires_grad=True)
    out, loss = hs(x, torch.empty(0, dtype=torch.long))
    assert out.shape == (0,) and loss.item() == 0.0
    loss.backward()
    assert hs.log_prob(x).shape == (0, hs.num_classes)
    assert hs.topk(x, 3).indices.shape == (0, 3)
    assert hs.sample(x, 2).shape == (0, 2)


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("name", ["balanced4", "two_level", "huffman"])
def test_huge_finite_inputs_never_give_nan(name, fast):
    """``x * 1e38`` is finite, but in float32 its node scores overflow (inf - inf = NaN): every
    method raises a clear error rather than returning NaN, on the kernels and the torch path. In
    float64 the same input is fine: exact log-probs summing to 1, finite loss and top-k."""
    from conftest import kernels_enabled

    tree = named_trees()[name]
    hs = make_layer(tree, 6, dtype=torch.float32)
    x, y = make_batch(tree, 5, 6, dtype=torch.float32)
    with kernels_enabled(fast):
        for call in (lambda: hs.log_prob(x * 1e38), lambda: hs.topk(x * 1e38, 3)):
            with pytest.raises(ValueError, match="overflowed"):
                call()
        try:
            out = hs(x * 1e38, y).output
        except ValueError as e:
            # Not pytest.raises: either outcome is correct here (a clear error, or no NaN below).
            assert "overflowed" in str(e)  # noqa: PT017
        else:  # a binary path may round the overflow to -inf, a correct limit: never NaN
            assert not torch.isnan(out).any()
        hs64 = make_layer(tree, 6, dtype=torch.float64)
        x64 = x.double() * 1e38
        lp = hs64.log_prob(x64)
        torch.testing.assert_close(lp.exp().sum(-1), torch.ones(5, dtype=torch.float64))
        out = hs64(x64, y)
        torch.testing.assert_close(out.output, lp.gather(1, y[:, None]).squeeze(1))
        assert torch.isfinite(out.loss)
        top = hs64.topk(x64, 3)
        torch.testing.assert_close(top.values, lp.topk(3).values)


def test_check_finite_opt_out():
    """``check_finite = False`` skips the NaN/Inf input check and the overflow check (as
    torch.nn modules do not check): NaN in, NaN out, no error and no host sync."""
    tree = named_trees()["balanced4"]
    hs = make_layer(tree)
    x, y = make_batch(tree, 4)
    x[1, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        hs.log_prob(x)
    hs.check_finite = False
    assert torch.isnan(hs.log_prob(x)[1]).all()
    assert torch.isnan(hs(x, y).output[1])
    assert not torch.isnan(hs(x, y).output[0])

"""hsoftmax.optim: row-sparse optimizers equal their dense counterparts and touch only used rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import make_batch, make_layer
from hsoftmax import HierarchicalSoftmax, Tree
from hsoftmax.optim import (
    MultiOptimizer,
    SparseAdamW,
    SparseSGD,
    clip_grad_norm_,
    clip_grad_value_,
    paired,
    sparse_parameters,
)

TREE = Tree.huffman(1.0 / np.arange(1, 301))


def hs_pair(sparse_b: bool = True, seed: int = 0):
    """Two equal layers on TREE: a dense one and one with ``sparse=sparse_b``."""
    a = make_layer(TREE, 8, seed=seed, sparse=False)
    b = make_layer(TREE, 8, seed=seed, sparse=sparse_b)
    b.load_state_dict(a.state_dict())
    return a, b


def touched_rows(y):
    rows = set()
    for c in y.tolist():
        rows |= {int(TREE.param_offset[n]) for n in TREE.path(c)[0]}
    return rows


@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_sparse_sgd_equals_sgd_on_touched_rows(wd):
    dense, sparse = hs_pair()
    od = torch.optim.SGD(dense.parameters(), lr=0.3)
    os_ = SparseSGD(sparse.parameters(), lr=0.3, weight_decay=wd)
    x, y = make_batch(TREE, 16, 8, repeat_first=False)
    before = sparse.weight.detach().clone()
    for m, o in ((dense, od), (sparse, os_)):
        m(x, y).loss.backward()
        if wd and m is dense:  # decay only the touched rows, as the lazy rule does
            rows = sorted(touched_rows(y))
            m.weight.grad[rows] += wd * m.weight.detach()[rows]
            m.bias.grad[rows] += wd * m.bias.detach()[rows]
        o.step()
    torch.testing.assert_close(sparse.weight, dense.weight)
    torch.testing.assert_close(sparse.bias, dense.bias)
    changed = set((sparse.weight.detach() != before).any(1).nonzero().squeeze(1).tolist())
    assert changed == touched_rows(y)


def test_sparse_adamw_equals_adamw_when_every_row_is_touched():
    torch.manual_seed(0)
    w0 = torch.randn(6, 3, dtype=torch.float64)
    p1 = torch.nn.Parameter(w0.clone())
    p2 = torch.nn.Parameter(w0.clone())
    p3 = torch.nn.Parameter(w0.clone())
    o1 = torch.optim.AdamW([p1], lr=0.05, weight_decay=0.1)
    o2 = SparseAdamW([p2], lr=0.05, weight_decay=0.1)
    o3 = SparseAdamW([p3], lr=0.05, weight_decay=0.1)
    for _step in range(5):
        g = torch.randn(6, 3, dtype=torch.float64)
        p1.grad = g.clone()
        p2.grad = g.clone()  # dense gradient
        p3.grad = g.to_sparse(1)  # sparse, every row present
        o1.step(), o2.step(), o3.step()
    torch.testing.assert_close(p2, p1)
    torch.testing.assert_close(p3, p1)


def test_sparse_adamw_is_lazy():
    p = torch.nn.Parameter(torch.ones(5, 2))
    opt = SparseAdamW([p], lr=0.1, weight_decay=0.5)
    p.grad = torch.sparse_coo_tensor(torch.tensor([[1, 3]]), torch.ones(2, 2), (5, 2), check_invariants=True)
    opt.step()
    changed = (p.detach() != 1).any(1).nonzero().squeeze(1).tolist()
    assert changed == [1, 3]
    st = opt.state[p]
    assert st["exp_avg"][[0, 2, 4]].abs().sum() == 0


def test_uncoalesced_sparse_gradient_is_summed():
    p = torch.nn.Parameter(torch.zeros(4, 2))
    opt = SparseSGD([p], lr=1.0)
    p.grad = torch.sparse_coo_tensor(torch.tensor([[2, 0, 2]]), torch.ones(3, 2), (4, 2), check_invariants=True)
    opt.step()
    assert p[2].tolist() == [-2.0, -2.0] and p[0].tolist() == [-1.0, -1.0]


def test_paired_splits_and_trains():
    torch.manual_seed(0)
    tree = Tree.two_level(50, counts=np.arange(50, 0, -1))
    model = torch.nn.ModuleDict(
        {
            "body": torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.Tanh()),
            "head": HierarchicalSoftmax(32, tree, sparse=True),
        }
    )
    assert sparse_parameters(model) == [model["head"].weight, model["head"].bias]
    opt = paired(model, torch.optim.AdamW, lr=1e-2, weight_decay=0.0)
    assert isinstance(opt, MultiOptimizer)
    assert [type(o) for o in opt.optimizers] == [torch.optim.AdamW, SparseAdamW]
    assert type(paired(model, torch.optim.SGD, lr=0.1, momentum=0.9).optimizers[1]) is SparseSGD
    assert type(paired(model, torch.optim.Adam, lr=0.1).optimizers[1]) is torch.optim.SparseAdam
    # A learnable task: the class is a fixed random projection's argmax.
    proj = torch.randn(10, 50)
    x = torch.randn(2000, 10)
    y = (x @ proj).argmax(1)
    losses = []
    for _epoch in range(15):
        for i in range(0, 2000, 100):
            opt.zero_grad()
            loss = model["head"](model["body"](x[i : i + 100]), y[i : i + 100]).loss
            loss.backward()
            opt.step()
            losses.append(loss.item())
    assert np.mean(losses[-20:]) < 0.6 * np.mean(losses[:20])
    state = opt.state_dict()
    opt2 = paired(model, torch.optim.AdamW, lr=1e-2, weight_decay=0.0)
    opt2.load_state_dict(state)
    assert (
        opt2.optimizers[1].state[model["head"].weight]["step"] == opt.optimizers[1].state[model["head"].weight]["step"]
    )


def test_paired_without_sparse_layers_is_just_the_dense_optimizer():
    model = torch.nn.Linear(3, 2)
    opt = paired(model, torch.optim.SGD, lr=0.1)
    assert [type(o) for o in opt.optimizers] == [torch.optim.SGD]


# ---------------------------------------------------------------------------- clipping
def _model_with_grads(sparse: bool, seed: int = 0):
    """A body and an HS head on TREE after one backward: dense body gradients, and head
    gradients sparse or dense."""
    torch.manual_seed(seed)
    model = torch.nn.ModuleDict({"body": torch.nn.Linear(5, 8).double(), "head": make_layer(TREE, 8, sparse=sparse)})
    x, y = make_batch(TREE, 32, 5, seed=seed)
    model["head"](model["body"](x), y).loss.backward()
    return model


def _dense_grads(model) -> list[torch.Tensor]:
    return [p.grad.to_dense().clone() for p in model.parameters()]  # copies: clipping is in place


@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, float("inf"), "inf"])
@pytest.mark.parametrize("max_norm", [1e-3, 0.5, 1e6])
def test_clip_grad_norm_equals_torch_on_dense_grads(norm_type, max_norm):
    ours, ref = _model_with_grads(False), _model_with_grads(False)
    total = clip_grad_norm_(ours.parameters(), max_norm, norm_type)
    want = torch.nn.utils.clip_grad_norm_(ref.parameters(), max_norm, norm_type)
    torch.testing.assert_close(total, want)
    for a, b in zip(_dense_grads(ours), _dense_grads(ref)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("norm_type", [2.0, 1.0, float("inf")])
def test_clip_grad_norm_on_sparse_grads_equals_the_dense_equivalent(norm_type):
    sparse, dense = _model_with_grads(True), _model_with_grads(False)
    assert sparse["head"].weight.grad.is_sparse and not sparse["head"].weight.grad.is_coalesced()
    before = _dense_grads(sparse)
    for a, b in zip(before, _dense_grads(dense)):
        torch.testing.assert_close(a, b)  # the same gradient, two layouts
    total = clip_grad_norm_(sparse.parameters(), 0.05, norm_type)
    want = torch.nn.utils.clip_grad_norm_(dense.parameters(), 0.05, norm_type)
    torch.testing.assert_close(total, want)
    assert sparse["head"].weight.grad.is_sparse and sparse["head"].bias.grad.is_sparse  # still sparse
    for a, b, c in zip(_dense_grads(sparse), _dense_grads(dense), before):
        torch.testing.assert_close(a, b)
        assert not torch.equal(a, c)  # clipping did scale (0.05 is far below the norm)


def _duplicated_sparse_grad():
    """A sparse gradient whose row 2 appears twice (+0.6 and +0.7: it sums to 1.3), as a
    non-HS embedding or a hand-built gradient may have, and its dense equivalent."""
    idx = torch.tensor([[2, 0, 2]])
    vals = torch.tensor([[0.6, -0.2], [-3.0, 0.1], [0.7, 0.5]], dtype=torch.float64)
    g = torch.sparse_coo_tensor(idx, vals, (4, 2), check_invariants=True)
    return g, g.to_dense()


def test_clipping_sums_duplicate_sparse_entries_first():
    p, q = torch.zeros(4, 2, dtype=torch.float64), torch.zeros(4, 2, dtype=torch.float64)
    p.grad, q.grad = _duplicated_sparse_grad()
    total = clip_grad_norm_([p], 1.0)
    want = torch.nn.utils.clip_grad_norm_([q], 1.0)
    torch.testing.assert_close(total, want)
    torch.testing.assert_close(p.grad.to_dense(), q.grad)
    p.grad, q.grad = _duplicated_sparse_grad()
    clip_grad_value_([p], 1.0)
    torch.nn.utils.clip_grad_value_([q], 1.0)
    torch.testing.assert_close(p.grad.to_dense(), q.grad)  # row 2: 1.3 clamped to 1, not 0.6 + 0.7
    assert p.grad.is_sparse


def test_clip_grad_value_equals_torch_on_sparse_and_dense_grads():
    sparse, dense, ref = _model_with_grads(True), _model_with_grads(False), _model_with_grads(False)
    v = 0.02
    assert max(float(g.abs().max()) for g in _dense_grads(ref)) > v  # the clamp bites
    clip_grad_value_(sparse.parameters(), v)
    clip_grad_value_(dense.parameters(), v)
    torch.nn.utils.clip_grad_value_(ref.parameters(), v)
    assert sparse["head"].weight.grad.is_sparse
    for a, b, c in zip(_dense_grads(sparse), _dense_grads(dense), _dense_grads(ref)):
        torch.testing.assert_close(a, c, rtol=0, atol=0)
        torch.testing.assert_close(b, c, rtol=0, atol=0)


def test_clipping_edge_cases():
    assert clip_grad_norm_([torch.zeros(3, requires_grad=True)], 1.0).item() == 0.0  # no gradients
    p = torch.zeros(3, requires_grad=True)
    p.grad = torch.tensor([3.0, 4.0, 0.0])
    assert clip_grad_norm_(p, 1.0).item() == pytest.approx(5.0)  # a single tensor, as torch takes
    torch.testing.assert_close(p.grad, torch.tensor([0.6, 0.8, 0.0]), atol=1e-6, rtol=0)
    p.grad = torch.tensor([float("nan"), 1.0, 0.0])
    with pytest.raises(RuntimeError, match="non-finite"):
        clip_grad_norm_([p], 1.0, error_if_nonfinite=True)
    for bad in ("1.0", True):
        with pytest.raises(TypeError, match="max_norm"):
            clip_grad_norm_([p], bad)
        with pytest.raises(TypeError, match="clip_value"):
            clip_grad_value_([p], bad)

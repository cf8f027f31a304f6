"""hsoftmax.optim: row-sparse optimizers equal their dense counterparts and touch only used rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hsoftmax import HierarchicalSoftmax, Tree
from hsoftmax.optim import MultiOptimizer, SparseAdamW, SparseSGD, paired, sparse_parameters
from conftest import make_batch, make_layer

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
    for step in range(5):
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
    model = torch.nn.ModuleDict({
        "body": torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.Tanh()),
        "head": HierarchicalSoftmax(32, tree, sparse=True),
    })
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
    for epoch in range(15):
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
    assert opt2.optimizers[1].state[model["head"].weight]["step"] == opt.optimizers[1].state[model["head"].weight]["step"]


def test_paired_without_sparse_layers_is_just_the_dense_optimizer():
    model = torch.nn.Linear(3, 2)
    opt = paired(model, torch.optim.SGD, lr=0.1)
    assert [type(o) for o in opt.optimizers] == [torch.optim.SGD]

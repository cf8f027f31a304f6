"""The numba CPU kernels and their autograd bridge (:mod:`hsoftmax.kernels`) equal the
device-generic torch math: values, gradients, fused SGD, top-k; and the kernels' own plans."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import hsoftmax.kernels as K
from conftest import kernels_enabled, make_batch, make_layer, named_trees, random_taxonomy
from hsoftmax import HierarchicalSoftmax, Tree

pytestmark = pytest.mark.skipif(K.cpu() is None, reason="numba kernels unavailable")

NAMED = named_trees()
rng = np.random.default_rng(7)
ZIPF = 1.0 / np.arange(1, 3001)
BIG = {
    "huffman_zipf": Tree.huffman(ZIPF),
    "balanced": Tree.balanced(3000),
    "huffman4": Tree.huffman(ZIPF, arity=4),
    "two_level_zipf": Tree.two_level(3000, counts=ZIPF),
    "two_level_plain": Tree.two_level(3000, num_clusters=40),
    "taxonomy": random_taxonomy(rng, 500, 60),
}
ALL = {**NAMED, **BIG}


def layer(tree: Tree, d: int, **kw) -> HierarchicalSoftmax:
    """conftest's ``make_layer`` with scores of order 1 whatever ``d``: ``weight ~ N(0, 2/sqrt(d))``."""
    return make_layer(tree, d, weight_std=2.0 / np.sqrt(d), **kw)


def grads(hs: HierarchicalSoftmax, x: torch.Tensor, y: torch.Tensor, fast: bool, reduction="sum"):
    hs.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    hs.reduction = reduction
    with kernels_enabled(fast):
        out, loss = hs(x, y)
        # A non-uniform upstream gradient, so per-example scaling is exercised too.
        (loss + (out * torch.linspace(0.5, 1.5, out.numel(), dtype=out.dtype)).sum()).backward()
    gw = hs.weight.grad
    gb = None if hs.bias is None else hs.bias.grad
    if gw is not None and gw.is_sparse:
        gw = gw.to_dense()
    if gb is not None and gb.is_sparse:
        gb = gb.to_dense()
    return out.detach(), x.grad, gw, gb


# ---------------------------------------------------------------------------- training paths
@pytest.mark.parametrize("name", list(ALL))
@pytest.mark.parametrize("sparse", [False, True])
def test_forward_and_gradients_equal_torch_path(name, sparse):
    tree = ALL[name]
    d = 7
    hs = layer(tree, d, sparse=sparse)
    x, y = make_batch(tree, 97, d)
    ref = grads(hs, x, y, fast=False)
    got = grads(hs, x, y, fast=True)
    for a, b in zip(got, ref):
        if a is None or b is None:
            assert a is None and b is None
        else:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["huffman_zipf", "two_level_zipf", "huffman4", "taxonomy"])
def test_no_bias_and_float32(name):
    tree = ALL[name]
    d = 33
    for bias in (False, True):
        hs64 = layer(tree, d, bias=bias, sparse=True)
        hs32 = layer(tree, d, dtype=torch.float32, bias=bias, sparse=True)
        hs32.load_state_dict(hs64.state_dict())  # the same numbers, rounded to float32
        x, y = make_batch(tree, 64, d)
        ref = grads(hs64, x, y, fast=False)
        got = grads(hs32, x.float(), y, fast=True)
        for a, b in zip(got, ref):
            if b is None:
                assert a is None
            else:
                torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["huffman_zipf", "two_level_zipf", "taxonomy"])
def test_sparse_gradient_is_coalesced_and_only_touched_rows(name):
    tree = ALL[name]
    hs = layer(tree, 5, sparse=True)
    x, y = make_batch(tree, 40, 5)
    with kernels_enabled(True):
        hs(x, y).loss.backward()
    for g in (hs.weight.grad, hs.bias.grad):
        # Rows come out unique and sorted (autograd drops the is_coalesced flag on the way).
        assert g.is_sparse
        idx = g._indices()[0]
        assert torch.equal(idx, torch.unique(idx))
    touched = set()
    for c in y.tolist():
        nodes, _ = tree.path(c)
        for n in nodes:
            k = int(tree.arity[n])
            o = int(tree.param_offset[n])
            touched |= set(range(o, o + (0 if k == 1 else 1 if k == 2 else k)))
    assert set(hs.weight.grad._indices()[0].tolist()) == touched


def test_gradcheck_fast_paths():
    for name in ("huffman", "two_level_counts", "taxonomy", "huffman3"):
        tree = NAMED[name]
        hs = layer(tree, 3)
        x, y = make_batch(tree, 6, 3)
        x.requires_grad_()

        def fwd(x, w, b, hs=hs, y=y):  # hs, y: this tree's, bound now
            return torch.func.functional_call(hs, {"table.weight": w, "table.bias": b}, (x, y)).output

        with kernels_enabled(True):  # the full Jacobian on the mixed-arity taxonomy, fast mode elsewhere
            assert torch.autograd.gradcheck(fwd, (x, hs.weight, hs.bias), fast_mode=name != "taxonomy")


def test_input_only_and_weight_only_gradients():
    tree = BIG["two_level_zipf"]
    hs = layer(tree, 4)
    x, y = make_batch(tree, 30, 4)
    with kernels_enabled(True):
        hs.weight.requires_grad_(False)
        hs.bias.requires_grad_(False)
        xg = x.clone().requires_grad_()
        hs(xg, y).loss.backward()
        assert xg.grad is not None and hs.weight.grad is None
        hs.weight.requires_grad_(True)
        hs(x, y).loss.backward()  # x needs no gradient
        assert hs.weight.grad is not None and hs.bias.grad is None


def test_ignore_index_with_fast_path():
    tree = BIG["two_level_zipf"]
    hs = layer(tree, 4, sparse=True)
    x, y = make_batch(tree, 20, 4)
    y[3] = -100
    res = [grads(hs, x, y, fast=fast, reduction="mean") for fast in (True, False)]
    for a, b in zip(*res):
        torch.testing.assert_close(a, b)
    assert res[0][1][3].abs().sum() == 0


# ---------------------------------------------------------------------------- inference paths
@pytest.mark.parametrize("name", list(ALL))
def test_log_prob_equals_torch_path(name):
    tree = ALL[name]
    hs = layer(tree, 6)
    x, _ = make_batch(tree, 9, 6)
    with torch.no_grad():
        with kernels_enabled(True):
            got = hs.log_prob(x)
        with kernels_enabled(False):
            ref = hs.log_prob(x)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got.exp().sum(-1), torch.ones(9, dtype=torch.float64))


@pytest.mark.parametrize("name", list(ALL))
def test_topk_is_exact(name):
    tree = ALL[name]
    hs = layer(tree, 6)
    x, _ = make_batch(tree, 17, 6)
    k = min(7, tree.num_classes)
    with torch.no_grad(), kernels_enabled(True):
        vals, idx = hs.topk(x, k)
        pred = hs.predict(x)
        ref_v, ref_i = hs.log_prob(x).topk(k)
    torch.testing.assert_close(vals, ref_v, rtol=1e-10, atol=1e-10)
    assert torch.equal(idx, ref_i)
    assert torch.equal(pred, ref_i[:, 0])


def test_topk_float32_and_all_classes():
    tree = BIG["two_level_zipf"]
    hs = layer(tree, 16, dtype=torch.float32)
    x = torch.randn(5, 16)
    with torch.no_grad():
        v, i = hs.topk(x, 50)
        rv, ri = hs.log_prob(x).topk(50)
    torch.testing.assert_close(v, rv, rtol=1e-5, atol=1e-5)
    assert (i == ri).float().mean() > 0.98  # float32 near-ties may swap neighbours
    small = NAMED["huffman3"]
    hs = layer(small, 4)
    x, _ = make_batch(small, 3, 4)
    v, i = hs.topk(x, small.num_classes)
    assert torch.equal(torch.sort(i, dim=1).values, torch.arange(small.num_classes).expand(3, -1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["huffman_zipf", "two_level_zipf", "taxonomy"])
def test_cuda_torch_path_equals_cpu_fast_path(name):
    tree = ALL[name]
    hs = layer(tree, 8, sparse=True)
    x, y = make_batch(tree, 50, 8)
    cpu = grads(hs, x, y, fast=True)
    hs_c = hs.to("cuda")
    got = grads(hs_c, x.cuda(), y.cuda(), fast=True)
    for a, b in zip(got, cpu):
        torch.testing.assert_close(a.cpu(), b)
    with torch.no_grad():
        v, i = hs_c.topk(x.cuda(), 5)
        rv, ri = hs.cpu().topk(x, 5)
    torch.testing.assert_close(v.cpu(), rv)
    assert torch.equal(i.cpu(), ri)


# ---------------------------------------------------------------------------- fused SGD update
def _fused_vs_step(tree, fast, sparse=True, bias=True, n=97, d=7, lr=0.3, reduction="sum", y=None):
    """Output, input gradient and updated table of a fused-SGD backward, and the same from a
    plain backward followed by ``table -= lr * grad``."""
    hs = layer(tree, d, bias=bias, sparse=sparse)
    x, yy = make_batch(tree, n, d)
    y = yy if y is None else y
    out, gx, gw, gb = grads(hs, x, y, fast=fast, reduction=reduction)
    ref_w = hs.weight.detach() - lr * gw if gw is not None else hs.weight.detach()  # (no rows: one class)
    ref_b = None if not bias else hs.bias.detach() - lr * gb if gb is not None else hs.bias.detach()
    fused = layer(tree, d, bias=bias, sparse=sparse, fused_sgd_lr=lr)
    f_out, f_gx, f_gw, f_gb = grads(fused, x, y, fast=fast, reduction=reduction)
    assert f_gw is None and f_gb is None  # applied, not left in .grad
    return (out, gx, ref_w, ref_b), (f_out, f_gx, fused.weight.detach(), None if not bias else fused.bias.detach())


@pytest.mark.parametrize("name", list(ALL))
@pytest.mark.parametrize("fast", [True, False])
def test_fused_sgd_equals_gradient_then_sgd_step(name, fast):
    ref, got = _fused_vs_step(ALL[name], fast)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["huffman_zipf", "two_level_zipf", "huffman4"])
def test_fused_sgd_dense_no_bias_big_batch_and_ignore_index(name):
    tree = ALL[name]
    for kw in ({"sparse": False}, {"bias": False}, {"n": 700, "reduction": "mean"}):
        for fast in (True, False):
            ref, got = _fused_vs_step(tree, fast, **kw)
            for a, b in zip(got, ref):
                if b is None:
                    assert a is None
                else:
                    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    _, y = make_batch(tree, 50, 7)
    y[[3, 10]] = -100
    for fast in (True, False):
        ref, got = _fused_vs_step(tree, fast, n=50, y=y, reduction="mean")
        for a, b in zip(got, ref):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["huffman_zipf", "two_level_zipf"])
@pytest.mark.parametrize("fast", [True, False])
def test_fused_sgd_frozen_weight_updates_bias_only_and_no_grad_updates_nothing(name, fast):
    tree = ALL[name]
    hs = layer(tree, 5, sparse=True)
    x, y = make_batch(tree, 40, 5)
    with kernels_enabled(fast):
        hs.weight.requires_grad_(False)
        hs(x, y).loss.backward()
        gb = hs.bias.grad.to_dense()
        fused = layer(tree, 5, sparse=True, fused_sgd_lr=0.5)
        fused.weight.requires_grad_(False)
        w0 = fused.weight.detach().clone()
        fused(x, y).loss.backward()
        assert torch.equal(fused.weight, w0) and fused.bias.grad is None
        torch.testing.assert_close(fused.bias.detach(), hs.bias.detach() - 0.5 * gb)
        b1 = fused.bias.detach().clone()
        with torch.no_grad():
            fused(x, y)
        fused.fused_sgd_lr = None  # off again: gradients as usual
        fused(x, y).loss.backward()
        assert torch.equal(fused.bias.detach(), b1) and fused.bias.grad is not None


def test_fused_sgd_rejects_bad_rates_and_trains():
    tree = BIG["two_level_zipf"]
    hs = layer(tree, 8, sparse=True, fused_sgd_lr=float("nan"))
    x, y = make_batch(tree, 64, 8)
    with pytest.raises(ValueError, match="fused_sgd_lr"):
        hs(x, y)
    hs.fused_sgd_lr = 0.5
    first = hs(x, y).loss
    first.backward()
    for _ in range(20):
        loss = hs(x, y).loss
        loss.backward()
    assert loss.item() < first.item()
    assert "fused_sgd_lr=0.5" in repr(hs)


@pytest.mark.parametrize("name", ["huffman_zipf", "two_level_zipf", "taxonomy"])
def test_fused_sgd_second_use_of_the_table_raises_on_kernels_and_is_exact_on_torch(name):
    """Two calls in one graph: the fused backward that runs second would compute its input
    gradient from rows the first already updated. The kernels bump the table's version, so it
    raises; the torch path (which keeps its gathered rows) gives plain SGD's exact answer."""
    tree = ALL[name]
    x, y = make_batch(tree, 40, 6)
    x1, x2, y1, y2 = x[:20].clone(), x[20:].clone(), y[:20], y[20:]
    for fast in (True, False):
        ref = layer(tree, 6, sparse=True)
        fused = layer(tree, 6, sparse=True, fused_sgd_lr=0.5)
        a, b = x1.clone().requires_grad_(), x2.clone().requires_grad_()
        with kernels_enabled(fast):
            (ref(a, y1).loss + ref(b, y2).loss).backward()
            fa, fb = x1.clone().requires_grad_(), x2.clone().requires_grad_()
            v0 = fused.weight._version
            if fast:
                with pytest.raises(RuntimeError, match="fused_sgd_lr: the node table was modified"):
                    (fused(fa, y1).loss + fused(fb, y2).loss).backward()
                fused(x, y).loss.backward()  # one call per backward is fine
                assert fused.weight._version > v0
                continue
            (fused(fa, y1).loss + fused(fb, y2).loss).backward()
        torch.testing.assert_close(fa.grad, a.grad)
        torch.testing.assert_close(fb.grad, b.grad)
        torch.testing.assert_close(fused.weight.detach(), ref.weight.detach() - 0.5 * ref.weight.grad.to_dense())


def test_balance_deals_every_item_once_and_evenly():
    k = K.cpu()
    cost = np.array([100.0, 1, 1, 50, 49, 1, 1, 1], dtype=np.float64)
    for T in (1, 2, 3):
        perm, tstart = k.balance(cost, T)
        assert sorted(perm.tolist()) == list(range(cost.size))
        loads = [cost[perm[tstart[t] : tstart[t + 1]]].sum() for t in range(T)]
        assert max(loads) <= max(cost.max(), cost.sum() / T + cost.max())
    perm, tstart = k.balance(cost, 2)  # largest first, to the lighter thread: 102 and 102
    loads = sorted(cost[perm[tstart[t] : tstart[t + 1]]].sum() for t in range(2))
    assert loads == [102.0, 102.0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("wd", [0.0, 0.01])
def test_sparse_sgd_row_kernel_equals_index_add(dtype, wd):
    from hsoftmax.optim import SparseSGD

    g = torch.Generator().manual_seed(3)
    P, d = 5000, 64
    rows = torch.randperm(P, generator=g)[:3000].sort().values  # 192k values: the kernel's size
    vals = torch.randn(3000, d, generator=g, dtype=dtype)
    w0 = torch.randn(P, d, generator=g, dtype=dtype)
    out = []
    for fast in (True, False):
        p = torch.nn.Parameter(w0.clone())
        p.grad = torch.sparse_coo_tensor(rows.unsqueeze(0), vals, (P, d), check_invariants=True)
        version = p._version
        with kernels_enabled(fast):
            SparseSGD([p], lr=0.3, weight_decay=wd).step()
        assert p._version > version  # the numpy-side write is visible to autograd, as index_add_ is
        out.append(p.detach())
    tol = {"rtol": 1e-6, "atol": 1e-6} if dtype == torch.float32 else {}
    torch.testing.assert_close(out[0], out[1], **tol)
    untouched = torch.ones(P, dtype=torch.bool)
    untouched[rows] = False
    assert torch.equal(out[0][untouched], w0[untouched])
    assert not torch.equal(out[0][rows], w0[rows])


# ---------------------------------------------------------------------------- plans and bundles
@pytest.mark.parametrize("name", ["two_level_zipf", "taxonomy", "huffman3", "chain"])
def test_group_plan_names_every_decision_once(name):
    """The grouped kernels' plans (NamedTuples with named fields) cover each decision of the
    batch exactly once, in the group of its node, with a score block of the node's row count."""
    from hsoftmax.kernels import autograd as KA
    from hsoftmax.kernels import numba_cpu as nb

    tree = ALL[name]
    tt = layer(tree, 4).tree_tensors
    _, y = make_batch(tree, 70, 4)
    target = y.numpy()
    nodes, decisions = KA._nodes(tt), KA._decisions(tt)
    with K.borrow_marks(tree.num_nodes) as mark:
        plan = nb.group_plan(decisions, target, nodes.arity, mark)
        assert (mark == -1).all()  # the borrowed scratch comes back clean
    assert isinstance(plan, nb.GroupPlan) and plan._fields[0] == "groups"
    D = decisions.nodes.shape[1]
    seen = []
    for g, node in enumerate(plan.groups):
        for f in plan.entries[plan.gstart[g] : plan.gstart[g + 1]]:
            i, j = divmod(int(f), D)
            assert decisions.nodes[target[i], j] == node and j < decisions.lengths[target[i]]
            k = int(nodes.arity[node])
            assert plan.score_offset[f + 1] - plan.score_offset[f] == (1 if k == 2 else k)
            seen.append(int(f))
        k = int(nodes.arity[node])
        assert plan.vstart[g + 1] - plan.vstart[g] == (1 if k == 2 else k)
    want = [i * D + j for i in range(len(target)) for j in range(int(decisions.lengths[target[i]]))]
    assert sorted(seen) == want
    ent = nb.entry_info(plan, decisions, target)
    assert isinstance(ent, nb.EntryInfo)
    assert (ent.position[plan.entries] == np.arange(plan.entries.size)).all()
    assert (ent.example == plan.entries // D).all()
    work = nb.work_items(plan, 0, 3)
    assert isinstance(work, nb.WorkItems) and all(isinstance(w, nb.Items) for w in work)
    # Every forward item is a slice of one group, and together they cover every entry once.
    covered = np.concatenate([np.arange(lo, hi) for _, lo, hi in work.forward.items]) if len(work.forward.items) else []
    assert sorted(covered) == list(range(plan.entries.size))
    assert sorted(work.rows.perm.tolist()) == list(range(len(work.rows.items)))


# ---------------------------------------------------------------------------- double backward
@pytest.mark.parametrize("name", ["huffman", "huffman3", "balanced4", "two_level_counts", "taxonomy"])
def test_double_backward_on_kernels(name):
    """create_graph=True used to return a gradient with requires_grad=False on the kernels, so
    a gradient penalty silently added nothing. Now the kernels' backward recomputes through the
    differentiable torch path: gradgradcheck passes and a penalty's gradient equals the torch
    path's."""
    from hsoftmax import functional as HF

    tree = NAMED[name]
    hs = layer(tree, 2)
    tt = hs.tree_tensors
    x, y = make_batch(tree, 4, 2)
    x.requires_grad_()
    # The input and the root's first row (every example uses it); fewer numerical perturbations
    # keep it fast. The penalty below compares every parameter's gradient.
    w, b = hs.weight.detach(), hs.bias.detach()
    w_top = w[:1].clone().requires_grad_()
    b_top = b[:1].clone().requires_grad_()

    def f(x, w_top, b_top):
        return HF.target_log_prob(x, y, torch.cat([w_top, w[1:]]), torch.cat([b_top, b[1:]]), tt)

    with kernels_enabled(True):
        assert torch.autograd.gradgradcheck(f, (x, w_top, b_top))

    def penalized_grads(fast):
        xx = x.detach().clone().requires_grad_()
        hs.zero_grad(set_to_none=True)
        with kernels_enabled(fast):
            loss = hs(xx, y).loss
            (gx,) = torch.autograd.grad(loss, xx, create_graph=True)
            assert gx.requires_grad
            (loss + gx.pow(2).sum()).backward()
        return xx.grad, hs.weight.grad, hs.bias.grad

    for got, want in zip(penalized_grads(True), penalized_grads(False)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_double_backward_with_fused_sgd_raises():
    tree = NAMED["huffman"]
    hs = layer(tree, 3, fused_sgd_lr=0.1)
    x, y = make_batch(tree, 9, 3)
    x.requires_grad_()
    with kernels_enabled(True):
        loss = hs(x, y).loss
        with pytest.raises(RuntimeError, match="create_graph"):
            torch.autograd.grad(loss, x, create_graph=True)

"""LabelTree (a probabilistic label tree) is exact: its loss is the sum of the node targets'
binary cross-entropies, its marginals are products along the paths, top-k and thresholded
prediction equal ranking and filtering every marginal, and the kernels equal the torch path."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from conftest import kernels_enabled, named_trees
from hsoftmax import LabelTree, Tree
from hsoftmax.kernels import plt as P
from hsoftmax.label_tree import label_centroids

TREES = named_trees()
D = 5


def make_plt(tree: Tree, *, seed: int = 0, bias: bool = True, **kw) -> LabelTree:
    torch.manual_seed(seed)
    m = LabelTree(D, tree, bias=bias, **kw).double()
    with torch.no_grad():
        m.weight.normal_(0, 1.0)
        if m.bias is not None:
            m.bias.normal_(0, 0.5)
    return m


def label_lists(tree: Tree, n: int, seed: int = 1) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    V = tree.num_classes
    out = [[], [0], list(range(V))]
    while len(out) < n:
        out.append(rng.choice(V, size=int(rng.integers(1, min(V, 5) + 1)), replace=False).tolist())
    return out[:n]


def naive_loss(m: LabelTree, x: torch.Tensor, sets: list[list[int]]) -> torch.Tensor:
    """Sum of binary cross-entropies over every child of every positive node, from the definition."""
    tree = m.tree
    V = tree.num_classes
    lay = m.layout
    out = []
    for i, labels in enumerate(sets):
        positive = set()
        for y in labels:
            ref = y
            while tree.parent[ref] >= 0:
                positive.add(ref)
                ref = V + int(tree.parent[ref])
        total = torch.zeros((), dtype=torch.float64)
        for j in {0} | {r - V for r in positive if r >= V}:
            if lay.row_offset[j + 1] == lay.row_offset[j]:
                continue
            kids = tree.children[tree.child_offset[j] : tree.child_offset[j + 1]]
            for c, ch in enumerate(kids):
                r = int(lay.row_offset[j] + c)
                s = m.weight[r] @ x[i] + (m.bias[r] if m.bias is not None else 0.0)
                t = torch.tensor(float(int(ch) in positive), dtype=torch.float64)
                total = total + torch.nn.functional.binary_cross_entropy_with_logits(s, t)
        out.append(total)
    return torch.stack(out)


def path_log_marginal(m: LabelTree, x: torch.Tensor, y: int) -> torch.Tensor:
    """log of the product of the edge probabilities on label y's path (1 on single-child edges)."""
    tree, lay = m.tree, m.layout
    V = tree.num_classes
    total = torch.zeros(x.shape[0], dtype=torch.float64)
    ref = y
    while tree.parent[ref] >= 0:
        r = int(lay.ref_row[ref])
        if r >= 0:
            s = x @ m.weight[r] + (m.bias[r] if m.bias is not None else 0.0)
            total = total + torch.nn.functional.logsigmoid(s)
        ref = V + int(tree.parent[ref])
    return total


@pytest.mark.parametrize("kernels", [True, False], ids=["kernels", "torch"])
@pytest.mark.parametrize("name", list(TREES))
def test_loss_is_the_sum_of_node_cross_entropies(name, kernels):
    tree = TREES[name]
    m = make_plt(tree)
    sets = label_lists(tree, 9)
    x = torch.randn(len(sets), D, dtype=torch.float64)
    with kernels_enabled(kernels), torch.no_grad():
        out = m(x, sets)
        want = naive_loss(m, x, sets)
    assert torch.allclose(out.losses, want, rtol=1e-10, atol=1e-12)
    assert torch.allclose(out.loss, want.mean())


@pytest.mark.parametrize("name", list(TREES))
def test_kernels_and_torch_path_agree_on_loss_and_gradients(name):
    tree = TREES[name]
    sets = label_lists(tree, 12, seed=2)
    x0 = torch.randn(len(sets), D, dtype=torch.float64)
    results = []
    for kernels in (True, False):
        m = make_plt(tree)
        x = x0.clone().requires_grad_()
        with kernels_enabled(kernels):
            out = m(x, sets)
            (out.losses * torch.linspace(0.5, 2.0, len(sets), dtype=torch.float64)).sum().backward()
        results.append((out.losses.detach(), x.grad, m.weight.grad, m.bias.grad))
    for a, b in zip(*results):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kernels", [True, False], ids=["kernels", "torch"])
def test_sparse_gradients_equal_dense(kernels):
    tree = TREES["huffman3"]
    sets = label_lists(tree, 8)
    x = torch.randn(len(sets), D, dtype=torch.float64)
    grads = []
    for sparse in (False, True):
        m = make_plt(tree, sparse=sparse)
        with kernels_enabled(kernels):
            m(x, sets).loss.backward()
        assert m.weight.grad.is_sparse == sparse and m.bias.grad.is_sparse == sparse
        grads.append((m.weight.grad.to_dense(), m.bias.grad.to_dense()))
    assert torch.allclose(grads[0][0], grads[1][0]) and torch.allclose(grads[0][1], grads[1][1])


GRADCHECK_TREES = {
    "chain": TREES["chain"],  # single-child chains, mixed depths
    "ternary": Tree.balanced(7, arity=3),
    "taxonomy": Tree.from_paths([["a"], ["a", "b"], ["a", "b"], [], ["c", "d"]]),
}


@pytest.mark.parametrize("kernels", [True, False], ids=["kernels", "torch"])
@pytest.mark.parametrize("name", list(GRADCHECK_TREES))
def test_gradcheck_float64(name, kernels):
    tree = GRADCHECK_TREES[name]
    m = make_plt(tree)
    sets = label_lists(tree, 4, seed=3)
    x = torch.randn(len(sets), D, dtype=torch.float64, requires_grad=True)
    weight = m.weight.detach().clone().requires_grad_()
    bias = m.bias.detach().clone().requires_grad_()

    def loss(x, w, b):
        # the parameters as plain tensors in the module, so that gradcheck perturbs them
        saved = m.table.weight, m.table.bias
        try:
            del m.table.weight, m.table.bias
            m.table.weight, m.table.bias = w, b
            return m(x, sets).losses
        finally:
            del m.table.weight, m.table.bias
            m.table.weight, m.table.bias = saved

    with kernels_enabled(kernels):
        assert torch.autograd.gradcheck(loss, (x, weight, bias), fast_mode=name != "chain")
        if not kernels and name == "chain":
            assert torch.autograd.gradgradcheck(loss, (x, weight, bias), fast_mode=True)


def test_double_backward_on_the_kernels_differentiates_the_torch_path():
    tree = TREES["two_level"]
    sets = label_lists(tree, 6)
    x0 = torch.randn(len(sets), D, dtype=torch.float64)
    penalties = []
    for kernels in (True, False):
        m = make_plt(tree)
        x = x0.clone().requires_grad_()
        with kernels_enabled(kernels):
            (gx,) = torch.autograd.grad(m(x, sets).loss, x, create_graph=True)
            penalty = gx.pow(2).sum()
            penalty.backward()
        penalties.append((penalty.detach(), m.weight.grad.clone()))
    assert torch.allclose(penalties[0][0], penalties[1][0]) and torch.allclose(penalties[0][1], penalties[1][1])


@pytest.mark.parametrize("kernels", [True, False], ids=["kernels", "torch"])
def test_padded_csr_and_list_targets_agree(kernels):
    tree = TREES["balanced4"]
    m = make_plt(tree)
    sets = label_lists(tree, 7)
    x = torch.randn(len(sets), D, dtype=torch.float64)
    width = max(map(len, sets))
    padded = torch.full((len(sets), width), -7)
    for i, s in enumerate(sets):
        padded[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    offsets = torch.tensor(np.cumsum([0] + [len(s) for s in sets]))
    labels = torch.tensor([y for s in sets for y in s], dtype=torch.long)
    m7 = make_plt(tree, fill=-7)
    with kernels_enabled(kernels), torch.no_grad():
        a = m(x, sets).losses
        b = m(x, (offsets, labels)).losses
        c = m7(x, padded).losses
        d = m(x, (offsets.numpy(), labels.numpy())).losses
    assert torch.allclose(a, b) and torch.allclose(a, c) and torch.allclose(a, d)


@pytest.mark.parametrize("kernels", [True, False], ids=["kernels", "torch"])
@pytest.mark.parametrize("name", list(TREES))
def test_marginals_are_products_along_the_paths(name, kernels):
    tree = TREES[name]
    m = make_plt(tree)
    x = torch.randn(6, D, dtype=torch.float64)
    with kernels_enabled(kernels), torch.no_grad():
        lm = m.log_marginals(x)
        want = torch.stack([path_log_marginal(m, x, y) for y in range(tree.num_classes)], dim=1)
        assert torch.allclose(lm, want, rtol=1e-10, atol=1e-12)
        assert torch.allclose(m.marginals(x), want.exp())


@pytest.mark.parametrize("name", list(TREES))
def test_topk_is_the_sort_of_the_exact_marginals(name):
    tree = TREES[name]
    m = make_plt(tree)
    x = torch.randn(20, D, dtype=torch.float64)
    V = tree.num_classes
    for k in sorted({1, min(3, V), V}):
        want = m.marginals(x).sort(dim=1, descending=True)
        for kernels in (True, False):
            with kernels_enabled(kernels):
                top = m.topk(x, k)
            assert torch.allclose(top.values, want.values[:, :k], rtol=1e-10)
            assert torch.equal(top.indices, want.indices[:, :k])  # random weights: no ties


@pytest.mark.parametrize("name", list(TREES))
def test_threshold_prediction_filters_the_marginals(name):
    tree = TREES[name]
    m = make_plt(tree)
    x = torch.randn(15, D, dtype=torch.float64)
    marg = m.marginals(x)
    for t in (0.0, 0.05, 0.3, 0.7, 1.0):
        for kernels in (True, False):
            with kernels_enabled(kernels):
                pred = m.predict(x, threshold=t)
            got = pred.to_lists()
            for i in range(x.shape[0]):
                row = marg[i]
                want = [int(j) for j in torch.argsort(-row, stable=True) if row[j] >= t]
                assert got[i] == want, (t, kernels, i)
                assert torch.allclose(pred.scores[pred.offsets[i] : pred.offsets[i + 1]], row[want])


def test_empty_label_set_trains_the_root_children_down():
    tree = Tree.balanced(4)
    m = make_plt(tree)
    x = torch.randn(1, D, dtype=torch.float64)
    for kernels in (True, False):
        with kernels_enabled(kernels), torch.no_grad():
            s = m.weight[:2] @ x[0] + m.bias[:2]
            want = torch.nn.functional.softplus(s).sum()  # two negatives at the root
            assert torch.allclose(m(x, [[]]).losses[0], want)


def test_training_learns_label_sets():
    """A few steps of Adam on a learnable problem: P@1 of the exact top-1 goes up."""
    rng = np.random.default_rng(0)
    X = torch.tensor(rng.normal(size=(300, 8)), dtype=torch.float32)
    sets = [[j for j in range(12) if X[i, j % 8] > 0.3] for i in range(300)]
    m = LabelTree(8, Tree.from_embeddings(label_centroids(X, sets, num_labels=12), arity=3))
    opt = torch.optim.Adam(m.parameters(), lr=0.05)

    def p_at_1():
        top = m.topk(X, 1).indices[:, 0].tolist()
        return np.mean([t in s for t, s in zip(top, sets)])

    before = p_at_1()
    for _ in range(60):
        opt.zero_grad()
        m(X, sets).loss.backward()
        opt.step()
    assert p_at_1() > max(0.9, before + 0.2)


def test_state_dict_carries_the_tree():
    tree = TREES["taxonomy"]
    m = make_plt(tree)
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf)  # weights_only=True
    m2 = LabelTree.from_state_dict(sd)
    assert m2.tree == tree and torch.equal(m2.weight, m.weight)
    other = LabelTree(D, TREES["huffman"]).double()
    with pytest.raises(RuntimeError, match=r"LabelTree\.from_state_dict"):
        other.load_state_dict(sd)


def test_bad_inputs_get_clear_errors():
    tree = Tree.balanced(6)
    m = LabelTree(D, tree)
    x = torch.randn(2, D)
    with pytest.raises(ValueError, match=r"target 6 is out of range \[0, 6\)"):
        m(x, torch.tensor([[0, 6], [1, -1]]))
    with pytest.raises(ValueError, match="out of range"):
        m(x, torch.tensor([[0, -2], [1, -1]]))
    with pytest.raises(ValueError, match="out of range"):
        m(x, [[0], [9]])
    with pytest.raises(ValueError, match="non-decreasing"):
        m(x, (torch.tensor([0, 2, 1]), torch.tensor([0, 1])))
    with pytest.raises(ValueError, match="2 inputs"):
        m(x, (torch.tensor([0, 1]), torch.tensor([0])))
    with pytest.raises(TypeError, match="integer"):
        m(x, torch.tensor([[0.0, 1.0], [1.0, 2.0]]))
    with pytest.raises(ValueError, match="batch=2"):
        m(x, torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="CSR tuple"):
        m(x, "0 1")
    with pytest.raises(ValueError, match="in_features=5"):
        m(torch.randn(2, 4), [[0], [1]])
    with pytest.raises(ValueError, match="NaN"):
        m(torch.full((2, D), float("nan")), [[0], [1]])
    with pytest.raises(ValueError, match="k must be"):
        m.topk(x, 7)
    with pytest.raises(ValueError, match="threshold"):
        m.predict(x, threshold=1.5)
    with pytest.raises(TypeError, match="Tree"):
        LabelTree(D, [1, 2])


def test_label_centroids_dense_and_sparse_agree():
    scipy_sparse = pytest.importorskip("scipy.sparse")
    rng = np.random.default_rng(0)
    X = rng.random((30, 7)) * (rng.random((30, 7)) < 0.4)
    sets = [rng.choice(5, size=int(rng.integers(0, 3)), replace=False).tolist() for _ in range(30)]
    dense = label_centroids(X, sets, num_labels=6)
    sparse = label_centroids(scipy_sparse.csr_matrix(X), sets, num_labels=6)
    assert np.allclose(dense, sparse, atol=1e-6)
    assert np.allclose(dense[5], 0)  # a label with no examples
    mean = label_centroids(X, sets, num_labels=6, normalize=False)
    y0 = [i for i, s in enumerate(sets) if 0 in s]
    assert np.allclose(mean[0], X[y0].mean(0), atol=1e-6)
    with pytest.raises(ValueError, match="n=30"):
        label_centroids(X[:5], sets)


def test_layout_rows_are_the_node_table():
    tree = TREES["huffman3"]
    m = LabelTree(D, tree)
    assert m.weight.shape == (P.plt_layout(tree).num_rows, D)
    assert m.weight.shape[0] == tree.num_classes + tree.num_nodes - 1  # no single-child nodes


# ---------------------------------------------------------------------------- LinearLabelTree
# The linear PLT over sparse inputs (kernels/plt_sparse.py) against the dense LabelTree with
# weight = weight_t.T on the dense input: the same loss, gradient step, marginals and top-k.
F = 11


def make_linear(tree: Tree, *, bias: bool = True, seed: int = 0):
    from hsoftmax.label_tree import LinearLabelTree

    rng = np.random.default_rng(seed)
    m = LinearLabelTree(F, tree, bias=bias, dtype=np.float64)
    m.weight_t[...] = rng.normal(0, 1.0, size=m.weight_t.shape)
    if m.bias is not None:
        m.bias[...] = rng.normal(0, 0.5, size=m.bias.shape)
    return m


def sparse_rows(n: int, seed: int = 0):
    import scipy.sparse as sp

    X = sp.random(n, F, density=0.3, random_state=seed, format="csr", dtype=np.float64)
    keep = np.ones(n)
    keep[0] = 0.0  # an empty row: only the biases score
    X = (sp.diags(keep) @ X).tocsr()
    X.eliminate_zeros()
    return X


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("name", list(TREES))
def test_linear_plt_predicts_as_the_dense_label_tree(name, bias):
    tree = TREES[name]
    m = make_linear(tree, bias=bias)
    X = sparse_rows(13)
    dense = m.to_label_tree()
    Xd = torch.from_numpy(X.toarray())
    lm = m.log_marginals(X)
    assert torch.allclose(lm, dense.log_marginals(Xd), rtol=1e-10, atol=1e-12)
    for y in (0, tree.num_classes - 1):  # a marginal is the product along its path
        assert torch.allclose(lm[:, y], path_log_marginal(dense, Xd, y), rtol=1e-10, atol=1e-12)
    k = min(4, tree.num_classes)
    top = m.topk(X, k)
    want = lm.exp().sort(dim=1, descending=True).values[:, :k]
    assert torch.allclose(top.values, want, rtol=1e-10, atol=1e-12)  # top-k == sorting the marginals
    assert torch.equal(top.indices, dense.topk(Xd, k).indices)
    assert torch.allclose(lm.gather(1, top.indices), top.values.log(), rtol=1e-10, atol=1e-12)
    for t in (0.0, 0.05, 0.5):
        got, ref = m.predict(X, t), dense.predict(Xd, t)
        assert got.to_lists() == ref.to_lists()
        assert torch.allclose(got.scores, ref.scores, rtol=1e-10, atol=1e-12)


def test_linear_plt_sums_duplicate_features_as_the_dense_row_does():
    import scipy.sparse as sp

    m = make_linear(TREES["taxonomy"])
    dup = sp.csr_matrix((np.array([0.5, 0.25, 1.0]), np.array([3, 3, 7]), np.array([0, 3])), shape=(1, F))
    summed = np.zeros((1, F))
    summed[0, 3], summed[0, 7] = 0.75, 1.0
    assert torch.allclose(m.log_marginals(dup), m.log_marginals(summed), rtol=1e-12)
    assert torch.equal(m.topk(dup, 3).indices, m.topk(summed, 3).indices)


@pytest.mark.parametrize("optimizer", ["sgd", "adagrad"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("name", ["taxonomy", "chain", "flat"])
def test_linear_plt_step_is_a_gradient_step_on_the_label_tree_loss(name, bias, optimizer):
    tree = TREES[name]
    m = make_linear(tree, bias=bias)
    X = sparse_rows(6, seed=2)
    sets = label_lists(tree, 6, seed=4)
    lr = 0.3
    for i in range(X.shape[0]):
        dense = m.to_label_tree()
        x = torch.from_numpy(X[i].toarray())
        loss = dense(x, [sets[i]]).loss
        loss.backward()
        gw = dense.weight.grad.numpy().T
        W0 = m.weight_t.copy()
        m.fit(X[i], [sets[i]], epochs=1, lr=lr, optimizer=optimizer, threads=1)
        assert m.epoch_losses == [pytest.approx(float(loss.detach()), rel=1e-12)]
        if optimizer == "sgd":
            want = W0 - lr * gw
        else:  # the first AdaGrad step of a weight: lr * g / sqrt(g^2 + eps)
            want = W0 - lr * gw / np.sqrt(gw * gw + 1e-8) * (gw != 0)
            m._adagrad = None  # the next example starts its own sums, to compare one step each
        assert np.allclose(m.weight_t, want, rtol=1e-10, atol=1e-12)
        if bias:
            gb = dense.bias.grad.numpy()
            step = gb if optimizer == "sgd" else gb / np.sqrt(gb * gb + 1e-8) * (gb != 0)
            # the bias was updated from the same starting values as the dense module's
            assert np.allclose(m.bias, dense.bias.detach().numpy() - lr * step, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("optimizer", ["sgd", "adagrad"])
def test_linear_plt_learns_and_is_deterministic_on_one_thread(optimizer):
    from hsoftmax import metrics
    from hsoftmax.label_tree import LinearLabelTree

    rng = np.random.default_rng(0)
    import scipy.sparse as sp

    # label j is relevant when feature j is present: several labels per example, learnable
    X = sp.random(300, 12, density=0.25, random_state=1, format="csr", dtype=np.float32)
    sets = [sorted(set(X[i].indices.tolist()) & set(range(8))) for i in range(300)]
    tree = Tree.balanced(8, arity=2)
    a = LinearLabelTree(12, tree).fit(X, sets, epochs=30, lr=0.5, optimizer=optimizer, threads=1, seed=3)
    b = LinearLabelTree(12, tree).fit(X, sets, epochs=30, lr=0.5, optimizer=optimizer, threads=1, seed=3)
    assert np.array_equal(a.weight_t, b.weight_t)
    assert a.epoch_losses[-1] < 0.5 * a.epoch_losses[0]
    top = a.topk(X, 1).indices.numpy()
    assert metrics.precision_at_k(top, sets, 1) > 0.9
    c = LinearLabelTree(12, tree).fit(X, sets, epochs=5, lr=0.5, optimizer=optimizer, threads=2, seed=rng.integers(9))
    assert c.epoch_losses[-1] < c.epoch_losses[0]  # Hogwild on 2 threads trains too


def test_linear_plt_round_trips_through_the_label_tree():
    from hsoftmax.label_tree import LinearLabelTree

    m = make_linear(TREES["huffman"])
    back = LinearLabelTree.from_label_tree(m.to_label_tree())
    assert np.array_equal(back.weight_t, m.weight_t) and np.array_equal(back.bias, m.bias)
    buf = io.BytesIO()
    torch.save(m.to_label_tree().state_dict(), buf)
    buf.seek(0)
    loaded = LabelTree.from_state_dict(torch.load(buf))
    assert np.array_equal(LinearLabelTree.from_label_tree(loaded).weight_t, m.weight_t)


def test_linear_plt_rejects_bad_input_before_a_kernel_sees_it():
    import scipy.sparse as sp

    from hsoftmax.label_tree import LinearLabelTree

    tree = TREES["balanced4"]
    m = LinearLabelTree(F, tree)
    X = sparse_rows(3)
    with pytest.raises(ValueError, match="num_features=11"):
        m.topk(np.zeros((2, F + 1)), 1)
    bad = sp.csr_matrix((np.ones(1), np.array([F + 3]), np.array([0, 1])), shape=(1, F), copy=False)
    bad.indices[0] = F + 3  # scipy does not check indices at construction
    with pytest.raises(ValueError, match="out of range"):
        m.topk(bad, 1)
    with pytest.raises(ValueError, match="NaN"):
        m.predict(np.full((1, F), np.nan))
    with pytest.raises(ValueError, match="out of range"):
        m.fit(X, [[0], [1], [tree.num_classes]])
    with pytest.raises(ValueError, match="2 examples"):
        m.fit(X, [[0], [1]])
    with pytest.raises(ValueError, match="k must be"):
        m.topk(X, tree.num_classes + 1)
    with pytest.raises(ValueError, match="threshold"):
        m.predict(X, 1.5)
    with pytest.raises(ValueError, match="optimizer"):
        m.fit(X, [[0], [1], [2]], optimizer="adam")
    with pytest.raises(ValueError, match="lr"):
        m.fit(X, [[0], [1], [2]], lr=0.0)
    m.weight_t = np.zeros((F, 2))  # a replaced parameter of the wrong shape never reaches a kernel
    with pytest.raises(ValueError, match="weight_t must be"):
        m.topk(X, 1)
    with pytest.raises(ValueError, match="weight_t must be"):
        m.fit(X, [[0], [1], [2]])
    m = LinearLabelTree(F, tree)
    m.bias = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match="bias must be"):
        m.predict(X)
    with pytest.raises(TypeError, match="Tree"):
        LinearLabelTree(F, "tree")
    with pytest.raises(TypeError, match="float32 or float64"):
        LinearLabelTree(F, tree, dtype=np.int32)


def _ancestors(tree: Tree, y: int) -> list[int]:
    """y's ancestors below the root, top-down (node ids)."""
    out, j = [], int(tree.parent[y])
    while j > 0:
        out.append(j)
        j = int(tree.parent[tree.num_classes + j])
    return out[::-1]


@pytest.mark.parametrize("max_leaves", [1, 3, 10, 100])
@pytest.mark.parametrize("name", list(TREES))
def test_with_leaf_clusters_collapses_the_highest_small_subtrees(name, max_leaves):
    from hsoftmax.label_tree import with_leaf_clusters

    tree = TREES[name]
    V = tree.num_classes
    out = with_leaf_clusters(tree, max_leaves)
    assert out.num_classes == V and out.labels == tree.labels and out.depth <= tree.depth
    under: dict[int, set[int]] = {}
    for y in range(V):
        for j in _ancestors(tree, y):
            under.setdefault(j, set()).add(y)
    for y in range(V):
        # the cluster of y: its highest ancestor with <= max_leaves labels (none: hangs as before)
        anc = _ancestors(tree, y)
        top = next((j for j in anc if len(under[j]) <= max_leaves), None)
        siblings = {int(c) for c in out.children[out.child_offset[out.parent[y]] : out.child_offset[out.parent[y] + 1]]}
        if max_leaves >= V:
            assert out.depth == 1
        elif top is not None:
            assert siblings == under[top]  # the cluster's labels are exactly the node's children
            assert len(_ancestors(out, y)) == anc.index(top) + 1  # the path above it is kept
        else:
            assert len(_ancestors(out, y)) == len(anc)


@pytest.mark.parametrize("moved", [0, 1, 3, "all"])
@pytest.mark.parametrize("name", list(TREES))
def test_with_shortcuts_hangs_the_labels_from_the_root_and_keeps_the_rest(name, moved):
    from hsoftmax.label_tree import with_shortcuts

    tree = TREES[name]
    V = tree.num_classes
    top = set(range(V)) if moved == "all" else set(np.random.default_rng(0).permutation(V)[:moved].tolist())
    out = with_shortcuts(tree, sorted(top))
    assert out.num_classes == V and out.labels == tree.labels
    under: dict[tuple[str, int], set[int]] = {}
    for t, key in ((tree, "old"), (out, "new")):
        for y in set(range(V)) - top:
            for j in _ancestors(t, y):
                under.setdefault((key, j), set()).add(y)
    for y in range(V):
        if y in top:
            assert _ancestors(out, y) == [] and out.parent[y] == 0  # one edge: one logistic
            continue
        old, new = _ancestors(tree, y), _ancestors(out, y)
        assert len(new) == len(old)  # the same path, minus the moved labels below each node
        for a, b in zip(old, new):
            assert under[("new", b)] == under[("old", a)]
    if V > 1 and top and len(top) < V:  # the PLT over it: a moved label's marginal is one sigmoid
        m = make_plt(out)
        x = torch.randn(4, D, dtype=torch.float64)
        y = min(top)
        r = int(m.layout.ref_row[y])
        with torch.no_grad():
            want = torch.sigmoid(x @ m.weight[r] + m.bias[r])
            assert torch.allclose(m.marginals(x)[:, y], want, rtol=1e-10)


def test_with_shortcuts_rejects_bad_labels():
    from hsoftmax.label_tree import with_shortcuts

    tree = Tree.balanced(8)
    with pytest.raises(ValueError, match=r"\[0, 8\)"):
        with_shortcuts(tree, [3, 8])
    with pytest.raises(TypeError, match="integer"):
        with_shortcuts(tree, [0.5])
    with pytest.raises(TypeError, match="Tree"):
        with_shortcuts("tree", [0])

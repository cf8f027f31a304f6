"""The PLT node kernels (hsoftmax.kernels.plt) against naive Python: node targets, the per-example
SGD step a numba trainer calls, and the row layout."""

from __future__ import annotations

import numpy as np
import pytest
from numba import njit

from conftest import named_trees
from hsoftmax import Tree
from hsoftmax.kernels import plt as P

TREES = named_trees()


def naive_targets(tree: Tree, labels) -> dict[int, int]:
    """{row: 0/1} of a label set, straight from the definition (root always positive)."""
    V = tree.num_classes
    lay = P.plt_layout(tree)
    positive = set()
    for y in labels:
        ref = int(y)
        while tree.parent[ref] >= 0:
            positive.add(ref)
            ref = V + int(tree.parent[ref])
    nodes = {0} | {r - V for r in positive if r >= V}
    out = {}
    for j in nodes:
        kids = tree.children[tree.child_offset[j] : tree.child_offset[j + 1]]
        if lay.row_offset[j + 1] == lay.row_offset[j]:
            continue
        for c, ch in enumerate(kids):
            out[int(lay.row_offset[j] + c)] = int(int(ch) in positive)
    return out


def targets_of(tree: Tree, labels) -> dict[int, int]:
    lay = P.plt_layout(tree)
    lab = np.asarray(labels, dtype=np.int64)
    s = P.make_scratch(lay, max(len(lab), 1))
    n = P.node_targets(lab, lay, s.positive, s.rows, s.targets)
    rows, t = s.rows[:n].tolist(), s.targets[:n].tolist()
    assert len(set(rows)) == n, "a row appears twice"
    return dict(zip(rows, t))


@pytest.mark.parametrize("name", list(TREES))
def test_layout_gives_each_deciding_edge_one_row(name):
    tree = TREES[name]
    lay = P.plt_layout(tree)
    V, N = tree.num_classes, tree.num_nodes
    rows = lay.ref_row[lay.ref_row >= 0]
    assert sorted(rows.tolist()) == list(range(lay.num_rows))
    # an edge has no row exactly when its parent is a single-child node other than the root
    p = tree.parent
    no_row = (lay.ref_row < 0) & (p >= 0)
    assert np.array_equal(no_row, (p >= 0) & (tree.arity[np.maximum(p, 0)] == 1) & (p != 0))
    assert lay.ref_row[V] == -1  # the root
    # the rows of a node's children are contiguous, in child order
    for j in range(N):
        kids = tree.children[tree.child_offset[j] : tree.child_offset[j + 1]]
        if lay.row_offset[j + 1] > lay.row_offset[j]:
            assert lay.ref_row[kids].tolist() == list(range(lay.row_offset[j], lay.row_offset[j + 1]))


@pytest.mark.parametrize("name", list(TREES))
def test_node_targets_match_the_definition(name):
    tree = TREES[name]
    rng = np.random.default_rng(3)
    V = tree.num_classes
    sets = [[], [0], [V - 1], list(range(V))]
    sets += [rng.choice(V, size=rng.integers(1, min(V, 6) + 1), replace=False).tolist() for _ in range(20)]
    for labels in sets:
        assert targets_of(tree, labels) == naive_targets(tree, labels), labels
    # duplicates change nothing
    assert targets_of(tree, [0, 0, V - 1, 0]) == naive_targets(tree, [0, V - 1])


def test_empty_label_set_makes_the_root_children_negative():
    tree = Tree.balanced(8, arity=2)
    assert targets_of(tree, []) == {0: 0, 1: 0}
    flat = Tree.from_paths([[] for _ in range(5)])
    assert targets_of(flat, []) == dict.fromkeys(range(5), 0)
    assert targets_of(flat, [3]) == {0: 0, 1: 0, 2: 0, 3: 1, 4: 0}


def test_single_child_chains_have_no_rows_but_the_root_child_does():
    chain = TREES["chain"]  # root -> {a, e}; a -> {b, d}; b -> c -> {0, 1}; d -> 2; e -> 3
    lay = P.plt_layout(chain)
    t = targets_of(chain, [0])
    # positive path root, a, b, c, class 0: c's edge under b (single child) has no row
    c_ref = chain.num_classes + chain.node_names.index("c")
    assert lay.ref_row[c_ref] == -1
    assert sum(t.values()) == 3  # a, b, class 0
    one = Tree.huffman([3.0])  # the root's only child is class 0: it keeps its row
    assert targets_of(one, []) == {0: 0} and targets_of(one, [0]) == {0: 1}


def test_scratch_too_small_is_an_error_not_an_overrun():
    tree = TREES["huffman"]
    lay = P.plt_layout(tree)
    s = P.make_scratch(lay, 1)
    with pytest.raises(ValueError, match="positive_capacity"):
        P.node_targets(np.arange(5, dtype=np.int64), lay, s.positive, s.rows, s.targets)


def test_check_label_sets_names_the_problem():
    with pytest.raises(ValueError, match="out of range"):
        P.check_label_sets([0, 1], [7], 5)
    with pytest.raises(ValueError, match="out of range"):
        P.check_label_sets([0, 1], [-1], 5)
    with pytest.raises(ValueError, match="non-decreasing"):
        P.check_label_sets([0, 2, 1], [1, 2], 5)
    with pytest.raises(ValueError, match="non-decreasing"):
        P.check_label_sets([0, 1], [1, 2], 5)
    with pytest.raises(TypeError, match="integers"):
        P.check_label_sets([0, 1], [1.5], 5)
    with pytest.raises(ValueError, match="3 inputs"):
        P.check_label_sets([0, 1], [1], 5, num_examples=3)


def bce(s, t):
    return float(np.logaddexp(0.0, -s) if t else np.logaddexp(0.0, s))


@pytest.mark.parametrize("name", ["huffman3", "taxonomy", "chain", "two_level"])
@pytest.mark.parametrize("bias", [True, False])
def test_plt_step_is_sgd_on_the_sum_of_edge_cross_entropies(name, bias):
    tree = TREES[name]
    lay = P.plt_layout(tree)
    rng = np.random.default_rng(0)
    d = 5
    W = rng.normal(size=(lay.num_rows, d))
    b = rng.normal(size=lay.num_rows) if bias else np.zeros(0)
    h = rng.normal(size=d)
    labels = np.array([0, tree.num_classes - 1], dtype=np.int64)
    s = P.make_scratch(lay, 2)
    n = P.node_targets(labels, lay, s.positive, s.rows, s.targets)
    rows, t = s.rows[:n].copy(), s.targets[:n].copy()
    lr = 0.1
    W0, b0 = W.copy(), b.copy()
    grad_h = np.zeros(d)
    loss = P.plt_step(W, b, h, s.rows, s.targets, n, lr, grad_h)
    scores = W0[rows] @ h + (b0[rows] if bias else 0.0)
    assert loss == pytest.approx(sum(bce(x, y) for x, y in zip(scores, t)), rel=1e-12)
    alpha = lr * (t - 1 / (1 + np.exp(-scores)))  # rows are distinct, so the order does not matter
    assert np.allclose(grad_h, alpha @ W0[rows])
    W_expected = W0.copy()
    W_expected[rows] += alpha[:, None] * h
    assert np.allclose(W, W_expected)
    if bias:
        b_expected = b0.copy()
        b_expected[rows] += alpha
        assert np.allclose(b, b_expected)


@njit(cache=False)
def _toy_trainer(W, b, X, offsets, labels, layout, scratch, lr, epochs):
    """What a numba trainer does: per example, a hidden vector, one example_step, and the input
    gradient applied (here to nothing: the inputs are fixed features)."""
    losses = np.zeros(epochs)
    grad = np.zeros(X.shape[1], np.float32)
    for ep in range(epochs):
        for i in range(X.shape[0]):
            grad[:] = 0.0
            losses[ep] += P.example_step(W, b, X[i], labels[offsets[i] : offsets[i + 1]], layout, scratch, lr, grad)
    return losses


def test_example_step_trains_from_a_numba_loop():
    tree = Tree.balanced(6, arity=2)
    lay = P.plt_layout(tree)
    rng = np.random.default_rng(1)
    X = rng.normal(size=(60, 4)).astype(np.float32)
    # label j is relevant when feature j % 4 is positive: learnable, several labels per example
    sets = [[j for j in range(6) if X[i, j % 4] > 0] for i in range(60)]
    offsets = np.cumsum([0] + [len(s) for s in sets]).astype(np.int64)
    labels = np.array([y for s in sets for y in s], dtype=np.int64)
    W = np.zeros((lay.num_rows, 4), np.float32)
    b = np.zeros(lay.num_rows, np.float32)
    losses = _toy_trainer(W, b, X, offsets, labels, lay, P.make_scratch(lay, 6), np.float32(0.2), 15)
    assert losses[-1] < 0.5 * losses[0]

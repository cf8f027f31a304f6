"""hsoftmax.metrics: hand-computed examples, agreement across target formats, slow per-example
references (the napkinXC/pyxclib definitions written as loops) and the hierarchical metrics
against paths walked one class at a time."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import named_trees, trees
from hsoftmax import Tree
from hsoftmax.metrics import (
    accuracy_at_depth,
    label_counts,
    mean_error_distance,
    ndcg_at_k,
    precision_at_k,
    propensities,
    psp_at_k,
    recall_at_k,
    tree_distance,
)

RANKING = [precision_at_k, recall_at_k, ndcg_at_k]

# Three examples: two hits of three, a hit at rank 2, and one with no labels (row 2).
PRED = np.array([[3, 1, 4], [2, 0, -1], [0, 1, 2]])
LISTS = [[1, 3, 5], [0], []]


def formats(lists, fill=-1):
    """The same label sets as a list of lists, a list of arrays, a padded array and a CSR pair."""
    m = max([1] + [len(r) for r in lists])
    padded = np.full((len(lists), m), fill)
    for i, r in enumerate(lists):
        padded[i, : len(r)] = r
    offsets = np.cumsum([0] + [len(r) for r in lists])
    labels = np.array([x for r in lists for x in r], dtype=np.int64)
    arrays = [np.array(r, dtype=np.int64) for r in lists]
    return {"list": lists, "arrays": arrays, "padded": padded, "csr": (offsets, labels)}


# ---------------------------------------------------------------------------- slow references
def ref_rows(pred, lists, k):
    for p, t in zip(pred, lists):
        yield [int(x) for x in list(p)[:k] if x >= 0], set(t)


def ref_precision(pred, lists, k):
    return np.mean([sum(x in t for x in p) / k for p, t in ref_rows(pred, lists, k)])


def ref_recall(pred, lists, k):
    return np.mean([sum(x in t for x in p) / len(t) if t else 0.0 for p, t in ref_rows(pred, lists, k)])


def ref_ndcg(pred, lists, k):
    out = []
    for p, t in zip(pred, lists):
        dcg = sum(1 / math.log2(r + 2) for r, x in enumerate(list(p)[:k]) if x >= 0 and x in set(t))
        idcg = sum(1 / math.log2(r + 2) for r in range(min(k, len(t))))
        out.append(dcg / idcg if t else 0.0)
    return np.mean(out)


def ref_propensity(N_l, N, A, B):
    """Jain et al.'s formula, term by term."""
    C = (math.log(N) - 1) * (B + 1) ** A
    return 1 / (1 + C * math.exp(-A * math.log(N_l + B)))


def ref_psp(pred, lists, prop, k):
    """(per-example psp, per-example best) as napkinXC's loop computes them."""
    gained, best = [], []
    for p, t in ref_rows(pred, lists, k):
        gained.append(sum(1 / prop[x] for x in p if x in t) / k)
        best.append(sum(sorted((1 / prop[x] for x in t), reverse=True)[:k]) / k)
    return np.array(gained), np.array(best)


# ---------------------------------------------------------------------------- hand-computed
def test_precision_by_hand():
    # k=1: hit, miss, miss; k=3: 2 + 1 + 0 hits of 9 ranks (the empty example counts as 0).
    assert precision_at_k(PRED, LISTS, k=1) == pytest.approx(1 / 3)
    assert precision_at_k(PRED, LISTS, k=3) == pytest.approx(3 / 9)
    # k beyond the predictions' width: the missing ranks are misses, still divided by k
    assert precision_at_k(PRED, LISTS, k=5) == pytest.approx(3 / 15)


def test_recall_by_hand():
    assert recall_at_k(PRED, LISTS, k=1) == pytest.approx((1 / 3 + 0 + 0) / 3)
    assert recall_at_k(PRED, LISTS, k=3) == pytest.approx((2 / 3 + 1 + 0) / 3)


def test_ndcg_by_hand():
    # row 0: hits at ranks 1, 2 of 3 labels; row 1: hit at rank 2 of 1 label; row 2: no labels
    row0 = (1 + 1 / math.log2(3)) / (1 + 1 / math.log2(3) + 1 / math.log2(4))
    row1 = (1 / math.log2(3)) / 1
    assert ndcg_at_k(PRED, LISTS, k=3) == pytest.approx((row0 + row1 + 0) / 3)
    assert ndcg_at_k(PRED, LISTS, k=1) == pytest.approx(1 / 3)


def test_a_perfect_ranking_has_ndcg_1_and_full_recall():
    rng = np.random.default_rng(0)
    lists = [list(rng.choice(50, size=rng.integers(1, 8), replace=False)) for _ in range(40)]
    pred = np.full((40, 10), -1)
    for i, t in enumerate(lists):
        pred[i, : len(t)] = rng.permutation(t)
    for k in (1, 3, 5, 10):
        assert ndcg_at_k(pred, lists, k=k) == pytest.approx(1.0)
    assert recall_at_k(pred, lists, k=10) == pytest.approx(1.0)
    assert precision_at_k(pred, lists, k=10) == pytest.approx(np.mean([len(t) for t in lists]) / 10)


def test_examples_without_labels_count_as_zero():
    # Adding an empty example (napkinXC/pyxclib behaviour) scales every mean by n / (n + 1).
    pred = np.array([[0, 1]])
    for metric in RANKING:
        one = metric(pred, [[0, 1]], k=2)
        two = metric(np.array([[0, 1], [0, 1]]), [[0, 1], []], k=2)
        assert one > 0 and two == pytest.approx(one / 2), metric.__name__
    assert psp_at_k(pred, [[]], np.ones(2), k=1) == 0.0


def test_single_label_targets_as_1d_array():
    pred = np.array([[2, 0], [1, 2]])
    assert precision_at_k(pred, np.array([0, 2]), k=1) == 0.0
    assert recall_at_k(pred, np.array([0, 2]), k=2) == 1.0
    assert precision_at_k(pred[:, 0], np.array([2, 0]), k=1) == 0.5  # 1-D predictions too


# ---------------------------------------------------------------------------- formats
@pytest.mark.parametrize("metric", RANKING)
def test_target_formats_agree(metric):
    rng = np.random.default_rng(1)
    lists = [list(rng.choice(30, size=rng.integers(0, 6), replace=False)) for _ in range(25)]
    pred = np.array([rng.choice(30, size=7, replace=False) for _ in range(25)])
    pred[::4, 5:] = -1
    for k in (1, 3, 7):
        values = {name: metric(pred, t, k=k) for name, t in formats(lists).items()}
        values["fill=99"] = metric(pred, formats(lists, fill=99)["padded"], k=k, fill=99)
        assert len(set(values.values())) == 1, values


def test_scipy_sparse_targets_read_as_csr():
    sparse = pytest.importorskip("scipy.sparse")
    m = sparse.csr_matrix(np.array([[0, 1, 0, 1, 0, 1], [1, 0, 0, 0, 0, 0], [0] * 6]))
    assert precision_at_k(PRED, m, k=3) == precision_at_k(PRED, LISTS, k=3)
    assert recall_at_k(PRED, m.tocsc(), k=3) == recall_at_k(PRED, LISTS, k=3)


def test_torch_tensors_are_accepted():
    torch = pytest.importorskip("torch")
    pred, padded = torch.as_tensor(PRED), torch.as_tensor(formats(LISTS)["padded"])
    assert ndcg_at_k(pred, padded, k=3) == ndcg_at_k(PRED, LISTS, k=3)
    t = Tree.from_paths([["a"], ["a"], []])
    assert tree_distance(t, torch.tensor([0, 2]), torch.tensor([1, 2])).tolist() == [2, 0]


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 12), k=st.integers(1, 6))
def test_ranking_metrics_equal_slow_references(seed, n, k):
    rng = np.random.default_rng(seed)
    L = 10
    lists = [list(rng.choice(L, size=rng.integers(0, 5), replace=False)) for _ in range(n)]
    pred = np.array([rng.choice(L, size=4, replace=False) for _ in range(n)])
    pred[rng.random((n, 4)) < 0.2] = -1  # gaps anywhere are "no prediction at this rank"
    for name, targets in formats(lists).items():
        assert precision_at_k(pred, targets, k=k) == pytest.approx(ref_precision(pred, lists, k)), name
        assert recall_at_k(pred, targets, k=k) == pytest.approx(ref_recall(pred, lists, k)), name
        assert ndcg_at_k(pred, targets, k=k) == pytest.approx(ref_ndcg(pred, lists, k)), name
        prop = propensities(rng.integers(0, 50, size=L), 50)
        gained, best = ref_psp(pred, lists, prop, k)
        assert psp_at_k(pred, targets, prop, k=k, normalize=None) == pytest.approx(gained.mean())
        want = gained.sum() / best.sum() if best.sum() else 0.0
        assert psp_at_k(pred, targets, prop, k=k) == pytest.approx(want)
        per_example = np.where(best > 0, gained / np.where(best > 0, best, 1), 0.0).mean()
        assert psp_at_k(pred, targets, prop, k=k, normalize="example") == pytest.approx(per_example)


# ---------------------------------------------------------------------------- propensity
def test_propensities_equal_the_formula():
    counts = np.array([0, 1, 2, 10, 500, 1000])
    for A, B in ((0.55, 1.5), (0.5, 0.4), (0.6, 2.6)):
        got = propensities(counts, 1000, A=A, B=B)
        want = [ref_propensity(c, 1000, A, B) for c in counts]
        np.testing.assert_allclose(got, want, rtol=1e-12)
        assert np.all(np.diff(got) > 0) and np.all((got > 0) & (got < 1))


def test_psp_by_hand():
    prop = np.array([1.0, 0.5, 0.25, 0.5])  # weights 1, 2, 4, 2
    pred = np.array([[0, 1], [3, 2]])
    lists = [[0, 2], [3]]
    # gained@2: (1 + 0) / 2 and (2 + 0) / 2; best@2: (4 + 1) / 2 and 2 / 2
    assert psp_at_k(pred, lists, prop, k=2, normalize=None) == pytest.approx((0.5 + 1.0) / 2)
    assert psp_at_k(pred, lists, prop, k=2) == pytest.approx((0.5 + 1.0) / (2.5 + 1.0))
    assert psp_at_k(pred, lists, prop, k=2, normalize="example") == pytest.approx((0.5 / 2.5 + 1.0) / 2)
    # with every propensity 1, unnormalized PSP@k is P@k
    assert psp_at_k(pred, lists, np.ones(4), k=2, normalize=None) == precision_at_k(pred, lists, k=2)


def test_psp_of_a_perfect_propensity_ranking_is_1():
    prop = propensities([5, 100, 1, 40, 0], num_examples=200)
    lists = [[0, 1, 2], [3, 4], [1]]
    pred = [sorted(t, key=lambda label: prop[label]) for t in lists]  # rarest first
    pred = np.array([p + [-1] * (3 - len(p)) for p in pred])
    for k in (1, 2, 3):
        assert psp_at_k(pred, lists, prop, k=k) == pytest.approx(1.0)
        assert psp_at_k(pred, lists, prop, k=k, normalize="example") == pytest.approx(1.0)


def test_label_counts_feed_propensities():
    counts, n = label_counts(formats([[0, 2], [2], [], [1, 2]])["csr"], num_labels=4)
    assert counts.tolist() == [1, 1, 3, 0] and n == 4
    np.testing.assert_allclose(propensities(counts, n), [ref_propensity(c, 4, 0.55, 1.5) for c in counts])


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "pred, targets, match",
    [
        (np.array([[0, 0]]), [[0]], "ranks label 0 twice"),
        (np.array([[0, -2]]), [[0]], "only -1 pads"),
        (np.array([[0.5, 0.1]]), [[0]], "rank them first"),
        (np.array([[0, 1]]), [[0, 0]], "label 0 twice"),
        (np.array([[0, 1]]), [[0, -3]], "negative label"),
        (np.array([[0, 1]]), [[0], [1]], "hold 2 examples but predictions have 1"),
        (np.array([[0, 1], [1, 2]]), ([0, 1], [0, 1]), "tuple of two is read as a CSR pair"),
        (np.zeros((0, 2), dtype=int), [], "no examples"),
    ],
)
def test_bad_ranking_input_is_a_clear_error(pred, targets, match):
    with pytest.raises((ValueError, TypeError), match=match):
        precision_at_k(pred, targets, k=1)


def test_bad_k_and_propensity_input():
    with pytest.raises(ValueError, match="at least 1"):
        recall_at_k(PRED, LISTS, k=0)
    with pytest.raises(TypeError, match="k must be an int"):
        recall_at_k(PRED, LISTS, k=2.0)
    with pytest.raises(ValueError, match="propensity covers 3 labels"):
        psp_at_k(PRED, LISTS, np.ones(3), k=1)
    with pytest.raises(ValueError, match="normalize must be"):
        psp_at_k(PRED, LISTS, np.ones(6), k=1, normalize="mean")
    with pytest.raises(ValueError, match="at least 3"):
        propensities([1, 2], num_examples=2)
    with pytest.raises(ValueError, match=r"\[0, num_examples=10\]"):
        propensities([11], num_examples=10)


def test_module_does_not_import_torch():
    code = "import sys, hsoftmax.metrics; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------- hierarchical
def taxonomy():
    #              root
    #        animal      rock(3)
    #     dog     cat(2)
    # poodle(0) collie(1)
    return Tree.from_paths(
        [["animal", "dog"], ["animal", "dog"], ["animal"], []], labels=["poodle", "collie", "cat", "rock"]
    )


def test_tree_distance_by_hand():
    t = taxonomy()
    pred = [0, 0, 0, 2, 3, 1]
    target = [0, 1, 2, 3, 0, 1]
    # same, LCA dog, LCA animal, LCA root (2 + 1), LCA root (1 + 3), same
    assert tree_distance(t, pred, target).tolist() == [0, 2, 3, 3, 4, 0]
    assert mean_error_distance(t, pred, target) == pytest.approx((2 + 3 + 3 + 4) / 4)
    assert math.isnan(mean_error_distance(t, [1, 2], [1, 2]))


def test_accuracy_at_depth_by_hand():
    t = taxonomy()
    pred = [0, 2, 3, 1, 0]
    target = [1, 0, 2, 1, 3]
    # depth 1: animal/animal, animal/animal, rock/animal, exact, animal/rock
    # depth 2: dog/dog, cat/dog, rock/cat, exact, dog/rock; depth 3: only the exact one
    np.testing.assert_allclose(accuracy_at_depth(t, pred, target), [3 / 5, 2 / 5, 1 / 5])


def ref_refs_to(tree, c):
    """Refs from the root down to class c (the class itself last), walked with Tree.path."""
    return [tree.num_classes + int(j) for j in tree.path(c)[0]] + [c]


def ref_distance(tree, a, b):
    pa, pb = ref_refs_to(tree, a), ref_refs_to(tree, b)
    common = 0
    while common < min(len(pa), len(pb)) and pa[common] == pb[common]:
        common += 1
    return (len(pa) - common) + (len(pb) - common)


def ref_accuracy_at_depth(tree, pred, target):
    def ancestor(c, d):
        refs = ref_refs_to(tree, c)
        return refs[min(d, len(refs) - 1)]

    return [np.mean([ancestor(p, d) == ancestor(t, d) for p, t in zip(pred, target)]) for d in range(1, tree.depth + 1)]


def check_against_references(tree, seed):
    rng = np.random.default_rng(seed)
    n = 30
    pred = rng.integers(0, tree.num_classes, size=n)
    target = np.where(rng.random(n) < 0.3, pred, rng.integers(0, tree.num_classes, size=n))
    dist = tree_distance(tree, pred, target)
    assert dist.tolist() == [ref_distance(tree, int(p), int(t)) for p, t in zip(pred, target)]
    acc = accuracy_at_depth(tree, pred, target)
    np.testing.assert_allclose(acc, ref_accuracy_at_depth(tree, pred, target))
    assert np.all(np.diff(acc) <= 0) and acc[-1] == np.mean(pred == target)


@pytest.mark.parametrize("name", list(named_trees()))
def test_hierarchical_metrics_equal_references_on_named_trees(name):
    check_against_references(named_trees()[name], seed=0)


@settings(max_examples=40, deadline=None)
@given(tree=trees(), seed=st.integers(0, 2**31 - 1))
def test_hierarchical_metrics_equal_references_on_random_trees(tree, seed):
    check_against_references(tree, seed)


def test_bad_hierarchical_input():
    t = taxonomy()
    with pytest.raises(ValueError, match=r"outside \[0, 4\)"):
        tree_distance(t, [4], [0])
    with pytest.raises(ValueError, match="1-D array of class ids"):
        accuracy_at_depth(t, [[0, 1]], [0])
    with pytest.raises(ValueError, match="has 2 examples but target has 1"):
        tree_distance(t, [0, 1], [0])
    with pytest.raises(TypeError, match=r"hsoftmax\.Tree"):
        tree_distance(None, [0], [0])

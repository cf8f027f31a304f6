"""Evaluation metrics: multi-label ranking metrics and hierarchical metrics over a :class:`Tree`.

Numpy only (torch tensors, CPU or GPU, are accepted and converted), so evaluating a model never
needs more than its predictions.

**Ranking metrics** (extreme multi-label classification): :func:`precision_at_k`,
:func:`recall_at_k`, :func:`ndcg_at_k` and the propensity-scored :func:`psp_at_k` with
:func:`propensities` (Jain, Prabhu & Varma, 2016). Each is a mean over examples (PSP@k's default normalization: a
ratio of two means), computed as napkinXC and pyxclib compute it, so published numbers compare.

* ``predictions``: an ``(n, w)`` integer array of label ids ranked best first; ``-1`` pads a row
  that has fewer than ``w`` predictions (a thresholded predictor). A ``(n,)`` array is one
  prediction per example. Columns past ``w`` count as padding when ``k > w``. A label may appear
  only once per row.
* ``targets``, the true label sets, in any of the forms users have:

  - a padded ``(n, m)`` integer array, entries equal to ``fill`` (default ``-1``) being padding;
    a ``(n,)`` array is one label per example (the multi-class case);
  - a CSR pair, given as a ``tuple`` ``(offsets, labels)``: example ``i``'s labels are
    ``labels[offsets[i]:offsets[i + 1]]`` (a ``scipy.sparse`` matrix is read the same way: its
    stored non-zeros are the labels);
  - a ``list`` of per-example label lists (or arrays).

  One internal conversion turns each into the same CSR form, so every metric is written once. A
  label may appear only once per example.
* **Examples with no true labels** count as 0 in every mean (napkinXC's and pyxclib's behaviour:
  precision counts every example; recall and nDCG, undefined there, contribute 0, which is
  napkinXC's default ``zero_division=0``). They are not skipped.

**Hierarchical metrics** (single-label classification over a tree): :func:`accuracy_at_depth`,
:func:`tree_distance` and :func:`mean_error_distance`.

>>> import numpy as np
>>> predictions = np.array([[3, 1, 4], [2, 0, -1]])
>>> targets = [[1, 3], [5]]
>>> precision_at_k(predictions, targets, k=1), precision_at_k(predictions, targets, k=3)
(0.5, 0.3333333333333333)
>>> recall_at_k(predictions, targets, k=3)
0.5
"""

from __future__ import annotations

import itertools
import numbers
from typing import Any, Literal, NamedTuple

import numpy as np

from .tree import Tree

__all__ = [
    "precision_at_k",
    "recall_at_k",
    "ndcg_at_k",
    "psp_at_k",
    "propensities",
    "label_counts",
    "accuracy_at_depth",
    "tree_distance",
    "mean_error_distance",
]


# ---------------------------------------------------------------------------- input conversion
def _as_array(x: Any) -> np.ndarray:
    """``x`` as a numpy array; a torch tensor (on any device) is detached and copied to the CPU
    first (duck-typed, so torch is never imported here)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _as_int_array(x: Any, name: str) -> np.ndarray:
    a = _as_array(x)
    if a.size and not (np.issubdtype(a.dtype, np.integer) and a.dtype != np.bool_):
        raise TypeError(f"{name} must hold integer label ids, got dtype {a.dtype}")
    return a.astype(np.int64, copy=False)


class _LabelSets(NamedTuple):
    """The canonical target form: example ``i``'s labels are ``labels[offsets[i]:offsets[i + 1]]``."""

    offsets: np.ndarray  # (n + 1,) int64
    labels: np.ndarray  # (nnz,) int64, non-negative

    @property
    def sizes(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def rows(self) -> np.ndarray:
        """The example of each entry of ``labels``."""
        return np.repeat(np.arange(self.offsets.size - 1), self.sizes)


def _as_label_sets(targets: Any, num_examples: int | None = None, fill: int = -1) -> _LabelSets:
    """Any supported target form as :class:`_LabelSets`, validated (see the module docstring).

    ``num_examples``: the number of rows the targets must have (``None``: any).
    """
    if isinstance(targets, tuple) and len(targets) == 2:
        offsets = _as_int_array(targets[0], "targets offsets")
        labels = _as_int_array(targets[1], "targets labels")
        what = "the CSR pair (offsets, labels)"  # a list of lists must be passed as a list
    elif hasattr(targets, "tocsr") and hasattr(targets, "nnz"):  # a scipy.sparse matrix
        m = targets.tocsr(copy=True)
        m.sum_duplicates()
        m.eliminate_zeros()  # an explicit zero is not a label
        offsets = _as_int_array(m.indptr, "targets offsets")
        labels = _as_int_array(m.indices, "targets labels")
        what = "the sparse matrix"
    elif isinstance(targets, list):
        offsets, labels = _flatten_lists(targets)
        what = "the list of label lists"
    else:
        padded = _as_int_array(targets, "targets")
        if padded.ndim == 1:
            padded = padded[:, None]
        if padded.ndim != 2:
            raise ValueError(f"padded targets must be a 1-D or 2-D array, got shape {padded.shape}")
        keep = padded != fill
        offsets = np.zeros(padded.shape[0] + 1, dtype=np.int64)
        np.cumsum(keep.sum(axis=1), out=offsets[1:])
        labels = padded[keep]  # row-major: row by row, in column order
        what = f"the padded targets (fill={fill})"
    try:
        _check_label_sets(offsets, labels, what)
        if num_examples is not None and offsets.size - 1 != num_examples:
            raise ValueError(f"{what} hold {offsets.size - 1} examples but predictions have {num_examples} rows")
    except ValueError as e:
        if isinstance(targets, tuple):  # perhaps two examples' label lists, meant as a list
            raise ValueError(f"{e} (a tuple of two is read as a CSR pair; pass label lists as a list)") from None
        raise
    return _LabelSets(offsets, labels)


def _flatten_lists(targets: list) -> tuple[np.ndarray, np.ndarray]:
    """``(offsets, labels)`` of a list of per-example label lists, arrays or tensors."""
    if all(isinstance(r, (list, tuple)) for r in targets):
        # One conversion for all rows: per-row arrays cost ~10x more for millions of short rows.
        sizes = [len(r) for r in targets]
        labels = _as_int_array(list(itertools.chain.from_iterable(targets)), "targets labels")
    else:
        rows = [_as_int_array(r, f"targets[{i}]").ravel() for i, r in enumerate(targets)]
        sizes = [r.size for r in rows]
        labels = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    offsets = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    return offsets, labels.ravel()


def _check_label_sets(offsets: np.ndarray, labels: np.ndarray, what: str) -> None:
    if offsets.ndim != 1 or labels.ndim != 1:
        raise ValueError(f"offsets and labels of {what} must be 1-D")
    if offsets.size < 1 or offsets[0] != 0 or offsets[-1] != labels.size or np.any(np.diff(offsets) < 0):
        raise ValueError(f"offsets of {what} must start at 0, be non-decreasing and end at len(labels)")
    if labels.size and labels.min() < 0:
        raise ValueError(f"{what} hold a negative label {int(labels.min())} (only padded targets have a fill value)")


def _as_predictions(predictions: Any, k: int) -> np.ndarray:
    """``(n, k)`` int64 label ids, ``-1`` where there is no prediction; checked for duplicates."""
    p = _as_array(predictions)
    if p.size and p.dtype.kind not in "iu":
        raise TypeError(
            f"predictions must be ranked integer label ids, got dtype {p.dtype} (for scores, rank them first: "
            "the top-k of the layer or np.argsort(-scores, axis=1)[:, :k])"
        )
    p = p.astype(np.int64, copy=False)
    if p.ndim not in (1, 2):
        raise ValueError(f"predictions must be a (n, k) array of ranked label ids, got shape {p.shape}")
    if p.ndim == 1:
        p = p[:, None]
    if p.shape[0] == 0:
        raise ValueError("predictions hold no examples: there is no mean to take")
    if p.size and p.min() < -1:
        raise ValueError(f"predictions hold {int(p.min())}: label ids are >= 0 and only -1 pads")
    s = np.sort(p, axis=1)  # the whole ranking, not only its top k, must be a ranking
    dup = (s[:, 1:] == s[:, :-1]) & (s[:, 1:] >= 0)
    if dup.any():
        i, j = np.argwhere(dup)[0]
        raise ValueError(f"predictions row {i} ranks label {int(s[i, j])} twice")
    p = p[:, :k]
    if p.shape[1] < k:  # fewer ranks than k: the missing ones are misses
        p = np.pad(p, ((0, 0), (0, k - p.shape[1])), constant_values=-1)
    return p


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    return int(k)


class _Ranked(NamedTuple):
    predictions: np.ndarray  # (n, k) int64, -1 padding
    hits: np.ndarray  # (n, k) bool: prediction j of example i is one of its labels
    targets: _LabelSets


def _ranked(predictions: Any, targets: Any, k: int, fill: int) -> _Ranked:
    """Predictions, targets and which predictions hit, for every ranking metric."""
    p = _as_predictions(predictions, _check_k(k))
    t = _as_label_sets(targets, p.shape[0], fill)
    n = p.shape[0]
    # One key per (example, label) pair: a prediction hits when its key is among the targets'.
    width = int(max(p.max(initial=0), t.labels.max(initial=0))) + 1  # n * width fits int64 in practice
    target_keys = np.sort(t.rows * width + t.labels)
    if target_keys.size > 1 and np.any(target_keys[1:] == target_keys[:-1]):
        key = int(target_keys[1:][target_keys[1:] == target_keys[:-1]][0])
        raise ValueError(f"targets of example {key // width} list label {key % width} twice")
    pred_keys = np.arange(n)[:, None] * width + p
    if target_keys.size:
        pos = np.minimum(np.searchsorted(target_keys, pred_keys), target_keys.size - 1)
        hits = (target_keys[pos] == pred_keys) & (p >= 0)
    else:
        hits = np.zeros(p.shape, dtype=bool)
    return _Ranked(p, hits, t)


def _discounts(k: int) -> np.ndarray:
    """nDCG's position discounts ``1 / log2(rank + 1)`` for ranks ``1..k``."""
    return 1.0 / np.log2(np.arange(2, k + 2))


# ---------------------------------------------------------------------------- ranking metrics
def precision_at_k(predictions: Any, targets: Any, k: int = 1, *, fill: int = -1) -> float:
    """P@k: the mean over examples of ``|top-k predictions ∩ labels| / k``.

    Always divided by ``k``, even for a row with fewer than ``k`` predictions or fewer than ``k``
    labels (the XMC convention), so P@k of a perfect ranking is ``min(k, |labels|) / k``.

    >>> precision_at_k([[0, 2], [1, 0]], [[0], [0, 1]], k=2)
    0.75
    """
    r = _ranked(predictions, targets, k, fill)
    return float(r.hits.sum(axis=1).mean() / k)


def recall_at_k(predictions: Any, targets: Any, k: int = 1, *, fill: int = -1) -> float:
    """R@k: the mean over examples of ``|top-k predictions ∩ labels| / |labels|``.

    An example without labels contributes 0 (napkinXC's ``zero_division=0``; pyxclib does the same).

    >>> recall_at_k([[0, 2], [1, 0]], [[0], [0, 1, 2]], k=1)
    0.6666666666666666
    """
    r = _ranked(predictions, targets, k, fill)
    sizes = r.targets.sizes
    per_example = r.hits.sum(axis=1) / np.maximum(sizes, 1)  # a 0-label example has no hits: 0
    return float(per_example.mean())


def ndcg_at_k(predictions: Any, targets: Any, k: int = 1, *, fill: int = -1) -> float:
    """nDCG@k with binary relevance: the mean over examples of ``DCG@k / IDCG@k``, where
    ``DCG@k = sum over ranks r <= k with a hit of 1 / log2(r + 1)`` and ``IDCG@k`` is the DCG of a
    perfect ranking, ``sum over r <= min(k, |labels|) of 1 / log2(r + 1)``; so a perfect ranking
    scores 1. An example without labels contributes 0 (as in napkinXC and pyxclib).

    >>> ndcg_at_k([[1, 0]], [[0]], k=2)     # the label at rank 2: 1 / log2(3)
    0.6309297535714575
    >>> ndcg_at_k([[0, 1, 7]], [[1, 0]], k=3)
    1.0
    """
    r = _ranked(predictions, targets, k, fill)
    disc = _discounts(k)
    dcg = r.hits @ disc
    sizes = np.minimum(r.targets.sizes, k)
    ideal = np.concatenate([[1.0], np.cumsum(disc)])[sizes]  # 1.0 stands in for 0 labels (dcg = 0)
    return float((dcg / ideal).mean())


def propensities(label_counts: Any, num_examples: int, A: float = 0.55, B: float = 1.5) -> np.ndarray:
    """The propensity model of Jain, Prabhu & Varma (KDD 2016): the chance that a relevant label
    is observed (annotated) at all, which falls for rare labels.

    ``p_l = 1 / (1 + C * exp(-A * log(N_l + B)))`` with ``C = (log N - 1) * (B + 1) ** A``, ``N``
    the number of training examples and ``N_l`` the number that carry label ``l``. The weights
    :func:`psp_at_k` gives a correct prediction are ``1 / p_l = 1 + C * (N_l + B) ** -A``, the
    "inverse propensities" of napkinXC and pyxclib.

    ``A`` and ``B`` are fitted per data set; the values the paper (and the Extreme Classification
    Repository) recommends: ``A = 0.55, B = 1.5`` in general (the defaults here), ``A = 0.5,
    B = 0.4`` for Wikipedia (WikiLSHTC-325K), ``A = 0.6, B = 2.6`` for Amazon (Amazon-670K).

    Args:
        label_counts: ``(num_labels,)`` training frequency ``N_l`` of every label (see
            :func:`label_counts`); a label never seen in training gets the smallest propensity.
        num_examples: ``N``, at least 3 (so that ``C > 0``: ``log N > 1``).
        A, B: the model's parameters, ``A >= 0`` and ``B > 0``.

    >>> p = propensities([1000, 10, 0], num_examples=1000)
    >>> bool(p[0] > p[1] > p[2])     # rare labels are less likely to be annotated
    True
    >>> np.round(1 / p, 3)
    array([1.219, 3.552, 8.824])
    """
    counts = _as_array(label_counts).astype(np.float64)
    if counts.ndim != 1:
        raise ValueError(f"label_counts must be 1-D, got shape {counts.shape}")
    if isinstance(num_examples, bool) or not isinstance(num_examples, numbers.Integral):
        raise TypeError(f"num_examples must be an int, got {type(num_examples).__name__}")
    if num_examples < 3:
        raise ValueError(f"num_examples must be at least 3 (the model needs log N > 1), got {num_examples}")
    if not (np.isfinite(A) and A >= 0 and np.isfinite(B) and B > 0):
        raise ValueError(f"the propensity model needs A >= 0 and B > 0, got A={A}, B={B}")
    if counts.size and (not np.all(np.isfinite(counts)) or counts.min() < 0 or counts.max() > num_examples):
        raise ValueError(f"label_counts must lie in [0, num_examples={num_examples}]")
    C = (np.log(num_examples) - 1.0) * (B + 1.0) ** A
    return 1.0 / (1.0 + C * np.exp(-A * np.log(counts + B)))


def label_counts(targets: Any, num_labels: int | None = None, *, fill: int = -1) -> tuple[np.ndarray, int]:
    """``(counts, num_examples)`` of training targets (in any target form): the inputs of
    :func:`propensities`, as in ``propensities(*label_counts(train_targets, num_labels))``.

    ``num_labels`` sizes ``counts`` (default: the largest label seen, plus one).

    >>> label_counts([[0, 2], [2], []], num_labels=4)
    (array([1, 0, 2, 0]), 3)
    """
    t = _as_label_sets(targets, fill=fill)
    if num_labels is not None and t.labels.size and t.labels.max() >= num_labels:
        raise ValueError(f"targets hold label {int(t.labels.max())}, outside num_labels={num_labels}")
    counts = np.bincount(t.labels, minlength=num_labels or 0)
    return counts, t.offsets.size - 1


def psp_at_k(
    predictions: Any,
    targets: Any,
    propensity: Any,
    k: int = 1,
    *,
    normalize: Literal["dataset", "example"] | None = "dataset",
    fill: int = -1,
) -> float:
    """Propensity-scored precision PSP@k (Jain et al. 2016): precision where a correct label ``l``
    earns ``1 / p_l`` instead of 1, so that rare (tail) labels, which annotators miss most, count
    more. Per example, ``psp_i = (1/k) * sum over hits l in the top k of 1 / p_l``.

    ``normalize`` says what that is divided by; ``best_i`` is the best achievable ``psp_i``: the
    sum of the ``min(k, |labels_i|)`` largest ``1 / p_l`` among example ``i``'s labels, over ``k``.

    * ``"dataset"`` (default): ``sum_i psp_i / sum_i best_i``, a ratio of means. This is the
      number the Extreme Classification Repository's evaluation code, pyxclib (``psprecision``)
      and napkinXC (``psprecision_at_k``) report, so use it to compare with published PSP@k.
    * ``"example"``: the mean of ``psp_i / best_i`` over examples (0 for an example without
      labels): each example normalized by its own best.
    * ``None``: the unnormalized mean of ``psp_i`` (it grows with the propensity weights and is
      not bounded by 1).

    Args:
        propensity: ``(num_labels,)`` propensities ``p_l`` in ``(0, 1]`` (:func:`propensities`),
            covering every target label.

    >>> p = np.array([1.0, 0.5, 0.25])          # weights 1, 2, 4
    >>> psp_at_k([[0, 1]], [[0, 2]], p, k=1, normalize=None)   # hit label 0: weight 1
    1.0
    >>> psp_at_k([[0, 1]], [[0, 2]], p, k=1)    # the best top-1 would be label 2: weight 4
    0.25
    """
    r = _ranked(predictions, targets, k, fill)
    p = _as_array(propensity).astype(np.float64)
    if p.ndim != 1:
        raise ValueError(f"propensity must be 1-D, got shape {p.shape}")
    t = r.targets
    if t.labels.size and t.labels.max() >= p.size:
        raise ValueError(f"targets hold label {int(t.labels.max())} but propensity covers {p.size} labels")
    if p.size and not (np.all(p > 0) and np.all(p <= 1)):
        raise ValueError("propensities must lie in (0, 1]")
    weight = 1.0 / p
    gained = np.where(r.hits, weight[np.where(r.hits, r.predictions, 0)], 0.0).sum(axis=1) / k
    if normalize is None:
        return float(gained.mean())
    best = _best_weight_sums(t, weight, k) / k
    if normalize == "dataset":
        total = best.sum()
        return float(gained.sum() / total) if total > 0 else 0.0
    if normalize == "example":
        return float((gained / np.where(best > 0, best, 1.0)).mean())
    raise ValueError(f"normalize must be 'dataset', 'example' or None, got {normalize!r}")


def _best_weight_sums(t: _LabelSets, weight: np.ndarray, k: int) -> np.ndarray:
    """Per example, the sum of the ``k`` largest weights among its labels (a perfect top-k)."""
    rows = t.rows
    w = weight[t.labels]
    order = np.lexsort((-w, rows))  # by example, then heaviest first
    rank = np.arange(w.size) - t.offsets[rows[order]]
    top = rank < k
    return np.bincount(rows[order][top], weights=w[order][top], minlength=t.offsets.size - 1)


# ---------------------------------------------------------------------------- hierarchical metrics
def _classes(tree: Tree, x: Any, name: str) -> np.ndarray:
    a = _as_int_array(x, name)
    if a.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of class ids (one per example), got shape {a.shape}")
    if a.size and (a.min() < 0 or a.max() >= tree.num_classes):
        bad = int(a[(a < 0) | (a >= tree.num_classes)][0])
        raise ValueError(f"{name} holds class {bad}, outside [0, {tree.num_classes})")
    return a


def _pair(tree: Tree, predicted: Any, target: Any) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(tree, Tree):
        raise TypeError(f"tree must be a hsoftmax.Tree, got {type(tree).__name__}")
    p = _classes(tree, predicted, "predicted")
    t = _classes(tree, target, "target")
    if p.shape != t.shape:
        raise ValueError(f"predicted has {p.size} examples but target has {t.size}")
    if p.size == 0:
        raise ValueError("no examples: there is no mean to take")
    return p, t


def _ref_depths(tree: Tree) -> np.ndarray:
    """Depth of every ref (classes, then internal nodes), from the public ``parent`` and
    ``node_depth`` arrays."""
    V = tree.num_classes
    return np.concatenate([tree.node_depth[tree.parent[:V]] + 1, tree.node_depth])


def accuracy_at_depth(tree: Tree, predicted: Any, target: Any) -> np.ndarray:
    """How often the prediction lands in the right subtree at each depth of ``tree``.

    Returns a ``(tree.depth,)`` array whose entry ``d - 1`` is the fraction of examples whose
    predicted class and target class have the same ancestor at depth ``d`` (``d = 1`` is the root's
    children; depth 0, the root, always agrees and is left out). A class less deep than ``d`` is its
    own ancestor there (the walk stops at the class), so two classes agree at depth ``d`` only if
    they are the same class or share an internal ancestor at depth ``d``. Hence the curve never
    rises with ``d`` and its last entry is plain top-1 accuracy.

    Args:
        tree: the label hierarchy.
        predicted, target: ``(n,)`` class ids (for top-k predictions, pass column 0).

    >>> t = Tree.from_paths([["animal", "dog"], ["animal", "dog"], ["animal"], []],
    ...                     labels=["poodle", "collie", "cat", "rock"])
    >>> accuracy_at_depth(t, [0, 2, 3, 1], [1, 0, 2, 1])     # animal? dog? the class?
    array([0.75, 0.5 , 0.25])
    """
    p, t = _pair(tree, predicted, target)
    V, parent = tree.num_classes, tree.parent
    depth = _ref_depths(tree)
    out = np.zeros(tree.depth)
    a, b = p.copy(), t.copy()  # refs: each class's ancestor at depth min(d, its depth)
    for d in range(tree.depth, 0, -1):
        for refs in (a, b):
            up = depth[refs] > d
            refs[up] = V + parent[refs[up]]
        out[d - 1] = np.mean(a == b)
    return out


def tree_distance(tree: Tree, predicted: Any, target: Any) -> np.ndarray:
    """``(n,)`` int64: the number of edges between each predicted class and its target class,
    ``depth(p) + depth(t) - 2 * depth(lca(p, t))`` (0 for a correct prediction, 2 for a sibling).

    The lowest common ancestors are found for all examples at once: the deeper class of each pair
    climbs to the other's depth, then both climb together until they meet (at most
    ``tree.depth`` vectorized steps over the pairs still apart).

    >>> t = Tree.from_paths([["animal", "dog"], ["animal", "dog"], ["animal"], []],
    ...                     labels=["poodle", "collie", "cat", "rock"])
    >>> tree_distance(t, [0, 2, 3, 1], [1, 0, 2, 1])     # via dog, animal, the root; exact
    array([2, 3, 3, 0])
    """
    p, t = _pair(tree, predicted, target)
    V, parent = tree.num_classes, tree.parent
    depth = _ref_depths(tree)
    a, b = p.copy(), t.copy()
    for deep, other in ((a, b), (b, a)):
        idx = np.flatnonzero(depth[deep] > depth[other])
        while idx.size:
            deep[idx] = V + parent[deep[idx]]
            idx = idx[depth[deep[idx]] > depth[other[idx]]]
    idx = np.flatnonzero(a != b)  # same depth now; distinct refs there are never the root
    while idx.size:
        a[idx] = V + parent[a[idx]]
        b[idx] = V + parent[b[idx]]
        idx = idx[a[idx] != b[idx]]
    return depth[p] + depth[t] - 2 * depth[a]


def mean_error_distance(tree: Tree, predicted: Any, target: Any) -> float:
    """Mean :func:`tree_distance` over the wrong predictions only (how far off the errors are);
    ``nan`` when there are no errors.

    >>> t = Tree.from_paths([["animal", "dog"], ["animal", "dog"], ["animal"], []])
    >>> mean_error_distance(t, [0, 2, 3, 1], [1, 0, 2, 1])     # (2 + 3 + 3) / 3
    2.6666666666666665
    """
    dist = tree_distance(tree, predicted, target)
    errors = dist > 0
    return float(dist[errors].mean()) if errors.any() else float("nan")

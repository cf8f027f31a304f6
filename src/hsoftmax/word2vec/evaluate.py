"""Embedding quality: word analogies (questions-words format) and word-pair similarity
(WordSim-353 / SimLex-999 format, Spearman correlation).

The conventions follow the usual evaluation (and gensim's, so numbers are comparable): words are
matched case-insensitively (the most frequent vocabulary word wins a case clash), questions with a
word outside the vocabulary (or outside the ``restrict_vocab`` most frequent words) are skipped and
counted, and an analogy's answer is the nearest word to ``b - a + c`` on unit vectors, excluding
``a``, ``b`` and ``c``.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "AnalogyResult",
    "SimilarityResult",
    "evaluate_analogies",
    "evaluate_similarity",
    "spearman",
    "gensim_test_file",
]


@dataclass
class AnalogyResult:
    """Accuracy over the questions whose four words are all in the vocabulary."""

    accuracy: float
    correct: int
    total: int  # questions evaluated (all words in vocabulary)
    skipped: int  # questions with an unknown word
    sections: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (correct, total)


@dataclass
class SimilarityResult:
    spearman: float
    pearson: float
    pairs: int  # pairs evaluated
    skipped: int  # pairs with an unknown word


def _lower_index(words: Sequence[str], restrict: int | None) -> dict[str, int]:
    n = len(words) if restrict is None else min(restrict, len(words))
    index: dict[str, int] = {}
    for i in range(n - 1, -1, -1):  # reverse, so the most frequent (lowest id) case variant wins
        index[words[i].lower()] = i
    return index


def _unit(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


def evaluate_analogies(
    words: Sequence[str],
    vectors: np.ndarray,
    path: str | os.PathLike,
    restrict_vocab: int | None = 300000,
    batch: int = 512,
) -> AnalogyResult:
    """Accuracy on ``a b c d`` questions (``": section"`` lines start sections).

    Args:
        words: vocabulary, most frequent first; vectors: ``(V, dim)``.
        restrict_vocab: only the first (most frequent) words count as known and as answers.
    """
    index = _lower_index(words, restrict_vocab)
    n = len(words) if restrict_vocab is None else min(restrict_vocab, len(words))
    unit = _unit(np.asarray(vectors, dtype=np.float32)[:n])
    questions: list[tuple[int, int, int, int]] = []
    section_of: list[str] = []
    skipped = 0
    section = ""
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith(":"):
                section = line[1:].strip()
                continue
            parts = line.lower().split()
            if len(parts) != 4:
                continue
            qa, qb, qc, qd = (index.get(p) for p in parts)
            if qa is None or qb is None or qc is None or qd is None:
                skipped += 1
                continue
            questions.append((qa, qb, qc, qd))
            section_of.append(section)
    q = np.array(questions, dtype=np.int64).reshape(-1, 4)
    hits = np.zeros(len(q), dtype=bool)
    for s in range(0, len(q), batch):
        a, b, c, d = q[s : s + batch].T
        target = unit[b] - unit[a] + unit[c]
        target /= np.maximum(np.linalg.norm(target, axis=1, keepdims=True), 1e-12)
        scores = target @ unit.T
        rows = np.arange(len(a))
        for col in (a, b, c):  # the question words are never the answer
            scores[rows, col] = -np.inf
        hits[s : s + batch] = scores.argmax(axis=1) == d
    sections: dict[str, tuple[int, int]] = {}
    for name, hit in zip(section_of, hits.tolist()):
        c, t = sections.get(name, (0, 0))
        sections[name] = (c + hit, t + 1)
    correct = int(hits.sum())
    return AnalogyResult(correct / max(len(q), 1), correct, len(q), skipped, sections)


def evaluate_similarity(
    words: Sequence[str], vectors: np.ndarray, path: str | os.PathLike, restrict_vocab: int | None = 300000
) -> SimilarityResult:
    """Spearman (and Pearson) correlation between cosine similarity and human scores on
    tab-separated ``word1 word2 score`` lines (``#`` starts a comment line)."""
    index = _lower_index(words, restrict_vocab)
    vectors = np.asarray(vectors, dtype=np.float32)
    ours: list[float] = []
    human: list[float] = []
    skipped = 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 3:
                continue
            a, b = index.get(parts[0].lower()), index.get(parts[1].lower())
            try:
                score = float(parts[2])
            except ValueError:
                continue  # a header line
            if a is None or b is None:
                skipped += 1
                continue
            va, vb = vectors[a].astype(np.float64), vectors[b].astype(np.float64)
            ours.append(float(va @ vb / max(np.linalg.norm(va) * np.linalg.norm(vb), 1e-12)))
            human.append(score)
    x, y = np.array(ours), np.array(human)
    pearson = float(np.corrcoef(x, y)[0, 1]) if x.size > 1 else float("nan")
    return SimilarityResult(spearman(x, y), pearson, int(x.size), skipped)


def _rank(x: np.ndarray) -> np.ndarray:
    """Ranks from 1, ties sharing their mean rank."""
    order = np.argsort(x, kind="stable")
    sx = x[order]
    ranks = np.empty(x.size, dtype=np.float64)
    i = 0
    while i < x.size:
        j = i
        while j + 1 < x.size and sx[j + 1] == sx[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def spearman(x: ArrayLike, y: ArrayLike) -> float:
    """Spearman rank correlation (Pearson correlation of tie-averaged ranks).

    >>> round(spearman([1, 2, 3, 4], [10, 20, 25, 100]), 6)
    1.0
    >>> round(spearman([1, 2, 3], [3, 2, 1]), 6)
    -1.0
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-D of the same length, got {x.shape} and {y.shape}")
    if x.size < 2:
        return float("nan")
    return float(np.corrcoef(_rank(x), _rank(y))[0, 1])


def gensim_test_file(name: str) -> str | None:
    """Path of a standard evaluation file (``questions-words.txt``, ``wordsim353.tsv``,
    ``simlex999.txt``) from an installed gensim wheel, which ships them; ``None`` without gensim."""
    spec = importlib.util.find_spec("gensim")
    if spec is None or spec.origin is None:
        return None
    path = os.path.join(os.path.dirname(spec.origin), "test", "test_data", name)
    return path if os.path.isfile(path) else None

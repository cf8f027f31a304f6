"""Word vectors with lookups, nearest neighbours, evaluation and the word2vec formats."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from . import evaluate as _ev
from .io import read_word2vec, write_word2vec

__all__ = ["KeyedVectors", "load_vectors"]


class KeyedVectors:
    """A vocabulary (most frequent first) and its ``(V, dim)`` float32 vectors.

    >>> kv = KeyedVectors(["a", "b", "c"], np.array([[1, 0], [0.9, 0.1], [0, 1]], dtype=np.float32))
    >>> kv.most_similar("a", topn=1)[0][0]
    'b'
    >>> round(kv.similarity("a", "c"), 3)
    0.0
    """

    def __init__(self, words: Sequence[str], vectors: np.ndarray, counts: np.ndarray | None = None) -> None:
        vectors = np.asarray(vectors)
        if vectors.ndim != 2 or vectors.shape[0] != len(words):
            raise ValueError(f"vectors must have shape ({len(words)}, dim), got {vectors.shape}")
        self.words = tuple(words)
        self.vectors = vectors.astype(np.float32, copy=False)
        self.counts = counts
        self.index = {w: i for i, w in enumerate(self.words)}
        self._unit: np.ndarray | None = None

    @classmethod
    def load(cls, path: str | os.PathLike, binary: bool | None = None) -> KeyedVectors:
        """Read word2vec text or binary (``.bin``, or ``binary=True``) vectors."""
        words, vectors = read_word2vec(path, binary)
        return cls(words, vectors)

    def save(self, path: str | os.PathLike, binary: bool | None = None) -> None:
        """Write word2vec format, atomically: binary for ``.bin`` names or ``binary=True``."""
        write_word2vec(path, self.words, self.vectors, binary)

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: object) -> bool:
        return word in self.index

    def __getitem__(self, word: str) -> np.ndarray:
        return self.vectors[self._id(word)]

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def unit_vectors(self) -> np.ndarray:
        """Rows scaled to unit length (computed once)."""
        if self._unit is None:
            self._unit = _ev._unit(self.vectors)
        return self._unit

    def _id(self, word: str) -> int:
        try:
            return self.index[word]
        except KeyError:
            raise KeyError(f"word {word!r} is not in the vocabulary") from None

    def similarity(self, a: str, b: str) -> float:
        """Cosine similarity of two words."""
        u = self.unit_vectors
        return float(u[self._id(a)] @ u[self._id(b)])

    def most_similar(
        self, positive: str | Sequence[str] = (), negative: Sequence[str] = (), topn: int = 10
    ) -> list[tuple[str, float]]:
        """Nearest words by cosine to the mean of ``positive`` minus ``negative`` unit vectors.

        ``most_similar("king")`` gives king's neighbours; ``most_similar(["king", "woman"],
        ["man"])`` answers an analogy. The query words are excluded.
        """
        if isinstance(positive, str):
            positive = [positive]
        if isinstance(negative, str):
            negative = [negative]
        if not positive and not negative:
            raise ValueError("most_similar needs at least one word")
        if isinstance(topn, bool) or not isinstance(topn, (int, np.integer)) or topn < 1:
            raise ValueError(f"topn must be an int >= 1, got {topn!r}")
        u = self.unit_vectors
        ids = [self._id(w) for w in positive] + [self._id(w) for w in negative]
        q = u[ids[: len(positive)]].sum(axis=0) - u[ids[len(positive) :]].sum(axis=0)
        q /= max(float(np.linalg.norm(q)), 1e-12)
        scores = u @ q
        scores[ids] = -np.inf
        k = min(topn, len(self.words) - len(set(ids)))
        if k <= 0:
            return []
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(self.words[i], float(scores[i])) for i in top]

    def evaluate_analogies(self, path: str | os.PathLike, restrict_vocab: int | None = 300000) -> _ev.AnalogyResult:
        """Analogy accuracy on a questions-words file (see :func:`evaluate.evaluate_analogies`)."""
        return _ev.evaluate_analogies(self.words, self.vectors, path, restrict_vocab)

    def evaluate_similarity(self, path: str | os.PathLike, restrict_vocab: int | None = 300000) -> _ev.SimilarityResult:
        """Spearman correlation on a word-pair file (see :func:`evaluate.evaluate_similarity`)."""
        return _ev.evaluate_similarity(self.words, self.vectors, path, restrict_vocab)

    def __repr__(self) -> str:
        return f"KeyedVectors({len(self)} words, dim {self.dim})"


def load_vectors(path: str | os.PathLike, binary: bool | None = None) -> KeyedVectors:
    """Read word2vec-format vectors (binary for ``.bin`` or ``binary=True``)."""
    return KeyedVectors.load(path, binary)

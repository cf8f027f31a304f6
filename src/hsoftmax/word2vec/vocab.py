"""Vocabulary: which words are kept, their counts, and the subsampling keep-probabilities.

Words are numbered by decreasing count (ties broken alphabetically, so a vocabulary is a pure
function of the counts), which is the order Huffman trees, the word2vec formats and
``most_similar`` all expect.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

__all__ = ["Vocab", "keep_probabilities", "rank"]


class Vocab:
    """Kept words, most frequent first, with their corpus counts.

    >>> v = Vocab.from_counts({"the": 10, "cat": 3, "sat": 3, "rare": 1}, min_count=2)
    >>> v.words, v.counts.tolist()
    (('the', 'cat', 'sat'), [10, 3, 3])
    >>> v["cat"], len(v), "rare" in v
    (1, 3, False)

    Args:
        words: unique words, in id order.
        counts: ``(len(words),)`` non-negative integer counts.
    """

    def __init__(self, words: Sequence[str], counts: Iterable[int]) -> None:
        self.words = tuple(words)
        self.counts = np.asarray(list(counts) if not isinstance(counts, np.ndarray) else counts, dtype=np.int64)
        if self.counts.shape != (len(self.words),):
            raise ValueError(f"got {self.counts.size} counts for {len(self.words)} words")
        if np.any(self.counts < 0):
            raise ValueError("counts must be non-negative")
        if len(set(self.words)) != len(self.words):
            raise ValueError("vocabulary words must be unique")
        self._index: dict[str, int] | None = None

    @property
    def index(self) -> dict[str, int]:
        """``word -> id``, built on first use (training never needs it: a few MB saved)."""
        if self._index is None:
            self._index = {w: i for i, w in enumerate(self.words)}
        return self._index

    @classmethod
    def from_counts(cls, counts: Mapping[str, int], min_count: int = 5, max_vocab: int | None = None) -> Vocab:
        """Keep words with ``count >= min_count``; then, if ``max_vocab`` is set, the most frequent.

        Raises:
            ValueError: no word reaches ``min_count`` (the message says how close the best came).
        """
        if isinstance(min_count, bool) or not isinstance(min_count, (int, np.integer)) or min_count < 1:
            raise ValueError(f"min_count must be an int >= 1, got {min_count!r}")
        if max_vocab is not None and (not isinstance(max_vocab, (int, np.integer)) or max_vocab < 1):
            raise ValueError(f"max_vocab must be an int >= 1 or None, got {max_vocab!r}")
        kept = [(w, int(c)) for w, c in counts.items() if c >= min_count]
        if not kept:
            raise no_word_reaches(min_count, len(counts), max(counts.values(), default=0))
        words = [w for w, _ in kept]
        order = rank(words, [c for _, c in kept], max_vocab)
        return cls([words[i] for i in order], [kept[i][1] for i in order])

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: object) -> bool:
        return word in self.index

    def __getitem__(self, word: str) -> int:
        try:
            return self.index[word]
        except KeyError:
            raise KeyError(f"word {word!r} is not in the vocabulary") from None

    @property
    def total(self) -> int:
        """Sum of the kept words' counts (the training words per epoch before subsampling)."""
        return int(self.counts.sum())

    def __repr__(self) -> str:
        return f"Vocab({len(self)} words, {self.total} tokens)"


def rank(words: Sequence[str], counts: Sequence[int], max_vocab: int | None = None) -> list[int]:
    """Positions of ``words`` in vocabulary order (decreasing count, ties alphabetical), the
    first ``max_vocab`` of them."""
    order = sorted(range(len(words)), key=lambda i: (-counts[i], words[i]))
    return order if max_vocab is None else order[:max_vocab]


def no_word_reaches(min_count: int, distinct: int, best: int) -> ValueError:
    """The error for a corpus in which no word reaches ``min_count`` (says how close it came)."""
    return ValueError(
        f"no word occurs at least min_count={min_count} times "
        f"({distinct} distinct words, the most frequent occurs {best} times)"
    )


def keep_probabilities(counts: np.ndarray, sample: float) -> np.ndarray:
    """Probability of keeping each occurrence of a word under frequent-word subsampling.

    word2vec's formula: with ``f`` a word's share of the corpus and ``t = sample``,
    ``p_keep = sqrt(t / f) + t / f``, capped at 1. ``sample=0`` disables subsampling.

    >>> p = keep_probabilities(np.array([1000, 1]), sample=1e-3)
    >>> bool(np.isclose(p[0], np.sqrt(1e-3 / (1000 / 1001)) + 1e-3 / (1000 / 1001)))
    True
    >>> float(p[1])
    1.0

    Returns:
        ``(V,)`` float64 in ``(0, 1]``.
    """
    c = np.asarray(counts, dtype=np.float64)
    if not (isinstance(sample, (int, float)) and np.isfinite(sample) and sample >= 0):
        raise ValueError(f"sample must be a finite number >= 0, got {sample!r}")
    if sample == 0 or c.sum() == 0:
        return np.ones_like(c)
    ratio = sample * c.sum() / np.maximum(c, 1e-300)  # t / f
    return np.minimum(1.0, np.sqrt(ratio) + ratio)

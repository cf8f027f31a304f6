"""Word vectors with lookups, nearest neighbours, evaluation and the word2vec formats."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence
from typing import TypeGuard

import numpy as np

from ..files import atomic_path
from . import evaluate as _ev
from .io import read_word2vec, write_word2vec

__all__ = ["KeyedVectors", "load_vectors"]


# most_similar's answer: (word, cosine) pairs, best first.
Neighbours = list[tuple[str, float]]
# A key: a word, or (as in gensim) a row number for an int that is not itself a word.
Key = str | int | np.integer
# An entry of most_similar's positive/negative: a key, or a raw (dim,) vector (not normalised).
Query = str | int | np.integer | np.ndarray


def _is_int(x: object) -> TypeGuard[int | np.integer]:
    """An int or numpy integer, not a bool (``True`` is no row number)."""
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _unit_vector(v: np.ndarray) -> np.ndarray:
    """``v`` scaled to unit length; a zero vector stays zero (as in gensim's ``unitvec``)."""
    return v / max(float(np.linalg.norm(v)), 1e-12)


def _as_queries(value: Query | Sequence[Query] | np.ndarray | None) -> list[Query]:
    """gensim's ``_ensure_list``: one key or ``(dim,)`` vector, rows of a 2-D array, or a list."""
    if value is None:
        return []
    if isinstance(value, (str, int, np.integer)):
        return [value]
    if isinstance(value, np.ndarray):
        return [value] if value.ndim == 1 else list(value)
    return list(value)


class KeyedVectors:
    """A vocabulary (most frequent first) and its ``(V, dim)`` float32 vectors.

    The everyday names of gensim's ``KeyedVectors`` work with gensim's semantics:
    ``key_to_index`` / ``index_to_key``, ``vectors``, ``vector_size``, ``kv[key]`` /
    ``get_vector(key, norm=)``, ``most_similar(positive=, negative=, topn=, restrict_vocab=)``,
    ``similar_by_vector``, ``similarity``, ``n_similarity``, ``doesnt_match``,
    ``save_word2vec_format`` / ``load_word2vec_format``. Cosines use unit vectors; a zero vector
    scores 0 against everything (gensim gives NaN).

    >>> kv = KeyedVectors(["a", "b", "c"], np.array([[1, 0], [0.9, 0.1], [0, 1]], dtype=np.float32))
    >>> kv.most_similar("a", topn=1)[0][0]
    'b'
    >>> round(kv.similarity("a", "c"), 3)
    0.0
    >>> kv.key_to_index["c"], kv.index_to_key[0], kv.doesnt_match(["a", "b", "c"])
    (2, 'a', 'c')
    """

    _unit: np.ndarray | None = None
    _index_to_key: list[str] | None = None

    def __init__(self, words: Sequence[str], vectors: np.ndarray, counts: np.ndarray | None = None) -> None:
        self.words = tuple(words)
        self.index = {w: i for i, w in enumerate(self.words)}
        self.vectors = vectors  # checked and made float32 by the setter
        self.counts = counts

    # ------------------------------------------------------------------ gensim's names
    @property
    def vectors(self) -> np.ndarray:
        """The ``(V, dim)`` float32 table, row ``i`` for ``index_to_key[i]``."""
        return self._vectors

    @vectors.setter
    def vectors(self, vectors: np.ndarray) -> None:
        vectors = np.asarray(vectors)
        if vectors.ndim != 2 or vectors.shape[0] != len(self.words):
            raise ValueError(f"vectors must have shape ({len(self.words)}, dim), got {vectors.shape}")
        self._vectors = vectors.astype(np.float32, copy=False)
        self._unit = None  # a new table: the unit rows are stale

    @property
    def key_to_index(self) -> dict[str, int]:
        """gensim's name for the word -> row mapping (the same dict as ``index``; do not edit)."""
        return self.index

    @property
    def index_to_key(self) -> list[str]:
        """gensim's name for the words in row order (a list, built once; do not edit)."""
        if self._index_to_key is None:
            self._index_to_key = list(self.words)
        return self._index_to_key

    @property
    def vector_size(self) -> int:
        """gensim's name for :attr:`dim`."""
        return self.dim

    @classmethod
    def load(cls, path: str | os.PathLike, binary: bool | None = None) -> KeyedVectors:
        """Read word2vec text or binary (``.bin``, or ``binary=True``) vectors."""
        words, vectors = read_word2vec(path, binary)
        return cls(words, vectors)

    @classmethod
    def load_word2vec_format(cls, fname: str | os.PathLike, binary: bool = False) -> KeyedVectors:
        """gensim's reader name: text unless ``binary=True`` (gensim's default), as :meth:`load`."""
        return cls.load(fname, bool(binary))

    def save(self, path: str | os.PathLike, binary: bool | None = None) -> None:
        """Write word2vec format, atomically: binary for ``.bin`` names or ``binary=True``."""
        write_word2vec(path, self.words, self.vectors, binary)

    def save_word2vec_format(
        self, fname: str | os.PathLike, fvocab: str | os.PathLike | None = None, binary: bool = False
    ) -> None:
        """gensim's writer: text unless ``binary=True`` (whatever the name), atomically.

        ``fvocab``: also write ``"<word> <count>"`` lines there (needs the counts). Rows are
        written in index order (a trained model's is most frequent first, gensim's sort order).
        """
        if fvocab is not None:
            if self.counts is None:
                raise ValueError("fvocab needs word counts, and these vectors have none")
            counts = np.asarray(self.counts).tolist()
            with atomic_path(fvocab) as tmp, open(tmp, "wb") as f:
                f.write("".join(f"{w} {c}\n" for w, c in zip(self.words, counts)).encode("utf-8"))
        write_word2vec(fname, self.words, self.vectors, bool(binary))

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, key: object) -> bool:
        """A word of the vocabulary, or (as in gensim) an int row number."""
        if isinstance(key, str):
            return key in self.index
        return _is_int(key) and 0 <= int(key) < len(self.words)

    def __getitem__(self, key_or_keys: Key | Iterable[Key]) -> np.ndarray:
        """One key's ``(dim,)`` vector (read-only view), or ``(n, dim)`` for a list of keys."""
        if isinstance(key_or_keys, (str, int, np.integer)):  # a bool is refused by get_index
            return self.get_vector(key_or_keys)
        return self.vectors[[self.get_index(k) for k in key_or_keys]]

    def get_index(self, key: Key, default: int | None = None) -> int:
        """The row of ``key``: a word's, or an int's own if it is a row number, else ``default``.

        Raises:
            KeyError: ``key`` is neither and there is no ``default``.
        """
        row = self.index.get(key, -1) if isinstance(key, str) else -1
        if row >= 0:
            return row
        if not isinstance(key, str) and _is_int(key) and 0 <= int(key) < len(self.words):
            return int(key)
        if default is not None:
            return default
        raise KeyError(f"word {key!r} is not in the vocabulary")

    def get_vector(self, key: Key, norm: bool = False) -> np.ndarray:
        """``key``'s vector, scaled to unit length if ``norm``: a read-only view, as in gensim
        (writing into it would leave the cached unit vectors stale)."""
        row = self.get_index(key)
        v = (self.unit_vectors if norm else self.vectors)[row]
        v.flags.writeable = False
        return v

    def get_normed_vectors(self) -> np.ndarray:
        """All rows scaled to unit length (read-only; see :attr:`unit_vectors`)."""
        return self.unit_vectors

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def unit_vectors(self) -> np.ndarray:
        """Rows scaled to unit length (computed once, read-only)."""
        if self._unit is None:
            self._unit = _ev._unit(self.vectors)
            self._unit.flags.writeable = False
        return self._unit

    # ------------------------------------------------------------------ similarities
    def similarity(self, w1: Key, w2: Key) -> float:
        """Cosine similarity of two words."""
        u = self.unit_vectors
        return float(u[self.get_index(w1)] @ u[self.get_index(w2)])

    def n_similarity(self, ws1: Sequence[Key], ws2: Sequence[Key]) -> float:
        """Cosine of the mean (raw) vectors of two word lists, as gensim computes it.

        Raises:
            ValueError: a list is empty. KeyError: a word is not in the vocabulary (gensim skips
            it silently, which can turn a typo into a wrong score).
        """
        if not (len(ws1) and len(ws2)):
            raise ValueError("n_similarity needs at least one word in each list")
        m1 = self.vectors[[self.get_index(w) for w in ws1]].mean(axis=0)
        m2 = self.vectors[[self.get_index(w) for w in ws2]].mean(axis=0)
        return float(_unit_vector(m1) @ _unit_vector(m2))

    def most_similar(
        self,
        positive: Query | Sequence[Query] | None = None,
        negative: Query | Sequence[Query] | None = None,
        topn: int | None = 10,
        restrict_vocab: int | None = None,
    ) -> Neighbours | np.ndarray:
        """The ``topn`` words nearest by cosine to the sum of ``positive`` minus ``negative``.

        gensim's 3CosAdd: the words' unit vectors (a raw ``(dim,)`` array counts as given) are
        added, the ``negative`` ones subtracted, the result scaled to unit length; the query
        words themselves are excluded. ``most_similar("king")`` gives king's neighbours,
        ``most_similar(positive=["king", "woman"], negative=["man"])`` answers an analogy.

        Args:
            topn: how many ``(word, cosine)`` pairs, best first; ``None`` returns the cosines of
                every (searched) row as an array instead, query words included, as gensim does.
            restrict_vocab: search only the first (most frequent) rows.

        Raises:
            ValueError: no query, a bad ``topn`` or ``restrict_vocab``, or an array of the wrong
                shape. KeyError: a word is not in the vocabulary.
        """
        pos, neg = _as_queries(positive), _as_queries(negative)
        if not pos and not neg:
            raise ValueError("most_similar needs at least one word or vector")
        if topn is not None and (isinstance(topn, bool) or not _is_int(topn) or topn < 0):
            raise ValueError(f"topn must be None or an int >= 0, got {topn!r}")
        n = len(self.words)
        if restrict_vocab is not None:
            if isinstance(restrict_vocab, bool) or not _is_int(restrict_vocab) or restrict_vocab < 1:
                raise ValueError(f"restrict_vocab must be None or an int >= 1, got {restrict_vocab!r}")
            n = min(n, int(restrict_vocab))
        u = self.unit_vectors
        q = np.zeros(self.dim, dtype=np.float32)
        exclude: set[int] = set()
        for sign, items in ((1.0, pos), (-1.0, neg)):
            for item in items:
                if isinstance(item, np.ndarray):
                    if item.shape != (self.dim,):
                        raise ValueError(f"a query vector must have shape ({self.dim},), got {item.shape}")
                    q += np.float32(sign) * item.astype(np.float32, copy=False)
                else:
                    row = self.get_index(item)
                    exclude.add(row)
                    q += np.float32(sign) * u[row]
        scores = u[:n] @ _unit_vector(q)
        if topn is None:
            return scores
        rows = [i for i in exclude if i < n]
        scores[rows] = -np.inf
        k = min(int(topn), n - len(rows))
        if k <= 0:
            return []
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(self.words[i], float(scores[i])) for i in top]

    def similar_by_vector(
        self, vector: np.ndarray, topn: int | None = 10, restrict_vocab: int | None = None
    ) -> Neighbours | np.ndarray:
        """The words nearest by cosine to ``vector`` (``(dim,)``); none is excluded."""
        return self.most_similar(positive=[np.asarray(vector)], topn=topn, restrict_vocab=restrict_vocab)

    def similar_by_key(
        self, key: Key, topn: int | None = 10, restrict_vocab: int | None = None
    ) -> Neighbours | np.ndarray:
        """``most_similar(positive=[key], ...)``: ``key``'s neighbours."""
        return self.most_similar(positive=[key], topn=topn, restrict_vocab=restrict_vocab)

    similar_by_word = similar_by_key  # gensim's older name

    def doesnt_match(self, words: Sequence[str]) -> str:
        """The word farthest (by cosine) from the mean of the words' unit vectors, as in gensim.

        Words outside the vocabulary are ignored with a warning (gensim logs one).

        Raises:
            ValueError: no word of ``words`` is in the vocabulary.
        """
        used = [w for w in words if w in self.index]
        if len(used) != len(words):
            missing = sorted(set(words) - set(used))
            warnings.warn(f"doesnt_match ignores words not in the vocabulary: {missing}", stacklevel=2)
        if not used:
            raise ValueError("doesnt_match needs at least one word in the vocabulary")
        vectors = self.unit_vectors[[self.index[w] for w in used]]
        dists = (vectors @ _unit_vector(vectors.mean(axis=0))).tolist()
        return sorted(zip(dists, used), reverse=True)[-1][1]  # gensim's order, ties included

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

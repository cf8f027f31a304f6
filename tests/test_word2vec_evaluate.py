"""Embedding evaluation: analogies and word-pair similarity match gensim's numbers; Spearman's ties
match scipy's."""

from __future__ import annotations

import os

import numpy as np
import pytest

from hsoftmax.word2vec import KeyedVectors
from hsoftmax.word2vec.evaluate import spearman


def _gensim_data(name):
    gensim = pytest.importorskip("gensim")
    return os.path.join(os.path.dirname(gensim.__file__), "test", "test_data", name)


def _structured_vectors():
    """Vectors where capital-country analogies hold for part of the questions, random elsewhere."""
    path = _gensim_data("questions-words.txt")
    rng = np.random.default_rng(0)
    words: dict[str, np.ndarray] = {}
    offset = rng.standard_normal(30)
    with open(path) as f:
        lines = f.read().lower().splitlines()
    for line in lines[1:300]:  # capital-common-countries: country = capital + offset
        if line.startswith(":"):
            break
        cap, country = line.split()[:2]
        words.setdefault(cap, rng.standard_normal(30) * 2)
        words.setdefault(country, words[cap] + offset + rng.standard_normal(30) * 0.3)
    for line in lines:
        if not line.startswith(":"):
            for w in line.split():
                words.setdefault(w, rng.standard_normal(30))
    names = sorted(words)[: int(len(words) * 0.9)]  # leave some words out of the vocabulary
    return names, np.array([words[w] for w in names], dtype=np.float32)


def test_analogy_and_similarity_match_gensim():
    gensim_models = pytest.importorskip("gensim.models")
    words, vectors = _structured_vectors()
    kv = KeyedVectors(words, vectors)
    g = gensim_models.KeyedVectors(vectors.shape[1])
    g.add_vectors(words, vectors)

    ours = kv.evaluate_analogies(_gensim_data("questions-words.txt"))
    score, sections = g.evaluate_word_analogies(_gensim_data("questions-words.txt"))
    total = sections[-1]
    assert ours.correct == len(total["correct"]) > 10
    assert ours.total == len(total["correct"]) + len(total["incorrect"])
    assert ours.accuracy == pytest.approx(score)

    for name in ("wordsim353.tsv", "simlex999.txt"):
        (pearson, _), (spear, _), oov = g.evaluate_word_pairs(_gensim_data(name))
        r = kv.evaluate_similarity(_gensim_data(name))
        assert r.spearman == pytest.approx(spear, abs=1e-6)
        assert r.pearson == pytest.approx(pearson, abs=1e-6)
        total_pairs = r.pairs + r.skipped
        assert oov == pytest.approx(100 * r.skipped / total_pairs)


def test_spearman_handles_ties_like_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 5, 50).astype(float)
    y = x + rng.integers(0, 3, 50)
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y)[0], abs=1e-12)

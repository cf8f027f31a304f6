"""word2vec vocabulary: order, min_count/max_vocab, and frequent-word subsampling."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import topic_corpus
from hsoftmax.word2vec import Word2Vec, encode_sentences
from hsoftmax.word2vec.vocab import Vocab, keep_probabilities


@pytest.fixture(scope="module")
def corpus():
    return topic_corpus()


def test_vocab_order_min_count_and_max_vocab():
    counts = {"b": 5, "a": 5, "c": 9, "d": 1, "e": 2}
    v = Vocab.from_counts(counts, min_count=2)
    assert v.words == ("c", "a", "b", "e")  # by count, ties alphabetical
    assert v.counts.tolist() == [9, 5, 5, 2]
    assert Vocab.from_counts(counts, min_count=2, max_vocab=2).words == ("c", "a")
    with pytest.raises(ValueError, match="min_count=10"):
        Vocab.from_counts(counts, min_count=10)


def test_keep_probability_is_word2vecs_formula():
    counts = np.array([5000, 300, 20, 1])
    t = 1e-3
    f = counts / counts.sum()
    expected = np.minimum(1.0, np.sqrt(t / f) + t / f)
    np.testing.assert_allclose(keep_probabilities(counts, t), expected)
    assert keep_probabilities(counts, t)[0] < 0.1  # the frequent word is mostly dropped
    np.testing.assert_array_equal(keep_probabilities(counts, 0.0), 1.0)


def test_subsampling_keeps_the_expected_share(corpus):
    enc = encode_sentences(corpus, min_count=1)
    try:
        m = Word2Vec(dim=8, min_count=1, sample=1e-3, epochs=1, threads=1, progress=False).fit(enc)
        p = keep_probabilities(enc.vocab.counts, 1e-3)
        expected = float((enc.vocab.counts * p).sum())
        assert m.history[0]["trained_words"] == pytest.approx(expected, rel=0.03)
        assert m.history[0]["trained_words"] < 0.5 * enc.num_tokens
    finally:
        enc.close()

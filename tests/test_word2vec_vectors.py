"""Word vectors: the word2vec text/binary formats (gensim reads ours, we read gensim's), atomic
writes, nearest neighbours."""

from __future__ import annotations

import numpy as np
import pytest

from hsoftmax.word2vec import KeyedVectors, load_vectors
from hsoftmax.word2vec.io import read_word2vec, write_word2vec


@pytest.fixture(scope="module")
def small_kv():
    rng = np.random.default_rng(1)
    words = ["the", "of", "naïve", "x'y", "z9"]
    return KeyedVectors(words, rng.standard_normal((5, 7)).astype(np.float32) * 3)


@pytest.mark.parametrize("name,binary", [("v.txt", None), ("v.bin", None), ("v.vec", True)])
def test_gensim_reads_our_vectors(tmp_path, small_kv, name, binary):
    gensim_models = pytest.importorskip("gensim.models")
    path = tmp_path / name
    small_kv.save(path, binary=binary)
    is_bin = name.endswith(".bin") or bool(binary)
    g = gensim_models.KeyedVectors.load_word2vec_format(str(path), binary=is_bin)
    assert list(g.index_to_key) == list(small_kv.words)
    np.testing.assert_array_equal(g.vectors, small_kv.vectors)
    ours = load_vectors(path, binary=binary)
    np.testing.assert_array_equal(ours.vectors, small_kv.vectors)


@pytest.mark.parametrize("binary", [False, True])
def test_we_read_gensims_vectors(tmp_path, small_kv, binary):
    gensim_models = pytest.importorskip("gensim.models")
    g = gensim_models.KeyedVectors(7)
    g.add_vectors(list(small_kv.words), small_kv.vectors)
    path = tmp_path / "g.out"
    g.save_word2vec_format(str(path), binary=binary)
    words, vectors = read_word2vec(path, binary=binary)
    assert words == list(small_kv.words)
    np.testing.assert_allclose(vectors, small_kv.vectors, rtol=1e-6)


def test_writer_refuses_whitespace_in_words(tmp_path):
    with pytest.raises(ValueError, match="whitespace"):
        write_word2vec(tmp_path / "w.txt", ["a b"], np.zeros((1, 2)))
    assert not (tmp_path / "w.txt").exists()


def test_most_similar_excludes_queries(small_kv):
    res = small_kv.most_similar("the", topn=10)
    assert len(res) == 4 and "the" not in [w for w, _ in res]
    assert [s for _, s in res] == sorted((s for _, s in res), reverse=True)
    u = small_kv.unit_vectors
    assert res[0][1] == pytest.approx(max(float(u[0] @ u[i]) for i in range(1, 5)), rel=1e-6)

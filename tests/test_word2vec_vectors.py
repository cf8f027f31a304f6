"""Word vectors: the word2vec text/binary formats (gensim reads ours, we read gensim's), atomic
writes, nearest neighbours."""

from __future__ import annotations

import os
import subprocess
import sys

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


# ---------------------------------------------------------------------------- lean text output
def _reference_text_writer(path, words, vectors):
    """The text writer before it streamed (whole table as Python floats): the bytes to keep."""
    vectors = np.asarray(vectors, dtype=np.float32)
    with open(path, "wb") as f:
        f.write(f"{len(words)} {vectors.shape[1]}\n".encode())
        fmt = " ".join(["%.9g"] * vectors.shape[1])
        for w, v in zip(words, vectors.tolist()):
            f.write((w + " " + fmt % tuple(v) + "\n").encode("utf-8"))


@pytest.mark.parametrize("block_values", [1, 10, 1 << 16])  # a row per block, 3 rows, one block
def test_streamed_text_writer_keeps_the_bytes(tmp_path, monkeypatch, block_values):
    from hsoftmax.word2vec import io as w2v_io

    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((10, 3)).astype(np.float32) * np.float32(1e3)
    vectors[0] = [-0.0, np.float32(1e-45), np.finfo(np.float32).max]  # sign, subnormal, largest
    vectors[1] = [np.nan, np.inf, -np.inf]
    words = (*(f"w{i}" for i in range(9)), "naïve")
    monkeypatch.setattr(w2v_io, "_TEXT_BLOCK_VALUES", block_values)
    write_word2vec(tmp_path / "new.txt", words, vectors, binary=False)
    _reference_text_writer(tmp_path / "old.txt", words, vectors)
    assert (tmp_path / "new.txt").read_bytes() == (tmp_path / "old.txt").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.txt", "old.txt"]  # no temporary left


def test_streamed_text_writer_is_atomic(tmp_path, monkeypatch):
    from hsoftmax.word2vec import io as w2v_io

    path = tmp_path / "v.txt"
    path.write_text("old contents")

    def fail_midway(f, words, vectors):
        f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(w2v_io, "_write_text_rows", fail_midway)
    with pytest.raises(OSError, match="disk full"):
        write_word2vec(path, ["a", "b"], np.ones((2, 2)))
    assert path.read_text() == "old contents" and [p.name for p in tmp_path.iterdir()] == ["v.txt"]


_PEAK_SCRIPT = """
import sys
import numpy as np
from hsoftmax.word2vec.io import write_word2vec

def kib(key):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(key))

vectors = np.random.default_rng(0).standard_normal((16384, 100)).astype(np.float32)
words = [f"w{i}" for i in range(len(vectors))]
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak (VmHWM) to the current resident size
rss = kib("VmRSS")
write_word2vec(sys.argv[1], words, vectors, binary=sys.argv[2] == "binary")
print((kib("VmHWM") - rss) / 1024)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
@pytest.mark.parametrize("fmt", ["text", "binary"])
def test_writing_vectors_adds_little_peak_memory(tmp_path, fmt):
    # The whole-table writer added ~64 MB here (Python floats for 1.6M values); streamed, the
    # peak grows by one block's floats and text (~7 MB), whatever the table's size.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    run = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, str(tmp_path / "v"), fmt],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if run.returncode != 0 and "clear_refs" in run.stderr:
        pytest.skip("cannot reset the peak memory counter here")
    assert run.returncode == 0, run.stderr
    assert float(run.stdout) < 24, f"writing {fmt} raised the peak by {float(run.stdout):.1f} MB"


# ---------------------------------------------------------------------------- gensim's habits
@pytest.fixture(scope="module")
def kv_and_gensim():
    """Our KeyedVectors and gensim's, built from the same (tie-free, random) vectors."""
    gensim_models = pytest.importorskip("gensim.models")
    rng = np.random.default_rng(7)
    words = [f"w{i}" for i in range(300)]
    vectors = rng.standard_normal((300, 16)).astype(np.float32) * rng.uniform(0.1, 3, (300, 1)).astype(np.float32)
    g = gensim_models.KeyedVectors(16)
    g.add_vectors(words, vectors)
    return KeyedVectors(words, vectors, counts=np.arange(600, 300, -1)), g


def _same_neighbours(ours, theirs):
    assert [w for w, _ in ours] == [w for w, _ in theirs]
    np.testing.assert_allclose([s for _, s in ours], [s for _, s in theirs], rtol=1e-5, atol=1e-6)


def test_gensim_names_for_the_vocabulary_and_rows(kv_and_gensim):
    kv, g = kv_and_gensim
    assert kv.index_to_key == g.index_to_key and isinstance(kv.index_to_key, list)
    assert kv.key_to_index == g.key_to_index and kv.vector_size == g.vector_size == 16
    np.testing.assert_array_equal(kv.vectors, g.vectors)
    assert len(kv) == len(g) and "w5" in kv and "nope" not in kv and 5 in kv and 300 not in kv
    np.testing.assert_array_equal(kv.get_vector("w5"), g.get_vector("w5"))
    np.testing.assert_allclose(kv.get_vector("w5", norm=True), g.get_vector("w5", norm=True), rtol=1e-6)
    np.testing.assert_array_equal(kv[["w1", "w2", 3]], g[["w1", "w2", 3]])  # an int is a row number
    np.testing.assert_array_equal(kv[7], g[7])
    assert kv.get_index("w9") == g.get_index("w9") == 9 and kv.get_index("nope", -1) == -1
    with pytest.raises(KeyError, match="nope"):
        kv.get_vector("nope")
    with pytest.raises(KeyError):
        kv[True]  # a bool is no row number
    with pytest.raises(ValueError, match="read-only"):
        kv.get_vector("w1")[0] = 1.0  # would leave the unit vectors stale


def test_most_similar_matches_gensim(kv_and_gensim):
    kv, g = kv_and_gensim
    _same_neighbours(kv.most_similar("w3"), g.most_similar("w3"))
    _same_neighbours(kv.most_similar(positive=["w3"], topn=25), g.most_similar(positive=["w3"], topn=25))
    for a, b, c in [("w1", "w2", "w3"), ("w10", "w200", "w299"), ("w0", "w5", "w5")]:
        ours = kv.most_similar(positive=[b, c], negative=[a], topn=7)
        _same_neighbours(ours, g.most_similar(positive=[b, c], negative=[a], topn=7))
        assert not {a, b, c} & {w for w, _ in ours}  # the query words are excluded
    _same_neighbours(kv.most_similar(negative="w4", topn=5), g.most_similar(negative="w4", topn=5))
    _same_neighbours(kv.most_similar(["w1", "w2"], restrict_vocab=50), g.most_similar(["w1", "w2"], restrict_vocab=50))
    assert all(kv.key_to_index[w] < 50 for w, _ in kv.most_similar("w1", restrict_vocab=50))
    v = kv.vectors[11] + 0.5 * kv.vectors[12]
    _same_neighbours(kv.similar_by_vector(v, topn=5), g.similar_by_vector(v, topn=5))
    assert kv.similar_by_vector(kv.vectors[11], topn=1)[0][0] == "w11"  # a vector excludes nothing
    _same_neighbours(kv.most_similar(positive=["w1", v], topn=5), g.most_similar(positive=["w1", v], topn=5))
    _same_neighbours(kv.similar_by_word("w8", topn=4), g.similar_by_word("w8", topn=4))
    np.testing.assert_allclose(kv.most_similar("w3", topn=None), g.most_similar("w3", topn=None), rtol=1e-5, atol=1e-6)
    assert kv.most_similar("w3", topn=0) == g.most_similar("w3", topn=0) == []
    assert len(kv.most_similar("w3", topn=1000)) == 299


def test_most_similar_refuses_bad_queries(kv_and_gensim):
    kv, _ = kv_and_gensim
    with pytest.raises(ValueError, match="at least one"):
        kv.most_similar()
    with pytest.raises(ValueError, match="topn"):
        kv.most_similar("w1", topn=-1)
    with pytest.raises(ValueError, match="restrict_vocab"):
        kv.most_similar("w1", restrict_vocab=0)
    with pytest.raises(ValueError, match=r"shape \(16,\)"):
        kv.similar_by_vector(np.zeros(3))
    with pytest.raises(KeyError, match="nope"):
        kv.most_similar(positive=["w1"], negative=["nope"])


def test_similarity_n_similarity_and_doesnt_match_match_gensim(kv_and_gensim):
    kv, g = kv_and_gensim
    rng = np.random.default_rng(0)
    for a, b in rng.integers(0, 300, (20, 2)).tolist():
        assert kv.similarity(f"w{a}", f"w{b}") == pytest.approx(float(g.similarity(f"w{a}", f"w{b}")), abs=1e-6)
    assert kv.n_similarity(["w1", "w2"], ["w3", "w4", "w9"]) == pytest.approx(
        float(g.n_similarity(["w1", "w2"], ["w3", "w4", "w9"])), abs=1e-6
    )
    for _ in range(30):
        words = [f"w{i}" for i in rng.choice(300, size=int(rng.integers(2, 7)), replace=False).tolist()]
        assert kv.doesnt_match(words) == g.doesnt_match(words)
    with pytest.warns(UserWarning, match="nope"):
        assert kv.doesnt_match(["w1", "nope", "w2", "w3"]) == g.doesnt_match(["w1", "nope", "w2", "w3"])
    with pytest.raises(ValueError, match="at least one"), pytest.warns(UserWarning, match="nope"):
        kv.doesnt_match(["nope"])
    with pytest.raises(ValueError, match="at least one"):
        kv.n_similarity([], ["w1"])
    with pytest.raises(KeyError, match="nope"):
        kv.n_similarity(["nope"], ["w1"])


@pytest.mark.parametrize("binary", [False, True])
def test_save_word2vec_format_as_gensim_reads_it(tmp_path, kv_and_gensim, binary):
    gensim_models = pytest.importorskip("gensim.models")
    kv, _ = kv_and_gensim
    path, vocab = tmp_path / "v.txt", tmp_path / "vocab.txt"  # the flag, not the name, decides
    kv.save_word2vec_format(path, fvocab=vocab, binary=binary)
    g = gensim_models.KeyedVectors.load_word2vec_format(str(path), fvocab=str(vocab), binary=binary)
    assert g.index_to_key == kv.index_to_key
    np.testing.assert_array_equal(g.vectors, kv.vectors)
    assert [g.get_vecattr(w, "count") for w in ("w0", "w299")] == [600, 301]
    back = KeyedVectors.load_word2vec_format(path, binary=binary)
    np.testing.assert_array_equal(back.vectors, kv.vectors)
    with pytest.raises(ValueError, match="counts"):
        KeyedVectors(["a"], np.ones((1, 2))).save_word2vec_format(tmp_path / "x", fvocab=tmp_path / "y")


def test_a_new_table_refreshes_the_unit_vectors():
    kv = KeyedVectors(["a", "b"], np.array([[1, 0], [0, 1]], dtype=np.float32))
    assert kv.similarity("a", "b") == 0
    kv.vectors = np.array([[1, 0], [1, 0]], dtype=np.float32)
    assert kv.similarity("a", "b") == pytest.approx(1)
    with pytest.raises(ValueError, match=r"shape \(2, dim\)"):
        kv.vectors = np.ones((3, 2))

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

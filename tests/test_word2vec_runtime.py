"""hsoftmax.word2vec.runtime: numba started without scipy's BLAS, and nothing else changed."""

import subprocess
import sys

import pytest

CHECK = """
import sys
from hsoftmax.word2vec.runtime import start_numba_lean
assert start_numba_lean()
assert "scipy.linalg.cython_blas" not in sys.modules  # the 15 MB it saves
assert sys.modules.get("scipy.linalg.cython_blas", 0) == 0  # the refusal is lifted
assert not start_numba_lean()  # a second call has nothing to do
import numba, numpy as np
import scipy.linalg  # importable as usual afterwards
@numba.njit
def f(a, b):
    return np.dot(a, b)  # numba's BLAS calls still compile and run
assert f(np.ones(3), np.full(3, 2.0)) == 6.0
print("ok")
"""


def test_start_numba_lean_skips_scipy_blas_and_lifts_the_refusal():
    pytest.importorskip("scipy")
    r = subprocess.run([sys.executable, "-c", CHECK], check=False, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


RELEASE = """
import numpy as np, numba
from hsoftmax.word2vec.runtime import release_jit_pages, start_numba

def rss_file_kb():
    for line in open("/proc/self/status"):
        if line.startswith("RssFile:"):
            return int(line.split()[1])

assert start_numba()  # the first dispatch in this process: it sets numba's target up, then releases
assert not start_numba()
@numba.njit
def fresh(n):  # compiled after the release: LLVM runs again on the pages it faults back in
    acc = 0.0
    for i in range(n):
        acc += i * 0.5
    return acc
assert fresh(10) == 22.5
before = rss_file_kb()
released = release_jit_pages()
assert released > 0 and rss_file_kb() < before, (released, before, rss_file_kb())
assert fresh(np.int32(4)) == 3.0  # a new signature: another compile after a release
from hsoftmax.word2vec import Word2Vec  # cached kernels loaded after a release run as usual
sents = [["a", "b", "c", "a"], ["b", "c", "d"]] * 50
m = Word2Vec(dim=8, min_count=1, epochs=1, threads=1, progress=False).fit(sents)
assert np.isfinite(m.wv.vectors).all() and release_jit_pages() > 0
print("ok")
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="releases pages through /proc/self/smaps")
def test_release_jit_pages_lowers_resident_memory_and_numba_still_compiles():
    r = subprocess.run([sys.executable, "-c", RELEASE], check=False, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


SMAPS = """\
7f0000000000-7f0000100000 r--p 00000000 fd:01 42 /venv/llvmlite/binding/libllvmlite.so
Rss:                 256 kB
Anonymous:             0 kB
Private_Dirty:         0 kB
Shared_Dirty:          0 kB
Locked:                0 kB
7f0000100000-7f0000400000 r-xp 00100000 fd:01 42 /venv/llvmlite/binding/libllvmlite.so
Rss:                2048 kB
Anonymous:             0 kB
Private_Dirty:         0 kB
Shared_Dirty:          0 kB
Locked:                0 kB
VmFlags: rd ex mr mw me
7f0000400000-7f0000500000 r--p 00400000 fd:01 42 /venv/llvmlite/binding/libllvmlite.so
Rss:                1024 kB
Anonymous:          1024 kB
Private_Dirty:      1024 kB
Shared_Dirty:          0 kB
Locked:                0 kB
7f0000500000-7f0000510000 rw-p 00500000 fd:01 42 /venv/llvmlite/binding/libllvmlite.so
Rss:                  64 kB
Anonymous:             0 kB
Private_Dirty:         0 kB
Shared_Dirty:          0 kB
Locked:                0 kB
7f0000600000-7f0000700000 r-xp 00000000 fd:01 43 /usr/lib/libc.so.6
Rss:                1024 kB
Anonymous:             0 kB
Private_Dirty:         0 kB
Shared_Dirty:          0 kB
Locked:                0 kB
7f0000700000-7f0000800000 r-xp 00000000 fd:01 44 /usr/lib/libLLVM-17.so
Rss:                 512 kB
Anonymous:             0 kB
Locked:                0 kB
7f0000800000-7f0000900000 r-xp 00000000 fd:01 44 /usr/lib/libLLVM-17.so (deleted)
Rss:                 128 kB
Anonymous:             0 kB
Private_Dirty:         0 kB
Shared_Dirty:          0 kB
Locked:              128 kB
"""


def test_only_clean_read_only_library_mappings_are_released(tmp_path):
    """The relocated RELRO segment (anonymous pages), the writable data, other libraries, a
    mapping whose smaps lacks a field and a locked one are left alone."""
    from hsoftmax.word2vec.runtime import _JIT_LIBRARIES, _clean_library_regions

    path = tmp_path / "smaps"
    path.write_text(SMAPS)
    assert _clean_library_regions(_JIT_LIBRARIES, str(path)) == [
        (0x7F0000000000, 0x7F0000100000, 256 * 1024),
        (0x7F0000100000, 0x7F0000400000, 2048 * 1024),
    ]


def test_trainer_releases_llvm_pages_once_per_epoch_after_its_first_chunk(monkeypatch):
    """With a vocabulary over the threshold (lowered here), one worker releases after an epoch's
    first chunk; the run's vectors equal those of a run that releases nothing (1 thread)."""
    import numpy as np

    from hsoftmax.word2vec import Word2Vec, train

    rng = np.random.default_rng(0)
    sents = [[f"w{int(x)}" for x in rng.zipf(1.5, 12) % 300] for _ in range(2000)]

    def fit():
        return Word2Vec(dim=8, min_count=1, epochs=2, threads=1, seed=3, progress=False).fit(sents)

    plain = fit()
    calls = []
    monkeypatch.setattr(train, "_RELEASE_MIN_VOCAB", 0)
    monkeypatch.setattr(train, "release_jit_pages", lambda: calls.append(1) or 0)
    released = fit()
    assert np.array_equal(plain.syn0, released.syn0) and np.array_equal(plain.syn1, released.syn1)
    assert len(calls) == 2  # one per epoch


def test_encode_file_starts_numba_before_reading_and_keeps_scipy_blas(monkeypatch, tmp_path):
    """The Python API's start: numba is set up (and LLVM's pages released) by encode_file before
    the word table grows, through start_numba, never start_numba_lean: a library call leaves
    numba's BLAS for the user's own np.correlate/np.convolve alone."""
    from hsoftmax.word2vec import corpus, runtime

    calls = []
    monkeypatch.setattr(corpus, "start_numba", lambda: calls.append("start") or False)
    monkeypatch.setattr(runtime, "start_numba_lean", lambda: calls.append("lean") or False)
    path = tmp_path / "c.txt"
    path.write_text("a b a\nb c\n")
    enc = corpus.encode_file(path, min_count=1)
    enc.close()
    assert calls == ["start"]

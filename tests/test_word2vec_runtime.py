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

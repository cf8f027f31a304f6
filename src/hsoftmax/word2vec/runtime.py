"""Starting numba lean, for a process that runs nothing but this package's kernels (the CLI).

numba's first dispatch in a process, even of a function loaded from the on-disk cache (nothing
compiled), sets up its CPU target: it imports every implementation module, and one of them
(``numba.np.arraymath``) imports ``scipy.linalg.cython_blas`` just to record whether BLAS is there,
so that ``np.vdot``-style helpers can call it. That import maps scipy's BLAS and LAPACK libraries:
15 MB of resident memory (measured 2026-12-01: a first cached call takes a process from 97 MB to
155 MB, 140 MB without the import). None of our kernels calls BLAS.

:func:`start_numba_lean` makes that first dispatch while the import is refused, then lifts the
refusal at once: later ``import scipy.linalg`` and numba's own ``np.dot`` (which imports BLAS when
it is compiled) work as usual; only numba's few "inner product" helpers take their loop instead of
BLAS for the rest of the process. It uses nothing of numba's internals (the refusal is Python's
documented ``sys.modules[name] = None``), so a numba that does this differently only loses the
saving. It is meant for a process the package owns (``hsoftmax word2vec``), not for a library
call inside someone else's program.
"""

from __future__ import annotations

import sys

from numba import njit

from ..kernels.node import JIT

__all__ = ["start_numba_lean"]

_BLAS_MODULE = "scipy.linalg.cython_blas"


@njit(**JIT)
def _first_dispatch() -> int:  # cached like every kernel: dispatching it sets up numba's target
    return 0


def start_numba_lean() -> bool:
    """Set numba's CPU target up without importing scipy's BLAS. Returns whether scipy's BLAS
    stayed out (False when it was loaded already: then there is nothing to save).

    >>> isinstance(start_numba_lean(), bool)
    True
    """
    if _BLAS_MODULE in sys.modules or _first_dispatch.signatures:
        return False
    sys.modules[_BLAS_MODULE] = None  # type: ignore[assignment]  # import refused while numba starts
    try:
        _first_dispatch()
    finally:
        if sys.modules.get(_BLAS_MODULE, 0) is None:
            del sys.modules[_BLAS_MODULE]
    return _BLAS_MODULE not in sys.modules

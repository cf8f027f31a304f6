"""Starting numba lean: what its runtime leaves in a process's resident memory.

numba's first dispatch in a process, even of a function loaded from the on-disk cache (nothing
compiled), sets up its CPU target: it imports every implementation module, and it runs LLVM,
which pages in much of llvmlite's shared library (measured 2026-12-01 on the 5M-token slice: a
first cached call takes a process from 97 MB to 155 MB resident). Two things here take part of
that back.

**LLVM's clean pages** (:func:`release_jit_pages`, used by the trainer and the encoder at their
phase boundaries). Once the kernels are loaded, LLVM's code is not run again until something
compiles or loads another function, yet about 65 MB of ``libllvmlite.so`` stays resident.
Those pages are clean copies of the file: ``madvise(MADV_DONTNEED)`` drops them from this
process's page tables, and the next use faults them back in from the page cache (a minor fault,
no I/O). Only mappings that cannot differ from the file are touched: not writable, and with no
anonymous (copy-on-write) page, which excludes the relocated RELRO segment. Nothing is unmapped,
so no address changes; a later compile simply faults in what it needs (a test compiles a new
function afterwards). Linux only (it reads ``/proc/self/smaps``); elsewhere, or if anything is
unexpected, it does nothing.

**scipy's BLAS** (:func:`start_numba_lean`, the CLI only). One implementation module
(``numba.np.arraymath``) imports ``scipy.linalg.cython_blas`` just to record whether BLAS is
there, so that ``np.correlate``/``np.convolve`` can call it. That import maps scipy's BLAS and
LAPACK libraries: 15 MB. None of our kernels calls BLAS. :func:`start_numba_lean` makes the
first dispatch while the import is refused, then lifts the refusal at once: later ``import
scipy.linalg`` and numba's own ``np.dot`` (which imports BLAS when it is compiled) work as usual;
only numba's inner-product helper of ``np.correlate``/``np.convolve`` takes its loop instead of
BLAS for the rest of the process (other rounding, slower). It uses nothing of numba's internals
(the refusal is Python's documented ``sys.modules[name] = None``), so a numba that does this
differently only loses the saving. Because it changes what a user's own ``np.correlate`` would
compute, it is meant for a process the package owns (``hsoftmax word2vec``), never for a library
call inside someone else's program: the Python API starts numba with :func:`start_numba`.
"""

from __future__ import annotations

import os
import sys

from numba import njit

from ..kernels.node import JIT

__all__ = ["start_numba", "start_numba_lean", "release_jit_pages"]

_BLAS_MODULE = "scipy.linalg.cython_blas"
# The shared libraries holding LLVM: llvmlite's wheels link it statically into libllvmlite.so;
# builds against a shared LLVM (conda, distributions) load libLLVM*.so beside it.
_JIT_LIBRARIES = ("libllvmlite", "libLLVM")


@njit(**JIT)
def _first_dispatch() -> int:  # cached like every kernel: dispatching it sets up numba's target
    return 0


def start_numba() -> bool:
    """Set numba's CPU target up now (the first dispatch of a cached no-op), then hand LLVM's
    clean pages back (:func:`release_jit_pages`), so that what comes next (the encoder's tables)
    does not add to them. Returns whether this call set the target up (False: it was already).

    >>> isinstance(start_numba(), bool)
    True
    """
    if _first_dispatch.signatures:
        return False
    _first_dispatch()
    release_jit_pages()
    return True


def start_numba_lean() -> bool:
    """:func:`start_numba` without importing scipy's BLAS (for a process that runs only our
    kernels). Returns whether scipy's BLAS stayed out (False when it was loaded already: then
    there is nothing to save).

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
    release_jit_pages()
    return _BLAS_MODULE not in sys.modules


def release_jit_pages() -> int:
    """Drop LLVM's clean file pages from this process's resident memory; returns how many bytes
    were resident in the mappings released (0 where unsupported). Safe at any time: see the
    module's docstring. Each call reads ``/proc/self/smaps`` (a few milliseconds).

    >>> release_jit_pages() >= 0
    True
    """
    if not sys.platform.startswith("linux"):
        return 0
    try:
        import ctypes
        import mmap

        advice = mmap.MADV_DONTNEED
        libc = ctypes.CDLL(None, use_errno=True)
        madvise = libc.madvise
        madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        madvise.restype = ctypes.c_int
        regions = _clean_library_regions(_JIT_LIBRARIES)
    except (AttributeError, OSError, ValueError):  # no madvise, no /proc, an unexpected smaps
        return 0
    released = 0
    for lo, hi, rss in regions:
        if madvise(lo, hi - lo, advice) == 0:
            released += rss
    return released


def _clean_library_regions(names: tuple[str, ...], smaps: str = "/proc/self/smaps") -> list[tuple[int, int, int]]:
    """``(start, end, resident bytes)`` of each mapping of a file whose name starts with one of
    ``names`` that is read-only and holds only the file's own pages: no write permission, and no
    anonymous, dirty or locked page (a copy-on-write page would be lost by ``MADV_DONTNEED``)."""
    regions = []
    current: dict[str, int] | None = None
    with open(smaps) as f:
        for line in f:
            key, _, rest = line.partition(" ")
            if not key.endswith(":"):  # a mapping's header: "lo-hi perms offset dev inode [path]"
                if current is not None:
                    regions.append(current)
                fields = line.split(None, 5)
                path = fields[5].strip() if len(fields) > 5 else ""
                lib = os.path.basename(path).startswith(names) and "w" not in fields[1]
                if lib:
                    lo, hi = (int(x, 16) for x in fields[0].split("-"))
                    current = {"lo": lo, "hi": hi}
                else:
                    current = None
            elif current is not None and key in _SMAPS_FIELDS:
                current[key] = int(rest.split()[0]) * 1024
    if current is not None:
        regions.append(current)
    return [
        (r["lo"], r["hi"], r["Rss:"])
        for r in regions
        if len(r) == 2 + len(_SMAPS_FIELDS) and not any(r[k] for k in _SMAPS_FIELDS if k != "Rss:")
    ]


# Every one must be present (an older kernel's smaps that lacks one: the mapping is left alone).
_SMAPS_FIELDS = ("Rss:", "Anonymous:", "Private_Dirty:", "Shared_Dirty:", "Locked:")

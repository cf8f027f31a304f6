"""Optional compiled fast paths (numba, CPU only).

:mod:`hsoftmax.functional` uses these when every tensor involved is on the CPU with one float
dtype (float32 or float64) and numba imports; otherwise it runs its device-generic torch code.
Set the environment variable ``HSOFTMAX_NO_KERNELS=1`` (or call :func:`set_enabled`) to force
the torch code, e.g. to compare the two.
"""

from __future__ import annotations

import os
import threading

import numpy as np

_enabled = os.environ.get("HSOFTMAX_NO_KERNELS", "") in ("", "0")
_cpu = None
_import_failed = False


def set_enabled(flag: bool) -> bool:
    """Turn the compiled kernels on or off globally; returns the previous setting."""
    global _enabled
    old, _enabled = _enabled, bool(flag)
    return old


def enabled() -> bool:
    return _enabled


def cpu():
    """The :mod:`hsoftmax.kernels.numba_cpu` module, or ``None`` if disabled or numba is missing."""
    global _cpu, _import_failed
    if not _enabled or _import_failed:
        return None
    if _cpu is None:
        try:
            from . import numba_cpu as mod
        except Exception:  # numba missing or broken: the torch path still works
            _import_failed = True
            return None
        _cpu = mod
    return _cpu


# Scratch "mark" arrays of -1, one per size, that kernels borrow and restore to -1: coalescing a
# batch's rows then costs O(rows touched), not O(table size). A second concurrent user (another
# thread) gets a fresh array instead of waiting.
_scratch: dict[int, np.ndarray] = {}
_scratch_lock = threading.Lock()


class borrow_marks:
    """Context manager yielding an int32 array of ``n`` entries, all -1, to be left all -1."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.owned = False

    def __enter__(self) -> np.ndarray:
        if _scratch_lock.acquire(blocking=False):
            self.owned = True
            a = _scratch.get(self.n)
            if a is None:
                a = _scratch[self.n] = np.full(self.n, -1, dtype=np.int32)
            return a
        return np.full(self.n, -1, dtype=np.int32)

    def __exit__(self, *exc) -> None:
        if self.owned:
            if exc[0] is not None:  # a kernel may have died mid-way: don't trust the array
                _scratch.pop(self.n, None)
            _scratch_lock.release()

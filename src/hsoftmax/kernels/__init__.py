"""Optional compiled fast paths (numba, CPU only).

* :mod:`.node`: the node math of every numba kernel (one fastmath policy, inline helpers);
* :mod:`.numba_cpu`: the torch layer's kernels (imported by :func:`cpu` on first use);
* :mod:`.autograd`: the torch autograd bridge to them, fused SGD included;
* this module: the on/off switch, thread count, and the scratch and buffer pools they share.

:mod:`hsoftmax.functional` sends a call to the bridge when every tensor involved is on the CPU
with one float dtype (float32 or float64) and numba imports; otherwise it runs its
device-generic torch code. Set the environment variable ``HSOFTMAX_NO_KERNELS=1`` (or call
:func:`set_enabled`) to force the torch code, e.g. to compare the two.
"""

from __future__ import annotations

import os
import sys
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


def threads() -> int:
    """How many threads the parallel kernels use (numba's current setting)."""
    import numba

    return int(numba.get_num_threads())


def bump_version(t) -> None:
    """Tell autograd that ``t`` was modified in place: the kernels write through numpy, which
    autograd does not see. A graph that saved the old ``t`` then raises on use instead of
    silently reading the new values, as it would after an in-place torch op."""
    import torch

    bump = getattr(torch.autograd.graph, "increment_version", None)
    if bump is not None:
        bump(t)


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


# Reusable output buffers for the node-table gradient values. A fresh multi-megabyte np.empty
# is a fresh mmap: every step would pay a page fault and a kernel-side zeroing per 4 KiB page
# (about as much as computing the gradient). A buffer is handed out again only when nothing
# else refers to it any more (the tensors built on it hold references to the array), so a
# gradient the caller still keeps is never overwritten.
_pool: dict[tuple, list[np.ndarray]] = {}
_pool_lock = threading.Lock()
_POOL_PER_KEY = 3
_POOL_MIN_BYTES = 1 << 20


def buffer(shape: tuple[int, ...], dtype) -> np.ndarray:
    """An uninitialized C-contiguous array of ``shape`` (like ``np.empty``), recycled when possible."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape))
    if n * dtype.itemsize < _POOL_MIN_BYTES:
        return np.empty(shape, dtype)
    key = (dtype.str, shape[1:] if len(shape) > 1 else ())
    with _pool_lock:
        bufs = _pool.setdefault(key, [])
        for base in bufs:
            # References: the list, the loop variable, getrefcount's argument.
            if base.size >= n and sys.getrefcount(base) <= 3:
                return base[:n].reshape(shape)
        base = np.empty(int(n * 1.25) + 1, dtype)
        if len(bufs) >= _POOL_PER_KEY:
            # Replace a free buffer if there is one, else just don't pool this one.
            for i in range(len(bufs)):
                if sys.getrefcount(bufs[i]) <= 2:  # the list and getrefcount's argument
                    bufs[i] = base
                    break
            else:
                return base[:n].reshape(shape)
        else:
            bufs.append(base)
        return base[:n].reshape(shape)

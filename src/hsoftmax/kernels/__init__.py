"""Optional compiled fast paths (numba, CPU only).

* :mod:`.node`: the node math of every numba kernel (one fastmath policy, inline helpers);
* :mod:`.numba_cpu`: the torch layer's kernels (imported by :func:`cpu` on first use);
* :mod:`.autograd`: the torch autograd bridge to them, fused SGD included;
* this module: the on/off switch, thread count, and the scratch and buffer pools they share.

:mod:`hsoftmax.functional` sends a call to the bridge when every tensor involved is on the CPU
with one float dtype (float32 or float64) and numba imports; otherwise it runs its
device-generic torch code. Set the environment variable ``HSOFTMAX_NO_KERNELS=1`` (or call
:func:`set_enabled`) to force the torch code, e.g. to compare the two.

Threads. The parallel kernels use ``torch.get_num_threads()`` threads (at most numba's
``NUMBA_NUM_THREADS``, the size of its pool), read on every call, so ``torch.set_num_threads``
(and ``OMP_NUM_THREADS``, which torch reads) governs them too; running them never changes
torch's setting. numba picks its threading layer as usual (``NUMBA_THREADING_LAYER``; by default
TBB when the ``tbb`` package is installed, else OpenMP, else its own ``workqueue``).

Processes. GNU OpenMP cannot be used again in a process forked after it ran (numba aborts such
a child), so when the OpenMP layer has started in a process, a child it forks (a ``fork``
DataLoader worker, a ``multiprocessing`` fork pool) runs the torch code instead: same results,
no kernels. The TBB and workqueue layers are fork-safe and keep the kernels in such children;
``spawn``/``forkserver`` children start afresh and have them anyway. (Don't force
``NUMBA_THREADING_LAYER=workqueue`` if several Python threads call the layer at once: that
layer aborts the process on concurrent use.)
"""

from __future__ import annotations

import os
import sys
import threading
import warnings
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:  # torch is imported where it is used: the word2vec kernels do not need it
    import torch

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
    """How many threads the parallel kernels use: torch's intra-op count, capped at numba's pool
    size. Sets numba's count for the calling thread to it (numba's setting is per thread)."""
    import torch

    n = torch.get_num_threads()
    if getattr(_thread_state, "torch_threads", None) != n:
        import numba

        _thread_state.kernel_threads = max(1, min(n, int(numba.config.NUMBA_NUM_THREADS)))
        numba.set_num_threads(_thread_state.kernel_threads)
        _thread_state.torch_threads = n
    return _thread_state.kernel_threads


# What threads() last read from torch and gave numba, per Python thread: reading torch's count
# costs 0.1 us, numba's get/set 3-4 us, so numba is told only when torch's count changed.
_thread_state = threading.local()


def _start_threading_layer() -> None:
    """Start numba's threading layer now, before any kernel runs, and undo what starting it
    does to torch: with the OpenMP layer it resets ``torch.get_num_threads()`` to the number of
    cores (a ``torch.set_num_threads(1)`` made earlier would silently be lost)."""
    import numba
    import torch

    n = torch.get_num_threads()
    numba.get_num_threads()  # launches numba's thread pool
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def _gnu_openmp_started() -> bool:
    """Whether numba's GNU OpenMP threading layer has started in this process (cheap: imports
    nothing that is not already loaded)."""
    parallel = sys.modules.get("numba.np.ufunc.parallel")
    if parallel is None or not getattr(parallel, "_is_initialized", False):
        return False
    try:
        if parallel.threading_layer() != "omp":
            return False
        omppool = sys.modules.get("numba.np.ufunc.omppool")
        return omppool is None or getattr(omppool, "openmp_vendor", "GNU") == "GNU"
    except Exception:  # a numba without these internals: assume the unsafe case
        return True


def _after_fork_in_child() -> None:
    # numba aborts a forked child that launches GNU OpenMP work its parent already ran, so
    # such a child uses the torch code (see the module docstring).
    global _enabled, _forked_off
    if _enabled and _gnu_openmp_started():
        _enabled = False
        _forked_off = True


#: True in a process forked after its parent started GNU OpenMP: the kernels are off there.
_forked_off = False
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def bump_version(t: torch.Tensor) -> None:
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
        try:
            _start_threading_layer()
        except Exception as e:  # e.g. NUMBA_THREADING_LAYER names a layer that is not installed
            _import_failed = True
            warnings.warn(f"numba's threading layer did not start ({e}); using the torch code", stacklevel=2)
            return None
        _cpu = mod
    threads()  # follow torch's thread count (this is called once per public operation)
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

    def __exit__(self, *exc: object) -> None:
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


def buffer(shape: tuple[int, ...], dtype: npt.DTypeLike) -> np.ndarray:
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

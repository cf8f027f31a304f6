"""What every benchmark here needs, written once: peak memory, machine info, timing, result files.

* :func:`peak_rss_bytes` reads this process's peak resident set size, and :func:`run_json_child`
  runs one measurement in a fresh interpreter that prints its result as JSON: together they give
  a per-configuration peak memory that no earlier configuration inflates.
* :func:`machine_info` records where and with what a result was measured (CPU model, cores,
  package versions, git commit, load, date), :func:`machine_summary` says it in one line.
* :func:`timeit` is a budgeted repeat timer (median of as many calls as fit in a time budget).
* :func:`write_json` / :func:`write_text` write result files atomically (a reader, or a run that
  is interrupted, never sees half a file), :func:`atomic_path` does it for any writer.

The benchmarks run as scripts (``python benchmarks/layers.py``), so their own directory is on
``sys.path`` and ``import common`` finds this file. Only the standard library is imported at
module level: a driver that measures other processes need not load torch itself.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import importlib.metadata
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

#: The packages whose versions decide a result; :func:`machine_info` records those installed.
VERSIONED = ("hsoftmax", "torch", "numpy", "numba", "llvmlite", "gensim", "fasttext")
#: Environment variables that change how the kernels and torch use the cores.
THREAD_ENV = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


# ---------------------------------------------------------------------------- peak memory
def peak_rss_bytes() -> int:
    """This process's peak resident set size in bytes: ``VmHWM`` from ``/proc/self/status``.

    Not ``ru_maxrss`` (the fallback off Linux): Linux carries that over from the parent across
    fork + exec, so a child of a big benchmark process would report the parent's size, while
    ``VmHWM`` starts afresh at exec. Run each measurement in a child (:func:`run_json_child`).
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # the line reads "VmHWM:  123456 kB"
    except OSError:
        pass
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if sys.platform == "darwin" else maxrss * 1024  # bytes on macOS, KiB elsewhere


def run_json_child(cmd: list[str], timeout: float) -> dict[str, Any]:
    """Run ``cmd`` (a fresh interpreter running one measurement) and return the JSON object it
    printed as the last line of its stdout; ``{"error": reason}`` if it timed out, failed or
    printed none (the reason is the last line of its stderr, cut to 200 characters)."""
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout:.0f}s"}
    if r.returncode == 0:
        for line in reversed(r.stdout.strip().splitlines()):
            with contextlib.suppress(ValueError):
                out = json.loads(line)
                if isinstance(out, dict):
                    return out
    last = (r.stderr.strip().splitlines() or [f"exit code {r.returncode}, no JSON result"])[-1]
    return {"error": last[:200]}


# ---------------------------------------------------------------------------- machine info
def cpu_model() -> str:
    """The CPU's marketing name (``model name`` in /proc/cpuinfo), else what platform knows."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or platform.machine()


def package_version(name: str) -> str | None:
    """A package's version: the imported module's ``__version__`` if it is loaded (torch's says
    ``+cpu``/``+cu121``), else the installed distribution's; ``None`` if not installed."""
    module = sys.modules.get(name)
    if module is not None and isinstance(getattr(module, "__version__", None), str):
        return module.__version__
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_commit(path: Path | None = None) -> str | None:
    """The commit the benchmarked checkout is at (``+dirty`` with local changes), if it is one."""
    cwd = path or Path(__file__).resolve().parent

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=True).stdout

    try:
        head = git("rev-parse", "--short=12", "HEAD").strip()
        dirty = git("status", "--porcelain", "--untracked-files=no").strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def machine_info(packages: Iterable[str] = VERSIONED, **extra: Any) -> dict[str, Any]:
    """Where and with what a result was measured, as a JSON-ready dict; ``extra`` adds fields
    (device, thread counts, ...). ``cores_usable`` is what this process may run on (affinity),
    ``loadavg`` what else the machine was doing when the run began."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on macOS
        usable = os.cpu_count()
    versions = {name: v for name in packages if (v := package_version(name)) is not None}
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "arch": platform.machine(),
        "cores": os.cpu_count(),
        "cores_usable": usable,
        "os": platform.platform(terse=True),
        "python": platform.python_version(),
        "versions": versions,
        "git_commit": git_commit(),
        "loadavg": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "env": {k: os.environ[k] for k in THREAD_ENV if k in os.environ},
        **extra,
    }


def machine_summary(info: dict[str, Any]) -> str:
    """One line for a report: ``Intel Xeon ..., 2 cores, torch 2.13.0, numba 0.68.1, ...``."""
    parts = [f"{info['cpu']} ({info['arch']})", f"{info['cores']} CPU cores"]
    parts += [f"{k} {v}" for k, v in info["versions"].items() if k != "hsoftmax"]
    if info.get("git_commit"):
        parts.append(f"hsoftmax {info['versions'].get('hsoftmax', '?')} at {info['git_commit']}")
    parts += [f"{k}={v}" for k, v in info["env"].items()]
    return ", ".join(parts)


# ---------------------------------------------------------------------------- timing
def timeit(
    fn: Callable[[int], object],
    budget_s: float,
    *,
    max_iters: int = 200,
    warmup: int = 1,
    sync: Callable[[], object] | None = None,
) -> tuple[float, int]:
    """Median seconds per call of ``fn(i)`` (``i`` counts calls, so a caller can cycle through
    prepared batches) and how many calls were timed: ``warmup`` untimed calls, then calls until
    ``budget_s`` is spent (at least one, at most ``max_iters``; a call slower than the budget
    is timed once). ``sync`` runs after every call (e.g. ``torch.cuda.synchronize``), inside the
    timed span. The median, not the mean: a burst of load from another process on a shared
    machine then does not decide the result."""
    for i in range(warmup):
        fn(i)
    if sync is not None:
        sync()
    times: list[float] = []
    t0 = time.perf_counter()
    while True:
        t = time.perf_counter()
        fn(len(times) + warmup)
        if sync is not None:
            sync()
        times.append(time.perf_counter() - t)
        if time.perf_counter() - t0 >= budget_s or len(times) >= max_iters:
            return statistics.median(times), len(times)


# ---------------------------------------------------------------------------- result files
@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[str]:
    """Yield a temporary name beside ``path`` for the caller to write; when the block ends
    normally, it replaces ``path`` in one step (``os.replace``), else it is removed. Parent
    directories are created. (Beside, not in /tmp: a rename is atomic only within one file
    system. The caller creates the file, so it gets the usual permissions.)"""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = str(final.with_name(f".{final.name}.{os.getpid()}.tmp"))
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically (NaN stays NaN, as json writes it)."""
    write_text(path, json.dumps(obj, indent=1) + "\n")

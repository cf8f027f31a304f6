"""Threads and processes: the kernels follow torch's thread count, leave it alone, and a forked
child (a DataLoader worker) can call the layer after its parent ran the kernels."""

from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys

import pytest
import torch

import hsoftmax.kernels as K
from conftest import make_batch, make_layer, named_trees

NAMED = named_trees()
needs_kernels = pytest.mark.skipif(K.cpu() is None, reason="numba kernels unavailable or disabled")


def _exercise(hs, x, y) -> None:
    """Every kind of kernel call: forward and backward, log_prob, topk, sample."""
    hs(x.clone().requires_grad_(), y).loss.backward()
    with torch.no_grad():
        hs.log_prob(x)
        hs.topk(x, 3)
        hs.sample(x, 2)


@needs_kernels
@pytest.mark.parametrize("name", ["huffman", "two_level", "taxonomy"])
def test_kernels_follow_torch_threads_and_leave_them_unchanged(name):
    import numba

    tree = NAMED[name]
    hs = make_layer(tree, sparse=True)
    x, y = make_batch(tree, 64)
    old = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            _exercise(hs, x, y)
            assert torch.get_num_threads() == n
            want = min(n, numba.config.NUMBA_NUM_THREADS)
            assert K.threads() == want and numba.get_num_threads() == want
    finally:
        torch.set_num_threads(old)


_FRESH = """
import os, torch
if os.environ.get("HOW") == "set_num_threads":
    torch.set_num_threads(1)
from hsoftmax import HierarchicalSoftmax, Tree
hs = HierarchicalSoftmax(8, Tree.huffman(list(range(1, 40))))
x, y = torch.randn(32, 8, requires_grad=True), torch.randint(0, 39, (32,))
seen = []
hs(x, y).loss.backward(); seen.append(torch.get_num_threads())
with torch.no_grad():
    hs.topk(x, 3); seen.append(torch.get_num_threads())
    hs.log_prob(x); seen.append(torch.get_num_threads())
print(*seen)
"""


@needs_kernels
@pytest.mark.parametrize("how", ["set_num_threads", "OMP_NUM_THREADS"])
def test_first_call_in_a_fresh_process_keeps_torch_threads(how):
    # Starting numba's OpenMP layer used to reset torch's count to every core on the first call.
    env = dict(os.environ, HOW=how)
    env.pop("OMP_NUM_THREADS", None)
    if how == "OMP_NUM_THREADS":
        env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-c", _FRESH]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "1", "1"]


# -------------------------------------------------------------------------- fork
_TREE = NAMED["two_level"]


def _reference():
    hs = make_layer(_TREE, d=6)
    x, y = make_batch(_TREE, 16)
    return hs, x, y


def _child_result(hs, x, y):
    with torch.no_grad():
        return hs(x, y).output, hs.topk(x, 3).indices, K.enabled()


class _LayerDataset(torch.utils.data.Dataset):
    """Each item is computed by the layer inside the worker process."""

    def __init__(self, hs, x, y) -> None:
        self.hs, self.x, self.y = hs, x, y

    def __len__(self) -> int:
        return 2

    def __getitem__(self, i):
        return _child_result(self.hs, self.x, self.y)


def _expected_kernels_in_child() -> bool:
    # The documented rule: GNU OpenMP cannot run again in a forked child, so there the torch
    # code takes over; fork-safe layers (TBB, workqueue) keep the kernels.
    return not K._gnu_openmp_started()


@needs_kernels
def test_forked_dataloader_worker_calls_the_layer_after_the_parent_ran_the_kernels():
    hs, x, y = _reference()
    out, idx, _ = _child_result(hs, x, y)  # the parent runs the kernels first
    loader = torch.utils.data.DataLoader(
        _LayerDataset(hs, x, y), batch_size=None, num_workers=1, multiprocessing_context="fork", timeout=120
    )
    results = list(loader)  # a worker that aborts or hangs raises here
    assert len(results) == 2
    for c_out, c_idx, c_kernels in results:
        torch.testing.assert_close(c_out, out)
        assert torch.equal(c_idx, idx)
        assert c_kernels == _expected_kernels_in_child()


def _fork_child(queue, hs, x, y) -> None:
    # What a DataLoader worker does first: torch's own OpenMP is not fork-safe either (a parallel
    # torch op in a forked child hangs once the parent ran one), so a child uses one thread.
    torch.set_num_threads(1)
    out, idx, kernels = _child_result(hs, x, y)
    queue.put((out.numpy(), idx.numpy(), kernels))


@needs_kernels
def test_multiprocessing_fork_child_gets_a_correct_result():
    hs, x, y = _reference()
    out, idx, _ = _child_result(hs, x, y)
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_fork_child, args=(queue, hs, x, y), daemon=True)
    proc.start()
    try:
        c_out, c_idx, c_kernels = queue.get(timeout=120)
    finally:
        proc.join(timeout=60)
        if proc.is_alive():
            proc.kill()
    assert proc.exitcode == 0
    torch.testing.assert_close(torch.from_numpy(c_out), out)
    assert torch.equal(torch.from_numpy(c_idx), idx)
    assert c_kernels == _expected_kernels_in_child()

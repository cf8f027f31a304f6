"""Under torch.distributed (DDP, gloo on loopback), gradients equal single-process training."""

from __future__ import annotations

import datetime
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hsoftmax import HierarchicalSoftmax, Tree

WORLD = 2


def _model(sparse: bool) -> HierarchicalSoftmax:
    torch.manual_seed(0)
    return HierarchicalSoftmax(8, Tree.huffman(list(range(1, 101))), sparse=sparse)


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(16, 8, generator=g), torch.randint(0, 100, (16,), generator=g)


def _worker(rank: int, port: int, queue, sparse: bool) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    # A short timeout: a rank that fails must not leave the other waiting in a collective.
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=60))
    torch.set_num_threads(1)
    model = torch.nn.parallel.DistributedDataParallel(_model(sparse))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    x, y = _batch()
    model(x[rank::WORLD], y[rank::WORLD]).loss.backward()
    opt.step()
    if rank == 0:
        # numpy arrays travel by value; tensors would travel as shared memory that dies with
        # this process before the parent reads them.
        queue.put({k: v.detach().numpy().copy() for k, v in model.module.state_dict().items() if k != "_extra_state"})
    # Orderly teardown: both ranks finish before either drops its sockets, and DDP's reducer
    # (which holds the process group) goes before the group does.
    dist.barrier()
    del model, opt
    dist.destroy_process_group()
    queue.close()
    queue.join_thread()  # the result is in the pipe before this process ends
    # Skip interpreter finalization: its static destructors race gloo's and OpenMP's idle
    # threads and once aborted ("terminate called without an active exception", CI
    # 2026-11-23) after the work above had succeeded. Any failure above still raises and
    # gives a non-zero exit code, which the test checks.
    os._exit(0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")
@pytest.mark.parametrize("sparse", [False, True])
def test_ddp_step_equals_single_process_step(sparse):
    # Sparse gradients reach DDP's sparse all-reduce because the table is an nn.Embedding.
    ref = _model(sparse)
    x, y = _batch()
    # DDP averages the ranks' mean losses; with equal shards that is the full-batch mean.
    ref(x, y).loss.backward()
    torch.optim.SGD(ref.parameters(), lr=0.5).step()

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, port, queue, sparse), daemon=True) for r in range(WORLD)]
    for p in procs:
        p.start()
    got = {k: torch.from_numpy(v) for k, v in queue.get(timeout=120).items()}
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert ref.weight.grad.is_sparse == sparse
    assert not torch.equal(got["table.weight"], _model(sparse).weight)  # the step did something
    torch.testing.assert_close(got["table.weight"], ref.weight.detach())
    torch.testing.assert_close(got["table.bias"], ref.bias.detach())

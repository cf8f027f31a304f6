"""The output layer at scale: training speed and peak memory at V = 1M and 10M classes,
unsharded and sharded over 2 ranks (``hsoftmax.distributed``), with the bytes exchanged.

Run ``python benchmarks/scale.py`` for the full table (V = 1M and 10M, d = 64, batch 512),
``--quick`` for a CI smoke run (V = 20k). Every configuration runs in fresh processes, so its
peak memory (``VmHWM``) is its own:

* **unsharded**: one process; ``HierarchicalSoftmax(d, Tree.huffman(zipf), sparse=True)`` and
  :class:`hsoftmax.optim.SparseSGD` (word2vec's tree over Zipf counts ``1 / rank``).
* **sharded**: 2 processes on gloo (loopback), each holding the replicated top and its subtrees
  (``ShardedHierarchicalSoftmax``, balanced by rows), each with ``SparseSGD``; both see the same
  batches. **On this machine both ranks share the same 2 cores** (one torch thread each), so its
  examples/s says what the communication and the split cost, not what 2 devices would give.

Each row gives examples/s of a training step (forward, backward, sparse optimizer step; the
median over steps), the node table's size (weights and biases, of the whole layer or of the
rank), the process's peak RSS (construction included), its RSS when training starts (table,
tree and the layer's tree tensors), the peak RSS growth during the training steps (the per-step
working memory: ``O(batch * depth * d)``, never ``O(batch * V)``; measured after resetting the
peak with ``/proc/self/clear_refs``), and, sharded, the bytes each rank
sent into collectives per step, counted by the layer (``comm_bytes``), next to Megatron's
vocab-parallel cross-entropy formula for the same batch (``3 B`` floats forward plus the
``B d`` input-gradient all-reduce backward).

Results go to ``benchmarks/results/scale.json`` (git-ignored) and a markdown table beside it.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from common import machine_info, machine_summary, peak_rss_bytes, run_json_child, write_json, write_text

HERE = Path(__file__).resolve().parent
FULL_SIZES = (1_000_000, 10_000_000)
QUICK_SIZES = (20_000,)
MODES = ("unsharded", "sharded")
COLUMNS = ("V", "mode", "examples/s", "table GB", "peak RSS GB", "RSS training GB", "tree GB", "step growth GB")
COLUMNS += ("bytes/step sent (per rank)", "Megatron formula")


def rss_bytes() -> int:
    """Current resident set size (``VmRSS``)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def reset_peak() -> bool:
    """Restart this process's peak RSS (``VmHWM``) from its current RSS (Linux: ``clear_refs``),
    so that the peak measured afterwards is the training steps' own, not the construction's."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _batches(V: int, d: int, batch: int, n: int, seed: int) -> list[tuple[Any, Any]]:
    """``n`` batches: Gaussian inputs, Zipf-distributed targets (inverse CDF, no O(V) per draw)."""
    import numpy as np
    import torch

    rng = np.random.default_rng(seed)
    cdf = np.cumsum(1.0 / np.arange(1, V + 1))
    cdf /= cdf[-1]
    out = []
    for _ in range(n):
        y = np.minimum(np.searchsorted(cdf, rng.random(batch)), V - 1)
        x = rng.standard_normal((batch, d), dtype=np.float32)
        # The input needs a gradient, as a model body's output does (so the backward all-reduce
        # of the input gradient runs and is counted).
        out.append((torch.from_numpy(x).requires_grad_(), torch.from_numpy(y)))
    return out


def _train(layer: Any, batches: list, steps: int, budget_s: float) -> tuple[float, int]:
    """Median seconds per training step and the number of steps timed."""
    from hsoftmax.optim import SparseSGD

    opt = SparseSGD(layer.parameters(), lr=0.1)
    times: list[float] = []
    t_end = time.perf_counter() + budget_s
    for i in range(steps):
        x, y = batches[i % len(batches)]
        t0 = time.perf_counter()
        loss = layer(x, y).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
        if i >= 2 and time.perf_counter() > t_end:
            break
    timed = sorted(times[1:]) if len(times) > 1 else times  # the first step warms up
    return timed[len(timed) // 2], len(timed)


def _table_bytes(params: Any) -> int:
    return sum(p.numel() * p.element_size() for p in params)


def child_unsharded(V: int, d: int, batch: int, steps: int, budget_s: float) -> dict:
    import numpy as np
    import torch

    from hsoftmax import HierarchicalSoftmax, Tree

    torch.set_num_threads(1)
    base = rss_bytes()
    t0 = time.perf_counter()
    tree = Tree.huffman(1.0 / np.arange(1, V + 1))
    build_s = time.perf_counter() - t0
    after_tree = rss_bytes()
    layer = HierarchicalSoftmax(d, tree, sparse=True)
    after_layer = rss_bytes()
    batches = _batches(V, d, batch, 4, seed=1)
    build_peak = peak_rss_bytes()
    before_steps = rss_bytes()
    reset_peak()
    step_s, timed = _train(layer, batches, steps, budget_s)
    return {
        "V": V,
        "mode": "unsharded",
        "ranks": 1,
        "d": d,
        "batch": batch,
        "depth": tree.depth,
        "tree_build_s": round(build_s, 2),
        "examples_per_s": round(batch / step_s, 1),
        "steps_timed": timed,
        "table_gb": round(_table_bytes(layer.parameters()) / 2**30, 3),
        "table_bytes": _table_bytes(layer.parameters()),
        "tree_gb": round((after_tree - base) / 2**30, 3),
        "layer_gb": round((after_layer - after_tree) / 2**30, 3),
        "step_growth_gb": round(max(0, peak_rss_bytes() - before_steps) / 2**30, 3),
        "peak_rss_gb": round(max(build_peak, peak_rss_bytes()) / 2**30, 3),
        "rss_before_steps_gb": round(before_steps / 2**30, 3),
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, queue: Any, args: tuple) -> None:
    """One rank of the sharded measurement; puts its row on the queue."""
    import datetime

    import numpy as np
    import torch
    import torch.distributed as dist

    from hsoftmax import Tree
    from hsoftmax.distributed import ShardedHierarchicalSoftmax

    V, d, batch, steps, budget_s = args
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    row: dict[str, Any] = {"rank": rank}
    try:
        dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=600))
        torch.set_num_threads(1)
        base = rss_bytes()
        tree = Tree.huffman(1.0 / np.arange(1, V + 1))
        after_tree = rss_bytes()
        layer = ShardedHierarchicalSoftmax(d, tree, sparse=True)
        after_layer = rss_bytes()
        batches = _batches(V, d, batch, 4, seed=1)  # the same batches on both ranks
        build_peak = peak_rss_bytes()
        before_steps = rss_bytes()
        reset_peak()
        sent0 = sum(layer.comm_bytes.values())
        step_s, timed = _train(layer, batches, steps, budget_s)
        sent = (sum(layer.comm_bytes.values()) - sent0) / (timed + 1)
        row.update(
            examples_per_s=round(batch / step_s, 1),
            steps_timed=timed,
            table_gb=round(_table_bytes(layer.parameters()) / 2**30, 3),
            table_bytes=_table_bytes(layer.parameters()),
            tree_gb=round((after_tree - base) / 2**30, 3),
            layer_gb=round((after_layer - after_tree) / 2**30, 3),
            step_growth_gb=round(max(0, peak_rss_bytes() - before_steps) / 2**30, 3),
            peak_rss_gb=round(max(build_peak, peak_rss_bytes()) / 2**30, 3),
            rss_before_steps_gb=round(before_steps / 2**30, 3),
            bytes_per_step=int(sent),
            subtrees=len(layer.subtrees),
            replicated_rows=int(layer.plan.top_rows.size),
            depth=tree.depth,
        )
        dist.barrier()
        dist.destroy_process_group()
    except Exception as e:  # the row says why; the driver marks the configuration failed
        row["error"] = f"{type(e).__name__}: {e}"[:300]
    queue.put(row)
    queue.close()
    queue.join_thread()
    os._exit(0)


def child_sharded(V: int, d: int, batch: int, steps: int, budget_s: float, world: int = 2) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    args = (V, d, batch, steps, budget_s)
    procs = [ctx.Process(target=_rank, args=(r, world, port, queue, args), daemon=True) for r in range(world)]
    for p in procs:
        p.start()
    rows = sorted((queue.get(timeout=3600) for _ in range(world)), key=lambda r: r["rank"])
    for p in procs:
        p.join(timeout=60)
    errors = [r["error"] for r in rows if "error" in r]
    if errors:
        raise RuntimeError(errors[0])
    f = 4  # float32
    return {
        "V": V,
        "mode": "sharded",
        "ranks": world,
        "d": d,
        "batch": batch,
        "depth": rows[0]["depth"],
        # Every rank takes part in every step, so the step takes as long as the slower rank.
        "examples_per_s": min(r["examples_per_s"] for r in rows),
        "steps_timed": min(r["steps_timed"] for r in rows),
        "table_gb": [r["table_gb"] for r in rows],
        "table_bytes": [r["table_bytes"] for r in rows],
        "tree_gb": [r["tree_gb"] for r in rows],
        "layer_gb": [r["layer_gb"] for r in rows],
        "step_growth_gb": [r["step_growth_gb"] for r in rows],
        "peak_rss_gb": [r["peak_rss_gb"] for r in rows],
        "rss_before_steps_gb": [r["rss_before_steps_gb"] for r in rows],
        "bytes_per_step": [r["bytes_per_step"] for r in rows],
        "megatron_bytes_per_step": 3 * batch * f + batch * d * f,
        "formula_bytes_per_step": batch * f + batch * d * f,
        "subtrees": [r["subtrees"] for r in rows],
        "replicated_rows": rows[0]["replicated_rows"],
    }


def run(
    sizes: tuple[int, ...], modes: tuple[str, ...], d: int, batch: int, steps: int, budget_s: float, timeout: float
) -> dict:
    rows = []
    for V in sizes:
        for mode in modes:
            cmd = [sys.executable, __file__, "--child", mode, str(V), "--dim", str(d), "--batch", str(batch)]
            cmd += ["--steps", str(steps), "--budget", str(budget_s)]
            row = {"V": V, "mode": mode, **run_json_child(cmd, timeout)}
            rows.append(row)
            print(f"{mode:>10} V={V:>10,}: {json.dumps(row)}", flush=True)
    return {"machine": machine_info(packages=("hsoftmax", "torch", "numpy", "numba")), "rows": rows}


def _fmt(v: Any) -> str:
    if isinstance(v, list):
        return " / ".join(_fmt(x) for x in v)
    if isinstance(v, float):
        return f"{v:.2f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def markdown(results: dict) -> str:
    m = results["machine"]
    head = (
        f"Measured {m['date']} on {machine_summary(m)}, load average {m['loadavg']} (a shared machine). "
        "Sharded: 2 gloo ranks on the same 2 cores (one torch thread each); per-rank values as rank 0 / rank 1."
    )
    out = [
        head,
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|---:|---|" + "---:|" * (len(COLUMNS) - 2),
    ]
    for r in results["rows"]:
        if "error" in r:
            out.append(f"| {r['V']:,} | {r['mode']} | {r['error']} |" + " |" * (len(COLUMNS) - 3))
            continue
        sent = _fmt(r.get("bytes_per_step", "-"))
        mega = _fmt(r.get("megatron_bytes_per_step", "-"))
        keys = ("examples_per_s", "table_gb", "peak_rss_gb", "rss_before_steps_gb", "tree_gb", "step_growth_gb")
        cells = [f"{r['V']:,}", r["mode"], *(_fmt(r[k]) for k in keys), sent, mega]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help=f"V = {QUICK_SIZES} only (a CI smoke run)")
    ap.add_argument("--V", type=int, nargs="+", help=f"class counts (default {FULL_SIZES})")
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--steps", type=int, default=30, help="training steps per configuration (at most)")
    ap.add_argument("--budget", type=float, default=30.0, help="seconds of steps per configuration (at most)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per configuration")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "scale.json")
    ap.add_argument("--child", nargs=2, metavar=("MODE", "V"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        mode, V = args.child[0], int(args.child[1])
        fn = child_unsharded if mode == "unsharded" else child_sharded
        print(json.dumps(fn(V, args.dim, args.batch, args.steps, args.budget)))
        return
    sizes = tuple(args.V) if args.V else QUICK_SIZES if args.quick else FULL_SIZES
    steps, budget = (4, 2.0) if args.quick else (args.steps, args.budget)
    results = run(sizes, tuple(args.modes), args.dim, args.batch, steps, budget, args.timeout)
    write_json(args.out, results)
    text = markdown(results)
    write_text(args.out.with_suffix(".md"), text)
    print(text)
    if any("error" in r for r in results["rows"]):
        sys.exit(1)


if __name__ == "__main__":
    main()

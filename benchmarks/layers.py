"""Output layers head to head: full softmax, AdaptiveLogSoftmaxWithLoss, and hsoftmax's trees.

Run ``python benchmarks/layers.py`` (``make bench``) for the full grid, ``--quick`` for a small
subset that finishes in a couple of minutes (V in {10k, 100k}, d=256, batch 512; any of ``--V``,
``--d``, ``--batch``, ``--budget`` given as well overrides its part, e.g. the test suite's smoke
run ``--quick --V 2000 --d 16 --batch 64 --budget 0.05 --no-memory``). Everything timed in one table is measured in this
one process, one method after another, on the same Zipf-distributed targets:

* **train**: examples/s of one training step = forward + backward + optimizer step, input
  ``(B, d)`` with ``requires_grad`` (so the input gradient is part of the work, as in a real
  model). Full softmax is ``nn.Linear(d, V)`` + ``F.cross_entropy`` with dense SGD; adaptive is
  ``nn.AdaptiveLogSoftmaxWithLoss`` (``div_value=4``, cutoffs ``2k, 20k, 200k`` below ``V``, in
  the spirit of Grave et al. 2017 for Zipf-distributed words) with dense SGD; hsoftmax layers
  use ``sparse=True`` and :func:`hsoftmax.optim.paired` (row-sparse SGD on the node table);
  the ``*_fused`` variants instead set ``fused_sgd_lr`` (the same SGD update, applied to the node
  table inside the backward kernel, so no gradient is materialized). Inference is the same layer,
  so the fused variants are timed for training only.
* **peak memory**: the peak resident set size (``VmHWM``) of a *fresh child process* that
  imports torch, builds the one layer and runs two training steps: the whole process, torch
  and the interpreter included (about 0.3-0.5 GB of it is the imports, shown as ``base``).
* **inference** (batch 64): target log-prob, full ``log_prob``, ``predict`` (argmax) and top-5.
  The peers' top-5 is ``log_prob(x).topk(5)`` (they have no cheaper exact way); hsoftmax's is
  its best-first tree search.

Configurations that cannot fit are printed as ``skipped (N GB)`` (e.g. full softmax at V=1M,
batch 4096 needs 16 GB for the logits alone); slow peers are time-boxed to fewer iterations.
Results go to ``benchmarks/results/layers.json`` (git-ignored) and a plot of train examples/s vs
V on log axes to ``benchmarks/results/layers.png``; ``--plot benchmarks/layers.png`` writes the
README's copy.
"""

from __future__ import annotations

import os

# Before torch (and its OpenMP runtime) loads: make idle OpenMP workers sleep instead of spin.
# numba's kernels and torch's ops run on two different OpenMP pools; on a machine where another
# process holds a core, spinning workers of one pool starve the other and steps take 10-40x
# longer (measured on the 2-core benchmark machine). Passive waiting costs little when idle.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common import machine_info, machine_summary, peak_rss_bytes, run_json_child, timeit, write_json, write_text

HERE = Path(__file__).resolve().parent
METHODS = ("full", "adaptive", "huffman", "balanced", "two_level", "huffman_fused", "two_level_fused")
HS_METHODS = ("huffman", "balanced", "two_level", "huffman_fused", "two_level_fused")
LR = 0.05
MEM_LIMIT_GB = 12.0  # skip a configuration whose estimated working set exceeds this (24 GB machine)
# The grid: the full one, and --quick's subset (the one quoted in before/after notes).
FULL = dict(V=[10_000, 100_000, 1_000_000], d=[256, 512], batch=[512, 4096], budget=2.0)
QUICK = dict(V=[10_000, 100_000], d=[256], batch=[512], budget=1.5)


# ---------------------------------------------------------------------------- data and models
def zipf_counts(V: int, s: float = 1.0) -> np.ndarray:
    """Word counts following Zipf's law (rank r has count ~ 1/r^s), the usual text shape."""
    return 1e9 / np.arange(1, V + 1, dtype=np.float64) ** s


def zipf_targets(V: int, n: int, seed: int) -> torch.Tensor:
    p = zipf_counts(V)
    p /= p.sum()
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.choice(V, size=n, p=p)).long()


def cutoffs(V: int) -> list[int]:
    """Adaptive softmax's cluster boundaries; below V=4000 (smoke runs) one head cluster of V/4."""
    return [c for c in (2_000, 20_000, 200_000) if c < V // 2] or [max(1, V // 4)]


_TREES: dict[tuple[str, int], object] = {}


def tree_for(method: str, V: int):
    from hsoftmax import Tree

    method = method.removesuffix("_fused")
    key = (method, V)
    if key not in _TREES:
        counts = zipf_counts(V)
        if method == "huffman":
            _TREES[key] = Tree.huffman(counts)
        elif method == "balanced":
            _TREES[key] = Tree.balanced(V)
        else:
            _TREES[key] = Tree.two_level(V, counts=counts)
    return _TREES[key]


def est_gb(method: str, V: int, d: int, B: int) -> float:
    """Rough working set of a training step, to skip what cannot fit."""
    if method == "full":
        return (2 * V * d + 3 * B * V) * 4 / 1e9  # weight + grad, logits + softmax + grad
    if method == "adaptive":
        return (2 * V * d / 4 + 3 * B * (cutoffs(V) or [V])[0]) * 4 / 1e9
    return 1.5 * V * d * 4 / 1e9


class Method:
    """A layer with a uniform interface: ``train_step(x, y)`` and the four inference calls."""

    def __init__(self, name: str, V: int, d: int, device: str, seed: int = 0) -> None:
        import hsoftmax
        from hsoftmax.optim import paired

        torch.manual_seed(seed)
        self.name = name
        if name == "full":
            self.m = nn.Linear(d, V, device=device)
            self.opt = torch.optim.SGD(self.m.parameters(), lr=LR)
        elif name == "adaptive":
            self.m = nn.AdaptiveLogSoftmaxWithLoss(d, V, cutoffs=cutoffs(V), div_value=4.0).to(device)
            self.opt = torch.optim.SGD(self.m.parameters(), lr=LR)
        else:
            fused = LR if name.endswith("_fused") else None
            self.m = hsoftmax.HierarchicalSoftmax(d, tree_for(name, V), sparse=True, fused_sgd_lr=fused).to(device)
            self.opt = paired(self.m, torch.optim.SGD, lr=LR)  # a no-op for a fused node table

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        x.grad = None
        loss = F.cross_entropy(self.m(x), y) if self.name == "full" else self.m(x, y).loss
        loss.backward()
        self.opt.step()

    @torch.no_grad()
    def target_log_prob(self, x, y):
        if self.name == "full":
            return F.log_softmax(self.m(x), -1).gather(1, y[:, None])
        return self.m(x, y).output

    @torch.no_grad()
    def log_prob(self, x, y=None):
        if self.name == "full":
            return F.log_softmax(self.m(x), -1)
        return self.m.log_prob(x)

    @torch.no_grad()
    def predict(self, x, y=None):
        if self.name == "full":
            return self.m(x).argmax(-1)
        return self.m.predict(x)

    @torch.no_grad()
    def top5(self, x, y=None):
        if self.name in ("full", "adaptive"):
            return self.log_prob(x).topk(5)
        return self.m.topk(x, 5)


# ---------------------------------------------------------------------------- timing and memory
def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_calls(fn, device: str, budget_s: float, warmup: int = 1) -> tuple[float, int]:
    """Median seconds per call and calls timed (:func:`common.timeit`); on a GPU each call is
    synchronized inside the timed span, so the time is the kernels', not their launch."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else None
    return timeit(fn, budget_s, warmup=warmup, sync=sync)


def child_memory(method: str, V: int, d: int, B: int, device: str) -> dict:
    """Run in a fresh process: build one layer, two training steps, report peak RSS."""
    base = peak_rss_bytes() / 1e9
    m = Method(method, V, d, device)
    ys = zipf_targets(V, 2 * B, seed=1).to(device).view(2, B)
    x = torch.randn(B, d, device=device, requires_grad=True)
    for i in range(2):
        m.train_step(x, ys[i])
    _sync(device)
    out = {"peak_rss_gb": peak_rss_bytes() / 1e9, "base_rss_gb": base}
    if device.startswith("cuda"):
        out["peak_cuda_gb"] = torch.cuda.max_memory_allocated() / 1e9
    return out


def measure_memory(method: str, V: int, d: int, B: int, device: str, timeout: float = 900) -> dict:
    cmd = [sys.executable, __file__, "--child-memory", method, str(V), str(d), str(B), "--device", device]
    return run_json_child(cmd, timeout)


# ---------------------------------------------------------------------------- the grid
def run(args) -> dict:
    device = args.device
    Vs, ds, Bs = args.V, args.d, args.batch
    machine = machine_info(device=device, torch_threads=torch.get_num_threads())
    results: dict = {
        "date": machine["date"],
        "machine": machine,
        "train": [],
        "inference": [],
        "notes": {
            "train": "examples/s of forward+backward+optimizer step; peak_rss_gb from a fresh child process",
            "inference": f"batch {args.infer_batch}; seconds per call",
        },
    }
    for V in Vs:
        ys_all = zipf_targets(V, 8 * max(*Bs, args.infer_batch), seed=0).to(device)
        for d in ds:
            for B in Bs:
                ys = ys_all[: 8 * B].view(8, B)
                x = torch.randn(B, d, device=device, requires_grad=True)
                for name in args.methods:
                    row = {"V": V, "d": d, "batch": B, "method": name}
                    gb = est_gb(name, V, d, B)
                    if gb > MEM_LIMIT_GB:
                        row["skipped"] = f"skipped ({gb:.0f} GB)"
                        print(f"  V={V:>8} d={d} B={B:>5} {name:<10} {row['skipped']}", flush=True)
                        results["train"].append(row)
                        continue
                    t_build = time.perf_counter()
                    m = Method(name, V, d, device)
                    row["build_s"] = round(time.perf_counter() - t_build, 3)
                    sec, n = time_calls(lambda i, m=m, x=x, ys=ys: m.train_step(x, ys[i % 8]), device, args.budget)
                    row.update(step_s=sec, iters=n, examples_per_s=B / sec)
                    del m
                    gc.collect()
                    if not args.no_memory:
                        row.update(measure_memory(name, V, d, B, device))
                    print(
                        f"  V={V:>8} d={d} B={B:>5} {name:<10} {B / sec:>12,.0f} ex/s"
                        f"  ({n} it)  peak {row.get('peak_rss_gb', float('nan')):.2f} GB",
                        flush=True,
                    )
                    results["train"].append(row)
            # Inference at one batch size per (V, d).
            Bi = args.infer_batch
            yi = ys_all[:Bi]
            xi = torch.randn(Bi, d, device=device)
            for name in args.methods:
                if name.endswith("_fused"):
                    continue  # the same layer as the unfused one at inference
                row = {"V": V, "d": d, "batch": Bi, "method": name}
                gb = (V * d + 3 * Bi * V) * 4 / 1e9 if name == "full" else 0.0
                if gb > MEM_LIMIT_GB:
                    row["skipped"] = f"skipped ({gb:.0f} GB)"
                    results["inference"].append(row)
                    continue
                m = Method(name, V, d, device)
                for op in ("target_log_prob", "log_prob", "predict", "top5"):
                    fn = getattr(m, op)
                    sec, n = time_calls(lambda i, fn=fn, xi=xi, yi=yi: fn(xi, yi), device, args.budget / 2, warmup=1)
                    row[op + "_s"] = sec
                del m
                gc.collect()
                print(
                    f"  V={V:>8} d={d} B={Bi:>5} {name:<10} infer: target {row['target_log_prob_s'] * 1e3:9.2f} ms"
                    f"  log_prob {row['log_prob_s'] * 1e3:9.2f} ms  predict {row['predict_s'] * 1e3:9.2f} ms"
                    f"  top5 {row['top5_s'] * 1e3:9.2f} ms",
                    flush=True,
                )
                results["inference"].append(row)
            _TREES.clear()
    add_ratios(results)
    return results


def add_ratios(results: dict) -> None:
    """hsoftmax / peer ratios (same configuration, same run): speed-ups for train examples/s,
    and time ratios peer/hsoftmax for inference."""
    key = "examples_per_s"
    rows = results["train"]
    idx = {(r["V"], r["d"], r["batch"], r["method"]): r for r in rows}
    for r in rows:
        if r["method"] not in HS_METHODS or key not in r:
            continue
        for peer in ("full", "adaptive"):
            p = idx.get((r["V"], r["d"], r["batch"], peer))
            if p and key in p:
                r[f"x_{peer}"] = r[key] / p[key]
    rows = results["inference"]
    idx = {(r["V"], r["d"], r["method"]): r for r in rows}
    for r in rows:
        if r["method"] not in HS_METHODS or "top5_s" not in r:
            continue
        for peer in ("full", "adaptive"):
            p = idx.get((r["V"], r["d"], peer))
            if p and "top5_s" in p:
                r[f"top5_x_{peer}"] = p["top5_s"] / r["top5_s"]
                r[f"top5_x_{peer}_predict"] = p["predict_s"] / r["top5_s"]
                r[f"target_x_{peer}"] = p["target_log_prob_s"] / r["target_log_prob_s"]


# ---------------------------------------------------------------------------- report
def _fmt_rate(x: float) -> str:
    return f"{x / 1e3:,.1f}k" if x >= 1e3 else f"{x:,.0f}"


def table_head(columns: list[str]) -> list[str]:
    """A markdown table's header and rule lines."""
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]


def markdown(results: dict) -> str:
    m = results["machine"]
    where = f"{machine_summary(m)}, {m['torch_threads']} torch threads, device {m['device']}"
    out = [f"Measured {results['date']} on {where}.", ""]
    out.append("**Training step** (forward + backward + optimizer step; examples/s; peak RSS of the whole process)")
    out.append("")
    out += table_head(
        [
            "V",
            "d",
            "batch",
            "full softmax",
            "adaptive",
            "HS Huffman",
            "HS balanced",
            "HS two-level",
            "HS Huffman, fused SGD",
            "HS two-level, fused SGD",
            "Huffman ÷ full",
            "Huffman ÷ adaptive",
            "two-level ÷ adaptive",
            "two-level fused ÷ adaptive",
        ]
    )
    groups: dict = {}
    for r in results["train"]:
        groups.setdefault((r["V"], r["d"], r["batch"]), {})[r["method"]] = r

    def cell(r):
        if r is None:
            return "—"
        if "skipped" in r:
            return r["skipped"]
        mem = f" / {r['peak_rss_gb']:.2f} GB" if "peak_rss_gb" in r else ""
        return _fmt_rate(r["examples_per_s"]) + mem

    def ratio(r, peer):
        if not r or f"x_{peer}" not in r:
            return "—"
        x = r[f"x_{peer}"]
        return f"{x:,.0f}×" if x >= 10 else f"{x:.1f}×"

    for (V, d, B), g in sorted(groups.items()):
        cells = [cell(g.get(m)) for m in METHODS]
        out.append(
            f"| {V:,} | {d} | {B} | " + " | ".join(cells) + f" | {ratio(g.get('huffman'), 'full')} | "
            f"{ratio(g.get('huffman'), 'adaptive')} | {ratio(g.get('two_level'), 'adaptive')} | "
            f"{ratio(g.get('two_level_fused'), 'adaptive')} |"
        )
    out.append("")
    if results["inference"]:
        batch = results["inference"][0]["batch"]
        out.append(
            f"**Inference** (batch {batch}; milliseconds per call: target log-prob / full log_prob / predict / top-5)"
        )
    out.append("")
    out += table_head(
        [
            "V",
            "d",
            "method",
            "target log-prob",
            "log_prob",
            "predict",
            "top-5",
            "top-5 speed-up vs full top-5",
            "vs adaptive top-5",
            "vs adaptive predict",
        ]
    )
    for r in sorted(results["inference"], key=lambda r: (r["V"], r["d"], METHODS.index(r["method"]))):
        if "skipped" in r:
            out.append(f"| {r['V']:,} | {r['d']} | {r['method']} | {r['skipped']} | | | | | | |")
            continue
        ms = [f"{r[k + '_s'] * 1e3:.2f}" for k in ("target_log_prob", "log_prob", "predict", "top5")]
        rat = [
            f"{r[k]:,.1f}×" if k in r else "—" for k in ("top5_x_full", "top5_x_adaptive", "top5_x_adaptive_predict")
        ]
        out.append(f"| {r['V']:,} | {r['d']} | {r['method']} | " + " | ".join(ms + rat) + " |")
    return "\n".join(out)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 6))
    styles = {
        "full": "k",
        "adaptive": "tab:gray",
        "huffman": "tab:blue",
        "balanced": "tab:green",
        "two_level": "tab:orange",
        "huffman_fused": "tab:cyan",
        "two_level_fused": "tab:red",
    }
    labels = {
        "full": "full softmax",
        "adaptive": "AdaptiveLogSoftmaxWithLoss",
        "huffman": "HS Huffman",
        "balanced": "HS balanced",
        "two_level": "HS two-level",
        "huffman_fused": "HS Huffman, fused SGD",
        "two_level_fused": "HS two-level, fused SGD",
    }
    combos = sorted({(r["d"], r["batch"]) for r in results["train"]})
    d0 = combos[0][0]
    for d, B in combos:
        if d != d0:
            continue
        ls = "-" if min(b for _, b in combos) == B else "--"
        for m in METHODS:
            pts = sorted(
                (r["V"], r["examples_per_s"])
                for r in results["train"]
                if r["method"] == m and r["d"] == d and r["batch"] == B and "examples_per_s" in r
            )
            if pts:
                ax.plot(*zip(*pts), ls, marker="o", color=styles[m], label=f"{labels[m]}, batch {B}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("number of classes V")
    ax.set_ylabel("training examples / s (fwd + bwd + optimizer)")
    ax.set_title(
        f"Output layers, d={d0}, {os.cpu_count()}-core CPU, torch {torch.__version__.split('+')[0]}", fontsize=9
    )
    ax.grid(True, which="both", alpha=0.3)
    # Below the axes: inside, it would hide the slowest curves.
    ax.legend(fontsize=7, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.13))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--quick",
        action="store_true",
        help="V in {10k, 100k}, d=256, batch 512: a couple of minutes (flags below override)",
    )
    ap.add_argument("--V", type=int, nargs="+", help=f"default {FULL['V']}")
    ap.add_argument("--d", type=int, nargs="+", help=f"default {FULL['d']}")
    ap.add_argument("--batch", type=int, nargs="+", help=f"default {FULL['batch']}")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--infer-batch", type=int, default=64)
    ap.add_argument("--budget", type=float, help=f"seconds of timed calls per measurement (default {FULL['budget']})")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory child processes")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "layers.json")
    ap.add_argument("--plot", type=Path, default=None, help="PNG path (default: next to --out)")
    ap.add_argument("--child-memory", nargs=4, metavar=("METHOD", "V", "D", "B"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child_memory:
        name, V, d, B = args.child_memory
        print(json.dumps(child_memory(name, int(V), int(d), int(B), args.device)))
        return
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    results = run(args)
    results["argv"] = sys.argv[1:] if argv is None else list(argv)
    write_json(args.out, results)
    table = markdown(results)
    write_text(args.out.with_suffix(".md"), table + "\n")
    print()
    print(table)
    png = args.plot or args.out.with_suffix(".png")
    try:
        plot(results, png)
        print(f"\nwrote {args.out}, {args.out.with_suffix('.md')} and {png}")
    except ImportError:
        print(f"\nwrote {args.out} (install matplotlib for the plot)")


if __name__ == "__main__":
    main()

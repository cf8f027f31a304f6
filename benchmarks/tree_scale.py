"""Tree builders at scale: build time and peak memory of every builder at V = 1M and 10M classes.

Run ``python benchmarks/tree_scale.py`` for the full table, ``--quick`` for a CI smoke run
(V = 100k). Each case runs in a fresh child process, so its peak memory (``VmHWM``) is its own:

* **huffman**: ``Tree.huffman`` on Zipf counts ``1 / rank`` (the compiled two-queue merge);
* **balanced**: ``Tree.balanced(V)``;
* **two_level**: ``Tree.two_level(V, counts=zipf)`` (sqrt(V) clusters of equal mass);
* **from_embeddings**: ``Tree.from_embeddings`` of random ``(V, dim)`` float32 vectors, by size;
* **from_embeddings_counts**: the same with the Zipf counts (mass-balanced splits).

The build time includes the ``Tree`` constructor's validation and derived arrays, not the
numba compilation (each child warms the kernels up on a tiny input first). Peak memory is the
whole child process's, the interpreter and numpy included; ``input`` is what the builder's
arguments take, ``base`` the process before they were made. The padded ``(V, max_decisions)``
decision arrays are never built by any builder (checked: ``lazy``). ``from_embeddings`` at 10M
is measured only with ``--embeddings-10m`` (many minutes on 2 cores).

Results go to ``benchmarks/results/tree_scale.json`` (git-ignored) and a markdown table beside
it (``.md``), which is also printed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from common import machine_info, machine_summary, peak_rss_bytes, run_json_child, write_json, write_text

HERE = Path(__file__).resolve().parent
BUILDERS = ("huffman", "balanced", "two_level", "from_embeddings", "from_embeddings_counts")
EMBEDDING_BUILDERS = ("from_embeddings", "from_embeddings_counts")
FULL_SIZES = (1_000_000, 10_000_000)
QUICK_SIZES = (100_000,)


def child(builder: str, V: int, dim: int, seed: int) -> dict:
    """One measurement, in this (fresh) process; returns the row to print as JSON."""
    import numpy as np

    from hsoftmax import Tree, builders

    # Warm-up on tiny inputs: compile (or load from numba's disk cache) the builder's kernels
    # untimed (balanced and two_level have none).
    if builder in EMBEDDING_BUILDERS:
        counts = np.arange(64.0) if builder == "from_embeddings_counts" else None
        builders.from_embeddings(np.random.default_rng(0).normal(size=(64, 4)), counts=counts)
    elif builder == "huffman" and V >= builders._HUFFMAN_COMPILED_FROM:
        from hsoftmax.cluster_kernels import huffman_merge

        huffman_merge(np.ones(2), np.arange(2), 2, 2, np.zeros(2, np.int64), np.zeros(2, np.int64), np.zeros(1))
    base = peak_rss_bytes()
    zipf = 1.0 / np.arange(1, V + 1)
    vectors = None
    if builder in EMBEDDING_BUILDERS:
        vectors = np.random.default_rng(seed).standard_normal((V, dim), dtype=np.float32)
    input_bytes = zipf.nbytes + (0 if vectors is None else vectors.nbytes)
    t0 = time.perf_counter()
    if builder == "huffman":
        tree = Tree.huffman(zipf)
    elif builder == "balanced":
        tree = Tree.balanced(V)
    elif builder == "two_level":
        tree = Tree.two_level(V, counts=zipf)
    elif builder == "from_embeddings":
        tree = Tree.from_embeddings(vectors, seed=seed)
    else:
        tree = Tree.from_embeddings(vectors, counts=zipf, seed=seed)
    build_s = time.perf_counter() - t0
    peak = peak_rss_bytes()
    return {
        "builder": builder,
        "V": V,
        "dim": dim if vectors is not None else None,
        "build_s": round(build_s, 3),
        "peak_rss_gb": round(peak / 2**30, 3),
        "base_rss_gb": round(base / 2**30, 3),
        "input_gb": round(input_bytes / 2**30, 3),
        "lazy": "_padded_decisions" not in tree.__dict__,
        "depth": tree.depth,
        "num_nodes": tree.num_nodes,
        "expected_code_length_zipf": round(tree.expected_code_length(zipf), 3),
    }


def run(sizes: tuple[int, ...], builders: tuple[str, ...], dim: int, embeddings_10m: bool, timeout: float) -> dict:
    rows = []
    for V in sizes:
        for b in builders:
            if b in EMBEDDING_BUILDERS and V > 1_000_000 and not embeddings_10m:
                rows.append({"builder": b, "V": V, "skipped": "needs --embeddings-10m"})
                print(f"{b:>24} V={V:>10,}: skipped (--embeddings-10m)", flush=True)
                continue
            cmd = [sys.executable, __file__, "--child", b, str(V), "--dim", str(dim)]
            row = {"builder": b, "V": V, **run_json_child(cmd, timeout)}
            rows.append(row)
            print(f"{b:>24} V={V:>10,}: {json.dumps(row)}", flush=True)
    return {"machine": machine_info(packages=("hsoftmax", "numpy", "numba")), "rows": rows}


def markdown(results: dict) -> str:
    m = results["machine"]
    out = [f"Measured {m['date']} on {machine_summary(m)}.", ""]
    out.append("| builder | V | build s | peak RSS GB | base GB | input GB | depth | E[code length] (Zipf) | lazy |")
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in results["rows"]:
        if "build_s" not in r:
            out.append(f"| {r['builder']} | {r['V']:,} | {r.get('skipped') or r.get('error')} | | | | | | |")
            continue
        out.append(
            f"| {r['builder']} | {r['V']:,} | {r['build_s']:.2f} | {r['peak_rss_gb']:.2f} | {r['base_rss_gb']:.2f} "
            f"| {r['input_gb']:.2f} | {r['depth']} | {r['expected_code_length_zipf']:.2f} | {r['lazy']} |"
        )
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help=f"V = {QUICK_SIZES} only (a CI smoke run)")
    ap.add_argument("--V", type=int, nargs="+", help=f"class counts (default {FULL_SIZES})")
    ap.add_argument("--builders", nargs="+", default=list(BUILDERS), choices=BUILDERS)
    ap.add_argument("--dim", type=int, default=64, help="dimension of from_embeddings' vectors")
    ap.add_argument("--embeddings-10m", action="store_true", help="also run from_embeddings above 1M classes")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per case")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "tree_scale.json")
    ap.add_argument("--child", nargs=2, metavar=("BUILDER", "V"), help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args.dim, args.seed)))
        return
    sizes = tuple(args.V) if args.V else QUICK_SIZES if args.quick else FULL_SIZES
    results = run(sizes, tuple(args.builders), args.dim, args.embeddings_10m, args.timeout)
    write_json(args.out, results)
    text = markdown(results)
    write_text(args.out.with_suffix(".md"), text)
    print(text)


if __name__ == "__main__":
    main()

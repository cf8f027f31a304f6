"""Train-step throughput of the Keras hierarchical softmax against a Dense softmax head.

For each Keras backend (one subprocess each, ``KERAS_BACKEND`` set) and each V: examples/s of a
training step (``model.train_on_batch``, compiled by Keras: jax.jit / tf.function / torch eager)
of

* ``dense``: ``Dense(V)`` + ``SparseCategoricalCrossentropy(from_logits=True)``;
* ``hs_huffman``: :class:`hsoftmax.keras.HierarchicalSoftmax` on a Huffman tree of Zipf counts;
* ``hs_two_level``: the same layer on ``Tree.two_level(V)`` (sqrt(V) clusters);

all with plain SGD, on random hidden vectors ``(batch, d)`` and Zipf-distributed targets. Then
``topk(5)`` against ``log_prob`` + ``top_k`` at the largest V, and the torch module
(:class:`hsoftmax.HierarchicalSoftmax`, numba kernels) on the same trees for reference.

    python benchmarks/keras_layers.py                 # V = 1k, 10k, 100k on jax, torch, tensorflow
    python benchmarks/keras_layers.py --sizes 1000,10000,100000,1000000
    python benchmarks/keras_layers.py --quick         # CI smoke run: tiny sizes (the test suite runs it)

Writes a table to stdout, ``--json`` rows, and a plot of examples/s against V (``--plot``).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
METHODS = ("dense", "hs_huffman", "hs_two_level")
EVAL_EVERY = 100  # train steps between held-out evaluations of the topk model


def zipf_counts(V: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (1.0 / np.arange(1, V + 1) ** 1.1)[rng.permutation(V)] * 1e7 + 1


def make_tree(kind: str, V: int):
    from hsoftmax import Tree

    return Tree.huffman(zipf_counts(V)) if kind == "hs_huffman" else Tree.two_level(V)


def targets(V: int, n: int, seed: int = 1) -> np.ndarray:
    p = zipf_counts(V)
    p = p / p.sum()
    return np.random.default_rng(seed).choice(V, size=n, p=p).astype("int32")


def mem_available_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def dense_too_big(V: int, d: int, B: int) -> str | None:
    """Why a Dense(V) train step would not fit in memory here, or None. Its weights, their
    gradient and the update (3 V d floats) plus the (B, V) logits, softmax and their gradients."""
    need = 4 * (3 * V * d + 4 * B * V)
    avail = mem_available_bytes()
    if avail is not None and need > 0.4 * avail:
        return (
            f"Dense({V:,}) needs about {need / 2**30:.1f} GB (weights, gradient, (batch, V) logits and "
            f"their gradients), more than 40% of the {avail / 2**30:.1f} GB available on this shared machine"
        )
    return None


def timed_steps(step, min_time: float, max_steps: int, warmup: int) -> tuple[float, int]:
    """Seconds per step: ``warmup`` untimed calls (compilation), then steps until ``min_time``."""
    for _ in range(warmup):
        step()
    n, t0 = 0, time.perf_counter()
    while n < max_steps and (n == 0 or time.perf_counter() - t0 < min_time):
        step()
        n += 1
    return (time.perf_counter() - t0) / n, n


# ---------------------------------------------------------------------------- workers
def keras_worker(args) -> list[dict]:
    import keras

    from hsoftmax.keras import HierarchicalSoftmax

    backend = keras.backend.backend()
    d, B = args.d, args.batch
    rng = np.random.default_rng(0)
    x = rng.normal(size=(B, d)).astype("float32")
    rows = []
    sizes = [] if args.only_topk else args.sizes + (args.big_sizes if backend in args.big_backends else [])
    for V in sizes:
        y = targets(V, B)
        for method in METHODS:
            if method == "dense" and dense_too_big(V, d, B):
                why = dense_too_big(V, d, B)
                print(f"skipping dense at V={V:,}: {why}", file=sys.stderr, flush=True)
                rows.append(dict(backend=backend, method="skipped", V=V, why=f"dense: {why}"))
                continue
            keras.utils.set_random_seed(0)
            hin = keras.Input((d,))
            if method == "dense":
                model = keras.Model(hin, keras.layers.Dense(V)(hin))
                model.compile(
                    optimizer=keras.optimizers.SGD(0.1),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                )
                step = functools.partial(model.train_on_batch, x, y)
            else:
                yin = keras.Input((), dtype="int32")
                hs = HierarchicalSoftmax(make_tree(method, V))
                model = keras.Model([hin, yin], hs([hin, yin]))
                model.compile(optimizer=keras.optimizers.SGD(0.1))
                step = functools.partial(model.train_on_batch, [x, y])
            t0 = time.perf_counter()
            try:
                step()
            except Exception as e:  # e.g. out of memory at 1M
                rows.append(
                    dict(backend=backend, method="skipped", V=V, why=f"{method}: {type(e).__name__}: {e}"[:300])
                )
                continue
            first = time.perf_counter() - t0
            sec, n = timed_steps(step, args.min_time, args.max_steps, warmup=1)
            rows.append(
                dict(
                    backend=backend,
                    method=method,
                    V=V,
                    d=d,
                    batch=B,
                    step_ms=1e3 * sec,
                    examples_per_s=B / sec,
                    steps=n,
                    first_step_s=first,
                )
            )
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
            del model, step  # step holds the model too; free it before the next size
    rows += keras_topk(args, backend)
    return rows


def train_topk_model(args, path: Path) -> None:
    """Train a Dense(64 -> d, relu) encoder + HS head (Huffman tree of the Zipf counts, V the
    largest size) on a Zipf-labelled task whose inputs carry the class (a random 64-d code per
    class plus noise, as in examples/keras_many_classes.py) until its held-out loss stops falling:
    Adam, fresh batches each step; every ``EVAL_EVERY`` steps the NLL of a fixed held-out set is
    measured, the learning rate is quartered when it improved by less than 1% since the last
    evaluation, and training stops at the third such plateau (or after ``--train-seconds``).
    Saves the head's weights and the encoder's hidden states of a held-out batch (every backend
    then measures the same trained model) with the loss curve."""
    import keras

    from hsoftmax.keras import HierarchicalSoftmax

    V, d, B = max(args.sizes), args.d, args.batch
    freq = zipf_counts(V)
    freq = freq / freq.sum()
    codes = np.random.default_rng(3).normal(size=(V, 64)).astype("float32")

    def batch(seed, n=B):
        r = np.random.default_rng(seed)
        y = r.choice(V, size=n, p=freq).astype("int32")
        return codes[y] + 0.5 * r.normal(size=(n, 64)).astype("float32"), y

    keras.utils.set_random_seed(0)
    xin, yin = keras.Input((64,)), keras.Input((), dtype="int32")
    h = keras.layers.Dense(d, activation="relu")(xin)
    hs = HierarchicalSoftmax(make_tree("hs_huffman", V))
    model = keras.Model([xin, yin], hs([h, yin]))
    lr = 2e-3
    model.compile(optimizer=keras.optimizers.Adam(lr))
    x_val, y_val = batch(10**6 + 1, n=4 * B)
    curve: list[tuple[int, float, float]] = []  # (step, held-out NLL, learning rate)
    losses, step, plateaus, t0 = [], 0, 0, time.perf_counter()
    while time.perf_counter() - t0 < args.train_seconds or step < 2:
        losses.append(float(model.train_on_batch(list(batch(1 + step)))))
        step += 1
        if step % EVAL_EVERY == 0:
            val = float(model.evaluate([x_val, y_val], verbose=0, batch_size=B))
            if curve and val > 0.99 * curve[-1][1]:
                plateaus += 1
                lr /= 4
                model.optimizer.learning_rate.assign(lr)
            curve.append((step, val, lr))
            print(f"topk model: step {step}, held-out NLL {val:.4f}, lr {lr:.2g}", file=sys.stderr, flush=True)
            if plateaus >= 3:
                break
    x_test, y_test = batch(10**6)
    hidden = keras.Model(xin, h).predict(x_test, verbose=0, batch_size=B)
    kernel, bias = hs.get_weights()
    np.savez(
        path,
        kernel=kernel,
        bias=bias,
        hidden=hidden.astype("float32"),
        y=y_test,
        steps=step,
        seconds=time.perf_counter() - t0,
        loss_first=losses[0],
        loss_last=float(np.mean(losses[-10:])),
        curve=np.asarray(curve, dtype="float64").reshape(-1, 3),
        converged=plateaus >= 3,
    )


def keras_topk(args, backend: str) -> list[dict]:
    """topk(5) vs log_prob + top_k at the largest V (Huffman tree) on three models: one trained
    for ``--train-seconds`` (see :func:`train_topk_model`), a peaked one (random weights scaled
    up) and the freshly initialized one."""
    import keras
    from keras import ops

    from hsoftmax.keras import HierarchicalSoftmax

    V, d, B = max(args.sizes), args.d, args.batch
    tree = make_tree("hs_huffman", V)
    rng = np.random.default_rng(2)
    x_random = rng.normal(size=(B, d)).astype("float32")
    trained_path = Path(args.trained_model)
    if not trained_path.exists():
        train_topk_model(args, trained_path)
    with np.load(trained_path, allow_pickle=False) as z:
        trained = {k: z[k] for k in z.files}
    hs = HierarchicalSoftmax(tree, in_features=d)
    hin = keras.Input((d,))
    # One output each (the top-5 classes): a functional model that outputs both halves of
    # hs.topk runs the search twice (two layer calls, see HierarchicalSoftmax.call).
    topk_model = keras.Model(hin, hs.topk(hin, 5).indices)
    full_model = keras.Model(hin, ops.top_k(hs(hin), 5)[1])
    values_of = keras.Model(hin, hs.topk(hin, 5).values)  # for the exactness check only
    bound = 1 / np.sqrt(d)
    models = {
        "trained": ([trained["kernel"], trained["bias"]], trained["hidden"]),
        "peaked": (
            [
                8.0 * rng.normal(size=(tree.num_params, d)).astype("float32") / np.sqrt(d),
                np.zeros(tree.num_params, "float32"),
            ],
            x_random,
        ),
        "initial": (
            [rng.uniform(-bound, bound, (tree.num_params, d)).astype("float32"), np.zeros(tree.num_params, "float32")],
            x_random,
        ),
    }
    lp_model = keras.Model(hin, hs(hin))
    rows = []
    compile_s: dict[str, float] = {}
    for label, (weights, x) in models.items():
        hs.set_weights(weights)
        width = hs._width(5, None)
        proven = {}
        for w in [width, *hs._ladder(5, width)]:
            search = keras.Model(hin, hs(hin, top_k=5, beam_width=w, part="exact"))
            proven[w] = float(np.mean(search.predict_on_batch(x)))
        # Steady state: each side's first call (the compile, once per model) is timed apart,
        # then both get the same untimed warm-up call before the timed ones.
        for name, model in (("topk", topk_model), ("full", full_model)):
            if name not in compile_s:
                t0 = time.perf_counter()
                model.predict_on_batch(x)
                compile_s[name] = time.perf_counter() - t0
        t_topk, _ = timed_steps(functools.partial(topk_model.predict_on_batch, x), args.min_time, args.max_steps, 1)
        t_full, _ = timed_steps(functools.partial(full_model.predict_on_batch, x), args.min_time, args.max_steps, 1)
        a = (values_of.predict_on_batch(x), topk_model.predict_on_batch(x))
        lp = np.asarray(lp_model.predict_on_batch(x), dtype=np.float64)
        full_idx = np.asarray(full_model.predict_on_batch(x)).astype(np.int64)
        b = (np.take_along_axis(lp, full_idx, 1), full_idx)
        p = np.exp(lp)
        row = dict(
            backend=backend,
            method=f"topk5_{label}",
            V=V,
            d=d,
            batch=B,
            topk_ms=1e3 * t_topk,
            full_ms=1e3 * t_full,
            speedup=t_full / t_topk,
            proven=proven[width],
            proven_by_width=proven,
            first_call_s={"topk": compile_s["topk"], "full": compile_s["full"]},
            mean_top1_prob=float(p.max(1).mean()),
            mean_entropy_nats=float(-(p * lp).sum(1).mean()),
            same_indices=float(np.mean(np.asarray(a[1]) == b[1])),
            max_value_error=float(np.max(np.abs(np.asarray(a[0]) - np.asarray(b[0])))),
        )
        if label == "trained":
            row.update(
                train_steps=int(trained["steps"]),
                train_seconds=float(trained["seconds"]),
                train_loss_first=float(trained["loss_first"]),
                train_loss_last=float(trained["loss_last"]),
                top1_accuracy=float(np.mean(np.asarray(a[1])[:, 0] == trained["y"])),
                top5_accuracy=float(np.mean(np.any(np.asarray(a[1]) == trained["y"][:, None], axis=1))),
                converged=bool(trained["converged"]),
                held_out_nll_curve=[[int(st), float(v)] for st, v, _ in trained["curve"]],
            )
        rows.append(row)
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def torch_module_worker(args) -> list[dict]:
    """The torch module (numba kernels on the CPU) on the same trees, SGD, same batch."""
    import torch

    from hsoftmax import HierarchicalSoftmax

    d, B = args.d, args.batch
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(B, d)).astype("float32"))
    rows = []
    for V in args.sizes + args.big_sizes:
        y = torch.from_numpy(targets(V, B)).long()
        for method in ("hs_huffman", "hs_two_level"):
            torch.manual_seed(0)
            hs = HierarchicalSoftmax(d, make_tree(method, V))
            opt = torch.optim.SGD(hs.parameters(), lr=0.1)

            def step(opt=opt, hs=hs, y=y):  # bind this iteration's objects
                opt.zero_grad(set_to_none=True)
                hs(x, y).loss.backward()
                opt.step()

            t0 = time.perf_counter()
            step()
            first = time.perf_counter() - t0
            sec, n = timed_steps(step, args.min_time, args.max_steps, warmup=1)
            rows.append(
                dict(
                    backend="torch module",
                    method=method,
                    V=V,
                    d=d,
                    batch=B,
                    step_ms=1e3 * sec,
                    examples_per_s=B / sec,
                    steps=n,
                    first_step_s=first,
                )
            )
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


# ---------------------------------------------------------------------------- driver
def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs"}
    for name, dists in {
        "keras": ["keras"],
        "jax": ["jax"],
        "torch": ["torch"],
        "tensorflow": ["tensorflow-cpu", "tensorflow"],
    }.items():
        out[name] = None
        for dist in dists:
            try:
                out[name] = version(dist)
                break
            except PackageNotFoundError:
                pass
    return out


def run_worker(kind: str, args) -> list[dict]:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        kind,
        "--sizes",
        ",".join(map(str, args.sizes)),
        "--d",
        str(args.d),
        "--batch",
        str(args.batch),
        "--min-time",
        str(args.min_time),
        "--max-steps",
        str(args.max_steps),
        "--big-sizes",
        ",".join(map(str, args.big_sizes)),
        "--big-backends",
        ",".join(args.big_backends),
        "--train-seconds",
        str(args.train_seconds),
        "--trained-model",
        args.trained_model,
    ] + (["--only-topk"] if args.only_topk else [])
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    if kind != "torch_module":
        env["KERAS_BACKEND"] = kind
    # The worker's stderr (each row as it is measured, warnings) streams through to ours.
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, check=False)  # failure reported below
    if proc.returncode != 0:
        print(f"{kind} worker failed (rc={proc.returncode}), see its stderr above", file=sys.stderr)
        return [dict(backend=kind, method="skipped", V=0, why=f"worker failed with rc={proc.returncode}")]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    lines = ["| backend | V | method | step (ms) | examples/s | vs dense |", "|---|---|---|---|---|---|"]
    dense = {(r["backend"], r["V"]): r["examples_per_s"] for r in rows if r["method"] == "dense"}
    for r in rows:
        if r["method"] in METHODS:
            base = dense.get((r["backend"], r["V"]))
            rel = f"{r['examples_per_s'] / base:.1f}x" if base and r["method"] != "dense" else ""
            lines.append(
                f"| {r['backend']} | {r['V']:,} | {r['method']} | {r['step_ms']:.1f} | "
                f"{r['examples_per_s']:,.0f} | {rel} |"
            )
    tk = [r for r in rows if r["method"].startswith("topk5")]
    if tk:
        lines += [
            "",
            "| backend | V | model | topk(5) (ms) | log_prob + top_k (ms) | speedup | rows proven, by beam width |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in tk:
            by_width = ", ".join(f"{w}: {100 * v:.0f}%" for w, v in r.get("proven_by_width", {}).items())
            lines.append(
                f"| {r['backend']} | {r['V']:,} | {r['method'][6:]} | {r['topk_ms']:.1f} | {r['full_ms']:.1f} | "
                f"{r['speedup']:.1f}x | {by_width} |"
            )
        for r in tk:
            if "train_steps" in r:
                lines.append(
                    f"\ntrained model ({r['backend']}): {r['train_steps']} Adam steps of batch {r['batch']} in "
                    f"{r['train_seconds']:.0f} s, loss {r['train_loss_first']:.2f} -> {r['train_loss_last']:.2f}, "
                    f"held-out top-1 accuracy {r['top1_accuracy']:.3f}"
                )
                break
    skipped = [r for r in rows if r["method"] == "skipped"]
    for r in skipped:
        lines.append(f"\nskipped on {r['backend']}: {r.get('why', '')}")
    return "\n".join(lines)


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = {"dense": "-", "hs_huffman": "--", "hs_two_level": ":"}
    for backend in dict.fromkeys(r["backend"] for r in rows):
        for method in METHODS:
            pts = sorted(
                (r["V"], r["examples_per_s"]) for r in rows if r["backend"] == backend and r["method"] == method
            )
            if pts:
                ax.plot(*zip(*pts), styles[method], marker="o", label=f"{backend} {method}")
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="number of classes V",
        ylabel="train-step examples/s",
        title="Keras: hierarchical softmax vs Dense softmax head",
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backends", default="jax,torch,tensorflow")
    p.add_argument("--sizes", default="1000,10000,100000")
    p.add_argument("--d", type=int, default=256)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--min-time", type=float, default=2.0, help="seconds of timed steps per measurement")
    p.add_argument("--max-steps", type=int, default=50)
    p.add_argument("--big-sizes", default="1000000", help="sizes run only on --big-backends (and the torch module)")
    p.add_argument("--big-backends", default="jax")
    p.add_argument(
        "--train-seconds",
        type=float,
        default=3000.0,
        help="time cap of the topk model's training (it usually stops first, at its third plateau)",
    )
    p.add_argument(
        "--trained-model", default=None, help="where to keep the trained topk model (default: a temporary file)"
    )
    p.add_argument("--only-topk", action="store_true", help="skip the train steps: only the topk measurements")
    p.add_argument("--no-torch-module", action="store_true")
    p.add_argument("--quick", action="store_true", help="tiny CI smoke run")
    p.add_argument("--json", default=None)
    p.add_argument("--plot", default=str(HERE / "keras_layers.png"))
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.quick:
        args.sizes, args.d, args.batch, args.min_time, args.max_steps = "300,2000", 16, 32, 0.0, 2
        args.big_sizes, args.train_seconds = "", 1.0
        args.no_torch_module = True
    args.sizes = [int(v) for v in str(args.sizes).split(",")]
    args.big_sizes = [int(v) for v in str(args.big_sizes).split(",") if v]
    args.big_backends = [b for b in str(args.big_backends).split(",") if b]
    if args.worker:
        rows = torch_module_worker(args) if args.worker == "torch_module" else keras_worker(args)
        print(json.dumps(rows))
        return
    load_start = [round(x, 2) for x in os.getloadavg()]
    rows = []
    if args.only_topk:
        args.no_torch_module = True
    with tempfile.TemporaryDirectory() as tmp:
        # The first backend trains the topk model; the others load it (same weights everywhere).
        args.trained_model = args.trained_model or str(Path(tmp) / "topk_model.npz")
        for b in args.backends.split(","):
            rows += run_worker(b, args)
    if not args.no_torch_module:
        rows += run_worker("torch_module", args)
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        **versions(),
        "d": args.d,
        "batch": args.batch,
        "sizes": args.sizes,
        "big_sizes": args.big_sizes,
        "big_backends": args.big_backends,
        "train_seconds": args.train_seconds,
        "loadavg_start": load_start,
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
    }
    print(json.dumps(meta))
    print(table(rows))
    tm = {(r["method"], r["V"]): r["examples_per_s"] for r in rows if r["backend"] == "torch module"}
    for r in rows:
        if (
            r["method"] in ("hs_huffman", "hs_two_level")
            and r["backend"] != "torch module"
            and (r["method"], r["V"]) in tm
        ):
            ratio = tm[(r["method"], r["V"])] / r["examples_per_s"]
            print(f"{r['backend']} {r['method']} V={r['V']:,}: torch module / keras = {ratio:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    if not args.no_plot:
        try:
            plot(rows, args.plot)
            print(f"plot: {args.plot}")
        except ImportError as e:  # matplotlib is optional (not in the dev extra)
            print(f"no plot: {e}", file=sys.stderr)


if __name__ == "__main__":
    main()

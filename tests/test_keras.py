"""hsoftmax.keras on every installed Keras backend, against the torch module.

The torch module computes the reference here (float64, on float32-rounded weights); each backend
then runs ``tests/keras_checks.py`` once in its own process with ``KERAS_BACKEND`` set (a
process can hold one Keras backend), and each of its checks is reported as its own test.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_batch, make_layer, named_trees

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BACKENDS = {"jax": "jax", "torch": "torch", "tensorflow": "tensorflow"}
CHECKS = [
    "weights_layout",
    "matches_torch",
    "call_forms",
    "masking",
    "fit_gradient_equals_torch",
    "fit_trains",
    "loss_way",
    "topk_peaked_needs_no_fallback",
    "topk_ladder",
    "topk_search_top",
    "topk_in_functional_model",
    "compiled_functions",
    "training_builds_no_batch_by_classes_tensor",
    "config_and_tree_file",
    "save_load_model",
    "save_load_100k",
    "mixed_bfloat16",
    "bad_input_errors",
    "readme_keras_example",
]


def test_import_hsoftmax_does_not_import_keras():
    code = "import sys, hsoftmax; hsoftmax.Tree.huffman([1, 2]); print('keras' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """Per named tree: the tree file, float32 weights, a batch, and the torch module's answers."""
    d = tmp_path_factory.mktemp("keras_ref")
    names = []
    for name, tree in named_trees().items():
        hs = make_layer(tree, 6, dtype=torch.float32)
        with torch.no_grad():  # the Keras layer holds float32; the reference is float64 math on it
            hs = hs.double()
        x, y = make_batch(tree, 40, 6, dtype=torch.float32)
        x = x.double()
        out, loss = hs(x, y)
        if loss.requires_grad:  # a one-class tree has no parameters
            loss.backward()
        gw = hs.weight.grad if hs.weight.grad is not None else torch.zeros_like(hs.weight)
        gb = hs.bias.grad if hs.bias.grad is not None else torch.zeros_like(hs.bias)
        g = np.random.default_rng(len(names)).random(40) < 0.3
        g[0] = False
        yi = y.clone()
        yi[torch.from_numpy(g)] = -100
        out_i, loss_i = hs(x, yi)
        tree.save(d / f"{name}.tree.npz")
        np.savez(
            d / f"{name}.npz",
            x=x.float().numpy(),
            y=y.numpy().astype(np.int32),
            weight=hs.weight.detach().float().numpy(),
            bias=hs.bias.detach().float().numpy(),
            log_prob=hs.log_prob(x).detach().numpy(),
            target_lp=out.detach().numpy(),
            loss_mean=loss.detach().numpy(),
            grad_weight=gw.numpy(),
            grad_bias=gb.numpy(),
            ignored=g,
            target_lp_ignored=out_i.detach().numpy(),
            loss_ignored=loss_i.detach().numpy(),
        )
        names.append(name)
    (d / "names.json").write_text(json.dumps(names))
    return d


_RUNS: dict[str, tuple] = {}
_RESULTS: dict[str, dict] = {}


def _start_runners(reference: Path, tmp_path_factory) -> None:
    """Start every installed backend's runner at once: each spends most of its time in one
    thread (XLA compiles, TF tracing), so on a 2-core machine they overlap well."""
    if _RUNS:
        return
    for backend, module in BACKENDS.items():
        if importlib.util.find_spec(module) is None:
            continue
        out = tmp_path_factory.mktemp(f"keras_{backend}") / "results.json"
        env = {
            **os.environ,
            "KERAS_BACKEND": backend,
            "TF_CPP_MIN_LOG_LEVEL": "3",
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
        }
        # Stays open while the runner writes to it; backend_results reads it if the runner crashes.
        log = open(out.with_suffix(".log"), "w+")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, str(HERE / "keras_checks.py"), str(reference), str(out)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        _RUNS[backend] = (proc, out, log)


def backend_results(backend: str, reference: Path, tmp_path_factory) -> dict:
    if backend not in _RESULTS:
        pytest.importorskip("keras")
        if importlib.util.find_spec(BACKENDS[backend]) is None:
            pytest.skip(f"{backend} is not installed")
        _start_runners(reference, tmp_path_factory)
        proc, out, log = _RUNS[backend]
        with log:  # the runner has finished with it either way
            try:
                proc.wait(timeout=900)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if not out.exists():
                log.seek(0)
                pytest.fail(f"{backend} runner crashed (rc={proc.returncode}):\n{log.read()[-5000:]}")
        _RESULTS[backend] = json.loads(out.read_text())
    return _RESULTS[backend]


@pytest.mark.parametrize("check", CHECKS)
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_keras_backend(backend, check, reference, tmp_path_factory):
    results = backend_results(backend, reference, tmp_path_factory)
    assert check in results, f"the {backend} runner did not run {check}"
    msg = results[check]["result"]
    if msg.startswith("skip:"):
        pytest.skip(msg)
    assert msg.startswith("ok"), msg


def test_benchmark_quick(tmp_path):
    """benchmarks/keras_layers.py --quick runs end to end (tiny sizes, jax only) and reports
    every method it times."""
    pytest.importorskip("keras")
    if importlib.util.find_spec("jax") is None:
        pytest.skip("jax is not installed")
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "keras_layers.py"),
            "--quick",
            "--backends",
            "jax",
            "--json",
            str(out),
            "--no-plot",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        check=False,  # the return code is asserted below, with the output
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    methods = {r["method"] for r in rows}
    assert {"dense", "hs_huffman", "hs_two_level"} <= methods, methods
    assert all(r["examples_per_s"] > 0 for r in rows if "examples_per_s" in r)
    topk = [r for r in rows if r["method"].startswith("topk5")]
    assert {"topk5_trained", "topk5_peaked", "topk5_initial"} <= {r["method"] for r in topk}, topk
    assert all(r["same_indices"] == 1.0 for r in topk if r["method"] == "topk5_peaked"), topk
    assert all(r["max_value_error"] < 1e-4 for r in topk), topk  # exact on every model
    trained = next(r for r in topk if r["method"] == "topk5_trained")
    assert trained["train_steps"] >= 2 and set(trained["proven_by_width"]), trained

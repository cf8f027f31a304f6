"""torch.compile and torch.export: every public method compiles cold with ``fullgraph=True`` on
the CPU kernels (custom ops) and on the torch path (static shapes), a two-level tree compiles
once for many batches, and an exported program gives the eager outputs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import hsoftmax.kernels as K
from conftest import kernels_enabled, make_batch, make_layer
from hsoftmax import HierarchicalSoftmax, Tree

TREES = {
    "huffman": Tree.huffman([float(c) for c in range(1, 41)]),
    # Zipf counts: clusters of 1 to 13 classes, the widest scored densely (depth_plan).
    "two_level": Tree.two_level(40, num_clusters=6, counts=[1.0 / r for r in range(1, 41)]),
    "balanced4": Tree.balanced(30, arity=4),
}

# A fresh interpreter per backend setting: dynamo's first trace of the kernels is what crashed
# ("exception table entry start instruction has no offset") when it traced into numba.
_COLD = textwrap.dedent(
    """
    import sys, torch
    import hsoftmax.kernels as K
    from hsoftmax import HierarchicalSoftmax, Tree
    backend = sys.argv[1]
    trees = {"huffman": Tree.huffman([float(c) for c in range(1, 41)]),
             # Zipf counts: clusters of 1 to 13 classes, the widest scored densely (depth_plan).
    "two_level": Tree.two_level(40, num_clusters=6, counts=[1.0 / r for r in range(1, 41)]),
             "balanced4": Tree.balanced(30, arity=4)}
    for name, tree in trees.items():
        torch.manual_seed(0)
        hs = HierarchicalSoftmax(8, tree, ignore_index=3)
        x = torch.randn(12, 8)
        y = torch.randint(0, tree.num_classes, (12,))
        y[0] = 3  # ignored
        xe = x.clone().requires_grad_()
        ref = hs(xe, y)
        ref.loss.backward()
        ref_gw, ref_gx = hs.weight.grad.clone(), xe.grad.clone()
        hs.zero_grad()
        xc = x.clone().requires_grad_()
        fwd = torch.compile(lambda a, b: hs(a, b), fullgraph=True, backend=backend)
        out = fwd(xc, y)
        out.loss.backward()
        torch.testing.assert_close(out.output, ref.output)
        torch.testing.assert_close(xc.grad, ref_gx)
        torch.testing.assert_close(hs.weight.grad, ref_gw)
        with torch.no_grad():
            lp = torch.compile(hs.log_prob, fullgraph=True, backend=backend)(x)
            torch.testing.assert_close(lp, hs.log_prob(x))
            pred = torch.compile(hs.predict, fullgraph=True, backend=backend)(x)
            assert torch.equal(pred, hs.predict(x))
            top = torch.compile(lambda a: hs.topk(a, 4), fullgraph=True, backend=backend)(x)
            want = hs.topk(x, 4)
            torch.testing.assert_close(top.values, want.values)
            assert torch.equal(top.indices, want.indices)
        print("ok", name)
    """
)


def _run_cold(kernels: bool, backend: str) -> str:
    env = dict(os.environ, HSOFTMAX_NO_KERNELS="0" if kernels else "1")
    src = os.path.join(os.path.dirname(__file__), "..", "src")
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    r = subprocess.run(
        [sys.executable, "-c", _COLD, backend], env=env, capture_output=True, text=True, timeout=600, check=False
    )  # the return code is asserted next, with stderr
    assert r.returncode == 0, r.stderr[-4000:]
    return r.stdout


@pytest.mark.skipif(K.cpu() is None, reason="numba kernels unavailable")
def test_compile_cold_fullgraph_on_kernels():
    """Through AOTAutograd (fake impls, registered autograd), in a fresh process."""
    assert _run_cold(True, "aot_eager").count("ok") == len(TREES)


def test_compile_cold_fullgraph_on_torch_path():
    assert _run_cold(False, "aot_eager").count("ok") == len(TREES)


class _CountingBackend:
    """A dynamo backend that counts the graphs it is handed and runs them eagerly."""

    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        return gm.forward


@pytest.mark.parametrize("kernels", [False, True])
def test_two_level_compiles_once_for_every_batch_of_a_size(kernels):
    """The torch path used to have per-cluster shapes: 55 graphs in 5 steps. Now one graph
    (forward) serves every batch of the same size, whatever its targets."""
    if kernels and K.cpu() is None:
        pytest.skip("numba kernels unavailable")
    torch._dynamo.reset()
    tree = Tree.two_level(200, num_clusters=14, counts=[1.0 / r for r in range(1, 201)])
    hs = make_layer(tree, 8, dtype=torch.float32)
    counter = _CountingBackend()
    step = torch.compile(lambda a, b: hs(a, b).loss, fullgraph=True, backend=counter)
    with kernels_enabled(kernels):
        for seed in range(6):
            x, y = make_batch(tree, 64, 8, seed=seed, dtype=torch.float32, repeat_first=seed % 2 == 0)
            x.requires_grad_()
            loss = step(x, y)
            loss.backward()
            torch.testing.assert_close(loss, hs(x, y).loss)
    torch._dynamo.reset()
    assert counter.graphs == 1


class _Wrapper(torch.nn.Module):
    """What an application exports: the layer's inference and training entry points."""

    def __init__(self, hs: HierarchicalSoftmax) -> None:
        super().__init__()
        self.hs = hs

    def forward(self, x, y):
        out = self.hs(x, y)
        top = self.hs.topk(x, 3)
        return self.hs.log_prob(x), top.values, top.indices, self.hs.predict(x), out.output, out.loss


@pytest.mark.parametrize("kernels", [False, True])
@pytest.mark.parametrize("name", list(TREES))
def test_export_round_trip(name, kernels):
    if kernels and K.cpu() is None:
        pytest.skip("numba kernels unavailable")
    tree = TREES[name]
    hs = make_layer(tree, 8, dtype=torch.float32)
    x, y = make_batch(tree, 10, 8, dtype=torch.float32)
    with kernels_enabled(kernels), torch.no_grad():
        ep = torch.export.export(_Wrapper(hs), (x, y))
        got = ep.module()(x, y)
        x2, y2 = make_batch(tree, 10, 8, seed=5, dtype=torch.float32)
        got2 = ep.module()(x2, y2)  # another batch of the same size, through the same program
        want, want2 = _Wrapper(hs)(x, y), _Wrapper(hs)(x2, y2)
    ops = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    if kernels:
        assert {"hsoftmax.log_prob.default", "hsoftmax.topk.default", "hsoftmax.target_log_prob.default"} <= ops
    else:
        assert not any(o.startswith("hsoftmax.") for o in ops)
    for g, w in zip([*got, *got2], [*want, *want2]):
        if g.dtype == torch.long:
            assert torch.equal(g, w)
        else:
            torch.testing.assert_close(g, w)


def test_compiled_checks_still_reject_bad_input():
    """Under compile the NaN and range checks are asynchronous asserts (no graph break)."""
    tree = TREES["balanced4"]
    hs = make_layer(tree, 8, dtype=torch.float32)
    x, y = make_batch(tree, 6, 8, dtype=torch.float32)
    f = torch.compile(lambda a, b: hs(a, b).loss, fullgraph=True, backend="aot_eager")
    f(x, y)
    with pytest.raises(RuntimeError, match="NaN or Inf"):
        f(torch.where(torch.arange(6)[:, None] == 2, float("nan"), x), y)
    with pytest.raises(RuntimeError, match="out of range"):
        f(x, torch.where(torch.arange(6) == 1, tree.num_classes, y))
    hs.check_finite = False  # the documented opt-out: NaN goes through (and gives NaN)
    torch._dynamo.reset()
    g = torch.compile(lambda a, b: hs(a, b).loss, fullgraph=True, backend="aot_eager")
    assert torch.isnan(g(torch.full_like(x, float("nan")), y))
    torch._dynamo.reset()


class _Scores(torch.nn.Module):
    def __init__(self, hs: HierarchicalSoftmax) -> None:
        super().__init__()
        self.hs = hs

    def forward(self, x, y):
        out = self.hs(x, y)
        return self.hs.log_prob(x), out.output, out.loss


@pytest.mark.parametrize("name", list(TREES))
def test_onnx_export_of_log_prob_and_forward_on_the_torch_path(name):
    """``torch.onnx.export(dynamo=True)`` (needs onnxscript, not a dependency: skipped without
    it) of ``log_prob`` and ``forward`` on the torch path, run by onnx's reference evaluator. The
    CPU kernels' custom ops have no ONNX translation: export with the kernels off."""
    pytest.importorskip("onnxscript")
    from onnx.reference import ReferenceEvaluator

    tree = TREES[name]
    hs = make_layer(tree, 8, dtype=torch.float32)
    x, y = make_batch(tree, 10, 8, dtype=torch.float32)
    with kernels_enabled(False), torch.no_grad():
        prog = torch.onnx.export(_Scores(hs), (x, y), dynamo=True)
        want = _Scores(hs)(x, y)
    names = [i.name for i in prog.model_proto.graph.input]
    got = ReferenceEvaluator(prog.model_proto).run(None, dict(zip(names, [x.numpy(), y.numpy()])))
    for g, w in zip(got, want):
        torch.testing.assert_close(torch.from_numpy(np.asarray(g)), w, rtol=1e-5, atol=1e-5)

"""hsoftmax.functional: the torch node math, its paths agreeing with each other, and the one
backend choice per public operation."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import hsoftmax.kernels as K
from conftest import kernels_enabled, make_batch, make_layer, named_trees
from hsoftmax import Tree
from hsoftmax import functional as HF

NAMED = named_trees()
ZIPF = 1.0 / np.arange(1, 3001)
HUFFMAN_ZIPF = Tree.huffman(ZIPF)
HUFFMAN4 = Tree.huffman(ZIPF, arity=4)
TWO_LEVEL_ZIPF = Tree.two_level(3000, counts=ZIPF)
needs_kernels = pytest.mark.skipif(K.cpu() is None, reason="numba kernels unavailable")


def layer(tree: Tree, d: int, **kw):
    """conftest's ``make_layer`` with scores of order 1 whatever ``d``: ``weight ~ N(0, 2/sqrt(d))``."""
    return make_layer(tree, d, weight_std=2.0 / np.sqrt(d), **kw)


# ---------------------------------------------------------------------------- node math
def test_decision_log_probs_one_rule_in_three_layouts():
    """A binary node's child 0 has the fixed score 0: the dense, the ragged and the signed
    layouts give the same log-probabilities, log sigmoid(+-s) for a binary node."""
    g = torch.Generator().manual_seed(0)
    s = torch.randn(5, generator=g, dtype=torch.float64) * 10
    ks = torch.randn(5, 4, generator=g, dtype=torch.float64)
    dense_binary = HF.decision_log_probs(torch.stack([torch.zeros_like(s), s], -1))
    signed = HF.decision_log_probs(torch.stack([-s, s], -1), signed=True)
    torch.testing.assert_close(dense_binary, signed, rtol=0, atol=1e-15)
    torch.testing.assert_close(signed, torch.stack([F.logsigmoid(-s), F.logsigmoid(s)], -1), rtol=0, atol=0)
    # Ragged: a binary node (children 0, s) next to a 4-ary node and a single child.
    scores = torch.cat(
        [torch.zeros(5, 1, dtype=torch.float64), s[:, None], ks, torch.zeros(5, 1, dtype=torch.float64)], 1
    )
    owner = torch.tensor([0, 0, 1, 1, 1, 1, 2])
    ragged = HF.decision_log_probs(scores, owner=owner, num_nodes=3)
    torch.testing.assert_close(ragged[:, :2], signed)
    torch.testing.assert_close(ragged[:, 2:6], HF.decision_log_probs(ks))
    assert torch.equal(ragged[:, 6], torch.zeros(5, dtype=torch.float64))
    # Padded slots (-inf past a node's arity) get probability 0.
    padded = HF.decision_log_probs(torch.tensor([[0.0, 2.0, float("-inf")]]))
    assert padded[0, 2] == float("-inf") and torch.isclose(padded[0, :2].exp().sum(), torch.tensor(1.0))


@pytest.mark.parametrize("name", ["two_level_counts", "taxonomy", "huffman3", "balanced2"])
def test_torch_paths_agree_on_every_node(name):
    """child_log_probs (top-k/sampling), the target paths (binary, two-level, step by step) and
    log_prob's segment softmax are the same node math."""
    tree = NAMED[name]
    hs = make_layer(tree)
    tt = hs.tree_tensors
    x = make_batch(tree, 1, 6)[0].expand(tree.num_classes, -1)  # one input, every class
    y = torch.arange(tree.num_classes)
    with torch.no_grad(), kernels_enabled(False):
        lp = HF.log_prob(x, hs.weight, hs.bias, tt)
        ref = lp.gather(1, y[:, None]).squeeze(1)
        torch.testing.assert_close(HF.target_log_prob(x, y, hs.weight, hs.bias, tt), ref, rtol=0, atol=1e-12)
        torch.testing.assert_close(HF._stepwise_log_prob(x, y, hs.weight, hs.bias, tt, False), ref, rtol=0, atol=1e-12)
        nodes = tt.class_parent[y]
        child = HF.child_log_probs(x, nodes, hs.weight, hs.bias, tt).gather(1, tt.class_choice[y][:, None]).squeeze(1)
        # A class's log-prob = its parent's log-prob + the last decision.
        parent_lp = ref - child
        for c in range(tree.num_classes):
            n = int(tt.class_parent[c])
            rows = torch.nonzero(tt.class_parent == n).squeeze(1)
            torch.testing.assert_close(parent_lp[rows], parent_lp[rows[:1]].expand(rows.numel()), rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------- backend choice
@needs_kernels
def test_backend_is_chosen_once_per_public_operation(monkeypatch):
    calls = []
    real = HF._cpu_kernels

    def counting(*args, **kw):
        calls.append(kw.get("backward", True))
        return real(*args, **kw)

    monkeypatch.setattr(HF, "_cpu_kernels", counting)
    for tree in (NAMED["huffman"], NAMED["taxonomy"]):
        hs = make_layer(tree)
        tt = hs.tree_tensors
        x, y = make_batch(tree, 9, 6)
        for op in (
            lambda x=x, y=y, hs=hs, tt=tt: HF.target_log_prob(x, y, hs.weight, hs.bias, tt, sgd_lr=0.1),
            lambda x=x, hs=hs, tt=tt: HF.log_prob(x, hs.weight.detach(), hs.bias.detach(), tt),
            lambda x=x, hs=hs, tt=tt: HF.topk(x, 2, hs.weight, hs.bias, tt),
        ):
            calls.clear()
            op()
            assert len(calls) == 1
    assert calls == [True]
    calls.clear()
    HF.log_prob(x, hs.weight, hs.bias, tt)
    assert calls == [False]  # log_prob's kernel has no backward


@needs_kernels
def test_cpu_kernels_choice():
    from hsoftmax.kernels import autograd

    w = torch.randn(4, 3, dtype=torch.float64)
    b = torch.randn(4, dtype=torch.float64)
    h = torch.randn(2, 3, dtype=torch.float64)
    assert HF._cpu_kernels(h, w, b) is autograd
    assert HF._cpu_kernels(h.float(), w, b) is None  # mixed dtypes: torch promotes
    assert HF._cpu_kernels(h.half(), w.half(), None) is None
    assert HF._cpu_kernels(h, w, b.float()) is None
    wg = w.clone().requires_grad_()
    assert HF._cpu_kernels(h, wg, b) is autograd
    assert HF._cpu_kernels(h, wg, b, backward=False) is None
    with torch.no_grad():
        assert HF._cpu_kernels(h, wg, b, backward=False) is autograd
    with kernels_enabled(False):
        assert HF._cpu_kernels(h, w, b) is None


def test_importing_the_library_imports_neither_numba_nor_the_bridge():
    code = (
        "import sys, hsoftmax, hsoftmax.functional, hsoftmax.layer; "
        "assert 'numba' not in sys.modules and 'hsoftmax.kernels.autograd' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@needs_kernels
def test_mixed_dtypes_fall_back_to_torch():
    tree = HUFFMAN_ZIPF
    hs = layer(tree, 4, dtype=torch.float32)
    x, y = make_batch(tree, 10, 4)  # float64 input, float32 weights: promoted, torch path
    with kernels_enabled(True):
        out = hs(x, y).output
    with kernels_enabled(False):
        ref = hs(x, y).output
    torch.testing.assert_close(out, ref)


def test_torch_topk_fallback_handles_wide_nodes():
    tree = TWO_LEVEL_ZIPF  # clusters of very different widths
    hs = layer(tree, 6)
    x, _ = make_batch(tree, 8, 6)
    with torch.no_grad(), kernels_enabled(False):
        v, i = hs.topk(x, 5)
        rv, ri = hs.log_prob(x).topk(5)
    torch.testing.assert_close(v, rv)
    assert torch.equal(i, ri)


def test_functional_target_log_prob_matches_log_prob_gather():
    tree = HUFFMAN4
    hs = layer(tree, 5)
    tt = hs.tree_tensors
    x, y = make_batch(tree, 30, 5)
    with kernels_enabled(True):
        got = HF.target_log_prob(x, y, hs.weight, hs.bias, tt)
    ref = HF.log_prob(x, hs.weight, hs.bias, tt).gather(1, y[:, None]).squeeze(1)
    torch.testing.assert_close(got, ref)

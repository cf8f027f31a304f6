"""Shared test helpers: one small tree of every kind, hypothesis strategies over every builder,
and one factory for layers and batches (every test file uses these instead of its own)."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import strategies as st

from hsoftmax import Tree


def random_taxonomy(rng: np.random.Generator, num_classes: int, num_nodes: int) -> Tree:
    """A random taxonomy with mixed arities, ragged depths and single-child chains."""
    # node 0 = root (unnamed); node j>0 named "n{j}", with a parent among the nodes before it
    parents = [None] + [int(rng.integers(0, j)) for j in range(1, num_nodes)]

    def path_to(j: int) -> list[str]:
        out = []
        while j != 0:
            out.append(f"n{j}")
            j = parents[j]
        return out[::-1]

    paths = [path_to(int(rng.integers(0, num_nodes))) for _ in range(num_classes)]
    return Tree.from_paths(paths)


def named_trees() -> dict[str, Tree]:
    """One small tree of every kind, with the awkward shapes each builder can produce."""
    rng = np.random.default_rng(0)
    counts = rng.zipf(1.5, size=37).astype(float)
    return {
        "huffman": Tree.huffman(counts),
        "huffman3": Tree.huffman(counts, arity=3),
        "balanced2": Tree.balanced(23),
        "balanced4": Tree.balanced(23, arity=4),
        "two_level": Tree.two_level(40),
        "two_level_counts": Tree.two_level(40, num_clusters=6, counts=rng.zipf(1.3, size=40)),
        "taxonomy": random_taxonomy(rng, 30, 12),
        "flat": Tree.from_paths([[] for _ in range(9)]),
        "chain": Tree.from_paths([["a", "b", "c"], ["a", "b", "c"], ["a", "d"], ["e"]]),
        "one_class": Tree.huffman([3.0]),
    }


@st.composite
def trees(draw, max_classes: int = 40) -> Tree:
    """Hypothesis strategy over every tree builder."""
    kind = draw(st.sampled_from(["huffman", "balanced", "two_level", "taxonomy"]))
    V = draw(st.integers(1, max_classes))
    if kind == "huffman":
        counts = draw(st.lists(st.integers(0, 1000), min_size=V, max_size=V))
        return Tree.huffman(counts, arity=draw(st.integers(2, 4)))
    if kind == "balanced":
        return Tree.balanced(V, arity=draw(st.integers(2, 5)))
    if kind == "two_level":
        C = draw(st.integers(1, V))
        counts = draw(st.none() | st.lists(st.integers(1, 1000), min_size=V, max_size=V))
        return Tree.two_level(V, num_clusters=C, counts=counts)
    seed = draw(st.integers(0, 2**31 - 1))
    return random_taxonomy(np.random.default_rng(seed), V, draw(st.integers(1, 8)))


def make_layer(tree: Tree, d: int = 6, *, seed: int = 0, dtype=None, device="cpu", weight_std=1.0, bias_std=0.5, **kw):
    """A :class:`hsoftmax.HierarchicalSoftmax` with random (not Linear-init) weights, so that
    every decision matters: ``weight ~ N(0, weight_std)``, ``bias ~ N(0, bias_std)``; float64
    unless ``dtype`` says otherwise. ``kw`` goes to the constructor."""
    import torch

    from hsoftmax import HierarchicalSoftmax

    torch.manual_seed(seed)
    hs = HierarchicalSoftmax(d, tree, **kw).to(device=device, dtype=dtype or torch.float64)
    with torch.no_grad():
        hs.weight.normal_(0, weight_std)
        if hs.bias is not None:
            hs.bias.normal_(0, bias_std)
    return hs


def make_batch(tree: Tree, n: int, d: int = 6, *, seed: int = 1, dtype=None, device="cpu", repeat_first: bool = True):
    """``(x, y)``: ``n`` standard-normal inputs and targets drawn uniformly from ``tree``'s
    classes; with ``repeat_first`` the first few targets are class 0, so rows are shared
    within the batch."""
    import torch

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=dtype or torch.float64)
    y = torch.randint(0, tree.num_classes, (n,), generator=g)
    if repeat_first:
        y[: min(n, 5)] = 0
    return x.to(device), y.to(device)


@contextlib.contextmanager
def kernels_enabled(flag: bool) -> Iterator[None]:
    """Run the block with the numba CPU kernels on (``True``) or forced off (``False``)."""
    import hsoftmax.kernels as K

    old = K.set_enabled(flag)
    try:
        yield
    finally:
        K.set_enabled(old)


@pytest.fixture(params=list(named_trees()), scope="session")
def named_tree(request) -> Tree:
    """Each of :func:`named_trees`, by name."""
    return named_trees()[request.param]


# ---------------------------------------------------------------------------- word2vec corpora
TOPICS, PER_TOPIC = 4, 12


def topic_corpus(n_sentences=1500, length=10, seed=0):
    """Sentences drawn from one topic each: words of a topic co-occur, words of different
    topics never do, plus a few topic-free filler words everywhere."""
    rng = random.Random(seed)
    fillers = ["the", "of", "and"]
    out = []
    for _ in range(n_sentences):
        t = rng.randrange(TOPICS)
        out.append(
            [f"t{t}w{rng.randrange(PER_TOPIC)}" if rng.random() < 0.8 else rng.choice(fillers) for _ in range(length)]
        )
    return out


def topic_separation(kv) -> tuple[float, float]:
    """Mean cosine within a topic and across topics."""
    u = kv.unit_vectors
    topic = {w: int(w[1]) for w in kv.words if w[0] == "t" and w[1].isdigit()}
    ws = list(topic)
    ids = np.array([kv.index[w] for w in ws])
    sims = u[ids] @ u[ids].T
    same = np.array([[topic[a] == topic[b] for b in ws] for a in ws])
    off_diag = ~np.eye(len(ws), dtype=bool)
    return float(sims[same & off_diag].mean()), float(sims[~same].mean())


def taxonomy_paths(words):
    """A two-level "taxonomy" over topic words: each topic's words under one node, fillers under
    another."""
    return [["topic" + w[1] if w[1].isdigit() else "filler"] for w in words]

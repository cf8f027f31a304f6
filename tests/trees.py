"""Tree factories and hypothesis strategies shared by the tests."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from hsoftmax import Tree


def random_taxonomy(rng: np.random.Generator, num_classes: int, num_nodes: int) -> Tree:
    """A random taxonomy with mixed arities, ragged depths and single-child chains."""
    parents = [None]  # node 0 = root (unnamed); node j>0 named "n{j}"
    for j in range(1, num_nodes):
        parents.append(int(rng.integers(0, j)))

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

"""hsoftmax.retree: class vectors read out of a layer, a learned tree from them, a new layer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hsoftmax import HierarchicalSoftmax, Tree
from hsoftmax.retree import class_vectors, retree, with_tree


def test_class_vectors_of_a_binary_tree_are_the_log_prob_gradient_at_zero():
    # With no bias, d log p(c | h) / dh at h = 0 is sum over the path of s * w / 2 (sigmoid(0) = 1/2),
    # s = +1 toward child 1 and -1 toward child 0: the class vector times half the path length.
    tree = Tree.huffman(np.arange(1.0, 30.0))
    layer = HierarchicalSoftmax(6, tree, bias=False, dtype=torch.float64)
    h = torch.zeros(1, 6, dtype=torch.float64, requires_grad=True)
    lp = layer.log_prob(h)[0]
    vecs = class_vectors(layer)
    for c in range(tree.num_classes):
        (grad,) = torch.autograd.grad(lp[c], h, retain_graph=True)
        expected = vecs[c] * tree.decision_lengths[c] / 2
        np.testing.assert_allclose(grad[0].numpy(), expected, rtol=1e-5, atol=1e-6)


def test_retree_clusters_classes_the_layer_treats_alike():
    # Vectors in near-identical pairs (say, output embeddings): the pairs become siblings.
    rng = np.random.default_rng(0)
    V = 64
    centres = rng.normal(size=(V // 2, 8))
    vecs = np.repeat(centres, 2, axis=0) + 0.01 * rng.normal(size=(V, 8))
    layer = HierarchicalSoftmax(8, Tree.balanced(V))
    new = retree(layer, vectors=torch.tensor(vecs))
    siblings = np.mean(new.parent[0:V:2] == new.parent[1:V:2])
    assert siblings >= 0.6
    assert retree(layer, vectors=vecs, seed=1) == retree(layer, vectors=vecs, seed=1)
    with pytest.raises(ValueError, match="rows for 64 classes"):
        retree(layer, vectors=vecs[:10])


def test_with_tree_keeps_the_settings_and_trains():
    tree = Tree.huffman([5, 4, 3, 2, 1, 1], labels=list("abcdef"))
    layer = HierarchicalSoftmax(4, tree, bias=False, sparse=True, reduction="sum", ignore_index=-1)
    new_tree = retree(layer, counts=[5, 4, 3, 2, 1, 1], arity=3)
    new = with_tree(layer, new_tree)
    assert new.tree is new_tree and new.tree.labels == tree.labels
    assert (new.bias, new.sparse, new.reduction, new.ignore_index) == (None, True, "sum", -1)
    assert new.weight.shape == (new_tree.num_params, 4)
    x, y = torch.randn(8, 4), torch.tensor([0, 1, 2, 3, 4, 5, 0, -1])
    _, loss = new(x, y)
    loss.backward()
    assert torch.isfinite(loss) and new.weight.grad is not None
    assert torch.allclose(new.log_prob(x).exp().sum(-1), torch.ones(8, dtype=x.dtype))
    with pytest.raises(ValueError, match="classes"):
        with_tree(layer, Tree.balanced(7))

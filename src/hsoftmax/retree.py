"""Rebuild a layer's tree from what it has learned, and go on training with the new tree.

A first tree (Huffman, balanced) knows nothing about which classes look alike. After some
training the model does: :func:`class_vectors` reads a vector per class out of a
:class:`~hsoftmax.HierarchicalSoftmax` (or take the output embeddings, the hidden states'
class means, or word2vec vectors), :func:`retree` clusters them into a tree with
:meth:`Tree.from_embeddings <hsoftmax.Tree.from_embeddings>`, and :func:`with_tree` makes a
layer over it with the old one's settings, to train on with the same model body.

>>> import torch
>>> from hsoftmax import HierarchicalSoftmax, Tree
>>> layer = HierarchicalSoftmax(8, Tree.huffman([5, 4, 3, 2, 1, 1]))
>>> class_vectors(layer).shape
(6, 8)
>>> new = with_tree(layer, retree(layer, counts=[5, 4, 3, 2, 1, 1]))
>>> new.num_classes, new.in_features, new.tree.num_classes
(6, 8, 6)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .layer import HierarchicalSoftmax
from .tree import Tree

__all__ = ["class_vectors", "retree", "with_tree"]

# Classes per block when summing path rows: bounds the (block, max_decisions, dim) gather.
_BLOCK = 1 << 14


def class_vectors(layer: HierarchicalSoftmax) -> np.ndarray:
    """``(num_classes, in_features)`` float32: the mean over a class's decisions of the weight
    row that scores the choice its path takes.

    A binary node's row ``w`` raises the odds of child 1 (``p = sigmoid(w . h)``), so it counts
    as ``+w`` for a class below child 1 and ``-w`` below child 0; a k-ary node's row of the child
    taken counts as itself. The sum is the direction of ``h`` that raises the class's
    log-probability most (to first order), so classes that the layer treats alike get nearby
    vectors. A class with no decision (a one-class tree) gets zeros.
    """
    tree = layer.tree
    W = layer.weight.detach().to("cpu", torch.float32).numpy()
    nodes, choices, lengths = tree.decision_nodes, tree.decision_choices, tree.decision_lengths
    binary = tree.arity[nodes] == 2
    rows = tree.param_offset[nodes] + np.where(binary, 0, choices)
    sign = np.where(binary & (choices == 0), -1.0, 1.0).astype(np.float32)
    sign[np.arange(nodes.shape[1]) >= lengths[:, None]] = 0.0  # padding
    out = np.empty((tree.num_classes, W.shape[1]), dtype=np.float32)
    for a in range(0, tree.num_classes, _BLOCK):
        b = min(a + _BLOCK, tree.num_classes)
        out[a:b] = np.einsum("cp,cpd->cd", sign[a:b], W[rows[a:b]])
    out /= np.maximum(lengths, 1)[:, None].astype(np.float32)
    return out


def retree(
    layer: HierarchicalSoftmax,
    vectors: Any = None,
    counts: Any = None,
    arity: int = 2,
    seed: int = 0,
    **kwargs: Any,
) -> Tree:
    """A :meth:`Tree.from_embeddings <hsoftmax.Tree.from_embeddings>` tree over ``layer``'s
    classes, from ``vectors`` (``(num_classes, dim)``, e.g. output embeddings or class means of
    hidden states) or, by default, :func:`class_vectors` of the layer. The labels carry over."""
    if vectors is None:
        vectors = class_vectors(layer)
    elif isinstance(vectors, torch.Tensor):
        vectors = vectors.detach().to("cpu", torch.float32).numpy()
    if len(vectors) != layer.num_classes:
        raise ValueError(f"vectors has {len(vectors)} rows for {layer.num_classes} classes")
    return Tree.from_embeddings(vectors, arity=arity, counts=counts, seed=seed, labels=layer.tree.labels, **kwargs)


def with_tree(layer: HierarchicalSoftmax, tree: Tree) -> HierarchicalSoftmax:
    """A new layer over ``tree`` with ``layer``'s settings (features, bias, sparse, reduction,
    ignore_index, fused SGD, device and dtype), its node rows freshly initialized.

    The rows cannot carry over: the new tree's nodes split the classes differently, so no old
    row means anything there. Train on with the same model body (give the optimizer the new
    layer's parameters); the classes keep their indices.
    """
    if tree.num_classes != layer.num_classes:
        raise ValueError(f"the new tree has {tree.num_classes} classes, the layer {layer.num_classes}")
    return HierarchicalSoftmax(
        layer.in_features,
        tree,
        bias=layer.bias is not None,
        sparse=layer.sparse,
        reduction=layer.reduction,
        ignore_index=layer.ignore_index,
        device=layer.weight.device,
        dtype=layer.weight.dtype,
        fused_sgd_lr=layer.fused_sgd_lr,
    )

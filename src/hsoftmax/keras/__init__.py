"""``hsoftmax.keras``: the exact hierarchical softmax as a Keras 3 layer, on every backend.

Importing this package imports Keras (``pip install hsoftmax[keras]``); ``import hsoftmax``
alone never does. The layer is written with ``keras.ops`` only, so it runs on JAX, PyTorch and
TensorFlow alike; its node math lives once, in :mod:`hsoftmax.keras.ops`.
"""

from .layer import BeamTopK, HierarchicalSoftmax, TargetNLL, TopK, decode_tree, encode_tree

__all__ = ["HierarchicalSoftmax", "TargetNLL", "TopK", "BeamTopK", "encode_tree", "decode_tree"]

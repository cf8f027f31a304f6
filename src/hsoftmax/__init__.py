"""hsoftmax: exact, fast hierarchical softmax for huge label spaces.

Public names: :class:`Tree` (every label hierarchy) and :class:`HierarchicalSoftmax` (the
PyTorch output layer). The math lives in :mod:`hsoftmax.functional`.
"""

from .layer import HierarchicalSoftmax, HierarchicalSoftmaxOutput
from .tree import Tree

__all__ = ["Tree", "HierarchicalSoftmax", "HierarchicalSoftmaxOutput"]
__version__ = "0.1.0"

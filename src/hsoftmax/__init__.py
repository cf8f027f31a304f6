"""hsoftmax: exact, fast hierarchical softmax for huge label spaces.

Public names: :class:`Tree` (every label hierarchy), :class:`HierarchicalSoftmax` (the
PyTorch output layer) and :class:`LabelTree` (multi-label: a probabilistic label tree); the math
lives in :mod:`hsoftmax.functional`, the sparse-aware optimizers in :mod:`hsoftmax.optim` and the
word2vec trainer in :mod:`hsoftmax.word2vec`.
"""

from typing import TYPE_CHECKING, Any

from .tree import Tree

if TYPE_CHECKING:  # the real types for type checkers; at run time __getattr__ imports them
    from .label_tree import LabelTree, LabelTreeOutput
    from .layer import HierarchicalSoftmax, HierarchicalSoftmaxOutput

__all__ = ["Tree", "HierarchicalSoftmax", "HierarchicalSoftmaxOutput", "LabelTree", "LabelTreeOutput"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # PEP 562: torch (~180 MB resident) is imported only when the layer is used, so the word2vec
    # trainer and the CLI, which need only the Tree and numba, stay light.
    if name in ("HierarchicalSoftmax", "HierarchicalSoftmaxOutput"):
        from . import layer

        return getattr(layer, name)
    if name in ("LabelTree", "LabelTreeOutput"):
        from . import label_tree

        return getattr(label_tree, name)
    if name in ("functional", "optim", "word2vec", "metrics", "label_tree"):
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'hsoftmax' has no attribute {name!r}")

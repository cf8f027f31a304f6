r"""The CPU kernels as ``torch.library`` custom ops (``torch.ops.hsoftmax.*``), for compiled and
exported code.

Under :func:`torch.compile` or :func:`torch.export.export`, :func:`hsoftmax.functional._cpu_kernels`
returns this module instead of the eager bridge :mod:`.autograd`: dynamo must not trace into numba
(it cannot), so each kernel call is one opaque op with a fake (meta) implementation that gives
the output shapes, and :func:`torch.library.register_autograd` for the target log-prob.
Eager code keeps calling :mod:`.autograd` directly: its autograd Functions pass the forward's
plans to backward in ``ctx`` (no recomputation) and give sparse or fused-SGD gradients, which a
custom op's schema cannot carry.

What this costs under compile (documented in the layer): the target log-prob op's backward
re-runs the forward kernel to rebuild its plan, and returns dense node-table gradients. A call
with ``sparse=True`` or ``fused_sgd_lr`` therefore runs the eager bridge through
:func:`torch.compiler.disable` (a graph break, so ``fullgraph=True`` refuses it), keeping those
semantics exactly. Double backward through these ops is not supported (their backward op has
no autograd formula); eager code supports it.

Importing this module registers the ops and imports neither numba nor :mod:`.autograd`: the op
bodies import them when they first run.

Entry points mirror :mod:`.autograd`: :func:`target_log_prob`, :func:`can_fuse`,
:func:`log_prob`, :func:`topk`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:  # a runtime import would be a cycle: functional imports this package
    from ..functional import TreeTensors

__all__ = ["target_log_prob", "can_fuse", "log_prob", "topk"]

# The tree tensors an op needs, in this order (fields of hsoftmax.functional.TreeTensors).
_TREE_FIELDS = (
    "arity",
    "param_offset",
    "child_offset",
    "children",
    "decision_nodes",
    "decision_choices",
    "decision_lengths",
    "path_rows",
    "path_signs",
)


def _tree_list(tt: TreeTensors) -> list[Tensor]:
    return [getattr(tt, f) for f in _TREE_FIELDS]


def _tree(tree: list[Tensor], num_params: int) -> TreeTensors:
    """A TreeTensors with the fields the kernels read (the others empty), from the op's list."""
    from ..functional import TreeTensors

    f: dict[str, Any] = dict(zip(_TREE_FIELDS, tree))
    empty = f["arity"][:0]
    arity = f["arity"]
    return TreeTensors(
        num_classes=f["decision_lengths"].shape[0],
        num_params=num_params,
        is_binary=f["path_rows"].numel() > 0,
        is_two_level=False,
        levels=(),
        edge_rows=empty,
        edge_owner=empty,
        class_parent=empty,
        class_choice=empty,
        max_arity=int(arity.max()) if arity.numel() else 1,
        **f,
    )


def _bridge():
    from . import autograd

    return autograd


# ---------------------------------------------------------------------------- target log-prob
@torch.library.custom_op("hsoftmax::target_log_prob", mutates_args=(), device_types="cpu")
def _target_op(h: Tensor, weight: Tensor, bias: Tensor | None, target: Tensor, tree: list[Tensor]) -> Tensor:
    with torch.no_grad():
        return _bridge().target_log_prob(h, target, weight, bias, _tree(tree, weight.shape[0]), False, None)


@_target_op.register_fake
def _(h, weight, bias, target, tree):
    return h.new_empty(h.shape[0])


@torch.library.custom_op("hsoftmax::target_log_prob_backward", mutates_args=(), device_types="cpu")
def _target_backward_op(
    grad: Tensor, h: Tensor, weight: Tensor, bias: Tensor | None, target: Tensor, tree: list[Tensor]
) -> tuple[Tensor, Tensor, Tensor]:
    """``(grad_h, grad_weight, grad_bias)`` (dense; ``grad_bias`` empty without a bias): the
    eager kernel Function run again, forward then backward."""
    tt = _tree(tree, weight.shape[0])
    leaves = [t.detach().requires_grad_() for t in (h, weight)]
    if bias is not None:
        leaves.append(bias.detach().requires_grad_())
    with torch.enable_grad():
        out = _bridge().target_log_prob(
            leaves[0], target, leaves[1], leaves[2] if bias is not None else None, tt, False, None
        )
        g = torch.autograd.grad(out, leaves, grad.to(out.dtype))
    return g[0], g[1], g[2] if bias is not None else h.new_empty(0)


@_target_backward_op.register_fake
def _(grad, h, weight, bias, target, tree):
    return (
        torch.empty_like(h),
        torch.empty_like(weight),
        (torch.empty_like(bias) if bias is not None else h.new_empty(0)),
    )


def _setup(ctx, inputs, output):
    h, weight, bias, target, tree = inputs
    ctx.has_bias = bias is not None
    ctx.save_for_backward(h, weight, bias if bias is not None else h.new_empty(0), target, *tree)


def _backward(ctx, grad):
    h, weight, bias, target, *tree = ctx.saved_tensors
    gh, gw, gb = _target_backward_op(grad, h, weight, bias if ctx.has_bias else None, target, tree)
    return gh, gw, (gb if ctx.has_bias else None), None, [None] * len(tree)


_target_op.register_autograd(_backward, setup_context=_setup)


@torch.compiler.disable
def _eager_target_log_prob(h, target, weight, bias, tt, sparse, sgd_lr):
    return _bridge().target_log_prob(h, target, weight, bias, tt, sparse, sgd_lr)


def target_log_prob(
    h: Tensor,
    target: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    tt: TreeTensors,
    sparse: bool,
    sgd_lr: float | None,
) -> Tensor:
    """:func:`hsoftmax.kernels.autograd.target_log_prob` as one op; sparse gradients and fused
    SGD need the eager bridge, which runs outside the graph (a graph break)."""
    if sparse or sgd_lr is not None:
        return _eager_target_log_prob(h, target, weight, bias, tt, sparse, sgd_lr)
    return _target_op(h, weight, bias, target, _tree_list(tt))


def can_fuse(weight: Tensor, bias: Tensor | None) -> bool:
    return weight.is_contiguous() and (bias is None or bias.is_contiguous())


# ---------------------------------------------------------------------------- inference
@torch.library.custom_op("hsoftmax::log_prob", mutates_args=(), device_types="cpu")
def _log_prob_op(h: Tensor, weight: Tensor, bias: Tensor | None, tree: list[Tensor]) -> Tensor:
    return _bridge().log_prob(h, weight, bias, _tree(tree, weight.shape[0]))


@_log_prob_op.register_fake
def _(h, weight, bias, tree):
    return h.new_empty(h.shape[0], tree[_TREE_FIELDS.index("decision_lengths")].shape[0])


@torch.library.custom_op("hsoftmax::topk", mutates_args=(), device_types="cpu")
def _topk_op(h: Tensor, k: int, weight: Tensor, bias: Tensor | None, tree: list[Tensor]) -> tuple[Tensor, Tensor]:
    return _bridge().topk(h, k, weight, bias, _tree(tree, weight.shape[0]))


@_topk_op.register_fake
def _(h, k, weight, bias, tree):
    return h.new_empty(h.shape[0], k), h.new_empty(h.shape[0], k, dtype=torch.long)


def log_prob(h: Tensor, weight: Tensor, bias: Tensor | None, tt: TreeTensors) -> Tensor:
    """:func:`hsoftmax.kernels.autograd.log_prob` as one op (inference only)."""
    return _log_prob_op(h, weight, bias, _tree_list(tt))


def topk(h: Tensor, k: int, weight: Tensor, bias: Tensor | None, tt: TreeTensors) -> tuple[Tensor, Tensor]:
    """:func:`hsoftmax.kernels.autograd.topk` as one op."""
    return _topk_op(h, k, weight, bias, _tree_list(tt))

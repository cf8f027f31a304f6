r"""Optimizers for the node table: row-sparse updates, paired with any optimizer for the rest.

A :class:`~hsoftmax.HierarchicalSoftmax` with ``sparse=True`` hands its ``weight``/``bias`` a
sparse gradient holding only the rows on the batch's paths (already coalesced: unique, sorted
rows). A dense optimizer step would read and write the whole ``(num_params, d)`` table instead
(about 1 GB at a million classes), which costs more than the layer itself. This module:

* :class:`SparseSGD` and :class:`SparseAdamW`: update only the rows present in a sparse gradient
  (dense gradients work too: then every row is updated). ``SparseAdamW`` is "lazy" Adam with
  decoupled weight decay: a row's moments and weight decay advance only on steps that touch it,
  like :class:`torch.optim.SparseAdam` (which has no weight decay).
* :func:`sparse_parameters` finds the node tables of every sparse HS layer in a model.
* :func:`paired` builds one optimizer object that steps the node tables with a sparse optimizer
  and everything else with the optimizer class you name.
* :func:`clip_grad_norm_` and :func:`clip_grad_value_`: :mod:`torch.nn.utils`'s clipping, for a
  model whose gradients are sparse and dense alike (torch's own raise on sparse gradients).

Example::

    >>> import torch
    >>> from hsoftmax import HierarchicalSoftmax, Tree
    >>> from hsoftmax.optim import paired
    >>> model = torch.nn.ModuleDict({
    ...     "body": torch.nn.Linear(8, 16),
    ...     "head": HierarchicalSoftmax(16, Tree.huffman([5, 4, 3, 2, 1, 1]), sparse=True),
    ... })
    >>> opt = paired(model, torch.optim.AdamW, lr=1e-2, weight_decay=0.01)
    >>> [type(o).__name__ for o in opt.optimizers]
    ['AdamW', 'SparseAdamW']
    >>> x, y = torch.randn(4, 8), torch.tensor([0, 1, 2, 5])
    >>> loss = model["head"](model["body"](x), y).loss
    >>> loss.backward()
    >>> opt.step()
    >>> opt.zero_grad()
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "SparseSGD",
    "SparseAdamW",
    "MultiOptimizer",
    "sparse_parameters",
    "paired",
    "clip_grad_norm_",
    "clip_grad_value_",
]


def _rows_and_values(grad: Tensor) -> tuple[Tensor | None, Tensor]:
    """``(row indices, values)`` of a gradient: for a sparse COO gradient its (coalesced) rows,
    for a dense one ``(None, grad)`` meaning every row."""
    if grad.is_sparse:
        if grad.is_coalesced():
            return grad.indices()[0], grad.values()
        if _unique_sorted_rows(grad):
            return grad._indices()[0], grad._values()
        g = grad.coalesce()
        return g.indices()[0], g.values()
    return None, grad


def _unique_sorted_rows(grad: Tensor) -> bool:
    """Whether a sparse gradient's entries are rows in strictly increasing order. The autograd
    engine drops the "coalesced" flag when it stores a gradient, but the HS layer's rows are
    already unique and sorted: checking that costs O(rows), coalesce() a sort and a copy."""
    idx = grad._indices()
    if idx.shape[0] != 1:
        return False
    r = idx[0]
    return r.numel() < 2 or bool((r[1:] > r[:-1]).all())


class SparseSGD(torch.optim.Optimizer):
    r"""Plain SGD that writes only the rows present in a sparse gradient.

    ``p[rows] -= lr * (grad[rows] + weight_decay * p[rows])``; with a dense gradient every row is
    updated (then it is ordinary SGD). Weight decay is lazy: it applies to a row only on steps
    that touch it. No momentum (a lazy momentum would not be SGD's).

    Args:
        params: parameters or parameter groups.
        lr: learning rate. weight_decay: L2 penalty coefficient (default 0).
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-2, weight_decay: float = 0.0) -> None:
        if not lr >= 0.0:
            raise ValueError(f"invalid learning rate {lr}")
        if not weight_decay >= 0.0:
            raise ValueError(f"invalid weight_decay {weight_decay}")
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay})

    @torch.no_grad()
    # torch types the closure as returning float; a training closure returns the loss tensor,
    # which step passes through unchanged (as torch's own optimizers do at run time).
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                rows, g = _rows_and_values(p.grad)
                if rows is None:
                    if wd:
                        g = g.add(p, alpha=wd)
                    p.add_(g, alpha=-lr)
                    continue
                if _sgd_rows_kernel(p, rows, g, lr, wd):
                    continue
                if wd:
                    g = g.add(p.index_select(0, rows), alpha=wd)
                p.index_add_(0, rows, g.to(p.dtype), alpha=-lr)
        return loss


def _sgd_rows_kernel(p: Tensor, rows: Tensor, g: Tensor, lr: float, wd: float) -> bool:
    """The row update of :class:`SparseSGD` with the parallel CPU kernel, when it applies (a
    contiguous float32/float64 CPU table, gradient of the same dtype, unique rows, enough work
    to be worth waking the threads). Returns whether it ran."""
    if (
        p.device.type != "cpu"
        or p.dtype not in (torch.float32, torch.float64)
        or g.dtype != p.dtype
        or not p.is_contiguous()
        or p.dim() != 2
        or g.numel() < (1 << 16)
    ):
        return False
    from . import kernels as K

    k = K.cpu()
    if k is None:
        return False
    k.sgd_rows(p.detach().numpy(), rows.contiguous().numpy(), g.contiguous().numpy(), float(lr), float(wd))
    K.bump_version(p)
    return True


class SparseAdamW(torch.optim.Optimizer):
    r"""Lazy AdamW: Adam moments and decoupled weight decay, advanced only for touched rows.

    For the rows ``R`` present in the gradient ``g`` at step ``t`` (the parameter's step count)::

        m[R] = b1 * m[R] + (1 - b1) * g[R]
        v[R] = b2 * v[R] + (1 - b2) * g[R]**2
        p[R] -= lr * (m[R] / (1 - b1**t)) / (sqrt(v[R] / (1 - b2**t)) + eps) + lr * wd * p[R]

    This is :class:`torch.optim.SparseAdam`'s rule plus AdamW's weight decay; with a dense
    gradient every row is touched and it equals :class:`torch.optim.AdamW` (``amsgrad=False``).

    Args:
        params: parameters or parameter groups.
        lr, betas, eps, weight_decay: as in :class:`torch.optim.AdamW` (``weight_decay`` defaults
            to 0.01 there and here).
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
    ) -> None:
        if not lr >= 0.0:
            raise ValueError(f"invalid learning rate {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"invalid betas {betas}")
        if not eps >= 0.0 or not weight_decay >= 0.0:
            raise ValueError(f"invalid eps {eps} or weight_decay {weight_decay}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    # torch types the closure as returning float; a training closure returns the loss tensor,
    # which step passes through unchanged (as torch's own optimizers do at run time).
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st["step"] = 0
                    st["exp_avg"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
                    st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
                st["step"] += 1
                t = st["step"]
                c1 = 1.0 - b1**t
                c2 = 1.0 - b2**t
                rows, g = _rows_and_values(p.grad)
                m, v = st["exp_avg"], st["exp_avg_sq"]
                if rows is None:  # dense: every row, in place
                    pr, mr, vr = p, m, v
                else:
                    pr, mr, vr = p.index_select(0, rows), m.index_select(0, rows), v.index_select(0, rows)
                g = g.to(p.dtype)
                mr.mul_(b1).add_(g, alpha=1.0 - b1)
                vr.mul_(b2).addcmul_(g, g, value=1.0 - b2)
                denom = (vr / c2).sqrt_().add_(eps)
                upd = (mr / c1).div_(denom)
                if wd:
                    upd.add_(pr, alpha=wd)
                if rows is None:
                    p.add_(upd, alpha=-lr)
                else:
                    m.index_copy_(0, rows, mr)
                    v.index_copy_(0, rows, vr)
                    p.index_add_(0, rows, upd, alpha=-lr)
        return loss


class MultiOptimizer:
    """Several optimizers stepped as one (``step``, ``zero_grad``, ``state_dict``,
    ``load_state_dict``, ``param_groups``), e.g. a dense one for the model body and a sparse
    one for the node tables. Learning-rate schedulers take the individual ``optimizers``."""

    def __init__(self, *optimizers: torch.optim.Optimizer | None) -> None:  # None entries are skipped
        self.optimizers = [o for o in optimizers if o is not None]

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [g for o in self.optimizers for g in o.param_groups]

    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for o in self.optimizers:
            o.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"optimizers": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        states = state["optimizers"]
        if len(states) != len(self.optimizers):
            raise ValueError(f"state has {len(states)} optimizers, this has {len(self.optimizers)}")
        for o, s in zip(self.optimizers, states):
            o.load_state_dict(s)

    def __repr__(self) -> str:
        return "MultiOptimizer(" + ", ".join(type(o).__name__ for o in self.optimizers) + ")"


def sparse_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The node tables (``weight`` and ``bias``) of every ``HierarchicalSoftmax`` in ``model``
    built with ``sparse=True``: the parameters that receive sparse gradients."""
    from .layer import HierarchicalSoftmax

    out: list[nn.Parameter] = []
    seen: set[int] = set()
    for m in model.modules():
        if isinstance(m, HierarchicalSoftmax) and m.sparse:
            for p in (m.weight, m.bias):
                if p is not None and p.requires_grad and id(p) not in seen:
                    seen.add(id(p))
                    out.append(p)
    return out


def paired(
    model: nn.Module,
    optimizer_cls: type[torch.optim.Optimizer] = torch.optim.AdamW,
    *,
    sparse_optimizer: type[torch.optim.Optimizer] | None = None,
    sparse_kwargs: dict[str, Any] | None = None,
    **kwargs: Any,
) -> MultiOptimizer:
    """One optimizer for a model with sparse HS layers: the node tables found by
    :func:`sparse_parameters` get a row-sparse optimizer, every other trainable parameter gets
    ``optimizer_cls(params, **kwargs)``.

    Args:
        model: the whole model (its sparse ``HierarchicalSoftmax`` layers anywhere inside).
        optimizer_cls: the optimizer for the rest of the model (any ``torch.optim`` class).
        sparse_optimizer: the node-table optimizer. Default: matched to ``optimizer_cls``:
            :class:`SparseSGD` for SGD (momentum is dropped: it has no lazy form),
            :class:`torch.optim.SparseAdam` for Adam, :class:`SparseAdamW` for anything else.
        sparse_kwargs: its keyword arguments. Default: the ``lr`` (and, where the sparse
            optimizer takes them, ``weight_decay``, ``betas``, ``eps``) from ``kwargs``.

    Returns:
        a :class:`MultiOptimizer`; its ``optimizers`` are ``[dense, sparse]`` (either left out
        when it would have no parameters).
    """
    sparse = sparse_parameters(model)
    ids = {id(p) for p in sparse}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    if sparse_optimizer is None:
        if issubclass(optimizer_cls, torch.optim.SGD):
            sparse_optimizer = SparseSGD
        elif optimizer_cls is torch.optim.Adam:
            sparse_optimizer = torch.optim.SparseAdam
        else:
            sparse_optimizer = SparseAdamW
    if sparse_kwargs is None:
        allowed = {
            SparseSGD: ("lr", "weight_decay"),
            torch.optim.SparseAdam: ("lr", "betas", "eps"),
            SparseAdamW: ("lr", "betas", "eps", "weight_decay"),
        }.get(sparse_optimizer, ("lr",))
        sparse_kwargs = {k: v for k, v in kwargs.items() if k in allowed}
    dense_opt = optimizer_cls(rest, **kwargs) if rest else None
    sparse_opt = sparse_optimizer(sparse, **sparse_kwargs) if sparse else None
    return MultiOptimizer(dense_opt, sparse_opt)


# ---------------------------------------------------------------------------- clipping
def _grads(parameters: Tensor | Iterable[Tensor]) -> list[Tensor]:
    """The parameters' gradients (``None`` skipped), each sparse one made coalesced in place
    (``p.grad`` replaced) unless its rows are already unique: a sparse gradient's duplicate
    entries add up, so its values can be measured or clamped only once they have been summed."""
    params = [parameters] if isinstance(parameters, Tensor) else list(parameters)
    out = []
    for p in params:
        g = p.grad
        if g is None:
            continue
        if g.is_sparse:
            if not (g.is_coalesced() or _unique_sorted_rows(g)):
                g = p.grad = g.coalesce()
        elif g.layout != torch.strided:
            raise TypeError(f"gradients of layout {g.layout} are not supported")
        out.append(g)
    return out


def _values(g: Tensor) -> Tensor:
    """The stored entries of a gradient (a view: writing to it writes the gradient)."""
    return g._values() if g.is_sparse else g


def _check_real(name: str, value: Any) -> float:
    """``float(value)`` as torch does it, but a string or a bool is an error, not a number."""
    if isinstance(value, (bool, str, bytes)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    return float(value)


@torch.no_grad()
def clip_grad_norm_(
    parameters: Tensor | Iterable[Tensor],
    max_norm: float,
    norm_type: float | str = 2.0,
    error_if_nonfinite: bool = False,
    foreach: bool | None = None,
) -> Tensor:
    r"""Scale the gradients so that their total norm is at most ``max_norm``, like
    :func:`torch.nn.utils.clip_grad_norm_`, sparse gradients included.

    The total norm is that of every gradient entry as one vector (a sparse gradient counts its
    stored rows, after summing duplicates; absent rows are zeros); every gradient is multiplied
    by ``min(1, max_norm / (total_norm + 1e-6))``, without a host sync. Sparse gradients stay
    sparse (use it between ``backward`` and a sparse optimizer's ``step``). ``foreach`` is
    accepted for torch's signature and ignored.

    Returns:
        the total norm of the gradients before clipping (a 0-d tensor).

    Example::

        >>> import torch
        >>> from hsoftmax import HierarchicalSoftmax, Tree
        >>> from hsoftmax.optim import clip_grad_norm_
        >>> hs = HierarchicalSoftmax(8, Tree.huffman([5, 4, 3, 2, 1]), sparse=True)
        >>> hs(torch.randn(4, 8), torch.tensor([0, 1, 2, 4])).loss.backward()
        >>> hs.weight.grad.is_sparse
        True
        >>> total = clip_grad_norm_(hs.parameters(), max_norm=0.01)
        >>> bool(clip_grad_norm_(hs.parameters(), max_norm=1.0) <= 0.01)
        True
    """
    del foreach
    max_norm = _check_real("max_norm", max_norm)
    norm_type = float(norm_type)  # as torch: 'inf' is accepted
    grads = _grads(parameters)
    if not grads:
        return torch.tensor(0.0)
    first_device = grads[0].device
    norms = [torch.linalg.vector_norm(_values(g), norm_type) for g in grads]
    total = torch.linalg.vector_norm(torch.stack([n.to(first_device) for n in norms]), norm_type)
    if error_if_nonfinite and torch.logical_or(total.isnan(), total.isinf()):
        raise RuntimeError(
            f"the total norm of order {norm_type} of the gradients is non-finite, so it cannot be "
            "clipped; set error_if_nonfinite=False to scale by it anyway"
        )
    # Multiplying by a coefficient clamped to 1 avoids an `if` (a host sync on a GPU).
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in grads:
        _values(g).mul_(coef.to(g.device))
    return total


@torch.no_grad()
def clip_grad_value_(parameters: Tensor | Iterable[Tensor], clip_value: float, foreach: bool | None = None) -> None:
    """Clamp every gradient entry to ``[-clip_value, clip_value]``, like
    :func:`torch.nn.utils.clip_grad_value_`, sparse gradients included (their duplicate entries
    are summed first, so the clamped gradient equals the dense one clamped). ``foreach`` is
    accepted for torch's signature and ignored."""
    del foreach
    clip_value = _check_real("clip_value", clip_value)
    for g in _grads(parameters):
        _values(g).clamp_(min=-clip_value, max=clip_value)

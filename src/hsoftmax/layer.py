r"""``HierarchicalSoftmax``: an exact, tree-structured output layer for PyTorch."""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Mapping
from typing import Any, NamedTuple, TypeVar

import numpy as np
import torch
from torch import Tensor, nn

from . import functional as HF
from .tree import _STATE_ARRAYS as _TREE_FIELDS
from .tree import Tree

__all__ = ["HierarchicalSoftmax", "HierarchicalSoftmaxOutput", "NodeTable", "TreeInStateDict"]

_REDUCTIONS = ("mean", "sum", "none")
_OVERFLOW = (
    "the node scores W @ input + b overflowed (NaN log-probabilities): the input or the weights "
    "are too large for their dtype; scale the input down or compute in float64"
)


class HierarchicalSoftmaxOutput(NamedTuple):
    """``output``: log-probability of each target (0 where ignored), shaped like the target.
    ``loss``: the reduced negative log-likelihood (shaped like the target for ``'none'``)."""

    output: Tensor
    loss: Tensor


class NodeTable(nn.Embedding):
    """The node table of a :class:`HierarchicalSoftmax`: ``weight`` ``(num_params, in_features)``,
    one row per internal-node parameter row (word2vec's ``syn1``), and ``bias`` ``(num_params,)``
    or ``None``.

    It is an embedding of the tree's internal nodes, read along paths by the layer rather than
    through ``forward``. Being an :class:`torch.nn.Embedding` is what lets
    :class:`~torch.nn.parallel.DistributedDataParallel` all-reduce its sparse gradients: DDP
    expects sparse gradients only from parameters owned by an Embedding with ``sparse=True``.
    """

    def __init__(
        self,
        num_params: int,
        in_features: int,
        bias: bool,
        sparse: bool,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        # _weight skips Embedding's N(0, 1) init; reset_parameters sets the layer's own.
        super().__init__(
            num_params,
            in_features,
            sparse=sparse,
            _weight=torch.empty(num_params, in_features, device=device, dtype=dtype),
        )
        self.bias = nn.Parameter(torch.empty(num_params, device=device, dtype=dtype)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Rows uniform in ``+-1/sqrt(in_features)``, as :class:`torch.nn.Linear`; bias zeros."""
        bound = 1.0 / math.sqrt(self.embedding_dim)
        with torch.no_grad():
            nn.init.uniform_(self.weight, -bound, bound)
            if self.bias is not None:
                nn.init.zeros_(self.bias)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, bias={self.bias is not None}, sparse={self.sparse}"


class TreeInStateDict(nn.Module):
    """The checkpoint format shared by the modules that own a :class:`~hsoftmax.Tree` (``tree``)
    and a :class:`NodeTable` (``table``): :class:`HierarchicalSoftmax` and
    :class:`~hsoftmax.LabelTree`.

    The tree travels in the state dict as the plain integer, ``uint8`` and ``bool`` tensors of
    :meth:`Tree.state` under ``tree.<field>``, so that ``torch.load(weights_only=True)`` and
    safetensors carry it. They are not buffers: a buffer would follow ``.to()`` onto the GPU and
    be broadcast by DDP every step, and nothing but a checkpoint needs them. ``load_state_dict``
    checks the saved tree and never replaces the module's: one that differs is an error naming
    the subclass's :meth:`from_state_dict`, and the module is left as it was.
    """

    tree: Tree
    table: NodeTable

    def _tree_state(self) -> dict[str, Any]:
        """``self.tree.state()``, computed once per tree (a tree is immutable)."""
        cached = self.__dict__.get("_tree_state_cache")
        if cached is None or cached[0] is not self.tree:
            cached = self.__dict__["_tree_state_cache"] = (self.tree, self.tree.state())
        return cached[1]

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        # Fresh copies: whatever a caller does to them (an EMA helper copying into every entry)
        # must not reach this module's tree.
        for field, array in self._tree_state().items():
            destination[prefix + "tree." + field] = torch.from_numpy(array.copy())

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        saved = _pop_saved_tree(state_dict, prefix, unexpected_keys)
        if saved is None:
            missing_keys.extend(prefix + "tree." + field for field in self._tree_state())
        else:
            problem: str | None = None
            try:
                tree = Tree.from_state(saved)
            except (ValueError, TypeError, RuntimeError) as e:
                problem = f"the tree saved under {prefix + 'tree.'!r} is not a valid tree: {e}"
            else:
                if tree != self.tree:
                    problem = _tree_mismatch(tree, self.tree, prefix, type(self).__name__)
            if problem is not None:
                error_msgs.append(problem)
                # Leave this module as it is: its rows would mean nothing on the other tree.
                for name, param in self.table.named_parameters(recurse=False):
                    if prefix + "table." + name in state_dict:
                        state_dict[prefix + "table." + name] = param
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    @staticmethod
    def tree_from_state_dict(state_dict: Mapping[str, Any], prefix: str = "") -> Tree:
        """The tree saved in a state dict by the module at ``prefix`` (e.g. ``"head."`` for
        ``model.head``), validated like any loaded tree (a checkpoint is not trusted).

        Build the model with it to load a checkpoint whose tree you do not have::

            tree = HierarchicalSoftmax.tree_from_state_dict(sd, prefix="head.")
            model = MyModel(tree=tree)  # whatever builds the model around the layer
            model.load_state_dict(sd)
        """
        saved = _pop_saved_tree(dict(state_dict), prefix, [])
        if saved is None:
            raise KeyError(f"the state dict has no tree under {prefix + 'tree.'!r}")
        return Tree.from_state(saved)

    @classmethod
    def from_state_dict(cls: type[_M], state_dict: Mapping[str, Any], prefix: str = "", **kwargs: Any) -> _M:
        """A module built from a state dict saved by one (the module at ``prefix`` of a model's):
        its tree, ``in_features``, ``bias`` and dtype come from the state dict, the weights are
        loaded, and ``kwargs`` give the constructor settings a state dict does not hold
        (``sparse``, ``device``, another ``dtype``, and the class's own: ``reduction``,
        ``ignore_index``, ``fused_sgd_lr`` for :class:`HierarchicalSoftmax`, ``fill`` for
        :class:`~hsoftmax.LabelTree`)."""
        sub = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
        if "table.weight" not in sub:
            raise KeyError(f"the state dict has no {prefix + 'table.weight'!r}")
        weight = sub["table.weight"]
        kwargs.setdefault("dtype", weight.dtype)
        module = cls(weight.shape[1], cls.tree_from_state_dict(sub), bias="table.bias" in sub, **kwargs)
        module.load_state_dict(sub)
        return module


_M = TypeVar("_M", bound=TreeInStateDict)


# Attributes of HierarchicalSoftmax that live on its NodeTable.
_TABLE_ATTRS = ("weight", "bias", "sparse")


class HierarchicalSoftmax(TreeInStateDict):
    r"""Hierarchical softmax over the classes of a :class:`~hsoftmax.Tree`.

    The probability of class :math:`y` is the product of the decisions on its root-to-leaf
    path: :math:`p(y \mid h) = \prod_{(n, j) \in \mathrm{path}(y)} p_n(j \mid h)`. A binary node
    decides with one weight vector and a sigmoid, :math:`p_n(1 \mid h) = \sigma(w_n^\top h + b_n)`
    (word2vec's parametrization); a node with :math:`k > 2` children has one vector per child and
    a softmax over the siblings; a node with one child costs nothing. Every distribution the
    layer reports is therefore normalized over all classes, exactly.

    Scoring given targets (``forward``) costs :math:`O(d \cdot \text{depth})` per example and never
    builds a ``(batch, num_classes)`` tensor: binary trees gather each example's padded path of
    weight rows, two-level trees (root -> clusters -> classes) do one matmul at the root and one
    per cluster present in the batch, other trees walk their decisions step by step. On the CPU
    (float32/float64) compiled numba kernels (:mod:`hsoftmax.kernels`) do the same math in one
    pass: rows are read straight from the table (a node's rows once per batch), and the node-table
    gradient comes out already coalesced; ``topk``/``predict`` run one best-first heap search per
    example. Other devices use the torch code, which gives the same numbers.

    It mirrors :class:`torch.nn.AdaptiveLogSoftmaxWithLoss` so it can be swapped in, and adds
    ``reduction`` and ``ignore_index`` as in :class:`torch.nn.CrossEntropyLoss`.

    Args:
        in_features: size of each input sample ``d``.
        tree: the label hierarchy; its ``num_params`` rows form :attr:`weight`.
        bias: learn a bias per weight row. Default: ``True``.
        sparse: make :attr:`weight` and :attr:`bias` gradients sparse, so an optimizer step
            touches only the nodes on the batch's paths (use ``torch.optim.SGD``,
            ``torch.optim.SparseAdam``, or :func:`hsoftmax.optim.paired`, which gives the node
            table a row-sparse optimizer and the rest of the model yours).
        reduction: ``'mean'`` (over non-ignored targets), ``'sum'`` or ``'none'``.
        ignore_index: targets equal to it give output 0, are left out of the mean and get no
            gradient. Default: ``-100``.
        fused_sgd_lr: opt-in fused update (word2vec/fastText style). When a float, ``backward``
            does not leave gradients in :attr:`weight`/:attr:`bias`: it applies plain SGD to the
            node-table rows the batch touched, ``row -= fused_sgd_lr * grad`` with exactly the
            gradient it would have produced, in place, after the input gradient has been computed
            from the old rows. On the CPU kernels the update happens inside the backward kernel,
            so the gradient is never materialized and no optimizer pass over it is needed (for a
            two-level tree, where nearly every cluster is in every batch, that halves the
            step). Your optimizer then sees ``grad is None`` for the table and skips it. No
            momentum or weight decay; each backward is one update (no gradient accumulation over
            several backward calls). Call the layer once per backward (concatenate inputs):
            on the CPU kernels, a second call on the same table in one graph raises a
            ``RuntimeError`` in backward, because its input gradient would need rows the first
            update already changed. The attribute can be changed between steps (e.g. by a
            schedule); ``None`` (the default) turns it off.

    Shape:
        - input: ``(*, in_features)``; target: ``(*)`` integer class indices.
        - output: ``(*)``; loss: scalar, or ``(*)`` with ``reduction='none'``.

    Attributes:
        table: the :class:`NodeTable` holding the parameters (state-dict keys ``table.weight``
            and ``table.bias``).
        weight: ``table.weight``, ``(tree.num_params, in_features)``, initialised like
            :class:`torch.nn.Linear`.
        bias: ``table.bias``, ``(tree.num_params,)``, zeros at init, or ``None``.
        sparse: ``table.sparse``.

    Under :class:`~torch.nn.parallel.DistributedDataParallel` both dense and sparse gradients
    are averaged over the ranks (the table is an Embedding, which DDP expects sparse gradients
    from). ``fused_sgd_lr`` updates each rank's table locally, so do not use it under DDP.

    Under :func:`torch.autocast` (or with half-precision inputs/weights) the path math runs in
    float32; float64 inputs and weights compute in float64.

    Checkpoints: the state dict holds ``table.weight``, ``table.bias`` and the tree, as the
    integer, ``uint8`` and ``bool`` tensors of :meth:`Tree.state` under ``tree.<field>`` (labels
    included, losslessly), so both ``torch.load`` with its default ``weights_only=True`` and
    ``safetensors.torch.save_file``/``load_file`` carry it. ``load_state_dict`` never replaces
    the module's tree: a saved tree that differs from it in any way (classes, structure,
    labels, node names) is an error, whatever ``strict`` says, and the module is left as it
    was. To take a checkpoint's tree, build the layer from it: :meth:`from_state_dict`, or
    :meth:`tree_from_state_dict` to build a whole model around it.

    Inputs are checked for NaN/Inf unless :attr:`check_finite` is ``False`` (a plain attribute,
    ``True`` by default; set it on the instance). Eager on the CPU a bad input raises
    ``ValueError``; in compiled or exported code and on other devices the check is an
    asynchronous ``torch._assert_async`` (no graph break, no host sync), which fails with a
    ``RuntimeError`` (on CUDA a device-side assert). Targets out of range are treated the same.

    ``forward``, ``log_prob``, ``topk`` and ``predict`` compile with
    ``torch.compile(fullgraph=True)`` and export with :func:`torch.export.export`: on the CPU
    kernels each call is one custom op (``torch.ops.hsoftmax.*``), and the torch path has static
    shapes (a batch size compiles once). Compiled, the kernels' backward returns dense
    gradients; with ``sparse=True`` or ``fused_sgd_lr`` the call runs eagerly (a graph break, so
    not under ``fullgraph=True``) to keep those semantics. Compiled on the torch path, ``topk``
    ranks the full ``log_prob`` (exact, but O(batch * num_classes)).

    Example::

        >>> import torch
        >>> from hsoftmax import HierarchicalSoftmax, Tree
        >>> tree = Tree.huffman([50, 20, 10, 10, 5, 5])
        >>> hs = HierarchicalSoftmax(16, tree)
        >>> x, y = torch.randn(4, 16), torch.tensor([0, 3, 5, 1])
        >>> out, loss = hs(x, y)
        >>> out.shape, loss.shape
        (torch.Size([4]), torch.Size([]))
        >>> torch.allclose(hs.log_prob(x).exp().sum(-1), torch.ones(4))
        True
        >>> hs.topk(x, 2).indices.shape
        torch.Size([4, 2])
    """

    #: Check inputs for NaN/Inf (see the class docstring); ``False`` skips the check.
    check_finite: bool = True

    def __init__(
        self,
        in_features: int,
        tree: Tree,
        bias: bool = True,
        sparse: bool = False,
        reduction: str = "mean",
        ignore_index: int = -100,
        device: Any = None,
        dtype: torch.dtype | None = None,
        fused_sgd_lr: float | None = None,
    ) -> None:
        super().__init__()
        in_features = _check_in_features_and_tree(in_features, tree)
        _check_reduction(reduction)
        ignore_index = _as_int("ignore_index", ignore_index)
        factory = {"device": device, "dtype": dtype}
        self.in_features = in_features
        self.reduction = reduction
        self.ignore_index = ignore_index
        self.fused_sgd_lr = fused_sgd_lr
        self.table = NodeTable(tree.num_params, in_features, bias=bias, sparse=bool(sparse), **factory)
        self._set_tree(tree, device)

    # The parameters live on the NodeTable; these read and assign through to it.
    weight = property(lambda self: self.table.weight)
    bias = property(lambda self: self.table.bias)
    sparse = property(lambda self: self.table.sparse)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "fused_sgd_lr" and value is not None:
            # Checked on every assignment (a schedule may set it); forward checks the range.
            value = _as_real("fused_sgd_lr", value, "None or a real number")
        if name in _TABLE_ATTRS and "table" in self.__dict__.get("_modules", {}):
            setattr(self._modules["table"], name, bool(value) if name == "sparse" else value)
        else:
            super().__setattr__(name, value)

    # ------------------------------------------------------------------ tree state
    def _set_tree(self, tree: Tree, device: Any = None) -> None:
        self.tree = tree
        tt = HF.tree_tensors(tree, device=device)
        self._tt_static = {k: v for k, v in tt._asdict().items() if not isinstance(v, Tensor)}
        for name, value in tt._asdict().items():
            if isinstance(value, Tensor):
                # Non-persistent: the tree travels in the state dict as tree.<field> tensors.
                self.register_buffer(f"_tree_{name}", value, persistent=False)

    @property
    def tree_tensors(self) -> HF.TreeTensors:
        """The tree's arrays as tensors on this module's device."""
        # Cached per set of buffer objects: ``.to()``/``_set_tree`` replace the buffers, which
        # invalidates the cache (rebuilding costs ~30 us, a tenth of a small top-k call).
        key = tuple(map(id, self._buffers.values()))
        cached = self.__dict__.get("_tt_cache")
        if cached is not None and cached[0] == key:
            return cached[1]
        fields: dict[str, Any] = {k: getattr(self, f"_tree_{k}", None) for k in HF.TreeTensors._fields}
        fields.update(self._tt_static)
        tt = HF.TreeTensors(**fields)
        self.__dict__["_tt_cache"] = (key, tt, tuple(self._buffers.values()))
        return tt

    @property
    def num_classes(self) -> int:
        return self.tree.num_classes

    def reset_parameters(self) -> None:
        self.table.reset_parameters()

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, num_classes={self.num_classes}, tree={self.tree!r}, "
            f"bias={self.bias is not None}, sparse={self.sparse}, reduction={self.reduction!r}"
            + ("" if self.fused_sgd_lr is None else f", fused_sgd_lr={self.fused_sgd_lr}")
        )

    # ------------------------------------------------------------------ checks
    def _prepare_input(self, input: Tensor) -> Tensor:
        # Type, shape, device and dtype first: they cost nothing and never touch the data.
        if not isinstance(input, Tensor):
            raise TypeError(f"input must be a torch.Tensor, got {type(input).__name__}")
        if not input.is_floating_point():
            raise TypeError(f"input must be a floating-point tensor, got {input.dtype}")
        if input.dim() < 1 or input.shape[-1] != self.in_features:
            raise ValueError(
                f"input's last dimension must be in_features={self.in_features}, got shape {tuple(input.shape)}"
            )
        if input.device != self.weight.device:
            raise ValueError(f"input is on {input.device} but the layer is on {self.weight.device}")
        if self.check_finite and input.numel():
            _check_finite(input)
        dtype = torch.promote_types(input.dtype, self.weight.dtype)
        if dtype not in (torch.float32, torch.float64):
            dtype = torch.float32  # half-precision path math overflows; float32 is exact enough
        x = input.reshape(-1, self.in_features)
        return x if x.dtype == dtype else x.to(dtype)

    def _check_target(self, target: Tensor, batch_shape: torch.Size) -> Tensor:
        if not isinstance(target, Tensor):
            raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise TypeError(f"target must be an integer tensor of class indices, got {target.dtype}")
        if target.shape != batch_shape:
            raise ValueError(
                f"target shape {tuple(target.shape)} does not match input batch shape {tuple(batch_shape)}"
            )
        return target.reshape(-1).long()

    def _check_range(self, target: Tensor) -> None:
        _check_class_range(target, self.num_classes)

    def _check_scores(self, log_probs: Tensor) -> None:
        """Reject a NaN result: with finite inputs (checked) it means that a node's score
        ``W h + b`` overflowed the dtype (e.g. ``x * 1e38`` in float32, where products of
        opposite signs overflow to inf - inf), so no answer would be right. Log-probs are <= 0,
        so their sum is NaN exactly when one of them is: one cheap reduction decides."""
        if not self.check_finite or not log_probs.numel():
            return
        if torch.compiler.is_compiling() or log_probs.device.type != "cpu":
            torch._assert_async(~torch.isnan(log_probs).any(), _OVERFLOW)
        elif math.isnan(float(log_probs.detach().sum())):
            raise ValueError(_OVERFLOW)

    def _assert_range(self, target: Tensor, keep: Tensor) -> None:
        """:meth:`_check_range` without a host sync (compiled code, other devices), for the
        targets where ``keep``: an asynchronous assert that fails the run when it is reached."""
        bad = keep & ((target < 0) | (target >= self.num_classes))
        torch._assert_async(~bad.any(), f"target out of range [0, {self.num_classes})")

    # ------------------------------------------------------------------ forward
    def forward(self, input: Tensor, target: Tensor) -> HierarchicalSoftmaxOutput:
        """Log-probability of each target and the reduced NLL loss (see the class docstring)."""
        h = self._prepare_input(input)
        t = self._check_target(target, input.shape[:-1])
        keep = t != self.ignore_index
        if torch.compiler.is_compiling() or h.device.type != "cpu":
            return self._forward_static(h, t, keep, target.shape)
        all_kept = bool(keep.all())
        tv = t if all_kept else t[keep]
        self._check_range(tv)
        lr = self._fused_lr()
        with _no_autocast(h):
            if all_kept:
                out = HF.target_log_prob(h, tv, self.weight, self.bias, self.tree_tensors, self.sparse, lr)
            else:
                idx = torch.nonzero(keep).squeeze(1)
                lp = HF.target_log_prob(h[idx], tv, self.weight, self.bias, self.tree_tensors, self.sparse, lr)
                out = h.new_zeros(t.shape[0]).index_put((idx,), lp)
        self._check_scores(out)
        return self._reduce(out.view(target.shape), tv.numel())

    def _forward_static(self, h: Tensor, t: Tensor, keep: Tensor, shape: torch.Size) -> HierarchicalSoftmaxOutput:
        """:meth:`forward` with no data-dependent shape and no host sync (compiled or exported
        code, and devices other than the CPU): ignored targets are scored as class 0 and masked
        out, so their rows get no gradient, instead of being cut out of the batch."""
        self._assert_range(t, keep)
        lr = self._fused_lr()
        with _no_autocast(h):
            lp = HF.target_log_prob(
                h, torch.where(keep, t, 0), self.weight, self.bias, self.tree_tensors, self.sparse, lr
            )
        out = torch.where(keep, lp, 0.0)
        self._check_scores(out)
        return self._reduce(out.view(shape), keep.sum())

    def _fused_lr(self) -> float | None:
        lr = self.fused_sgd_lr
        if lr is not None:
            lr = float(lr)
            if not (math.isfinite(lr) and lr >= 0):
                raise ValueError(f"fused_sgd_lr must be None or a finite number >= 0, got {self.fused_sgd_lr!r}")
            if not torch.is_grad_enabled():
                lr = None
        return lr

    def _reduce(self, out: Tensor, count: int | Tensor) -> HierarchicalSoftmaxOutput:
        """The loss from the per-target log-probs ``out`` (0 where ignored); ``count`` is the
        number of kept targets (a tensor in the static path)."""
        if self.reduction == "none":
            loss = -out
        elif self.reduction == "sum":
            loss = -out.sum()
        elif isinstance(count, Tensor):
            loss = -out.sum() / count.clamp(min=1)
        else:
            loss = -out.sum() / max(count, 1)
        return HierarchicalSoftmaxOutput(out, loss)

    def log_prob(self, input: Tensor) -> Tensor:
        """Exact log-probabilities of every class: ``(*, num_classes)``; each row's ``exp`` sums to 1.

        This is the one method that builds a ``(batch, num_classes)`` tensor, because it returns one.
        """
        h = self._prepare_input(input)
        with _no_autocast(h):
            lp = HF.log_prob(h, self.weight, self.bias, self.tree_tensors)
        self._check_scores(lp)
        return lp.view(*input.shape[:-1], self.num_classes)

    def topk(self, input: Tensor, k: int) -> torch.return_types.topk:
        """The ``k`` most probable classes, exactly, by best-first tree search.

        Returns ``(values, indices)``, each ``(*, k)``, sorted by descending log-probability; equal
        to ``log_prob(input).topk(k)`` at a cost that grows with ``k * depth``, not ``num_classes``.
        """
        k = _check_k(k, self.num_classes)
        h = self._prepare_input(input)
        with _no_autocast(h):
            vals, idx = HF.topk(h, k, self.weight.detach(), _detach(self.bias), self.tree_tensors)
        self._check_scores(vals)
        shape = (*input.shape[:-1], k)
        return torch.return_types.topk((vals.view(shape), idx.view(shape)))

    def predict(self, input: Tensor) -> Tensor:
        """The most probable class of each input: ``(*)``, by tree search (no full softmax)."""
        return self.topk(input, 1).indices.squeeze(-1)

    def sample(
        self,
        input: Tensor,
        num_samples: int = 1,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Classes drawn from ``p(. | input)`` by ancestral sampling: ``(*, num_samples)``.

        Each draw walks from the root, picking a child from every node's distribution, so it costs
        O(depth). ``temperature`` divides every node's logits on the way down; note that this is not
        the same as tempering the whole distribution (``p(y)^(1/T)``, renormalized) unless the tree
        has a single level.
        """
        num_samples = _as_int("num_samples", num_samples, minimum=1)
        temperature = _as_real("temperature", temperature)
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
        h = self._prepare_input(input)
        with _no_autocast(h):
            draws = HF.sample(
                h,
                num_samples,
                self.weight.detach(),
                _detach(self.bias),
                self.tree_tensors,
                temperature=float(temperature),
                generator=generator,
            )
        return draws.view(*input.shape[:-1], num_samples)


def _no_autocast(h: Tensor) -> contextlib.AbstractContextManager:
    """Autocast off for the path math (it picks its own dtype); a no-op context when autocast
    is not on, so exported graphs carry no autocast region."""
    if torch.is_autocast_enabled(h.device.type):
        return torch.autocast(device_type=h.device.type, enabled=False)
    return contextlib.nullcontext()


def _check_finite(x: Tensor) -> None:
    """Reject NaN/Inf inputs. Eager on the CPU: a ``ValueError`` (a cheap sum decides most
    batches). Compiled or exported code, and other devices: ``torch._assert_async``, which adds
    no graph break and no host sync (the GPU does not wait), and fails the run when it is
    reached (on CUDA as a device-side assert, which ends the process's CUDA context)."""
    if torch.compiler.is_compiling() or x.device.type != "cpu":
        torch._assert_async(torch.isfinite(x).all(), "input contains NaN or Inf")
    elif not _all_finite(x):
        raise ValueError("input contains NaN or Inf")


def _all_finite(x: Tensor) -> bool:
    """Whether every element of ``x`` is finite. The sum is finite exactly when no element is
    NaN or +-Inf, unless finite elements overflow it: only then is the elementwise test (about
    10x slower, e.g. 0.3 ms for a 512 x 256 float32 batch on the CPU) needed to decide."""
    with torch.no_grad():
        if math.isfinite(float(x.sum())):
            return True
        return bool(torch.isfinite(x).all())


def _detach(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.detach()


def _check_in_features_and_tree(in_features: Any, tree: Any) -> int:
    """The arguments every tree module's constructor starts with: ``in_features`` as an int
    >= 1 (returned), and ``tree`` an :class:`~hsoftmax.Tree`."""
    in_features = _as_int("in_features", in_features, minimum=1)
    if not isinstance(tree, Tree):
        raise TypeError(f"tree must be an hsoftmax.Tree, got {type(tree).__name__}")
    return in_features


def _check_reduction(reduction: Any) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _as_int(name: str, value: Any, minimum: int | None = None) -> int:
    """``value`` as an ``int``: any integer type (``np.int64`` too, as ``nn.Linear`` and
    ``torch.topk`` take), not ``bool``, a float or a string."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
    return value


def _check_class_range(target: Tensor, num_classes: int) -> None:
    """Every class index in ``target`` in ``[0, num_classes)`` (one host sync)."""
    if target.numel():
        lo_t, hi_t = torch.aminmax(target)
        lo, hi = int(lo_t), int(hi_t)
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"target {lo if lo < 0 else hi} is out of range [0, {num_classes})")


def _check_k(k: Any, num_classes: int) -> int:
    """``k`` of a top-k call as an ``int`` in ``[1, num_classes]``."""
    k = _as_int("k", k)
    if not 1 <= k <= num_classes:
        raise ValueError(f"k must be in [1, num_classes={num_classes}], got {k}")
    return k


def _as_real(name: str, value: Any, what: str = "a real number") -> float:
    """``value`` as a ``float``: any real number type, not ``bool`` or a string (``'0.1'``
    would otherwise pass through ``float()`` unnoticed)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {what}, got {type(value).__name__}")
    return float(value)


def _pop_saved_tree(state_dict: dict[str, Any], prefix: str, unexpected_keys: list[str]) -> dict[str, Any] | None:
    """Take the tree arrays of the layer at ``prefix`` out of ``state_dict``: ``{field: array}``,
    or ``None`` if it has none. Reads the ``tree.<field>`` keys, or the ``_extra_state`` of
    checkpoints written before them (a dict of numpy arrays: ``torch.load(weights_only=False)``
    only). Fields a tree does not have go to ``unexpected_keys``."""
    head = prefix + "tree."
    keys = [k for k in state_dict if k.startswith(head)]
    saved = {}
    for key in keys:
        value = state_dict.pop(key)
        field = key[len(head) :]
        if field not in _TREE_FIELDS:
            unexpected_keys.append(key)
        else:
            saved[field] = value.detach().cpu() if isinstance(value, Tensor) else value
    legacy = state_dict.pop(prefix + "_extra_state", None)
    if legacy is not None and not saved:
        if isinstance(legacy, Mapping) and isinstance(legacy.get("tree"), Mapping):
            saved = dict(legacy["tree"])
        else:
            unexpected_keys.append(prefix + "_extra_state")
    return saved or None


def _tree_mismatch(saved: Tree, own: Tree, prefix: str, owner: str) -> str:
    """The error for a state dict whose tree is not this module's: what differs, and the
    explicit way to take the saved one (``owner``: the module's class name)."""
    if (saved.num_classes, saved.num_params) != (own.num_classes, own.num_params):
        what = (
            f"it has {saved.num_classes} classes and {saved.num_params} parameter rows, this module "
            f"{own.num_classes} and {own.num_params}"
        )
    elif not (np.array_equal(saved.child_offset, own.child_offset) and np.array_equal(saved.children, own.children)):
        what = f"same sizes ({own.num_classes} classes), but another structure"
    elif saved.labels != own.labels:
        what = "same structure, but other labels"
    else:
        what = "same structure and labels, but other internal node names"
    args = "state_dict" + (f", prefix={prefix!r}" if prefix else "")
    return (
        f"the tree in the state dict (under {prefix + 'tree.'!r}) is not this module's: {what}. "
        "load_state_dict never replaces a module's tree, whatever `strict` says (the rows and "
        "class indices belong to the saved tree). To use the saved tree, build the layer from it: "
        f"{owner}.from_state_dict({args}), or build your model with "
        f"tree={owner}.tree_from_state_dict({args})."
    )

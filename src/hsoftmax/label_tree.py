r"""``LabelTree``: multi-label classification with a probabilistic label tree (PLT), in PyTorch.

Each example has a *set* of labels. A PLT (Jasinska et al. 2016, Wydmuch et al. 2018, napkinXC)
puts one logistic on every edge of a :class:`~hsoftmax.Tree` that carries a decision, and the
marginal of a label is the product of the conditionals along its path,

.. math:: P(y \in Y \mid x) = \prod_{v \in \mathrm{path}(y)} \sigma(w_v^\top x + b_v),

a calibrated per-label probability (the math, node targets and row layout are in
:mod:`hsoftmax.kernels.plt`). Training on a label set ``Y`` scores only the children of ``Y``'s
ancestors: :math:`O(d \cdot |Y| \cdot \text{depth} \cdot \text{arity})` per example, never all
labels. Top-k by marginal is exact by best-first search, since a marginal only shrinks down a
path; so is thresholded prediction, which prunes every subtree whose root is below the threshold.

Why a module of its own rather than a mode of :class:`~hsoftmax.HierarchicalSoftmax`: the two
share the ``Tree``, the :class:`~hsoftmax.layer.NodeTable` (an ``nn.Embedding``, so sparse
gradients and DDP work alike) and the checkpoint format, but not their meaning. An HS node table
has one row per binary node (a softmax over the children), a PLT's one row per child (independent
logistics); the targets are label sets, not class ids; the outputs are marginals that do not sum
to 1. A mode would make every HS method (``log_prob``, ``sample``, ``fused_sgd_lr``...) answer
wrongly or raise for half its uses.

Tree choice: any :class:`~hsoftmax.Tree`. The XMC habit (napkinXC, Parabel) is balanced k-means
over label centroids, each label represented by the mean of its examples' features:
``Tree.from_embeddings(label_centroids(X, Y), arity=16)``; a user taxonomy (``Tree.from_paths``)
and ``Tree.huffman(label_counts)`` work as well.

>>> import torch
>>> from hsoftmax import LabelTree, Tree
>>> plt = LabelTree(8, Tree.balanced(10, arity=3))
>>> x = torch.randn(2, 8)
>>> out = plt(x, torch.tensor([[1, 4, -1], [7, -1, -1]]))      # padded with -1
>>> out.losses.shape, out.loss.shape
(torch.Size([2]), torch.Size([]))
>>> same = plt(x, (torch.tensor([0, 2, 3]), torch.tensor([1, 4, 7])))   # CSR (offsets, labels)
>>> torch.allclose(out.losses, same.losses)
True
>>> top = plt.topk(x, 3)
>>> torch.equal(top.indices, plt.marginals(x).topk(3).indices)
True
"""

from __future__ import annotations

import itertools
import math
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from . import functional as HF
from .kernels import plt as P
from .layer import (
    NodeTable,
    TreeInStateDict,
    _as_int,
    _as_real,
    _check_finite,
    _check_in_features_and_tree,
    _check_k,
    _no_autocast,
)
from .tree import Tree

__all__ = [
    "LabelTree",
    "LabelTreeOutput",
    "LabelSets",
    "LinearLabelTree",
    "label_centroids",
    "with_leaf_clusters",
    "with_shortcuts",
]


class LabelTreeOutput(NamedTuple):
    """``losses``: ``(B,)`` each example's loss, the sum of the binary cross-entropies of its node
    targets; ``loss``: their mean (what to call ``backward`` on)."""

    losses: Tensor
    loss: Tensor


class LabelSets(NamedTuple):
    """Predicted label sets, CSR: example ``i``'s labels are ``labels[offsets[i]:offsets[i + 1]]``,
    by descending marginal, with their marginals (probabilities) in ``scores``."""

    offsets: Tensor
    labels: Tensor
    scores: Tensor

    def to_lists(self) -> list[list[int]]:
        """The label sets as Python lists."""
        off = self.offsets.tolist()
        lab = self.labels.tolist()
        return [lab[a:b] for a, b in itertools.pairwise(off)]


class _PLTTensors(NamedTuple):
    """The layout's arrays as tensors on the module's device, for the torch path."""

    child_offset: Tensor  # (N + 1,)
    children: Tensor  # (E,)
    row_offset: Tensor  # (N + 1,)
    edge_row: Tensor  # (E,) row of each child slot, -1 for none
    edge_owner: Tensor  # (E,) the node of each child slot
    ancestors: Tensor  # (V, depth) each class and its ancestors below the root, padded with -1


def _plt_arrays(tree: Tree, layout: P.PLTLayout) -> dict[str, np.ndarray]:
    V = tree.num_classes
    parent = layout.parent
    D = max(layout.depth, 1)
    anc = np.full((V, D), -1, dtype=np.int64)
    ref = np.arange(V)
    for j in range(D):
        live = ref >= 0
        anc[live, j] = ref[live]
        nxt = np.full_like(ref, -1)
        up = V + parent[ref[live]]
        nxt[live] = np.where(parent[up] >= 0, up, -1)
        ref = nxt
    owner = np.repeat(np.arange(tree.num_nodes), np.asarray(tree.arity))
    return {
        "child_offset": layout.child_offset,
        "children": layout.children,
        "row_offset": layout.row_offset,
        "edge_row": layout.ref_row[layout.children],
        "edge_owner": owner,
        "ancestors": anc,
    }


class LabelTree(TreeInStateDict):
    r"""A probabilistic label tree over the classes of a :class:`~hsoftmax.Tree`: multi-label
    training at a cost that grows with the labels' paths, exact top-k and thresholded prediction.

    The marginal of label :math:`y` is :math:`\prod_{v \in \mathrm{path}(y)} \sigma(w_v^\top h +
    b_v)` (see :mod:`hsoftmax.label_tree`). ``forward`` scores the node targets of each example's
    label set: the children of every positive node (an ancestor of a label, and the root), each
    a binary cross-entropy with target 1 if the child covers a label and 0 if not.

    On the CPU (float32/float64, numba enabled) the numba kernels of
    :mod:`hsoftmax.kernels.plt` do the work (node targets, scores, a coalesced node-table
    gradient, best-first search); elsewhere, or with ``HSOFTMAX_NO_KERNELS=1``, a torch path
    (gathers) computes the same numbers. The choice is :func:`hsoftmax.functional._cpu_kernels`'s,
    as for the multi-class layer.

    Args:
        in_features: size ``d`` of each input.
        tree: the label hierarchy; the node table has one row per edge that carries a decision
            (:func:`hsoftmax.kernels.plt.plt_layout`).
        bias: learn a bias per row. Default: ``True``.
        sparse: sparse gradients for :attr:`weight`/:attr:`bias` (``torch.optim.SGD``,
            ``SparseAdam``, :func:`hsoftmax.optim.paired`).
        fill: the padding value of padded targets. Default: ``-1``.

    Targets (``forward``): a padded integer tensor ``(B, max_labels)`` whose entries equal to
    ``fill`` are padding; a CSR pair ``(offsets, labels)`` as a ``tuple`` (example ``i``'s labels
    are ``labels[offsets[i]:offsets[i + 1]]``); or a ``list`` of per-example label lists. An
    example may have no labels (then every child of the root is a negative). Duplicates count once.

    Checkpoints: the state dict holds ``table.weight``, ``table.bias`` and the tree under
    ``tree.<field>``, exactly as :class:`~hsoftmax.HierarchicalSoftmax` stores it
    (``torch.load(weights_only=True)`` and safetensors carry it); loading a different tree is an
    error. :meth:`from_state_dict` builds the module from a checkpoint.

    Example::

        >>> import torch
        >>> from hsoftmax import LabelTree, Tree
        >>> tree = Tree.from_paths([["animal"], ["animal"], ["plant"], ["plant"]],
        ...                        labels=["cat", "dog", "oak", "fir"])
        >>> plt = LabelTree(4, tree)
        >>> x = torch.randn(3, 4)
        >>> plt(x, [[0, 1], [2], []]).losses.shape
        torch.Size([3])
        >>> plt.predict(x, threshold=0.0).offsets.tolist()   # threshold 0: every label
        [0, 4, 8, 12]
    """

    #: Check inputs for NaN/Inf (a plain attribute; ``False`` skips the check).
    check_finite: bool = True

    def __init__(
        self,
        in_features: int,
        tree: Tree,
        bias: bool = True,
        sparse: bool = False,
        fill: int = -1,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        in_features = _check_in_features_and_tree(in_features, tree)
        self.in_features = in_features
        self.fill = _as_int("fill", fill)
        self.tree = tree
        self.layout = P.plt_layout(tree)
        self.table = NodeTable(
            self.layout.num_rows, in_features, bias=bias, sparse=bool(sparse), device=device, dtype=dtype
        )
        for name, array in _plt_arrays(tree, self.layout).items():
            self.register_buffer(f"_plt_{name}", torch.tensor(array, device=device), persistent=False)
        depth = np.asarray(tree.node_depth)
        cuts = np.flatnonzero(np.diff(depth)) + 1
        bounds = np.concatenate([[0], cuts, [tree.num_nodes]])
        coff = self.layout.child_offset
        self._level_edges = tuple((int(coff[a]), int(coff[b])) for a, b in itertools.pairwise(bounds.tolist()))

    weight = property(lambda self: self.table.weight)
    bias = property(lambda self: self.table.bias)
    sparse = property(lambda self: self.table.sparse)

    @property
    def num_classes(self) -> int:
        return self.tree.num_classes

    def reset_parameters(self) -> None:
        self.table.reset_parameters()

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, num_classes={self.num_classes}, rows={self.layout.num_rows}, "
            f"tree={self.tree!r}, bias={self.bias is not None}, sparse={self.sparse}"
        )

    def _tensors(self) -> _PLTTensors:
        return _PLTTensors(**{k: getattr(self, f"_plt_{k}") for k in _PLTTensors._fields})

    # ------------------------------------------------------------------ checks
    def _prepare_input(self, input: Tensor) -> Tensor:
        if not isinstance(input, Tensor):
            raise TypeError(f"input must be a torch.Tensor, got {type(input).__name__}")
        if not input.is_floating_point():
            raise TypeError(f"input must be a floating-point tensor, got {input.dtype}")
        if input.dim() != 2 or input.shape[1] != self.in_features:
            raise ValueError(f"input must be (batch, in_features={self.in_features}), got shape {tuple(input.shape)}")
        if input.device != self.weight.device:
            raise ValueError(f"input is on {input.device} but the module is on {self.weight.device}")
        if self.check_finite and input.numel():
            _check_finite(input)
        dtype = torch.promote_types(input.dtype, self.weight.dtype)
        if dtype not in (torch.float32, torch.float64):
            dtype = torch.float32
        return input if input.dtype == dtype else input.to(dtype)

    def _label_sets(self, target: Any, batch: int) -> tuple[np.ndarray, np.ndarray]:
        """Any accepted target form as validated int64 CSR ``(offsets, labels)`` numpy arrays."""
        V = self.num_classes
        if isinstance(target, tuple):
            if len(target) != 2:
                raise ValueError(f"a tuple target must be the CSR pair (offsets, labels), got {len(target)} items")
            off, lab = (_as_numpy(t, name) for t, name in zip(target, ("offsets", "labels")))
            return P.check_label_sets(off, lab, V, batch)
        if isinstance(target, list):
            rows = [_as_numpy(r, f"target[{i}]").reshape(-1) for i, r in enumerate(target)]
            for i, r in enumerate(rows):
                if r.size and (r.dtype == np.bool_ or not np.issubdtype(r.dtype, np.integer)):
                    raise TypeError(f"target[{i}] must hold integer label ids, got {r.dtype}")
            sizes = [r.size for r in rows]
            off = np.zeros(len(rows) + 1, np.int64)
            np.cumsum(sizes, out=off[1:])
            lab = np.concatenate(rows).astype(np.int64) if rows else np.zeros(0, np.int64)
            return P.check_label_sets(off, lab, V, batch)
        if not isinstance(target, (Tensor, np.ndarray)):
            raise TypeError(
                "target must be a padded (batch, max_labels) integer tensor, a CSR tuple (offsets, labels) "
                f"or a list of label lists, got {type(target).__name__}"
            )
        padded = _as_numpy(target, "target")
        if padded.dtype == np.bool_ or not np.issubdtype(padded.dtype, np.integer):
            raise TypeError(f"padded targets must be integer label ids, got {padded.dtype}")
        if padded.ndim != 2 or padded.shape[0] != batch:
            raise ValueError(
                f"padded targets must be (batch={batch}, max_labels), got shape {tuple(padded.shape)}; "
                "for one label per example use target[:, None]"
            )
        keep = padded != self.fill
        labels = padded[keep].astype(np.int64)
        if labels.size and (labels.min() < 0 or labels.max() >= V):
            bad = int(labels.min() if labels.min() < 0 else labels.max())
            raise ValueError(f"target {bad} is out of range [0, {V}) (padding is fill={self.fill})")
        off = np.zeros(batch + 1, np.int64)
        np.cumsum(keep.sum(axis=1), out=off[1:])
        return off, np.ascontiguousarray(labels)

    def _kernels(self, h: Tensor) -> bool:
        """The backend choice (the multi-class layer's): the CPU kernels, or the torch path."""
        if torch.compiler.is_compiling():
            return False
        return HF._cpu_kernels(h, self.weight, self.bias) is not None

    # ------------------------------------------------------------------ training
    def forward(self, input: Tensor, target: Any) -> LabelTreeOutput:
        """Each example's loss and their mean (see the class docstring for the target forms)."""
        h = self._prepare_input(input)
        off, lab = self._label_sets(target, h.shape[0])
        if h.shape[0] == 0:
            losses = h.new_zeros(0) + 0.0 * h.sum()
            return LabelTreeOutput(losses, losses.sum())
        with _no_autocast(h):
            if self._kernels(h):
                from .kernels import plt_autograd

                losses = plt_autograd.batch_loss(
                    h, self.weight, self.bias, self.layout, off, lab, self.sparse, self._torch_loss_fn(off, lab)
                )
            else:
                losses = self._torch_losses(h, self.weight, self.bias, off, lab)
        if self.check_finite and math.isnan(float(losses.detach().sum())):
            raise ValueError(
                "the node scores W @ input + b overflowed (NaN losses): scale the input down or compute in float64"
            )
        return LabelTreeOutput(losses, losses.mean())

    def _torch_loss_fn(self, off: np.ndarray, lab: np.ndarray) -> Any:
        return lambda h, w, b: self._torch_losses(h, w, b, off, lab)

    def _torch_losses(self, h: Tensor, weight: Tensor, bias: Tensor | None, off: np.ndarray, lab: np.ndarray) -> Tensor:
        """The loss on the torch path (any device): node targets by tensor ops, scores by gathers."""
        ex, rows, targets = self._torch_node_targets(off, lab, h.device)
        B = h.shape[0]
        s = (HF._rows(weight, rows, self.sparse).to(h.dtype) * h[ex]).sum(-1)
        b = HF._bias(bias, rows, self.sparse)
        if isinstance(b, Tensor):
            s = s + b.to(h.dtype)
        per_edge = F.binary_cross_entropy_with_logits(s, targets.to(h.dtype), reduction="none")
        return h.new_zeros(B).index_add(0, ex, per_edge)

    def _torch_node_targets(self, off: np.ndarray, lab: np.ndarray, device: torch.device) -> tuple[Tensor, ...]:
        """``(example, row, target)`` of every node target of the batch, by tensor ops: the same
        targets as :func:`hsoftmax.kernels.plt.node_targets` (in another order)."""
        t = self._tensors()
        V = self.num_classes
        NR = V + self.tree.num_nodes
        B = off.shape[0] - 1
        labels = torch.as_tensor(lab, device=device)
        sizes = torch.as_tensor(np.diff(off), device=device)
        ex = torch.repeat_interleave(torch.arange(B, device=device), sizes)
        anc = t.ancestors[labels]  # (nnz, depth)
        mask = anc >= 0
        pos = torch.unique(ex[:, None].expand_as(anc)[mask] * NR + anc[mask])  # sorted (example, ref) keys
        pex, pref = pos // NR, pos % NR
        internal = pref >= V
        node_ex = torch.cat([torch.arange(B, device=device), pex[internal]])
        node = torch.cat([torch.zeros(B, dtype=torch.long, device=device), pref[internal] - V])
        k = t.row_offset[node + 1] - t.row_offset[node]  # 0 for a single-child node below the root
        total = int(k.sum())
        e_ex = torch.repeat_interleave(node_ex, k, output_size=total)
        e_node = torch.repeat_interleave(node, k, output_size=total)
        first = torch.repeat_interleave(torch.cumsum(k, 0) - k, k, output_size=total)
        slot = torch.arange(total, device=device) - first
        child = t.children[t.child_offset[e_node] + slot]
        rows = t.row_offset[e_node] + slot
        key = e_ex * NR + child
        if pos.numel():
            at = torch.searchsorted(pos, key).clamp(max=pos.numel() - 1)
            target = pos[at] == key
        else:
            target = torch.zeros_like(key, dtype=torch.bool)
        return e_ex, rows, target

    # ------------------------------------------------------------------ prediction
    @torch.no_grad()
    def log_marginals(self, input: Tensor) -> Tensor:
        """``(B, num_classes)``: the log marginal of every label (the one method that scores
        every label, because it returns them all). Not differentiable (inference)."""
        h = self._prepare_input(input)
        W, b = self.weight.detach(), _detach(self.bias)
        with _no_autocast(h):
            if self._kernels(h):
                from .kernels import plt_autograd

                return plt_autograd.log_marginals(h, W, b, self.layout)
            return self._torch_log_marginals(h, W.to(h.dtype), None if b is None else b.to(h.dtype))

    def marginals(self, input: Tensor) -> Tensor:
        """``(B, num_classes)``: every label's marginal :math:`P(y \\in Y \\mid x)` (each in
        ``[0, 1]``; they do not sum to 1)."""
        return self.log_marginals(input).exp()

    def _torch_log_marginals(self, h: Tensor, W: Tensor, b: Tensor | None) -> Tensor:
        t = self._tensors()
        V = self.num_classes
        s = h @ W.T
        if b is not None:
            s = s + b
        ls = F.logsigmoid(s)
        B = h.shape[0]
        node_lp = h.new_zeros(B, self.tree.num_nodes)
        out = h.new_empty(B, V)
        for e0, e1 in self._level_edges:  # breadth-first levels: parents before children
            row = t.edge_row[e0:e1]
            val = node_lp[:, t.edge_owner[e0:e1]] + torch.where(row >= 0, ls[:, row.clamp(min=0)], 0.0)
            child = t.children[e0:e1]
            cls = child < V
            out[:, child[cls]] = val[:, cls]
            node_lp[:, child[~cls] - V] = val[:, ~cls]
        return out

    @torch.no_grad()
    def topk(self, input: Tensor, k: int) -> torch.return_types.topk:
        """The ``k`` labels of highest marginal, exactly: ``(values, indices)``, each ``(B, k)``,
        ``values`` the marginals, descending. On the CPU kernels a best-first search per example
        (cost grows with ``k * depth``); on the torch path it ranks :meth:`log_marginals`."""
        k = _check_k(k, self.num_classes)
        h = self._prepare_input(input)
        if h.shape[0] and self._kernels(h):
            from .kernels import plt_autograd

            lp, idx = plt_autograd.topk(h, k, self.weight.detach(), _detach(self.bias), self.layout)
        else:
            lp, idx = self.log_marginals(h).topk(k, dim=1)
        return torch.return_types.topk((lp.exp(), idx))

    @torch.no_grad()
    def predict(self, input: Tensor, threshold: float = 0.5) -> LabelSets:
        """Every label whose marginal is ``>= threshold``, as CSR :class:`LabelSets` (each
        example's labels by descending marginal). The CPU kernels search the tree and skip every
        subtree whose root's marginal is below ``threshold`` (exact: marginals only shrink down a
        path); the torch path filters :meth:`marginals`."""
        t = _as_real("threshold", threshold)
        if not 0.0 <= t <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
        log_t = math.log(t) if t > 0 else -math.inf
        h = self._prepare_input(input)
        if h.shape[0] and self._kernels(h):
            from .kernels import plt_autograd

            off, lab, lp = plt_autograd.threshold(h, log_t, self.weight.detach(), _detach(self.bias), self.layout)
            return LabelSets(off, lab, lp.exp())
        lm = self.log_marginals(h)
        # Rank each row by marginal (ties by label id), keep those >= the threshold.
        order = torch.sort(lm, dim=1, descending=True, stable=True)
        keep = order.values >= log_t
        off = torch.zeros(h.shape[0] + 1, dtype=torch.long, device=h.device)
        torch.cumsum(keep.sum(1), 0, out=off[1:])
        return LabelSets(off, order.indices[keep], order.values[keep].exp())


def _detach(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.detach()


def _as_numpy(x: Any, name: str) -> np.ndarray:
    if isinstance(x, Tensor):
        if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
            raise TypeError(f"{name} must hold integer label ids, got {x.dtype}")
        return x.detach().cpu().numpy()
    return np.asarray(x)


def label_centroids(features: Any, targets: Any, num_labels: int | None = None, normalize: bool = True) -> np.ndarray:
    """Each label's centroid, the mean of the features of its examples: the label vectors that
    napkinXC and Parabel cluster to learn a tree (``Tree.from_embeddings(label_centroids(X, Y))``).

    ``features``: ``(n, d)`` dense (numpy, torch) or a ``scipy.sparse`` matrix (TF-IDF); the
    result is dense ``(num_labels, d)`` float32, so reduce a huge sparse ``d`` first.
    ``targets``: the label sets in any form :mod:`hsoftmax.metrics` takes (padded with ``-1``,
    a CSR tuple, a list of lists). ``num_labels`` defaults to the largest label + 1. With
    ``normalize`` each centroid is scaled to unit L2 norm (spherical k-means, as napkinXC).
    A label without examples gets a zero vector.

    >>> import numpy as np
    >>> X = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]])
    >>> label_centroids(X, [[0], [0, 1], [1]], normalize=False)
    array([[0.5, 1. ],
           [1.5, 1. ]], dtype=float32)
    """
    from .metrics import _as_label_sets

    sets = _as_label_sets(targets)
    n = sets.offsets.size - 1
    V = int(sets.labels.max()) + 1 if num_labels is None and sets.labels.size else int(num_labels or 0)
    if sets.labels.size and sets.labels.max() >= V:
        raise ValueError(f"label {int(sets.labels.max())} is out of range [0, {V})")
    rows = sets.rows
    if hasattr(features, "tocsr") and hasattr(features, "nnz"):
        import scipy.sparse as sp

        X = features.tocsr()
        if X.shape[0] != n:
            raise ValueError(f"features have {X.shape[0]} rows for {n} label sets")
        Y = sp.csr_matrix((np.ones(rows.size), (sets.labels, rows)), shape=(V, n))
        sums = np.asarray((Y @ X).todense(), dtype=np.float64)
    else:
        X = features.detach().cpu().numpy() if isinstance(features, Tensor) else np.asarray(features)
        if X.ndim != 2 or X.shape[0] != n:
            raise ValueError(f"features must be (n={n}, d), got shape {X.shape}")
        sums = np.zeros((V, X.shape[1]), np.float64)
        np.add.at(sums, sets.labels, X[rows])
    if normalize:
        norm = np.linalg.norm(sums, axis=1, keepdims=True)
    else:
        norm = np.bincount(sets.labels, minlength=V).astype(np.float64)[:, None]
    return (sums / np.where(norm > 0, norm, 1.0)).astype(np.float32)


def with_leaf_clusters(tree: Tree, max_leaves: int) -> Tree:
    """``tree`` with every subtree of at most ``max_leaves`` labels collapsed into one node whose
    children are those labels: napkinXC's and Parabel's ``max_leaves`` habit (k-means splits
    stop at clusters of up to ``max_leaves`` labels, each then a one-vs-all node), which gives a
    PLT fewer decisions to chain. The collapsed nodes are the highest ones (nearest the root)
    with at most ``max_leaves`` labels below them; if the whole tree has no more than
    ``max_leaves`` labels the result is flat. Class order and labels are kept.

    >>> from hsoftmax import Tree
    >>> t = with_leaf_clusters(Tree.balanced(16, arity=2), max_leaves=4)   # depth 4 -> 3
    >>> t.depth, t.num_nodes, with_leaf_clusters(t, 16).depth
    (3, 7, 1)
    """
    max_leaves = _as_int("max_leaves", max_leaves, minimum=1)
    if not isinstance(tree, Tree):
        raise TypeError(f"tree must be an hsoftmax.Tree, got {type(tree).__name__}")
    V, N = tree.num_classes, tree.num_nodes
    parent = np.asarray(tree.parent)
    below = np.zeros(N, np.int64)  # labels under each node: children come after parents
    np.add.at(below, parent[:V], 1)
    for j in range(N - 1, 0, -1):
        below[parent[V + j]] += below[j]
    paths: list[list[str]] = []
    for y in range(V):
        chain = []  # y's ancestors below the root, bottom-up
        j = int(parent[y])
        while j > 0:
            chain.append(j)
            j = int(parent[V + j])
        chain.reverse()
        keep: list[int] = []
        for j in chain if below[0] > max_leaves else ():
            keep.append(j)
            if below[j] <= max_leaves:
                break
        paths.append([f"n{j}" for j in keep])
    return Tree.from_paths(paths, labels=list(tree.labels) if tree.labels is not None else None)


def with_shortcuts(tree: Tree, labels: Any) -> Tree:
    """``tree`` with the classes ``labels`` moved directly under the root (their marginal is then
    one logistic over every example) and every other class on its old path; internal nodes left
    without classes vanish. Meant for a PLT's most frequent labels, whose marginals otherwise
    multiply ``depth`` conditionals: ``with_shortcuts(tree, np.argsort(-counts)[:m])``. Costs
    ``len(labels)`` more scored edges per training example and per search. Class order and
    labels are kept; it is still a tree, so a PLT over it stays exact.

    >>> from hsoftmax import Tree
    >>> t = with_shortcuts(Tree.balanced(16, arity=2), [0, 5])
    >>> [t.path(y)[0].size for y in (0, 5, 1)]   # classes 0 and 5: one edge each; 1 as before
    [1, 1, 4]
    """
    if not isinstance(tree, Tree):
        raise TypeError(f"tree must be an hsoftmax.Tree, got {type(tree).__name__}")
    V = tree.num_classes
    moved = np.asarray(labels)
    if moved.size and (moved.dtype == np.bool_ or not np.issubdtype(moved.dtype, np.integer)):
        raise TypeError(f"labels must be integer class ids, got {moved.dtype}")
    moved = moved.astype(np.int64).reshape(-1)
    if moved.size and (moved.min() < 0 or moved.max() >= V):
        raise ValueError(f"labels must be class ids in [0, {V}), got {int(moved.min())}..{int(moved.max())}")
    top = set(moved.tolist())
    parent = np.asarray(tree.parent)
    paths: list[list[str]] = []
    for y in range(V):
        chain: list[str] = []  # y's ancestors below the root, bottom-up
        j = int(parent[y])
        while j > 0 and y not in top:
            chain.append(f"n{j}")
            j = int(parent[V + j])
        paths.append(chain[::-1])
    return Tree.from_paths(paths, labels=list(tree.labels) if tree.labels is not None else None)


class LinearLabelTree:
    r"""A PLT of *linear* node models over sparse features (napkinXC's model), trained and
    searched by the numba kernels of :mod:`hsoftmax.kernels.plt_sparse`.

    Each edge that carries a decision (the rows of :func:`hsoftmax.kernels.plt.plt_layout`) has a
    full-rank logistic model over the ``num_features`` input features, so an edge's score costs
    ``O(nnz(x))`` for a sparse row ``x`` (TF-IDF, bag of words), and training an example or
    finding its top-k labels costs ``O(nnz(x) * visited edges)``: no encoder, no ``d``. The
    weights are :attr:`weight_t` ``(num_features, num_rows)`` (feature-major: a node's children
    are contiguous) and :attr:`bias` ``(num_rows,)``; :meth:`to_label_tree` gives the equal
    dense :class:`LabelTree` (``weight = weight_t.T``), which computes the same losses, marginals
    and top-k on the dense input (tested), and is the way to a torch checkpoint.

    Memory: ``num_features * num_rows`` weights (two such arrays with AdaGrad), dense: fine for
    thousands of labels over tens of thousands of features; beyond that reduce the features or
    use :class:`LabelTree` over an encoder.

    Inputs ``X``: a ``scipy.sparse`` matrix (CSR preferred) or a dense ``(n, num_features)``
    array (its nonzeros are read; scipy is not needed for it). Targets ``Y``: any label-set form
    of :mod:`hsoftmax.metrics` (list of lists, padded with ``-1``, CSR pair, sparse indicator
    matrix).

    >>> import numpy as np
    >>> from hsoftmax import Tree
    >>> X = np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [1.0, 1.0, 0]])
    >>> Y = [[0], [1], [2, 3], [0, 1]]
    >>> plt = LinearLabelTree(3, Tree.balanced(4)).fit(X, Y, epochs=50, lr=0.5, threads=1)
    >>> plt.topk(X[:1], 1).indices.tolist()
    [[0]]
    >>> plt.predict(X[2:3], threshold=0.5).to_lists()
    [[2, 3]]
    """

    def __init__(self, num_features: int, tree: Tree, bias: bool = True, dtype: Any = np.float32) -> None:
        num_features = _as_int("num_features", num_features, minimum=1)
        if not isinstance(tree, Tree):
            raise TypeError(f"tree must be an hsoftmax.Tree, got {type(tree).__name__}")
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise TypeError(f"dtype must be float32 or float64, got {dtype}")
        self.num_features = num_features
        self.tree = tree
        self.layout = P.plt_layout(tree)
        R = self.layout.num_rows
        self.weight_t = np.zeros((num_features, R), dtype)
        self.bias: np.ndarray | None = np.zeros(R, dtype) if bias else None
        self._adagrad: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def num_classes(self) -> int:
        return self.tree.num_classes

    def __repr__(self) -> str:
        return (
            f"LinearLabelTree(num_features={self.num_features}, num_classes={self.num_classes}, "
            f"rows={self.layout.num_rows}, tree={self.tree!r}, bias={self.bias is not None})"
        )

    # ------------------------------------------------------------------ checks
    def _csr(self, X: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``X`` as validated CSR arrays ``(indptr, indices, data)`` (int64, int64, the weights'
        dtype), every index in range and every value finite, before a kernel sees them."""
        if isinstance(X, Tensor):
            X = X.detach().cpu().numpy()
        if hasattr(X, "tocsr") and hasattr(X, "nnz"):  # scipy.sparse (no scipy needed otherwise)
            m = X.tocsr(copy=True)
            shape, dtype, indptr, indices, data = m.shape, m.dtype, m.indptr, m.indices, m.data
        else:
            a = np.asarray(X)
            if a.ndim != 2:
                raise ValueError(f"X must be 2-D (n, num_features), got shape {a.shape}")
            shape, dtype = a.shape, a.dtype
            rows, indices = np.nonzero(a)
            data = a[rows, indices]
            indptr = np.zeros(a.shape[0] + 1, np.int64)
            np.cumsum(np.bincount(rows, minlength=a.shape[0]), out=indptr[1:])
        if len(shape) != 2 or shape[1] != self.num_features:
            raise ValueError(f"X must be (n, num_features={self.num_features}), got shape {tuple(shape)}")
        if not (np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer)) or dtype == np.bool_:
            raise TypeError(f"X must hold real feature values, got {dtype}")
        indptr = np.ascontiguousarray(indptr, dtype=np.int64)
        indices = np.ascontiguousarray(indices, dtype=np.int64)
        data = np.ascontiguousarray(data, dtype=self.weight_t.dtype)
        if indptr.size != shape[0] + 1 or indptr[0] != 0 or indptr[-1] != indices.size or np.any(np.diff(indptr) < 0):
            raise ValueError("X is a malformed CSR matrix (indptr): rebuild it with scipy.sparse.csr_matrix")
        if indices.size and (indices.min() < 0 or indices.max() >= self.num_features):
            raise ValueError(f"X has a feature index out of range [0, {self.num_features})")
        if data.size and not np.isfinite(data).all():
            raise ValueError("X has NaN or infinite values")
        return indptr, indices, data

    def _labels(self, Y: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
        from .metrics import _as_label_sets

        sets = _as_label_sets(Y, n)
        return P.check_label_sets(sets.offsets, sets.labels, self.num_classes, n)

    def _b(self) -> np.ndarray:
        """The bias for the kernels (length 0: none), after checking that the (assignable)
        parameters still have the shapes and dtype the kernels index with."""
        W, R = self.weight_t, self.layout.num_rows
        if (
            not isinstance(W, np.ndarray)
            or W.shape != (self.num_features, R)
            or W.dtype not in (np.float32, np.float64)
        ):
            raise ValueError(f"weight_t must be a float32/float64 array of shape ({self.num_features}, {R})")
        if not W.flags.c_contiguous:
            self.weight_t = W = np.ascontiguousarray(W)
        if self.bias is None:
            return np.zeros(0, W.dtype)
        if not isinstance(self.bias, np.ndarray) or self.bias.shape != (R,) or self.bias.dtype != W.dtype:
            raise ValueError(f"bias must be a {W.dtype} array of shape ({R},) (or None)")
        return self.bias

    # ------------------------------------------------------------------ training
    def fit(
        self,
        X: Any,
        Y: Any,
        epochs: int = 10,
        lr: float = 1.0,
        optimizer: str = "sgd",
        threads: int | None = None,
        seed: int = 0,
        eps: float = 1e-8,
    ) -> LinearLabelTree:
        """Train on ``X`` (``n`` sparse rows) and their label sets ``Y`` for ``epochs`` passes
        of per-example steps in a fresh random order each (``seed``), continuing from the current
        weights (and AdaGrad sums, so calling it again trains on). The loss is the sum of each
        example's node-target cross-entropies (as :class:`LabelTree`'s). ``optimizer``:
        ``"sgd"`` (``lr`` decaying linearly to 0 over the run, fastText's schedule; the default,
        and the better of the two on TF-IDF rows of unit norm in ``benchmarks/multilabel.py``)
        or ``"adagrad"`` (per-weight steps ``lr / sqrt(sum of squared gradients + eps)``, with
        the same decay). Early stopping is the regularizer: too many epochs overfit small data
        (choose ``epochs`` on held-out examples). ``threads``: Hogwild threads (default numba's;
        ``1`` is deterministic). Returns ``self``; the mean loss per example of each epoch is in
        :attr:`epoch_losses`."""
        epochs = _as_int("epochs", epochs)
        if epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {epochs}")
        lr = _as_real("lr", lr)
        if not lr > 0 or not math.isfinite(lr):
            raise ValueError(f"lr must be a positive finite number, got {lr!r}")
        if optimizer not in ("adagrad", "sgd"):
            raise ValueError(f"optimizer must be 'adagrad' or 'sgd', got {optimizer!r}")
        import numba

        threads = numba.get_num_threads() if threads is None else _as_int("threads", threads)
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        eps = _as_real("eps", eps)
        if not 0 <= eps < math.inf:
            raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
        b = self._b()
        indptr, indices, data = self._csr(X)
        n = indptr.size - 1
        off, lab = self._labels(Y, n)
        dtype = self.weight_t.dtype
        if optimizer == "adagrad":
            if self._adagrad is None or self._adagrad[0].shape != self.weight_t.shape:
                self._adagrad = (np.zeros_like(self.weight_t), np.zeros(b.size, dtype))
            G, Gb = self._adagrad
        else:
            G, Gb = np.zeros((0, 0), dtype), np.zeros(0, dtype)
        from .kernels import plt_sparse as S

        most = int(np.diff(off).max()) if n else 0
        pcap, tcap = P.positive_capacity(self.layout, most), P.target_capacity(self.layout, most)
        rng = np.random.default_rng(seed)
        self.epoch_losses: list[float] = []
        for e in range(epochs):
            order = rng.permutation(n).astype(np.int64)
            lr0, lr1 = lr * (1 - e / epochs), lr * (1 - (e + 1) / epochs)
            total = S.train_epoch(
                indptr, indices, data, order, off, lab, self.layout, self.weight_t, b, G, Gb,
                lr0, lr1, eps, threads, pcap, tcap,
            )  # fmt: skip
            self.epoch_losses.append(float(total) / max(n, 1))
        return self

    # ------------------------------------------------------------------ prediction
    def topk(self, X: Any, k: int) -> torch.return_types.topk:
        """The ``k`` labels of highest marginal of each row, exactly (best-first search):
        ``(values, indices)`` tensors ``(n, k)``, ``values`` the marginals, descending."""
        from .kernels import plt_sparse as S

        k = _check_k(k, self.num_classes)
        indptr, indices, data = self._csr(X)
        n = indptr.size - 1
        vals = np.empty((n, k), np.float64)
        idx = np.empty((n, k), np.int64)
        b = self._b()
        if n:
            S.topk_search(indptr, indices, data, self.weight_t, b, self.layout, k, vals, idx)
        lp = torch.from_numpy(vals).to(_torch_dtype(self.weight_t.dtype))
        return torch.return_types.topk((lp.exp(), torch.from_numpy(idx)))

    def predict(self, X: Any, threshold: float = 0.5) -> LabelSets:
        """Every label whose marginal is ``>= threshold``, as CSR :class:`LabelSets` (each row's
        by descending marginal), never opening a subtree whose root is below the threshold."""
        from .kernels import plt_sparse as S

        t = _as_real("threshold", threshold)
        if not 0.0 <= t <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
        log_t = math.log(t) if t > 0 else -math.inf
        indptr, indices, data = self._csr(X)
        n = indptr.size - 1
        b = self._b()
        W = self.weight_t
        counts = np.zeros(n, np.int64)
        if n:
            S.threshold_count(indptr, indices, data, W, b, self.layout, log_t, counts)
        off = np.zeros(n + 1, np.int64)
        np.cumsum(counts, out=off[1:])
        lp = np.empty(int(off[-1]), np.float64)
        labels = np.empty(int(off[-1]), np.int64)
        if n:
            S.threshold_fill(indptr, indices, data, W, b, self.layout, log_t, off, lp, labels)
        dt = _torch_dtype(W.dtype)
        return LabelSets(torch.from_numpy(off), torch.from_numpy(labels), torch.from_numpy(lp).to(dt).exp())

    def log_marginals(self, X: Any) -> Tensor:
        """``(n, num_classes)``: every label's log marginal (scores every row: ask for it only
        when you need every label)."""
        indptr, indices, data = self._csr(X)
        n = indptr.size - 1
        self._b()
        out = np.empty((n, self.num_classes), np.float64)
        for a in range(0, n, 1024):  # every row's score, a block of rows at a time
            z = min(n, a + 1024)
            s = np.zeros((z - a, self.layout.num_rows), np.float64)
            lo, hi = indptr[a], indptr[z]
            row_of = np.repeat(np.arange(z - a), np.diff(indptr[a : z + 1]))
            np.add.at(s, row_of, data[lo:hi, None].astype(np.float64) * self.weight_t[indices[lo:hi]])
            if self.bias is not None:
                s += self.bias
            P.log_marginals_all(-np.logaddexp(0.0, -s), self.layout, out[a:z])
        return torch.from_numpy(out).to(_torch_dtype(self.weight_t.dtype))

    def marginals(self, X: Any) -> Tensor:
        """``(n, num_classes)``: every label's marginal (they do not sum to 1)."""
        return self.log_marginals(X).exp()

    def to_label_tree(self) -> LabelTree:
        """The equal dense :class:`LabelTree` over ``num_features`` inputs (``weight =
        weight_t.T``, the same bias): fine-tune it in torch, or save its ``state_dict``."""
        dt = _torch_dtype(self.weight_t.dtype)
        lt = LabelTree(self.num_features, self.tree, bias=self.bias is not None, dtype=dt)
        with torch.no_grad():
            lt.weight.copy_(torch.from_numpy(np.ascontiguousarray(self.weight_t.T)))
            if self.bias is not None:
                lt.bias.copy_(torch.from_numpy(self.bias))
        return lt

    @classmethod
    def from_label_tree(cls, module: LabelTree) -> LinearLabelTree:
        """The linear PLT of a :class:`LabelTree` whose inputs are the features themselves
        (``in_features == num_features``): the inverse of :meth:`to_label_tree`."""
        if not isinstance(module, LabelTree):
            raise TypeError(f"module must be a LabelTree, got {type(module).__name__}")
        W = module.weight.detach().cpu().numpy()
        out = cls(module.in_features, module.tree, bias=module.bias is not None, dtype=W.dtype)
        out.weight_t[...] = W.T
        if out.bias is not None:
            out.bias[...] = module.bias.detach().cpu().numpy()
        return out


def _torch_dtype(dtype: np.dtype) -> torch.dtype:
    return torch.float64 if dtype == np.float64 else torch.float32

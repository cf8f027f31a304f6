r"""``hsoftmax.keras.HierarchicalSoftmax``: the exact hierarchical softmax as a Keras 3 layer."""

from __future__ import annotations

import base64
import io
import math
from typing import Any, NamedTuple

import keras
import numpy as np
from keras import ops

from ..tree import Tree
from . import plan as _plan
from .ops import NEG, child_log_probs, shared_slot_scores, slot_scores

__all__ = ["HierarchicalSoftmax", "TopK", "BeamTopK", "TargetNLL", "encode_tree", "decode_tree"]


class TopK(NamedTuple):
    """``values`` ``(*, k)`` log-probabilities, descending; ``indices`` ``(*, k)`` int32 classes."""

    values: Any
    indices: Any


class BeamTopK(NamedTuple):
    """A tree search's answer and, per example, whether it is proven exact (``exact``, bool)."""

    values: Any
    indices: Any
    exact: Any


def encode_tree(tree: Tree) -> dict[str, str]:
    """The tree as a JSON-safe dict: its :meth:`~hsoftmax.Tree.state` arrays in a compressed
    ``.npz`` (no pickle), base64-encoded. About 1 MB for 100k Huffman classes."""
    buf = io.BytesIO()
    # The keys are the tree's array names, never savez's allow_pickle keyword.
    np.savez_compressed(buf, **tree.state())  # type: ignore[arg-type]
    return {"npz_base64": base64.b64encode(buf.getvalue()).decode("ascii")}


def decode_tree(data: dict[str, str]) -> Tree:
    """Inverse of :func:`encode_tree`."""
    raw = base64.b64decode(data["npz_base64"])
    with np.load(io.BytesIO(raw), allow_pickle=False) as z:
        return Tree.from_state({k: z[k] for k in z.files})


def _as_tree(tree: Any) -> Tree:
    if isinstance(tree, Tree):
        return tree
    if isinstance(tree, dict) and "npz_base64" in tree:
        return decode_tree(tree)
    if isinstance(tree, (str, bytes)) or hasattr(tree, "__fspath__"):
        return Tree.load(tree)
    raise TypeError(
        f"tree must be an hsoftmax.Tree, a path to a saved tree or an encoded tree, got {type(tree).__name__}"
    )


@keras.saving.register_keras_serializable(package="hsoftmax")
class HierarchicalSoftmax(keras.layers.Layer):
    r"""Hierarchical softmax over the classes of an :class:`hsoftmax.Tree`, in ``keras.ops`` only.

    :math:`p(y \mid h) = \prod_{(n, j) \in \mathrm{path}(y)} p_n(j \mid h)`: a binary node decides
    with one row and a sigmoid, :math:`p_n(1 \mid h) = \sigma(w_n^\top h + b_n)`, a node with
    :math:`k > 2` children with ``k`` rows and a softmax, a one-child node costs nothing. The
    same math, weights and row order as the torch :class:`hsoftmax.HierarchicalSoftmax`, so
    ``set_weights([torch_layer.weight, torch_layer.bias])`` (as numpy) gives its
    log-probabilities.

    Calls:

    * ``layer([hidden, target])`` -> ``log p(target | hidden)`` shaped like ``target`` (0 where
      ``target == ignore_index`` or the Keras mask of ``hidden`` is False), and, with
      ``add_loss=True``, the mean negative log-likelihood over the kept targets is added to the
      model's losses: ``model.compile(optimizer=...)`` without a loss, then
      ``model.fit([x, y])``. Cost O(d * path) per example: the path's weight rows are gathered
      (the first decision, shared by every class, is one matmul); no ``(batch, V)`` tensor.
      Shapes are static, so each decision column is padded to the widest node that appears in
      it: a tree whose nodes have very unequal arities (``Tree.two_level(counts=...)`` puts
      most of a Zipf vocabulary in one huge cluster) costs O(d * that width) per example;
      prefer Huffman or equal-size two-level trees.
    * ``layer(hidden)`` -> the exact normalized log-probabilities ``(*, V)`` (what
      ``model.predict`` returns for such a model); the one call that costs O(V d), because it
      returns V numbers per example.

    Methods on backend tensors (eager or inside a traced function): :meth:`log_prob`,
    :meth:`target_log_prob`, :meth:`topk`, :meth:`predict`, :meth:`beam_topk`.

    Args:
        tree: the label hierarchy (a :class:`~hsoftmax.Tree`, a path to a file written by
            :meth:`Tree.save`, or the encoded dict found in :meth:`get_config`).
        in_features: size ``d`` of the hidden vectors; builds the layer now. Default: taken from
            the first input.
        use_bias: learn a bias per weight row. Default ``True``.
        ignore_index: targets equal to it score 0 and leave the mean. Default ``-100``.
        add_loss: add the mean NLL when called on ``[hidden, target]``. Turn it off to use the
            ``loss=`` way (with ``TargetNLL``).
        beam_width: default width (open nodes kept) of :meth:`topk`'s tree search (``None``:
            ``max(4 k, 16)``).
        kernel_initializer: default uniform in ``+-1/sqrt(d)`` (the torch layer's).
        bias_initializer: default zeros.

    Weights: ``kernel`` ``(tree.num_params, in_features)`` and ``bias`` ``(tree.num_params,)``;
    ``get_weights()`` is ``[kernel, bias]``.

    The path math runs in float32 (float64 if the layer's variables are float64) whatever the
    dtype policy: under ``mixed_bfloat16`` the inputs are bfloat16 but the dot products, the
    log-sum-exps and the path sums are float32, and so are the outputs. Out-of-range targets
    score NaN (a traced function cannot raise).
    """

    def __init__(
        self,
        tree: Any,
        in_features: int | None = None,
        use_bias: bool = True,
        ignore_index: int = -100,
        add_loss: bool = True,
        beam_width: int | None = None,
        kernel_initializer: Any = None,
        bias_initializer: Any = "zeros",
        **kwargs: Any,
    ) -> None:
        kwargs.pop("autocast", None)
        # autocast=False: the variables are never cast down to a mixed policy's compute dtype.
        super().__init__(autocast=False, **kwargs)
        self.tree = _as_tree(tree)
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, np.integer)):
            raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")
        if beam_width is not None and (
            isinstance(beam_width, bool) or not isinstance(beam_width, int) or beam_width < 1
        ):
            raise ValueError(f"beam_width must be None or a positive int, got {beam_width!r}")
        self.use_bias = bool(use_bias)
        self.ignore_index = int(ignore_index)
        self.adds_loss = bool(add_loss)
        self.beam_width = beam_width
        self.kernel_initializer = None if kernel_initializer is None else keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self._plan = _plan.plan(self.tree)
        self._consts: dict[str, Any] | None = None
        self.in_features: int | None = None
        if in_features is not None:
            if isinstance(in_features, bool) or not isinstance(in_features, (int, np.integer)) or in_features < 1:
                raise ValueError(f"in_features must be a positive int, got {in_features!r}")
            self.build((None, int(in_features)))

    # ------------------------------------------------------------------ state
    @property
    def num_classes(self) -> int:
        return self.tree.num_classes

    def build(self, input_shape: Any) -> None:
        shape = input_shape
        if isinstance(shape, (list, tuple)) and shape and isinstance(shape[0], (list, tuple)):
            shape = shape[0]  # [hidden_shape, target_shape]
        d = shape[-1]
        if d is None:
            raise ValueError("the last dimension of the hidden input must be known")
        d = int(d)
        if self.in_features is not None and self.in_features != d:
            raise ValueError(f"in_features is {self.in_features} but the input's last dimension is {d}")
        self.in_features = d
        init = self.kernel_initializer
        if init is None:
            bound = 1.0 / math.sqrt(d)
            init = keras.initializers.RandomUniform(-bound, bound)
        P = self.tree.num_params
        # autocast=False: a mixed policy never hands the path math bfloat16 weights.
        self.kernel = self.add_weight(name="kernel", shape=(P, d), initializer=init, autocast=False)
        self.bias = (
            self.add_weight(name="bias", shape=(P,), initializer=self.bias_initializer, autocast=False)
            if self.use_bias
            else None
        )
        self.built = True

    def _c(self, like: Any = None) -> dict[str, Any]:
        """The plans' index tables (int32), by name.

        They are constants, not variables (``get_weights()`` stays ``[kernel, bias]``). Traced
        backends (jax.jit, tf.function) embed the numpy arrays as constants of the compiled
        function; caching backend tensors across traces would leak tracers, so only the eager
        torch backend gets them converted once per device (instead of a host copy on every
        call; Keras also runs torch layers on the "meta" device to infer shapes, whose tensors
        must not be reused for real ones).
        """
        device = str(getattr(like, "device", None))
        if self._consts is not None and device in self._consts:
            return self._consts[device]
        tp, fp, bp = self._plan
        c: dict[str, Any] = {"first_choice": tp.first_choice}
        for i, run in enumerate(tp.runs):
            c[f"run{i}_nodes"], c[f"run{i}_choices"], c[f"run{i}_slots"] = run.nodes, run.choices, run.slots
        for i, (slots, _) in enumerate(fp.buckets):
            c[f"bucket{i}"] = slots
        c["ref_source"] = fp.ref_source
        for i, jump in enumerate(fp.jumps):
            c[f"jump{i}"] = jump
        c["beam_slots"], c["beam_refs"] = bp.slots, bp.child_refs
        top = bp.top
        c["top_rows"], c["top_slots"] = top.rows, top.slots
        for name, e in [(f"top_level{i}", e) for i, e in enumerate(top.levels)] + [
            ("top_classes", top.classes),
            ("top_frontier", top.frontier),
        ]:
            c[f"{name}_parent"], c[f"{name}_edge"], c[f"{name}_refs"] = e.parent, e.edge, e.refs
        c = {k: np.ascontiguousarray(v, dtype=np.int32) for k, v in c.items()}
        if keras.backend.backend() == "torch" and like is not None:
            c = {k: ops.convert_to_tensor(v).to(like.device) for k, v in c.items()}
            self._consts = {**(self._consts or {}), device: c}
        return c

    @property
    def path_dtype(self) -> str:
        return "float64" if self.variable_dtype == "float64" else "float32"

    def _weights(self):
        dt = self.path_dtype
        k = ops.cast(self.kernel, dt)
        b = None if self.bias is None else ops.cast(self.bias, dt)
        return k, b

    def _flat_hidden(self, hidden):
        if not self.built:
            self.build(tuple(hidden.shape))
        h = ops.convert_to_tensor(hidden)
        if h.shape[-1] != self.in_features:
            raise ValueError(
                f"hidden's last dimension must be in_features={self.in_features}, got shape {tuple(h.shape)}"
            )
        return ops.cast(ops.reshape(h, (-1, self.in_features)), self.path_dtype)

    # ------------------------------------------------------------------ math
    def _target_lp(self, h, y):
        """``h`` ``(B, d)``, ``y`` ``(B,)`` int32 valid classes -> ``(B,)`` log p(y | h)."""
        tp = self._plan.target
        if tp.first_slots is None:
            return ops.zeros_like(h[:, 0])
        c = self._c(h)
        kernel, bias = self._weights()
        s, valid = shared_slot_scores(h, kernel, bias, tp.first_slots)
        lp0 = child_log_probs(s, valid)  # (B, k0)
        ch0 = ops.take(c["first_choice"], y, axis=0)
        out = ops.take_along_axis(lp0, ops.expand_dims(ch0, 1), axis=1)[:, 0]
        for i, run in enumerate(tp.runs):
            nodes = ops.take(c[f"run{i}_nodes"], y, axis=0)  # (B, R)
            choices = ops.take(c[f"run{i}_choices"], y, axis=0)
            rows = ops.take(c[f"run{i}_slots"], nodes, axis=0)  # (B, R, K)
            s, valid = slot_scores(h, kernel, bias, rows, run.lead_fixed)
            lp = child_log_probs(s, valid)
            picked = ops.take_along_axis(lp, ops.expand_dims(choices, -1), axis=-1)[..., 0]
            out = out + ops.sum(picked, axis=-1)
        return out

    def _full_lp(self, h):
        """``h`` ``(B, d)`` -> ``(B, V)`` exact log-probabilities."""
        fp = self._plan.full
        c = self._c(h)
        kernel, bias = self._weights()
        scores = ops.matmul(h, ops.transpose(kernel))
        if bias is not None:
            scores = scores + bias
        flat = []
        for i, (slots, _) in enumerate(fp.buckets):
            rows = c[f"bucket{i}"]
            s = ops.take(scores, ops.maximum(rows, 0), axis=1)  # (B, M, K)
            s = ops.where(rows >= 0, s, ops.zeros_like(s))
            lp = child_log_probs(s, rows >= -1)
            flat.append(ops.reshape(lp, (-1, slots.size)))
        flat.append(ops.zeros_like(h[:, :1]))  # a one-child node's child, and the root: log 1
        # S[r] = log-probability of the edge into ref r; pointer doubling then adds the ancestors'
        # edges, log2(depth) steps of one gather each, all on the same (B, refs + 1) shape.
        s = ops.take(ops.concatenate(flat, axis=1), c["ref_source"], axis=1)
        for i in range(len(fp.jumps)):
            s = s + ops.take(s, c[f"jump{i}"], axis=1)
        return s[:, : self.num_classes]

    def _search_shape(self, width: int) -> tuple[int, int]:
        """``(expand, steps)`` of a search keeping ``width`` open nodes: each step expands the
        ``expand`` best open nodes, about ``width / 8`` weight rows' worth (a k-ary node gathers
        k rows, a binary one 1), so ``steps = depth + 16`` steps can reach the deepest class and
        still spend about twice ``width`` rows on the nodes around the answer."""
        bp = self._plan.beam
        rows = max(int(bp.slots.shape[1]) - (1 if bp.lead_fixed else 0), 1)  # rows gathered per node
        return max(1, width // (8 * rows)), max(self.tree.depth, 1) + 16

    def _search_start(self, h: Any) -> tuple[Any, Any]:
        """Log-probabilities ``(B, classes)`` and ``(B, frontier)`` of the refs just below the
        search's top (:class:`~hsoftmax.keras.plan.SearchTop`): one matmul scores the top's
        nodes for the whole batch, then their log-probabilities are summed level by level (one
        gather of ``(B, level)`` each). Every row's search would expand these shallow nodes one
        step at a time, gathering their weight rows; a dense matmul costs far less per row."""
        top = self._plan.beam.top
        c = self._c(h)
        kernel, bias = self._weights()
        P = int(top.rows.size)
        # Node-major (rows, batch) layout: every gather below copies whole rows of B floats
        # (XLA's CPU gather of scattered scalars along the batch's minor axis is ~10x slower).
        w = kernel[:P] if top.prefix else ops.take(kernel, c["top_rows"], axis=0)
        s = ops.matmul(w, ops.transpose(h))  # (P, B)
        if bias is not None:
            s = s + ops.expand_dims(bias[:P] if top.prefix else ops.take(bias, c["top_rows"], axis=0), 1)
        root = ops.zeros_like(ops.transpose(h[:, :1]))  # (1, B): log 1, the root's
        s = ops.stack([self._top_slot(s, j, root) for j in range(top.slots.shape[0])], axis=0)  # (K, T, B)
        edge = child_log_probs(s, ops.expand_dims(c["top_slots"] >= -1, 2), axis=0)
        edge = ops.reshape(edge, (int(np.prod(top.slots.shape)), -1))  # (K * T, B)
        level = root
        node_lp = [level]
        for i in range(len(top.levels)):
            level = ops.take(level, c[f"top_level{i}_parent"], axis=0) + ops.take(edge, c[f"top_level{i}_edge"], axis=0)
            node_lp.append(level)
        lp = ops.concatenate(node_lp, axis=0) if len(node_lp) > 1 else level

        # The refs below the top in the batch-major layout the open list uses: the transposes
        # first (a transpose fused into a gather reads one scattered float per output).
        lp, edge = ops.transpose(lp), ops.transpose(edge)

        def below(name: str, size: int) -> Any:
            if size == 0:
                return None
            return ops.take(lp, c[f"{name}_parent"], axis=1) + ops.take(edge, c[f"{name}_edge"], axis=1)

        return below("top_classes", top.classes.refs.size), below("top_frontier", top.frontier.refs.size)

    def _top_slot(self, s: Any, j: int, zero: Any) -> Any:
        """``(T, B)`` scores of child slot ``j`` of the top's nodes from the top's row scores
        ``s`` ``(P, B)``: zeros where no row scores it (``zero`` is a ``(1, B)`` zero row), a
        slice when its rows are consecutive (slot 1 of binary nodes in node order), else a
        gather of whole rows."""
        cols = self._plan.beam.top.slots[j]
        T = cols.size
        if np.all(cols < 0):
            return ops.repeat(zero, T, axis=0)
        if np.all(cols >= 0) and np.array_equal(cols, cols[0] + np.arange(T)):
            return s[int(cols[0]) : int(cols[0]) + T]
        at = self._c(s)["top_slots"][j]
        return ops.where(ops.expand_dims(at >= 0, 1), ops.take(s, ops.maximum(at, 0), axis=0), 0.0)

    def _search(self, h: Any, k: int, width: int, skip: Any = None, start: Any = None) -> tuple[Any, Any, Any]:
        """Best-first search of the tree -> ``(values, indices, exact)``, each ``(B, k)`` / ``(B,)``.

        An open node's log-probability bounds every class below it (a path's log-probability
        only falls going down). Each step expands the best open nodes (a batch of them, for
        static shapes): their child classes enter the running top-k, their child nodes the open
        list, which keeps the ``width`` best and raises ``bound`` to the best one it drops. A
        row is proven exact when its k-th class is at least both the best open node and
        ``bound``: nothing unexplored can beat it. A row is *active* while it has an open node
        that could still beat its k-th class; other rows stop changing. Rows ``skip`` (bool
        ``(B,)``, e.g. rows an earlier search proved) start inactive, and their answer is
        meaningless. Cost per row: the nodes expanded, O(expand * steps * arity * d), whatever V.

        The rows finish at different steps (a flat row needs many more nodes than a peaked
        one), so the search runs in phases on fewer and fewer rows (:meth:`_phase_sizes`, a
        quarter of the rows each time): a phase steps until at most the next phase's rows are
        active (or the shared budget of ``steps`` steps is spent), then the active rows move,
        with their whole state, into the next, smaller phase, which continues their search.
        The batch's cost follows the rows still searching, and a slow row gets more steps
        without a restart.

        The search starts below the tree's top (:meth:`_search_start`, computed here unless
        ``start`` gives it: the ladder's searches share it): its classes enter the top-k, its
        frontier nodes the open list."""
        expand, steps = self._search_shape(width)
        c = self._c(h)
        class_lp, frontier_lp = self._search_start(h) if start is None else start

        def best(lp: Any, name: str, n: int) -> tuple[Any, Any, Any]:
            """The ``n`` best entries (dead ones past the end), their refs, the best left out."""
            if lp is None:  # nothing there
                dead = ops.repeat(ops.zeros_like(h[:, :1]) + NEG, n, axis=1)
                return dead, ops.cast(dead * 0, "int32") - 1, dead[:, 0]
            return _keep(lp, ops.zeros_like(ops.cast(lp, "int32")) + c[f"{name}_refs"], n)

        found_lp, found_idx, _ = best(class_lp, "top_classes", k)
        open_lp, open_ref, bound = best(frontier_lp, "top_frontier", width)
        if skip is not None:
            open_lp = ops.where(ops.expand_dims(skip, 1), NEG, open_lp)
        state = (found_lp, found_idx, open_lp, open_ref, bound)
        if frontier_lp is not None:
            state = self._search_phases(h, k, expand, steps, width, state)
        found_lp, found_idx, open_lp, _, bound = state
        return found_lp, found_idx, found_lp[:, k - 1] >= ops.maximum(bound, ops.max(open_lp, axis=1))

    @staticmethod
    def _phase_sizes(batch: int | None) -> list[int]:
        """Rows per phase of a search over ``batch`` rows: the batch, then 1/4 of it, ... while a
        phase keeps at least 16 rows (one phase when the batch size is unknown)."""
        if batch is None:
            return [0]
        sizes = [int(batch)]
        while sizes[-1] // 4 >= 16:
            sizes.append(sizes[-1] // 4)
        return sizes

    def _search_phases(self, h: Any, k: int, expand: int, steps: int, width: int, state: tuple) -> tuple:
        """Run the search's steps on ``state`` (found, open list, bound: all ``(B, ...)``) in phases
        (see :meth:`_search`)."""
        B = h.shape[0]
        sizes = self._phase_sizes(B)
        i = ops.convert_to_tensor(0, "int32")  # steps so far: the phases share the budget

        def active(found_lp, open_lp):
            return ops.max(open_lp, axis=1) > found_lp[:, k - 1]

        for p, size in enumerate(sizes):
            last = p == len(sizes) - 1
            rows = None
            sub, hp = state, h
            if p > 0:  # the rows still active first: this phase continues their search
                rows = ops.cast(ops.argsort(ops.cast(ops.logical_not(active(state[0], state[2])), "int32")), "int32")
                rows = rows[:size]
                sub, hp = tuple(ops.take(x, rows, axis=0) for x in state), ops.take(h, rows, axis=0)
            step = self._search_step(hp, k, expand, width)
            limit = 0 if last else sizes[p + 1]

            def unfinished(i, found_lp, found_idx, open_lp, open_ref, bound, limit=limit):
                n = ops.sum(ops.cast(active(found_lp, open_lp), "int32"))
                return (i < steps) & (n > limit)

            i, *out = ops.while_loop(unfinished, step, (i, *sub))
            if rows is None:
                state = tuple(out)
            else:
                at = ops.expand_dims(rows, 1)
                state = tuple(ops.scatter_update(x, at, y) for x, y in zip(state, out))
        return state

    def _search_step(self, h: Any, k: int, expand: int, width: int) -> Any:
        """One step of the search on the rows of ``h`` (see :meth:`_search`), as a loop body."""
        bp = self._plan.beam
        V, N = self.num_classes, self.tree.num_nodes
        first_slot = np.arange(bp.slots.shape[1]) == 0
        fan = expand * int(bp.slots.shape[1])  # children of one step's expanded nodes
        c = self._c(h)
        kernel, bias = self._weights()

        def step(i, found_lp, found_idx, open_lp, open_ref, bound):
            top_lp, pos = ops.top_k(open_lp, expand)  # the open list is a set: its best nodes
            pos = ops.cast(pos, "int32")
            top_ref = ops.take_along_axis(open_ref, pos, axis=1)
            # Only nodes that could beat the k-th class found are expanded; the others (every
            # node of a finished row) read the carry row N, whose weight row 0 stays in cache,
            # and stay open.
            useful = (top_ref >= V) & (top_lp > found_lp[:, k - 1 : k])
            local = ops.where(useful, top_ref - V, N)
            rows = ops.take(c["beam_slots"], local, axis=0)  # (B, E, K)
            kids = ops.take(c["beam_refs"], local, axis=0)
            s, valid = slot_scores(h, kernel, bias, rows, bp.lead_fixed, matmul=True)
            cand = ops.expand_dims(top_lp, -1) + child_log_probs(s, valid)
            carried = ops.where(first_slot, ops.expand_dims(top_ref, -1), -1)
            kids = ops.where(ops.expand_dims(useful, -1), kids, carried)
            cand = ops.where(ops.expand_dims(useful, -1), cand, ops.expand_dims(top_lp, -1))
            cand = ops.reshape(ops.where(kids >= 0, cand, NEG), (-1, fan))
            kids = ops.reshape(kids, (-1, fan))
            is_class = (kids >= 0) & (kids < V)
            found_lp, found_idx, _ = _keep(
                ops.concatenate([found_lp, ops.where(is_class, cand, NEG)], axis=1),
                ops.concatenate([found_idx, ops.where(is_class, kids, -1)], axis=1),
                k,
            )
            is_node = kids >= V
            node_lp, node_ref = ops.where(is_node, cand, NEG), ops.where(is_node, kids, -1)
            # The expanded nodes leave the open list; their child nodes take the places of its
            # ``fan`` worst entries (the freed ones among them) when they beat them, so the list
            # is never sorted whole (top_k over it would cost O(width log width) per step).
            row_of = ops.zeros_like(pos) + ops.expand_dims(ops.arange(ops.shape(pos)[0], dtype="int32"), 1)
            popped = ops.reshape(ops.stack([row_of, pos], -1), (-1, 2))
            open_lp = ops.scatter_update(open_lp, popped, ops.reshape(ops.zeros_like(top_lp) + NEG, (-1,)))
            if 2 * fan > width:  # a wide fan (k-ary nodes): merge everything
                open_lp, open_ref, dropped = _keep(
                    ops.concatenate([open_lp, node_lp], axis=1), ops.concatenate([open_ref, node_ref], axis=1), width
                )
                return i + 1, found_lp, found_idx, open_lp, open_ref, ops.maximum(bound, dropped)
            low, at = ops.top_k(-open_lp, fan)
            at = ops.cast(at, "int32")
            new_lp, new_ref, dropped = _keep(
                ops.concatenate([-low, node_lp], axis=1),
                ops.concatenate([ops.take_along_axis(open_ref, at, axis=1), node_ref], axis=1),
                fan,
            )
            slots = ops.reshape(ops.stack([ops.zeros_like(at) + row_of[:, :1], at], -1), (-1, 2))
            open_lp = ops.scatter_update(open_lp, slots, ops.reshape(new_lp, (-1,)))
            open_ref = ops.scatter_update(open_ref, slots, ops.reshape(new_ref, (-1,)))
            return i + 1, found_lp, found_idx, open_lp, open_ref, ops.maximum(bound, dropped)

        return step

    # ------------------------------------------------------------------ Keras API
    def call(self, inputs, mask=None, training=None, top_k=None, beam_width=None, part="indices"):
        """``[hidden, target]`` -> target log-probs (+ the loss); ``hidden`` -> ``(*, V)``
        log-probs; ``hidden, top_k=k, part="values"|"indices"`` -> that half of the top-k (what
        :meth:`topk` records in a functional model: one output per call, because Keras 3.15
        loses the second output of a multi-output call on a layer already called once); ``part="exact"``: the
        proof of :meth:`beam_topk` alone)."""
        if top_k is not None:
            if part == "exact":  # the first search's proof alone, as beam_topk(...).exact
                return self.beam_topk(inputs, top_k, beam_width).exact
            return self._topk(inputs, top_k, beam_width)[0 if part == "values" else 1]
        if isinstance(inputs, (list, tuple)):
            if len(inputs) != 2:
                raise ValueError(f"call the layer on hidden or on [hidden, target], got {len(inputs)} inputs")
            hidden, target = inputs
            hmask = mask[0] if isinstance(mask, (list, tuple)) else mask
            out, loss = self._score_targets(hidden, target, hmask)
            if self.adds_loss:
                self.add_loss(loss)
            return out
        return self.log_prob(inputs)

    def _score_targets(self, hidden, target, mask=None):
        h = self._flat_hidden(hidden)
        y = ops.reshape(ops.cast(target, "int32"), (-1,))
        keep = y != self.ignore_index
        if mask is not None:
            keep = keep & ops.reshape(ops.cast(mask, "bool"), (-1,))
        in_range = (y >= 0) & (y < self.num_classes)
        safe = ops.where(keep & in_range, y, 0)
        lp = self._target_lp(h, safe)
        lp = ops.where(in_range | ~keep, lp, ops.cast(float("nan"), lp.dtype))
        lp = ops.where(keep, lp, ops.zeros_like(lp))
        count = ops.maximum(ops.sum(ops.cast(keep, lp.dtype)), 1.0)
        loss = -ops.sum(lp) / count
        return ops.reshape(lp, ops.shape(target)), loss

    def target_log_prob(self, hidden, target, mask=None):
        """``log p(target | hidden)`` shaped like ``target`` (0 where ignored), no loss added."""
        return self._score_targets(hidden, target, mask)[0]

    def compute_output_spec(self, inputs, mask=None, training=None, top_k=None, beam_width=None, part="indices"):
        if top_k is not None:
            if part == "exact":
                return keras.KerasTensor(tuple(inputs.shape[:-1]), dtype="bool")
            shape = (*inputs.shape[:-1], int(top_k))
            return keras.KerasTensor(shape, dtype=self.path_dtype if part == "values" else "int32")
        if isinstance(inputs, (list, tuple)):
            return keras.KerasTensor(inputs[1].shape, dtype=self.path_dtype)
        return keras.KerasTensor((*inputs.shape[:-1], self.num_classes), dtype=self.path_dtype)

    def compute_mask(self, inputs, mask=None):
        if isinstance(mask, (list, tuple)):
            return mask[0]
        return mask

    def log_prob(self, hidden):
        """Exact log-probabilities of every class: ``(*, V)``; each row's ``exp`` sums to 1."""
        if _symbolic(hidden):
            return self(hidden)
        h = self._flat_hidden(hidden)
        lp = self._full_lp(h)
        return ops.reshape(lp, (*ops.shape(hidden)[:-1], self.num_classes))

    def _check_k(self, k: int) -> int:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise TypeError(f"k must be an int, got {type(k).__name__}")
        if not 1 <= k <= self.num_classes:
            raise ValueError(f"k must be in [1, num_classes={self.num_classes}], got {k}")
        return int(k)

    def _width(self, k: int, beam_width: int | None) -> int:
        w = beam_width if beam_width is not None else self.beam_width
        w = max(4 * k, 16) if w is None else int(w)
        return min(max(w, k), self.num_classes)

    def beam_topk(self, hidden: Any, k: int, beam_width: int | None = None) -> BeamTopK:
        """The first tree search of :meth:`topk` alone (see :meth:`_search`): ``(values, indices,
        exact)``; rows with ``exact`` False may be wrong (the search dropped or did not reach a
        node it cannot rule out)."""
        k = self._check_k(k)
        h = self._flat_hidden(hidden)
        vals, idx, ok = self._search(h, k, self._width(k, beam_width))
        lead = tuple(ops.shape(hidden)[:-1])
        return BeamTopK(ops.reshape(vals, (*lead, k)), ops.reshape(idx, (*lead, k)), ops.reshape(ok, lead))

    def topk(self, hidden: Any, k: int, beam_width: int | None = None) -> TopK:
        """The ``k`` most probable classes, exactly: ``(values, indices)``, each ``(*, k)``, sorted
        descending, equal to ``top_k(log_prob(hidden), k)``.

        A best-first tree search keeping ``beam_width`` open nodes (default ``max(4 k, 16)``)
        costs O(nodes expanded * arity * d) per example and proves its answer exact when the
        model is peaked enough (see :meth:`beam_topk`). The rows it cannot prove go on to
        searches 8x, 16x and 32x wider (while a row's search gathers at most V / 8 weight rows),
        each over the whole batch with the proven rows inactive (the search's phases move the
        rows still searching into smaller batches), then the rows still unproven to the full
        distribution: eagerly exactly those rows; in a traced call the unproven rows sorted
        first and re-solved in chunks of 1/16 of the batch, one loop turn per chunk that holds
        an unproven row.
        """
        if _symbolic(hidden):
            k = self._check_k(k)
            return TopK(
                self(hidden, top_k=k, beam_width=beam_width, part="values"),
                self(hidden, top_k=k, beam_width=beam_width, part="indices"),
            )
        return self._topk(hidden, k, beam_width)

    def _topk(self, hidden: Any, k: int, beam_width: int | None) -> TopK:
        k = self._check_k(k)
        h = self._flat_hidden(hidden)
        width = self._width(k, beam_width)
        start = self._search_start(h)  # one matmul and a few gathers, shared by the ladder
        vals, idx, ok = self._search(h, k, width, start=start)
        # The rows the first search could not prove go up a ladder: wider searches, then the full
        # distribution, each on the rows still unproven only. A trained model proves most rows
        # early; the rows of its rare classes are the flat ones, and they alone should not make
        # the whole batch pay the full distribution's O(V d).
        for wide in self._ladder(k, width):
            if _concrete_int(ops.sum(ops.cast(ops.logical_not(ok), "int32"))) == 0:
                break  # eager, and every row is proven
            # The whole batch, the proven rows inactive: the search's phases move the unproven
            # rows into smaller phases (traced once, nothing to do when every row is proven).
            v, i, e = self._search(h, k, wide, skip=ok, start=start)
            keep = ops.expand_dims(ok, 1)
            vals, idx, ok = ops.where(keep, vals, v), ops.where(keep, idx, i), ok | e

        def full_rows(hs):
            fv, fi = ops.top_k(self._full_lp(hs), k)
            return fv, ops.cast(fi, "int32"), ops.ones_like(fv[:, 0]) > 0

        vals, idx, ok = _refine(h, vals, idx, ok, full_rows)
        lead = tuple(ops.shape(hidden)[:-1])
        return TopK(ops.reshape(vals, (*lead, k)), ops.reshape(idx, (*lead, k)))

    def _ladder(self, k: int, width: int) -> list[int]:
        """Wider searches for the unproven rows: 8x, 16x and 32x the first, each at least twice
        the one before, while a row's search gathers at most V / 8 weight rows (``expand *
        steps`` nodes of ``K`` rows: on JAX at V = 100k gathering a row costs about as much as
        8 classes' share of the full distribution's matmul). The first jump is large because a
        search that fails for most rows costs little next to the wider one; after it each tier
        only doubles, since its rows are the few that failed, and a tier with no unproven rows
        costs next to nothing (its phases find no active row)."""
        bp = self._plan.beam
        rows = max(int(bp.slots.shape[1]) - (1 if bp.lead_fixed else 0), 1)
        ladder, last = [], width
        for factor in (8, 16, 32):
            w = factor * width
            while w > last and self._rows_gathered(w, rows) > self.num_classes / 8:
                w //= 2
            if w >= 2 * last and w >= k:
                ladder.append(w)
                last = w
        return ladder

    def _rows_gathered(self, width: int, rows: int) -> int:
        expand, steps = self._search_shape(width)
        return expand * steps * rows

    def predict(self, hidden):
        """The most probable class of each hidden vector, ``(*)`` int32, exactly (by :meth:`topk`)."""
        if _symbolic(hidden):
            return self(hidden, top_k=1, part="indices")[..., 0]
        return self.topk(hidden, 1).indices[..., 0]

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            tree=encode_tree(self.tree),
            in_features=self.in_features,
            use_bias=self.use_bias,
            ignore_index=self.ignore_index,
            add_loss=self.adds_loss,
            beam_width=self.beam_width,
            kernel_initializer=None
            if self.kernel_initializer is None
            else keras.initializers.serialize(self.kernel_initializer),
            bias_initializer=keras.initializers.serialize(self.bias_initializer),
        )
        return config


def _symbolic(x: Any) -> bool:
    return isinstance(x, keras.KerasTensor)


def _concrete_int(x: Any) -> int | None:
    try:
        return int(ops.convert_to_numpy(x))
    except Exception:
        return None


def _refine(h: Any, vals: Any, idx: Any, ok: Any, solve: Any) -> tuple[Any, Any, Any]:
    """Re-solve the unproven rows of a top-k with ``solve(h_rows) -> (values, indices, exact)``.

    Eagerly the unproven rows are known and exactly they are re-solved. A traced call needs
    static shapes: the rows are sorted unproven-first and re-solved in chunks of ``batch / 16``
    rows by a loop that runs once per chunk holding an unproven row (nothing runs when every
    row is proven), so the cost follows the number of unproven rows and ``solve`` is traced
    once. With an unknown batch size (a ``tf.function`` traced for any batch) the whole batch
    is re-solved when a row is unproven."""
    bad = ops.sum(ops.cast(ops.logical_not(ok), "int32"))
    n_bad = _concrete_int(bad)
    if n_bad == 0:
        return vals, idx, ok
    B = h.shape[0]
    if n_bad is None and B is None:

        def whole():
            v, i, e = solve(h)
            keep = ops.expand_dims(ok, 1)
            return ops.where(keep, vals, v), ops.where(keep, idx, ops.cast(i, "int32")), ok | e

        return ops.cond(bad > 0, whole, lambda: (vals, idx, ok))
    order = ops.cast(ops.argsort(ops.cast(ok, "int32")), "int32")  # unproven rows first
    if n_bad is not None:  # eager: exactly the unproven rows
        rows = order[:n_bad]
        v, i, e = solve(ops.take(h, rows, axis=0))
        return _put_rows(vals, idx, ok, rows, v, i, e)
    B = int(B)
    chunk = max(1, -(-B // 16))

    def more(start, vals, idx, ok):
        return start < bad

    def solve_chunk(start, vals, idx, ok):
        begin = ops.minimum(start, B - chunk)  # the last chunk may overlap proven rows
        rows = ops.slice(order, ops.expand_dims(begin, 0), (chunk,))
        v, i, e = solve(ops.take(h, rows, axis=0))
        return (start + chunk, *_put_rows(vals, idx, ok, rows, v, i, e))

    zero = ops.convert_to_tensor(0, "int32")
    return ops.while_loop(more, solve_chunk, (zero, vals, idx, ok))[1:]


def _put_rows(vals: Any, idx: Any, ok: Any, rows: Any, v: Any, i: Any, e: Any) -> tuple[Any, Any, Any]:
    """Write a re-solved answer into ``rows`` of a top-k, except into rows already proven."""
    was = ops.take(ok, rows, axis=0)
    keep = ops.expand_dims(was, 1)
    v = ops.where(keep, ops.take(vals, rows, axis=0), v)
    i = ops.where(keep, ops.take(idx, rows, axis=0), ops.cast(i, "int32"))
    at = ops.expand_dims(rows, 1)
    return ops.scatter_update(vals, at, v), ops.scatter_update(idx, at, i), ops.scatter_update(ok, at, was | e)


def _keep(lp: Any, refs: Any, n: int) -> tuple[Any, Any, Any]:
    """The ``n`` best of ``(B, m)`` candidates, sorted descending, with their refs, and the best
    one left out (``NEG`` when none is); padded with dead entries (``NEG``, ref -1) when
    ``m < n``."""
    m = lp.shape[1]
    if m < n:
        lp = ops.concatenate([lp, ops.repeat(ops.zeros_like(lp[:, :1]) + NEG, n - m, axis=1)], axis=1)
        refs = ops.concatenate([refs, ops.repeat(ops.zeros_like(refs[:, :1]) - 1, n - m, axis=1)], axis=1)
        m = n
    v, p = ops.top_k(lp, n)
    p = ops.cast(p, "int32")
    if m == n:
        return v, ops.take_along_axis(refs, p, axis=1), ops.zeros_like(v[:, 0]) + NEG
    # The best one left out without slicing top_k's outputs (XLA on CPU then sorts whole rows,
    # 2-4x the cost of a search step's selections): the n-th value when more entries tie it
    # than were kept, else the best value below it.
    nth = ops.min(v, axis=1, keepdims=True)
    tied = ops.sum(ops.cast(lp >= nth, "int32"), axis=1) > n
    below = ops.max(ops.where(lp < nth, lp, NEG), axis=1)
    return v, ops.take_along_axis(refs, p, axis=1), ops.where(tied, nth[:, 0], below)


@keras.saving.register_keras_serializable(package="hsoftmax")
class TargetNLL(keras.losses.Loss):
    """The ``loss=`` way: a model whose output is a :class:`HierarchicalSoftmax` called on
    ``[hidden, target]`` with ``add_loss=False`` outputs ``log p(target)``; this loss turns it
    into the per-example NLL, ``-y_pred``, and Keras reduces it (sample weights, masks).

    ``y_true`` must be the same targets the layer scored (pass them both as an input and as
    ``y``): the layer needs them to choose the paths, so they are an input; ``y_true`` here only
    zeroes the ``ignore_index`` entries.
    """

    def __init__(self, ignore_index: int = -100, name: str = "target_nll", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.ignore_index = int(ignore_index)

    def call(self, y_true, y_pred):
        y_true = ops.reshape(ops.cast(y_true, "int32"), ops.shape(y_pred))
        return ops.where(y_true == self.ignore_index, ops.zeros_like(y_pred), -y_pred)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "ignore_index": self.ignore_index}

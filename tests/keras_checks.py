"""The Keras layer's checks, run in one process per backend by ``tests/test_keras.py``.

Usage: ``KERAS_BACKEND=jax python tests/keras_checks.py REF_DIR OUT.json``. ``REF_DIR`` holds
what the parent computed with the torch module (trees, weights, inputs, log-probabilities);
each check here compares the Keras layer against it or against itself, and the JSON maps each
check's name to ``"ok"``, ``"skip: why"`` or the failure's traceback. Importing the backend
once and running every check in the same process keeps the suite fast.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras
from keras import ops

from hsoftmax import Tree
from hsoftmax.keras import HierarchicalSoftmax, TargetNLL

BACKEND = keras.backend.backend()
CHECKS = {}
ROOT = Path(__file__).resolve().parents[1]


def check(fn):
    CHECKS[fn.__name__] = fn
    return fn


def np_(x):
    return np.asarray(ops.convert_to_numpy(x))


def compiled(fn):
    """jax compiles every eager op for every new shape (~50 ms each on 2 cores), so on jax the
    checks compile a whole function per tree once instead; torch and tensorflow run eagerly."""
    if BACKEND == "jax":
        import jax

        return jax.jit(fn)
    return fn


def _compiled_outputs(hs, k):
    """Full log-probs, target log-probs, top-k (the default search and one as narrow as k, which
    often cannot prove itself, so the fallback runs), the narrow search alone with its proof,
    and predict of ``hs``, as one compiled function (one compile per tree on jax)."""
    return compiled(
        lambda x, y: (
            hs.log_prob(x),
            hs.target_log_prob(x, y),
            hs.topk(x, k),
            hs.topk(x, k, beam_width=k),
            hs.beam_topk(x, k, beam_width=k),
            hs.predict(x),
        )
    )


def _stateless_nll(hs, y):
    """The layer's NLL on targets ``y`` as a pure function of ``(kernel, bias, hidden)``."""

    def loss(kernel, bias, h):
        _outputs, nll = hs.stateless_call([kernel, bias], [], [h, y], return_losses=True)[::2]
        return nll[0]

    return loss


class Ref:
    """The parent's reference data: one entry per named tree."""

    def __init__(self, d: Path) -> None:
        self.dir = d
        self.names = json.loads((d / "names.json").read_text())
        self.cache = {}

    def __getitem__(self, name):
        if name not in self.cache:
            z = dict(np.load(self.dir / f"{name}.npz"))
            z["tree"] = Tree.load(self.dir / f"{name}.tree.npz")
            self.cache[name] = z
        return self.cache[name]


def layer_for(r, **kw) -> HierarchicalSoftmax:
    kw.setdefault("kernel_initializer", "zeros")  # overwritten below; zeros is the cheapest init
    hs = HierarchicalSoftmax(r["tree"], in_features=r["x"].shape[1], **kw)
    hs.set_weights([r["weight"], r["bias"]])
    return hs


def close(a, b, atol=3e-5, what="", rtol=2e-6):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    b = np.broadcast_to(b, a.shape) if b.ndim == 0 else b
    assert a.shape == b.shape, f"{what}: shape {a.shape} != {b.shape}"
    err = (np.abs(a - b) - rtol * np.abs(b)).max() if a.size else 0.0
    assert err <= atol, f"{what}: max error {err:.3g} > {atol} (+ {rtol} relative)"


def assert_topk_matches(vals, idx, full, k, what):
    """``(vals, idx)`` is a top-k of ``full``: the values are the k largest (to rounding) and each
    index's log-probability is its value; indices must match exactly where no near-tie exists."""
    vals, idx = np.asarray(vals), np.asarray(idx)
    order = np.argsort(-full, axis=1, kind="stable")[:, :k]
    ref = np.take_along_axis(full, order, 1)
    close(vals, ref, what=f"{what} values")
    close(np.take_along_axis(full, idx.astype(np.int64), 1), vals, what=f"{what} value of each index")
    gaps = (
        np.abs(np.diff(np.sort(full, 1)[:, ::-1][:, : k + 1], axis=1)).min(axis=1)
        if full.shape[1] > k
        else np.ones(len(full))
    )
    clear = gaps > 1e-4
    assert np.array_equal(idx[clear], order[clear]), f"{what}: indices differ from sorting log_prob"


# ---------------------------------------------------------------------------- checks
@check
def weights_layout(ref):
    for name in ref.names:
        r = ref[name]
        hs = layer_for(r)
        w = hs.get_weights()
        assert len(w) == 2, "get_weights() is [kernel, bias]"
        assert w[0].shape == (r["tree"].num_params, r["x"].shape[1]) and w[1].shape == (r["tree"].num_params,)
        assert [v.name for v in hs.weights] == ["kernel", "bias"]
    hs = HierarchicalSoftmax(ref["huffman"]["tree"], use_bias=False, in_features=4)
    assert len(hs.get_weights()) == 1


#: Trees whose top-k jax compiles in matches_torch: binary (with rows that need the fallback),
#: k-ary, uneven two-level, ragged, chains.
JAX_TOPK_TREES = ("balanced2", "huffman3", "two_level_counts", "taxonomy", "chain")


@check
def matches_torch(ref):
    """Every tree kind: full log-probs, target log-probs, top-k and predict equal the torch
    module's, and top-k equals sorting log_prob with the default search and with one as narrow
    as k, whose unproven rows need the fallback (which must happen somewhere, or this check
    does not exercise it); rows the narrow search proves are exact."""
    fallbacks = 0
    for name in ref.names:
        r = ref[name]
        hs = layer_for(r)
        full_ref = r["log_prob"].astype(np.float64)
        k = min(5, r["tree"].num_classes)
        if BACKEND == "jax" and name not in JAX_TOPK_TREES:
            # jax compiles a whole function per tree (the searches are most of it): the top-k
            # of the trees with the awkward shapes; torch and tensorflow check every tree.
            lp, target = compiled(lambda x, y, hs=hs: (hs.log_prob(x), hs.target_log_prob(x, y)))(r["x"], r["y"])
            close(np_(lp), r["log_prob"], what=f"{name} log_prob")
            close(np_(target), r["target_lp"], what=f"{name} target_log_prob")
            continue
        run = _compiled_outputs(hs, k)
        full, target, (v, i), (nv, ni), (bv, bi, ok), pred = run(r["x"], r["y"])
        full = np_(full)
        close(full, r["log_prob"], what=f"{name} log_prob")
        close(np.exp(full).sum(1), 1.0, atol=1e-5, what=f"{name} sums to 1")
        close(np_(target), r["target_lp"], what=f"{name} target_log_prob")
        for beam, (vv, ii) in (("default", (v, i)), ("k", (nv, ni))):
            assert_topk_matches(np_(vv), np_(ii), full_ref, k, f"{name} topk beam={beam}")
        assert np.array_equal(np_(pred), np.argmax(full_ref, 1)) or np.allclose(
            np.take_along_axis(full_ref, np_(pred)[:, None].astype(np.int64), 1)[:, 0], full_ref.max(1), atol=1e-5
        ), f"{name} predict"
        ok = np_(ok)
        fallbacks += int((~ok).sum())
        if ok.any():  # a row proven exact is exact
            assert_topk_matches(np_(bv)[ok], np_(bi)[ok], full_ref[ok], k, f"{name} proven rows")
    assert fallbacks > 0, "the narrow search never needed the fallback: the check does not exercise it"


@check
def call_forms(ref):
    """layer(h) is the full distribution; layer([h, y]) the target log-probs plus the mean NLL as
    a loss; leading dimensions (batch, time, d) work. (The taxonomy tree and 40 rows, as in
    masking: on jax, eager ops compile once per shape, so the checks share shapes.)"""
    r = ref["taxonomy"]
    hs = layer_for(r)
    close(np_(hs(r["x"])), r["log_prob"], what="layer(h)")
    out = hs([r["x"], r["y"]])
    close(np_(out), r["target_lp"], what="layer([h, y])")
    assert len(hs.losses) == 1
    close(np_(hs.losses[0]), r["loss_mean"], what="added loss")
    x3, y3 = r["x"].reshape(4, 10, -1), r["y"].reshape(4, 10)
    close(np_(hs([x3, y3])), r["target_lp"].reshape(4, 10), what="(B, T) targets")
    close(np_(hs(x3)), r["log_prob"].reshape(4, 10, -1), what="(B, T) log_prob")
    hs2 = HierarchicalSoftmax(r["tree"], add_loss=False, kernel_initializer="zeros")
    hs2(r["x"])  # builds on first call
    assert hs2.in_features == r["x"].shape[1] and hs2.kernel.shape == (r["tree"].num_params, r["x"].shape[1])
    hs2([r["x"], r["y"]])
    assert hs2.losses == []


@check
def masking(ref):
    """ignore_index and a Keras mask leave targets out: output 0, mean over the rest, equal to the
    torch module's ignore_index."""
    r = ref["taxonomy"]
    hs = layer_for(r)
    y = r["y"].copy()
    y[r["ignored"]] = -100
    out = np_(hs([r["x"], y]))
    close(out, r["target_lp_ignored"], what="ignore_index output")
    close(np_(hs.losses[0]), r["loss_ignored"], what="ignore_index loss")
    mask = ~r["ignored"]
    out = np_(hs([r["x"], r["y"]], mask=[mask, None]))
    close(out, r["target_lp_ignored"], what="masked output")
    close(np_(hs.losses[0]), r["loss_ignored"], what="masked loss")
    # a mask carried by the tensors themselves, from an Embedding(mask_zero=True)
    tok = keras.Input((5,), dtype="int32")
    tgt = keras.Input((5,), dtype="int32")
    h = keras.layers.Embedding(10, r["x"].shape[1], mask_zero=True)(tok)
    hs2 = HierarchicalSoftmax(r["tree"])
    m = keras.Model([tok, tgt], hs2([h, tgt]))
    toks = np.array([[1, 2, 0, 0, 0], [3, 4, 5, 0, 0]], dtype="int32")
    tg = np.ones_like(toks)
    lp = np_(m([toks, tg]))
    assert np.all(lp[toks == 0] == 0) and np.all(lp[toks != 0] < 0)
    # an out-of-range target is NaN, not a silent wrong number
    bad = r["y"].copy()
    bad[0] = r["tree"].num_classes
    got = np_(hs.target_log_prob(r["x"], bad))
    assert np.isnan(got[0]) and np.all(np.isfinite(got[1:]))


@check
def fit_gradient_equals_torch(ref):
    """compile(optimizer=SGD(1)) with no loss, one fit step on the whole batch: the weights move
    by exactly minus the torch module's gradient of the mean NLL (binary, ragged and uneven
    k-ary trees). One model holds the three layers (one compile): its loss is the sum of their
    mean NLLs, so each layer's gradient is its own."""
    names = ("huffman", "taxonomy", "two_level_counts")
    inputs, outputs, layers = [], [], []
    for name in names:
        r = ref[name]
        hin, yin = keras.Input((r["x"].shape[1],)), keras.Input((), dtype="int32")
        hs = layer_for(r)
        inputs += [hin, yin]
        outputs.append(hs([hin, yin]))
        layers.append(hs)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=1.0))
    data = [a for name in names for a in (ref[name]["x"], ref[name]["y"])]
    hist = model.fit(data, batch_size=len(data[0]), epochs=1, shuffle=False, verbose=0)
    close(hist.history["loss"][0], sum(float(ref[n]["loss_mean"]) for n in names), atol=3e-5, what="fit loss")
    for name, hs in zip(names, layers):
        r = ref[name]
        close(np_(hs.kernel), r["weight"] - r["grad_weight"], atol=2e-5, what=f"{name} kernel step")
        close(np_(hs.bias), r["bias"] - r["grad_bias"], atol=2e-5, what=f"{name} bias step")


@check
def fit_trains(ref):
    """A Dense -> HS model trains with compile(optimizer=...) and no loss (loss falls), and a
    second model sharing the layers predicts normalized distributions."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    tree = ref["huffman3"]["tree"]
    V, n = tree.num_classes, 512
    centers = rng.normal(size=(V, 8)).astype("float32")
    y = rng.integers(0, V, n).astype("int32")
    x = centers[y] + 0.3 * rng.normal(size=(n, 8)).astype("float32")
    xin, yin = keras.Input((8,)), keras.Input((), dtype="int32")
    dense = keras.layers.Dense(16, activation="tanh")
    hs = HierarchicalSoftmax(tree)
    train = keras.Model([xin, yin], hs([dense(xin), yin]))
    train.compile(optimizer=keras.optimizers.Adam(0.05))
    hist = train.fit([x, y], batch_size=128, epochs=10, verbose=0).history["loss"]
    assert hist[-1] < 0.5 * hist[0], f"loss did not fall: {hist}"
    infer = keras.Model(xin, hs(dense(xin)))
    lp = infer.predict(x, verbose=0, batch_size=128)
    assert lp.shape == (n, V)
    close(np.exp(lp).sum(1), 1.0, atol=1e-5, what="predict sums to 1")
    acc = (lp.argmax(1) == y).mean()
    assert acc > 0.8, f"accuracy {acc}"
    ev = train.evaluate([x, y], verbose=0, batch_size=128)
    close(ev, -np.take_along_axis(lp, y[:, None].astype(int), 1).mean(), atol=1e-4, what="evaluate loss")


@check
def loss_way(ref):
    """The loss= way: add_loss=False, TargetNLL as the loss, targets both as an input and as y;
    the reported loss is the mean NLL and training lowers it."""
    r = ref["balanced4"]
    d = r["x"].shape[1]
    hin, yin = keras.Input((d,)), keras.Input((), dtype="int32")
    hs = layer_for(r, add_loss=False)
    model = keras.Model([hin, yin], hs([hin, yin]))
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss=TargetNLL())
    first = model.evaluate([r["x"], r["y"]], r["y"], batch_size=len(r["x"]), verbose=0)
    close(first, r["loss_mean"], atol=1e-5, what="TargetNLL loss")
    hist = model.fit([r["x"], r["y"]], r["y"], batch_size=len(r["x"]), epochs=5, verbose=0).history["loss"]
    assert hist[-1] < hist[0]


@check
def topk_peaked_needs_no_fallback(ref):
    """On a peaked model (weights scaled up) the beam proves every row, at V = 5000."""
    rng = np.random.default_rng(3)
    tree = Tree.huffman(rng.zipf(1.3, 5000).astype(float))
    hs = HierarchicalSoftmax(tree, in_features=16, kernel_initializer="zeros")
    hs.set_weights([8 * rng.normal(size=(tree.num_params, 16)).astype("float32"), np.zeros(tree.num_params, "float32")])
    x = rng.normal(size=(64, 16)).astype("float32")
    v, i, ok = compiled(lambda x: hs.beam_topk(x, 5))(x)
    assert np_(ok).all(), f"{(~np_(ok)).sum()} rows not proven"
    assert_topk_matches(np_(v), np_(i), np_(compiled(hs.log_prob)(x)).astype(np.float64), 5, "peaked")


@check
def topk_ladder(ref):
    """Rows the first search cannot prove climb the ladder (wider searches, then the full
    distribution) alone, and every tier's answer equals sorting log_prob: eagerly, compiled
    (the wider searches in phases of 64 and then 16 rows, the full distribution on chunks of
    batch / 16 by a loop), with many unproven rows and with two."""
    rng = np.random.default_rng(3)
    tree = Tree.balanced(5000)
    hs = HierarchicalSoftmax(tree, in_features=16, kernel_initializer="zeros")
    hs.set_weights(
        [0.3 * rng.normal(size=(tree.num_params, 16)).astype("float32"), np.zeros(tree.num_params, "float32")]
    )
    # At V = 5000 the layer's own ladder stops at width 160 (a wider search would gather about
    # as many rows as the full distribution costs); the mechanism is tested with a longer one.
    assert hs._ladder(5, 20) == [160], hs._ladder(5, 20)
    hs._ladder = lambda k, width: [80, 640]
    assert hs._phase_sizes(64) == [64, 16] and hs._phase_sizes(18) == [18], "the 64-row batch searches in phases"
    # The hidden norm sets how peaked a row is: groups proven at width 16, 80, 640, and never.
    x = (rng.normal(size=(64, 16)) * np.repeat([0.05, 0.5, 1.0, 3.0], 16)[:, None]).astype("float32")
    widths = (16, 80, 640)
    exact = compiled(lambda x: [hs.beam_topk(x, 5, beam_width=w).exact for w in widths])(x)
    proven = {w: np_(e).reshape(4, 16).mean(1) for w, e in zip(widths, exact)}
    assert proven[16][3] > 0.4 and proven[16][2] == 0 and proven[640][0] == 0, proven
    assert proven[80][2] > 0.5 and proven[80][1] < 0.5 < proven[640][1], proven
    few = np.concatenate([x[48:], x[:2]])  # 18 rows, 2 of them flat: one chunk of 2
    run, log_prob = compiled(lambda x: hs.topk(x, 5, beam_width=16)), compiled(hs.log_prob)
    for what, batch in (("mixed", x), ("few unproven", few)):
        full = np_(log_prob(batch)).astype(np.float64)
        # jax runs eager ops one compile each: its eager path is left to torch and tensorflow
        answers = [("compiled", run(batch))] + (
            [("eager", hs.topk(batch, 5, beam_width=16))] if BACKEND != "jax" else []
        )
        for how, (v, i) in answers:
            assert_topk_matches(np_(v), np_(i), full, 5, f"ladder {what} {how}")
    if BACKEND == "tensorflow":  # traced for any batch size: the whole-batch fallback per tier
        import tensorflow as tf

        any_batch = tf.function(
            lambda x: hs.topk(x, 5, beam_width=16), input_signature=[tf.TensorSpec((None, 16))], autograph=False
        )
        v, i = any_batch(x)
        assert_topk_matches(np_(v), np_(i), np_(log_prob(x)).astype(np.float64), 5, "ladder, unknown batch")


@check
def topk_search_top(ref):
    """The search starts below the tree's top (scored by one matmul, summed level by level):
    with a top of only the root, a top that ends mid-level, and the whole tree, on a binary and
    a k-ary tree, every answer equals sorting log_prob and the proven rows of the first search
    are right (rows below and above the top's depth, rows needing the fallback)."""
    from hsoftmax.keras.plan import beam_plan

    rng = np.random.default_rng(5)
    for tree in (Tree.huffman(rng.zipf(1.3, 600).astype(float)), Tree.two_level(600)):
        hs = HierarchicalSoftmax(tree, in_features=8)
        w = rng.normal(size=(tree.num_params, 8)).astype("float32")
        hs.set_weights([w, np.zeros(tree.num_params, "float32")])
        x = (rng.normal(size=(32, 8)) * np.repeat([0.3, 3.0], 16)[:, None]).astype("float32")
        full = np_(compiled(hs.log_prob)(x)).astype(np.float64)
        for rows in (1, 75, tree.num_params):
            hs._plan = hs._plan._replace(beam=beam_plan(tree, max_top_rows=rows))
            hs._consts = None
            top = hs._plan.beam.top
            assert (top.frontier.refs.size == 0) == (rows == tree.num_params), (rows, top.frontier.refs.size)
            v, i = compiled(lambda x, hs=hs: hs.topk(x, 5))(x)
            assert_topk_matches(np_(v), np_(i), full, 5, f"top of {rows} rows")
            bv, bi, ok = compiled(lambda x, hs=hs: hs.beam_topk(x, 5, beam_width=8))(x)
            ok = np_(ok)
            assert_topk_matches(np_(bv)[ok], np_(bi)[ok], full[ok], 5, f"top of {rows} rows, proven rows")


@check
def topk_in_functional_model(ref):
    """topk / predict / log_prob inside a functional model and model.predict."""
    r = ref["two_level"]
    d = r["x"].shape[1]
    hs = layer_for(r)
    hin = keras.Input((d,))
    vals, idx = hs.topk(hin, 3)
    model = keras.Model(hin, [vals, idx, hs.predict(hin), hs.log_prob(hin)])
    v, i, p, lp = model.predict(r["x"], verbose=0)
    assert_topk_matches(v, i, r["log_prob"].astype(np.float64), 3, "functional topk")
    assert np.array_equal(p, i[:, 0])
    close(lp, r["log_prob"], what="functional log_prob")


@check
def compiled_functions(ref):
    """The layer traces with static shapes: jax.jit / tf.function / torch eager all agree."""
    r = ref["taxonomy"]
    hs = layer_for(r)
    x, y = r["x"], r["y"]
    if BACKEND == "jax":
        import jax

        lp = jax.jit(hs.log_prob)(x)
        t = jax.jit(hs.target_log_prob)(x, y)
        v, i = jax.jit(lambda h: hs.topk(h, 3))(x)
    elif BACKEND == "tensorflow":
        import tensorflow as tf

        # autograph=False: the layer needs no conversion (its loops and branches are keras.ops),
        # and autograph once mixed up two converted methods of the layer in a long run.
        lp = tf.function(hs.log_prob, jit_compile=True, autograph=False)(x)
        t = tf.function(hs.target_log_prob, autograph=False)(x, y)
        v, i = tf.function(lambda h: hs.topk(h, 3), autograph=False)(x)
    else:
        return "skip: torch runs eagerly"
    close(np_(lp), r["log_prob"], what="compiled log_prob")
    close(np_(t), r["target_lp"], what="compiled target_log_prob")
    assert_topk_matches(np_(v), np_(i), r["log_prob"].astype(np.float64), 3, "compiled topk")


@check
def training_builds_no_batch_by_classes_tensor(ref):
    """jax: the traced loss-and-gradient of a training step holds no (batch, V) value, and the
    widest per-example intermediate is O(d * path)."""
    if BACKEND != "jax":
        return "skip: jaxpr inspection is jax-only"
    import jax

    rng = np.random.default_rng(0)
    V, d, B = 4099, 8, 31  # odd sizes so a (B, V) shape cannot hide among others
    for tree in (Tree.huffman(rng.zipf(1.3, V).astype(float)), Tree.two_level(V)):
        hs = HierarchicalSoftmax(tree, in_features=d)
        x = rng.normal(size=(B, d)).astype("float32")
        y = rng.integers(0, V, B).astype("int32")

        loss = _stateless_nll(hs, y)
        jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1, 2)))(hs.kernel.value, hs.bias.value, x)
        shapes = [tuple(v.aval.shape) for eqn in jaxpr.eqns for v in eqn.outvars]
        bad = [s for s in shapes if B in s and any(n >= V for n in s)]
        assert not bad, f"(batch, >=V) intermediates: {bad[:3]}"
        per_example = max(int(np.prod(s)) // B for s in shapes if s and s[0] == B)
        K = int(np.asarray(tree.arity).max())
        assert per_example <= 4 * d * K * max(tree.max_decisions, 1), per_example


@check
def config_and_tree_file(ref):
    """get_config/from_config carry the tree; a tree file saved by the torch side loads."""
    r = ref["taxonomy"]
    hs = layer_for(r)
    cfg = json.loads(json.dumps(hs.get_config()))
    hs2 = HierarchicalSoftmax.from_config(cfg)
    assert hs2.tree == r["tree"] and hs2.in_features == hs.in_features
    hs2.set_weights(hs.get_weights())
    close(np_(hs2.log_prob(r["x"])), r["log_prob"], what="from_config")
    hs3 = HierarchicalSoftmax(str(ref.dir / "taxonomy.tree.npz"))
    assert hs3.tree == r["tree"]


@check
def save_load_model(ref):
    """model.save('m.keras') / load_model round-trip with equal outputs (a labelled taxonomy)."""
    r = ref["taxonomy"]
    d = r["x"].shape[1]
    hin = keras.Input((d,))
    hs = layer_for(r)
    model = keras.Model(hin, hs(keras.layers.Dense(d, name="pre")(hin)))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "m.keras")
        model.save(path)
        back = keras.models.load_model(path)
    assert np.array_equal(back.predict(r["x"], verbose=0), model.predict(r["x"], verbose=0))
    layer = next(l for l in back.layers if isinstance(l, HierarchicalSoftmax))
    assert layer.tree == r["tree"]


@check
def save_load_100k(ref):
    """At V = 100k (Huffman, d = 64) saving and loading take seconds and outputs match. The
    file format does not depend on the backend, so jax and tensorflow check the same round trip
    at V = 10k (the size costs only time there)."""
    rng = np.random.default_rng(0)
    tree = Tree.huffman(rng.zipf(1.2, 100_000 if BACKEND == "torch" else 10_000).astype(float))
    hs = HierarchicalSoftmax(tree, in_features=64)
    hin = keras.Input((64,))
    model = keras.Model(hin, hs(hin))
    x = rng.normal(size=(8, 64)).astype("float32")
    lp = compiled(hs.log_prob)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "m.keras")
        t0 = time.perf_counter()
        model.save(path)
        t1 = time.perf_counter()
        back = keras.models.load_model(path)
        t2 = time.perf_counter()
    assert np.array_equal(np_(compiled(back.layers[-1].log_prob)(x)), np_(lp(x)))
    assert t1 - t0 < 20 and t2 - t1 < 20, f"save {t1 - t0:.1f} s, load {t2 - t1:.1f} s"
    return f"ok: save {t1 - t0:.2f} s, load {t2 - t1:.2f} s"


@check
def mixed_bfloat16(ref):
    """Under mixed_bfloat16 the layer keeps float32 weights, computes and returns float32, equal
    to the float32 math on the (bfloat16) hidden it receives."""
    r = ref["huffman3"]
    d = r["x"].shape[1]
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        hs = HierarchicalSoftmax(r["tree"], in_features=d)
        hs.set_weights([r["weight"], r["bias"]])
        assert hs.kernel.dtype == "float32"
        xb = ops.cast(ops.convert_to_tensor(r["x"]), "bfloat16")
        lp = hs(xb)
        assert ops.dtype(lp) == "float32", ops.dtype(lp)
        t = hs([xb, r["y"]])
        assert ops.dtype(t) == "float32"
        hin, yin = keras.Input((d,)), keras.Input((), dtype="int32")
        pre = keras.layers.Dense(d)
        hs2 = HierarchicalSoftmax(r["tree"])
        m = keras.Model([hin, yin], hs2([pre(hin), yin]))
        m.compile(optimizer="sgd")
        m.fit([r["x"], r["y"]], verbose=0, epochs=1)
        assert pre.compute_dtype == "bfloat16" and hs2.kernel.dtype == "float32"
    finally:
        keras.config.set_dtype_policy("float32")
    x32 = np_(ops.cast(xb, "float32"))
    ref32 = layer_for(r)
    close(np_(lp), np_(ref32.log_prob(x32)), atol=1e-5, what="bf16 hidden, f32 path math")
    close(np_(t), np_(ref32.target_log_prob(x32, r["y"])), atol=1e-5, what="bf16 targets")


@check
def bad_input_errors(ref):
    r = ref["huffman"]
    hs = layer_for(r)
    for call, exc in [
        (lambda: hs.topk(r["x"], 0), ValueError),
        (lambda: hs.topk(r["x"], r["tree"].num_classes + 1), ValueError),
        (lambda: hs.topk(r["x"], 1.5), TypeError),
        (lambda: hs.log_prob(np.zeros((2, r["x"].shape[1] + 1), "float32")), ValueError),
        (lambda: HierarchicalSoftmax([1, 2, 3]), TypeError),
        (lambda: HierarchicalSoftmax(r["tree"], in_features=0), ValueError),
        (lambda: HierarchicalSoftmax(r["tree"], beam_width=0), ValueError),
    ]:
        try:
            call()
        except exc:
            continue
        raise AssertionError(f"no {exc.__name__} from {call}")


@check
def readme_keras_example(ref):
    """The README's keras blocks (fenced ```python keras) run as written."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python keras\n(.*?)```", text, flags=re.S)
    if not blocks:
        return "skip: README has no keras blocks yet"
    ns: dict = {}
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        try:
            for b in blocks:
                exec(compile(b, "README.md", "exec"), ns)
        finally:
            os.chdir(cwd)


def main() -> None:
    ref = Ref(Path(sys.argv[1]))
    only = sys.argv[3].split(",") if len(sys.argv) > 3 else None
    results = {}
    for name, fn in CHECKS.items():
        if only and name not in only:
            continue
        t0 = time.perf_counter()
        try:
            msg = fn(ref) or "ok"
        except Exception:
            msg = traceback.format_exc()
        results[name] = {"result": msg, "seconds": round(time.perf_counter() - t0, 2)}
        print(f"{BACKEND} {name}: {msg.splitlines()[-1] if msg else msg} ({results[name]['seconds']} s)", flush=True)
    results["_versions"] = {"keras": keras.__version__, "backend": BACKEND}
    Path(sys.argv[2]).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

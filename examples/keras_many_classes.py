"""A "large number of classes" task: hierarchical softmax vs Dense softmax in Keras, same budget.

The 2016 Keras proposal's second demo. A synthetic task with V classes (Zipf frequencies): each
class has a random 64-d code, inputs are noisy codes, a small MLP must recover the class. Each
head (``Dense(V)`` + sparse categorical cross-entropy, and :mod:`hsoftmax.keras` on a Huffman and
a two-level tree) trains for the same wall-clock budget; printed: train examples/s, how many
examples it saw, and held-out accuracy (exact argmax: ``predict`` by the layer's tree search).

Why the crossover: a Dense head costs O(V d) per example in the forward and backward matmuls, an
HS head O(d log V) (Huffman) or O(d sqrt V) (two-level) in gathers, plus a fixed per-step
overhead (index gathers, scatter-adds into the (num_params, d) gradient, the optimizer pass over
all V x d weights, which both heads pay). At small V (1k) the matmul is cheap and well-tuned, so
the overheads make HS comparable or slower; as V grows the O(V d) matmul dominates and HS pulls
ahead (measured on JAX at d = 256, batch 512: the Huffman tree 10x Dense at 10k classes and 21x at
100k; the two-level tree, whose O(d sqrt V) rows per example are gathered and scatter-added, only
catches up at 10k and is 4x at 100k). ``benchmarks/keras_layers.py`` measures the curve.

    python examples/keras_many_classes.py                       # V = 50k, 20 s per head, current backend
    KERAS_BACKEND=torch python examples/keras_many_classes.py --classes 100000 --seconds 30
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--classes", type=int, default=50_000)
    p.add_argument("--seconds", type=float, default=20.0, help="training budget per head")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--heads", default="dense,huffman,two_level")
    args = p.parse_args()

    import keras

    from hsoftmax import Tree
    from hsoftmax.keras import HierarchicalSoftmax

    V, B = args.classes, args.batch
    rng = np.random.default_rng(0)
    freq = 1.0 / np.arange(1, V + 1) ** 1.05
    freq /= freq.sum()
    codes = rng.normal(size=(V, 64)).astype("float32")

    def batch(n, seed):
        r = np.random.default_rng(seed)
        y = r.choice(V, size=n, p=freq).astype("int32")
        return codes[y] + 0.5 * r.normal(size=(n, 64)).astype("float32"), y

    x_test, y_test = batch(4096, seed=10**6)
    print(f"backend {keras.backend.backend()}, V = {V:,}, batch {B}, {args.seconds:.0f} s per head")
    print("| head | train examples/s | examples seen | test accuracy |\n|---|---|---|---|")
    for head in args.heads.split(","):
        keras.utils.set_random_seed(0)
        xin = keras.Input((64,))
        h = keras.layers.Dense(256, activation="relu")(xin)
        if head == "dense":
            model = keras.Model(xin, keras.layers.Dense(V)(h))
            model.compile(
                optimizer=keras.optimizers.Adam(1e-3), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
            )
            step = model.train_on_batch
            infer = model
        else:
            # Equal-size clusters: the layer pads every decision to the widest node in its column,
            # and mass-balanced clusters (two_level(counts=...)) put most classes in one huge one.
            tree = Tree.huffman(freq * 1e9) if head == "huffman" else Tree.two_level(V)
            yin = keras.Input((), dtype="int32")
            hs = HierarchicalSoftmax(tree)
            model = keras.Model([xin, yin], hs([h, yin]))
            model.compile(optimizer=keras.optimizers.Adam(1e-3))  # the layer adds the NLL
            step = lambda x, y, model=model: model.train_on_batch([x, y])  # noqa: E731  (bound to this head's model)
            # Exact argmax either way. The beam search (predict) pays off on the Huffman tree; on
            # the two-level tree each beam entry gathers a whole ~sqrt(V)-row cluster, and a model
            # this briefly trained is too flat for the beam to prove its answer, so the full
            # distribution's argmax is the cheaper exact route there.
            infer = keras.Model(xin, hs.predict(h) if head == "huffman" else hs(h))
        step(*batch(B, 0))  # compile
        seen, i, t0 = 0, 1, time.perf_counter()
        while time.perf_counter() - t0 < args.seconds:
            step(*batch(B, i))
            seen += B
            i += 1
        rate = seen / (time.perf_counter() - t0)
        out = infer.predict(x_test, batch_size=512, verbose=0)
        pred = out if out.ndim == 1 else out.argmax(1)
        print(f"| {head} | {rate:,.0f} | {seen:,} | {(pred == y_test).mean():.3f} |", flush=True)


if __name__ == "__main__":
    main()

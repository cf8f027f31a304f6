"""Multi-label classification head to head: hsoftmax's LabelTree (a probabilistic label tree)
against napkinXC's PLT, fastText (``-loss hs`` and ``-loss ova``) and a one-vs-all torch head.

Data (``--datasets``), each split once 80/20 with a fixed seed, the same split for everyone:

* ``debtags``: Debian package descriptions (``apt-cache dumpavail``: the ``Package`` name and the
  ``Description``) -> their debtags (``Tag:``, ``facet::tag``); tags seen fewer than 2 times are
  dropped. The ``facet`` of a tag gives a natural two-level tree (root -> facet -> tag).
* ``wordnet``: WordNet 3.0 lemmas (``/usr/share/wordnet/data.*``) -> the lexicographer files of
  their synsets (``noun.animal``, ``verb.motion``, ...), from the glosses of those synsets;
  the part of speech gives the two-level tree. A random sample of ``--wordnet-max`` lemmas.
* ``synthetic`` (``--quick``, or where the Debian data is absent): generated bag-of-words
  documents whose labels fall in facets, so that every code path runs anywhere in seconds.

Features: one sklearn ``TfidfVectorizer`` (unigrams, ``sublinear_tf``, ``min_df=2``, L2 rows) fitted
on the training split. napkinXC gets the TF-IDF matrix itself; the torch models (ours and the
one-vs-all head) read it through the same ``EmbeddingBag(mode="sum", per_sample_weights=tfidf)``
encoder of ``--dim`` dimensions, trained jointly; fastText, which builds its own bag of words,
gets the same tokens (the vectorizer's analyzer, restricted to its vocabulary) as text.

Systems: ``napkinxc_plt`` (``napkinxc.models.PLT``, its defaults: hierarchical k-means tree of
arity 2, liblinear logistic nodes), ``fasttext_hs`` and ``fasttext_ova`` (python ``fasttext``,
``train_supervised``: hs picks one label per update, ova is one logistic per label),
``torch_ova`` (encoder + ``nn.Linear`` + BCE over all labels), ``ours_learned``
(encoder + ``LabelTree`` over ``Tree.from_embeddings(label_centroids(X, Y), arity=...)``, balanced
k-means over the TF-IDF label centroids, the napkinXC habit) and ``ours_facets`` (the same over
the facet tree). Peers that are not installed (the ``bench`` extra) are skipped with a note.

Printed per system: P@1, P@3, P@5, nDCG@5, PSP@5 (``hsoftmax.metrics``, propensities A=0.55,
B=1.5 from the training split), training time and top-5 prediction time of the test split, and
the ratios of ours to napkinXC. Results go to ``benchmarks/results/multilabel.json`` (``--out``).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see benchmarks/layers.py: shared cores

import argparse
import importlib.util
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from common import machine_info, machine_summary, write_json

HERE = Path(__file__).resolve().parent
WORDNET = Path("/usr/share/wordnet")
# The 45 lexicographer files of WordNet 3.0, by number (lexnames(5WN)).
LEXNAMES = (
    "adj.all",
    "adj.pert",
    "adv.all",
    "noun.Tops",
    "noun.act",
    "noun.animal",
    "noun.artifact",
    "noun.attribute",
    "noun.body",
    "noun.cognition",
    "noun.communication",
    "noun.event",
    "noun.feeling",
    "noun.food",
    "noun.group",
    "noun.location",
    "noun.motive",
    "noun.object",
    "noun.person",
    "noun.phenomenon",
    "noun.plant",
    "noun.possession",
    "noun.process",
    "noun.quantity",
    "noun.relation",
    "noun.shape",
    "noun.state",
    "noun.substance",
    "noun.time",
    "verb.body",
    "verb.change",
    "verb.cognition",
    "verb.communication",
    "verb.competition",
    "verb.consumption",
    "verb.contact",
    "verb.creation",
    "verb.emotion",
    "verb.motion",
    "verb.perception",
    "verb.possession",
    "verb.social",
    "verb.stative",
    "verb.weather",
    "adj.ppl",
)
SYSTEMS = (
    "napkinxc_plt",
    "fasttext_hs",
    "fasttext_ova",
    "torch_ova",
    "ours_learned",
    "ours_facets",
    "ours_linear",
    "ours_linear_facets",
    "supervised_plt",
)


class Dataset(NamedTuple):
    name: str
    texts: list[str]
    labels: list[list[int]]  # label ids per example
    label_names: list[str]  # "facet::tag": the facet is the part before "::"
    note: str


# ---------------------------------------------------------------------------- data
def _stanzas(text: str):
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        key = None
        for line in block.split("\n"):
            if line[:1] in (" ", "\t") and key is not None:
                fields[key] += "\n" + line.strip()
            elif ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if fields:
            yield fields


def _finish(name: str, texts: list[str], tag_lists: list[list[str]], min_count: int, note: str) -> Dataset:
    counts: dict[str, int] = {}
    for tags in tag_lists:
        for t in set(tags):
            counts[t] = counts.get(t, 0) + 1
    names = sorted(t for t, c in counts.items() if c >= min_count)
    index = {t: i for i, t in enumerate(names)}
    keep_t, keep_y = [], []
    for text, tags in zip(texts, tag_lists):
        ys = sorted({index[t] for t in tags if t in index})
        if ys:
            keep_t.append(text)
            keep_y.append(ys)
    return Dataset(name, keep_t, keep_y, names, note)


def load_debtags() -> Dataset | None:
    if shutil.which("apt-cache") is None:
        return None
    try:
        out = subprocess.run(["apt-cache", "dumpavail"], capture_output=True, text=True, timeout=300, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    seen: set[str] = set()
    texts, tags = [], []
    for f in _stanzas(out):
        pkg, tag = f.get("Package"), f.get("Tag")
        desc = f.get("Description") or f.get("Description-en")
        if not pkg or not tag or not desc or pkg in seen:
            continue
        seen.add(pkg)
        ts = [t.strip() for t in tag.replace("\n", " ").split(",") if "::" in t]
        texts.append(pkg.replace("-", " ") + "\n" + desc.replace("\n.", "\n"))
        tags.append(ts)
    if len(texts) < 1000:
        return None
    return _finish("debtags", texts, tags, 2, "apt-cache dumpavail: Package + Description -> Tag")


def load_wordnet(max_lemmas: int, seed: int) -> Dataset | None:
    files = [WORDNET / f"data.{pos}" for pos in ("noun", "verb", "adj", "adv")]
    if not all(p.exists() for p in files):
        return None
    glosses: dict[str, list[str]] = {}
    lexes: dict[str, set[str]] = {}
    for path in files:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("  "):
                    continue  # the license header
                head, _, gloss = line.partition(" | ")
                parts = head.split()
                lex = LEXNAMES[int(parts[1])]
                for q in range(int(parts[3], 16)):
                    lemma = re.sub(r"\(.*\)$", "", parts[4 + 2 * q]).lower().replace("_", " ")
                    glosses.setdefault(lemma, []).append(gloss.strip())
                    lexes.setdefault(lemma, set()).add(lex)
    lemmas = sorted(glosses)
    random.Random(seed).shuffle(lemmas)
    lemmas = lemmas[:max_lemmas]
    texts = [" ; ".join(glosses[w]) for w in lemmas]
    tags = [[f"{x.split('.')[0]}::{x}" for x in sorted(lexes[w])] for w in lemmas]
    return _finish("wordnet", texts, tags, 1, f"WordNet 3.0 glosses -> lexicographer files, {len(lemmas)} lemmas")


def synthetic(n: int = 1500, facets: int = 6, per_facet: int = 6, vocab: int = 400, seed: int = 0) -> Dataset:
    """Documents whose labels come in facets: each label owns a few words that its documents use."""
    rng = np.random.default_rng(seed)
    L = facets * per_facet
    words = [f"w{i}" for i in range(vocab)]
    own = rng.choice(vocab, size=(L, 6))
    facet_words = rng.choice(vocab, size=(facets, 4))
    texts, labels = [], []
    for _ in range(n):
        f = rng.choice(facets, size=int(rng.integers(1, 3)), replace=False)
        ys = sorted({int(g * per_facet + rng.integers(per_facet)) for g in f for _ in range(int(rng.integers(1, 3)))})
        toks = [words[w] for y in ys for w in rng.choice(own[y], 2)]
        toks += [words[w] for g in f for w in rng.choice(facet_words[g], 2)]
        toks += [words[w] for w in rng.integers(0, vocab, 20)]
        rng.shuffle(toks)
        texts.append(" ".join(toks))
        labels.append(ys)
    names = [f"f{y // per_facet}::t{y}" for y in range(L)]
    return Dataset("synthetic", texts, labels, names, f"generated: {n} documents, {L} labels in {facets} facets")


# ---------------------------------------------------------------------------- features
class Split(NamedTuple):
    X_train: Any  # scipy.sparse csr, TF-IDF
    X_test: Any
    Y_train: list[list[int]]
    Y_test: list[list[int]]
    tokens_train: list[str]  # the same features as text, for fastText
    tokens_test: list[str]
    num_labels: int


def featurize(ds: Dataset, seed: int, max_features: int) -> Split:
    from sklearn.feature_extraction.text import TfidfVectorizer

    order = np.random.default_rng(seed).permutation(len(ds.texts))
    cut = int(0.8 * len(order))
    tr, te = order[:cut], order[cut:]
    vec = TfidfVectorizer(sublinear_tf=True, min_df=2, max_features=max_features, dtype=np.float32)
    X_train = vec.fit_transform([ds.texts[i] for i in tr])
    X_test = vec.transform([ds.texts[i] for i in te])
    analyze = vec.build_analyzer()
    vocab = vec.vocabulary_

    def tokens(i: int) -> str:
        return " ".join(t for t in analyze(ds.texts[i]) if t in vocab)

    return Split(
        X_train.tocsr(),
        X_test.tocsr(),
        [ds.labels[i] for i in tr],
        [ds.labels[i] for i in te],
        [tokens(i) for i in tr],
        [tokens(i) for i in te],
        len(ds.label_names),
    )


# ---------------------------------------------------------------------------- systems
def run_napkinxc(split: Split, args: argparse.Namespace) -> tuple[np.ndarray, float, float]:
    from napkinxc.models import PLT

    with tempfile.TemporaryDirectory() as tmp:
        model = PLT(os.path.join(tmp, "plt"), threads=args.threads, seed=args.seed)
        t0 = time.perf_counter()
        model.fit(split.X_train, split.Y_train)
        train_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        pred = model.predict(split.X_test, top_k=5)
        predict_s = time.perf_counter() - t0
    return _pad(pred), train_s, predict_s


def run_fasttext(split: Split, args: argparse.Namespace, loss: str) -> tuple[np.ndarray, float, float]:
    import fasttext

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "train.txt")
        with open(path, "w", encoding="utf-8") as fh:
            for ys, text in zip(split.Y_train, split.tokens_train):
                fh.write(" ".join(f"__label__{y}" for y in ys) + " " + text + "\n")
        settings = dict(
            input=path, loss=loss, dim=args.dim, epoch=args.fasttext_epochs, lr=args.fasttext_lr, minCount=1
        )
        t0 = time.perf_counter()
        try:
            model = fasttext.train_supervised(**settings, thread=args.threads, seed=args.seed, verbose=0)
        except RuntimeError:
            # fastText's "Encountered NaN" comes and goes with its threads' interleaving on small
            # data; one retry on one thread (timed from the start: the failed try counts).
            model = fasttext.train_supervised(**settings, thread=1, seed=args.seed, verbose=0)
        train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    labels, _ = model.predict(split.tokens_test, k=5)
    predict_s = time.perf_counter() - t0
    pred = [[int(lab[len("__label__") :]) for lab in row] for row in labels]
    return _pad(pred), train_s, predict_s


def run_supervised(split: Split, args: argparse.Namespace) -> tuple[np.ndarray, float, float]:
    """hsoftmax.supervised.Classifier(multilabel=True): fastText's trainer (numba, Hogwild) with a
    PLT over a learned tree, on the same tokens fastText gets."""
    from hsoftmax.supervised import Classifier

    lines = [" ".join(f"__label__{y}" for y in ys) + " " + text for ys, text in zip(split.Y_train, split.tokens_train)]
    clf = Classifier(
        dim=args.dim,
        epochs=args.fasttext_epochs,
        lr=args.fasttext_lr,
        threads=args.threads,
        tree="learned",
        arity=args.arity,
        multilabel=True,
        seed=args.seed,
        progress=False,
    )
    t0 = time.perf_counter()
    clf.fit(lines)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    labels, _ = clf.predict(split.tokens_test, k=min(5, len(clf.labels)))
    predict_s = time.perf_counter() - t0
    return _pad([[int(lab) for lab in row] for row in labels]), train_s, predict_s


def _pad(pred: list[list[int]], k: int = 5) -> np.ndarray:
    out = np.full((len(pred), k), -1, dtype=np.int64)
    for i, ranked in enumerate(pred):
        row = list(dict.fromkeys(ranked))[:k]
        out[i, : len(row)] = row
    return out


def _bags(X: Any, rows: np.ndarray | None = None):
    import torch

    Xs = X if rows is None else X[rows]
    return (
        torch.from_numpy(Xs.indices.astype(np.int64)),
        torch.from_numpy(Xs.indptr[:-1].astype(np.int64)),
        torch.from_numpy(Xs.data.astype(np.float32)),
    )


def run_torch(
    split: Split, args: argparse.Namespace, head_kind: str, tree: Any = None
) -> tuple[np.ndarray, float, float]:
    """Encoder (EmbeddingBag over the TF-IDF) + a LabelTree (``head_kind='plt'``) or a one-vs-all
    Linear + BCE head (``'ova'``), trained with Adam (SparseAdam for the encoder's sparse rows)."""
    import torch
    from torch import nn

    from hsoftmax import LabelTree

    torch.manual_seed(args.seed)
    F_, L = split.X_train.shape[1], split.num_labels
    enc = nn.EmbeddingBag(F_, args.dim, mode="sum", sparse=True)
    nn.init.normal_(enc.weight, 0.0, args.init_std)
    head: nn.Module = LabelTree(args.dim, tree) if head_kind == "plt" else nn.Linear(args.dim, L)
    opts = [torch.optim.SparseAdam(enc.parameters(), lr=args.lr), torch.optim.Adam(head.parameters(), lr=args.lr)]
    Y = split.Y_train
    n = split.X_train.shape[0]
    rng = np.random.default_rng(args.seed)
    total_steps = args.epochs * -(-n // args.batch)
    scheds = [torch.optim.lr_scheduler.LambdaLR(o, lambda s: max(0.0, 1.0 - s / total_steps)) for o in opts]
    if head_kind == "plt":
        _warm_plt_kernels(args.dim)
    t0 = time.perf_counter()
    for _ in range(args.epochs):
        perm = rng.permutation(n)
        for a in range(0, n, args.batch):
            rows = perm[a : a + args.batch]
            idx, off, w = _bags(split.X_train, rows)
            if args.word_dropout > 0:  # drop input words at random: the encoder memorizes rare ones
                w = w * (torch.rand(w.shape) >= args.word_dropout) / (1.0 - args.word_dropout)
            h = enc(idx, off, per_sample_weights=w)
            sets = [Y[i] for i in rows]
            if head_kind == "plt":
                loss = head(h, sets).loss
            else:
                target = torch.zeros(len(rows), L)
                for r, ys in enumerate(sets):
                    target[r, ys] = 1.0
                loss = nn.functional.binary_cross_entropy_with_logits(head(h), target, reduction="sum") / len(rows)
            for o in opts:
                o.zero_grad()
            loss.backward()
            for o in opts:
                o.step()
            for sc in scheds:  # linear decay to 0, as fastText and word2vec do
                sc.step()
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    with torch.no_grad():
        preds = []
        for a in range(0, split.X_test.shape[0], 4096):
            sub = split.X_test[a : a + 4096]
            idx, off, w = _bags(sub)
            h = enc(idx, off, per_sample_weights=w)
            k = min(5, L)
            preds.append(head.topk(h, k).indices if head_kind == "plt" else head(h).topk(k, dim=1).indices)
        pred = torch.cat(preds).numpy()
    predict_s = time.perf_counter() - t0
    return _pad(pred.tolist()), train_s, predict_s


def _warm_linear_kernels() -> None:
    """Compile (or load from numba's disk cache) the sparse PLT kernels outside the timings:
    a one-off per machine, as napkinXC's C++ was compiled before its run."""
    import scipy.sparse as sp

    from hsoftmax import Tree
    from hsoftmax.label_tree import LinearLabelTree

    m = LinearLabelTree(3, Tree.balanced(4)).fit(sp.identity(3, format="csr"), [[0], [1], [2]], epochs=1)
    m.topk(sp.identity(3, format="csr"), 2)


def _warm_plt_kernels(dim: int) -> None:
    """The same for the torch LabelTree's kernels (loss, its backward, top-k), float32 as trained."""
    import torch

    from hsoftmax import LabelTree, Tree

    head = LabelTree(dim, Tree.balanced(4))
    h = torch.zeros(2, dim, requires_grad=True)
    head(h, [[0], [1, 2]]).loss.backward()
    with torch.no_grad():
        head.topk(h.detach(), 2)


def _linear_fit(split: Split, rows: np.ndarray, tree: Any, epochs: int, args: argparse.Namespace):
    from hsoftmax.label_tree import LinearLabelTree

    m = LinearLabelTree(split.X_train.shape[1], tree)
    X = split.X_train[rows]
    return m.fit(X, [split.Y_train[i] for i in rows], epochs=epochs, lr=args.linear_lr, optimizer="sgd",
                 threads=args.threads, seed=args.seed)  # fmt: skip


def run_linear(split: Split, args: argparse.Namespace, trees: dict[str, Any]) -> tuple[np.ndarray, float, float, dict]:
    """``LinearLabelTree`` (linear node models over the TF-IDF, napkinXC's model, on our sparse
    kernels), SGD with fastText's linearly decaying lr. The candidate trees (``trees``: name ->
    a function building it from the training split) and the number of epochs (``--linear-epochs``)
    are chosen on a held-out 10% of the training split by P@1, then the chosen one is trained
    on the whole training split; every fit of the selection counts as training time."""
    from hsoftmax import metrics as M

    t0 = time.perf_counter()
    n = split.X_train.shape[0]
    perm = np.random.default_rng(args.seed + 1).permutation(n)
    cut = n - max(1, n // 10)
    fit_rows, val_rows = np.sort(perm[:cut]), np.sort(perm[cut:])
    X_val = split.X_train[val_rows]
    Y_val = [split.Y_train[i] for i in val_rows]
    built = {name: make() for name, make in trees.items()}
    scores: dict[str, float] = {}

    def val_p1(name: str, epochs: int) -> float:
        m = _linear_fit(split, fit_rows, built[name], epochs, args)
        p1 = M.precision_at_k(m.topk(X_val, 1).indices.numpy(), Y_val, 1)
        scores[f"{name}, {epochs} epochs"] = round(p1, 4)
        return p1

    e0, *more = args.linear_epochs
    best_tree = max(built, key=lambda name: val_p1(name, e0))  # the tree, at the first epoch count
    best_epochs = max(
        [e0, *more], key=lambda e: scores[f"{best_tree}, {e} epochs"] if e == e0 else val_p1(best_tree, e)
    )
    model = _linear_fit(split, np.arange(n), built[best_tree], best_epochs, args)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    pred = model.topk(split.X_test, min(5, split.num_labels)).indices.numpy()
    predict_s = time.perf_counter() - t0
    extra = {"tree": f"{best_tree}: {model.tree!r}", "epochs": best_epochs, "validation_P@1": scores}
    return _pad(pred.tolist()), train_s, predict_s, extra


def learned_tree(split: Split, args: argparse.Namespace):
    from hsoftmax import Tree
    from hsoftmax.label_tree import label_centroids

    t0 = time.perf_counter()
    cent = label_centroids(split.X_train, split.Y_train, num_labels=split.num_labels)
    tree = Tree.from_embeddings(cent, arity=args.arity, seed=args.seed)
    return tree, time.perf_counter() - t0


def linear_candidates(split: Split, args: argparse.Namespace) -> dict[str, Any]:
    """``ours_linear``'s candidate trees for the held-out selection (name -> a function building
    it): k-means of arity ``--linear-arity`` with and without leaf clusters of up to
    ``--max-leaves`` labels, and with the ``m`` most frequent labels under the root for each
    ``--shortcuts m`` that is a small share of the labels (``8 m <= L``). Where every label fits
    in one leaf cluster (``L <= --max-leaves``) the leaf-cluster tree is one flat node, the tree
    napkinXC's own construction builds for so few labels, and it is the only candidate: a deeper
    tree (or shortcuts) over so few labels is not faster to train, and on WordNet's 45 it lost 2
    points of held-out P@1 on every seed."""
    a, labels = args.linear_arity, split.num_labels
    leaves = f"k-means arity {a}, leaves <= {args.max_leaves}"
    trees = {leaves: lambda: linear_tree(split, args, a, args.max_leaves)}
    if labels <= args.max_leaves:
        return trees
    trees = {f"k-means arity {a}": lambda: linear_tree(split, args, a, None), **trees}
    for m in (m for m in args.shortcuts if 8 * m <= labels):
        trees[f"k-means arity {a}, {m} shortcuts"] = lambda m=m: linear_tree(split, args, a, None, m)
    return trees


def linear_tree(split: Split, args: argparse.Namespace, arity: int, max_leaves: int | None, shortcuts: int = 0):
    """The learned tree of ``ours_linear``: balanced k-means on the TF-IDF label centroids, with
    the small subtrees collapsed into one-vs-all leaf clusters when ``max_leaves`` is set
    (napkinXC's and Parabel's habit: its default is arity 2, leaf clusters of up to 100), and the
    ``shortcuts`` most frequent labels of the training split moved under the root."""
    from hsoftmax import Tree
    from hsoftmax import metrics as M
    from hsoftmax.label_tree import label_centroids, with_leaf_clusters, with_shortcuts

    cent = label_centroids(split.X_train, split.Y_train, num_labels=split.num_labels)
    tree = Tree.from_embeddings(cent, arity=arity, seed=args.seed)
    if shortcuts:
        counts, _ = M.label_counts(split.Y_train, split.num_labels)
        tree = with_shortcuts(tree, np.argsort(-counts, kind="stable")[:shortcuts])
    return tree if max_leaves is None else with_leaf_clusters(tree, max_leaves)


def facet_tree(ds: Dataset):
    from hsoftmax import Tree

    return Tree.from_paths([[name.split("::")[0]] for name in ds.label_names], labels=ds.label_names)


# ---------------------------------------------------------------------------- evaluation
def evaluate(pred: np.ndarray, split: Split) -> dict[str, float]:
    from hsoftmax import metrics as M

    counts, n = M.label_counts(split.Y_train, split.num_labels)
    prop = M.propensities(counts, n)
    return {
        "P@1": M.precision_at_k(pred, split.Y_test, 1),
        "P@3": M.precision_at_k(pred, split.Y_test, 3),
        "P@5": M.precision_at_k(pred, split.Y_test, 5),
        "nDCG@5": M.ndcg_at_k(pred, split.Y_test, 5),
        "PSP@5": M.psp_at_k(pred, split.Y_test, prop, 5),
    }


def available(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def run_dataset(ds: Dataset, args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    split = featurize(ds, args.seed, args.max_features)
    sizes = [len(y) for y in ds.labels]
    info = {
        "dataset": ds.name,
        "seed": args.seed,
        "note": ds.note,
        "examples": len(ds.texts),
        "train": split.X_train.shape[0],
        "test": split.X_test.shape[0],
        "features": split.X_train.shape[1],
        "labels": split.num_labels,
        "labels_per_example": round(float(np.mean(sizes)), 2),
        "featurize_s": round(time.perf_counter() - t0, 2),
        "rows": [],
        "skipped": [],
    }
    print(
        f"\n== {ds.name}: {info['examples']} examples ({info['train']} train / {info['test']} test), "
        f"{info['features']} TF-IDF features, {info['labels']} labels, {info['labels_per_example']} per example",
        flush=True,
    )
    print(f"   ({ds.note})", flush=True)
    for system in args.systems:
        if system.startswith("napkinxc") and not available("napkinxc"):
            info["skipped"].append(f"{system}: napkinxc is not installed (pip install hsoftmax[bench])")
            print(f"   skipped {system}: napkinxc is not installed", flush=True)
            continue
        if system.startswith("fasttext") and not available("fasttext"):
            info["skipped"].append(f"{system}: fasttext is not installed (pip install hsoftmax[bench])")
            print(f"   skipped {system}: fasttext is not installed", flush=True)
            continue
        extra: dict[str, Any] = {}
        if system == "napkinxc_plt":
            pred, tr, pr = run_napkinxc(split, args)
        elif system.startswith("fasttext"):
            try:
                pred, tr, pr = run_fasttext(split, args, system.split("_")[1])
            except RuntimeError as e:  # fastText's "Encountered NaN" (its lr diverged): a peer's failure
                info["skipped"].append(f"{system}: fastText failed: {e}")
                print(f"   skipped {system}: fastText failed: {e}", flush=True)
                continue
        elif system == "supervised_plt":
            if not available("hsoftmax.supervised"):
                info["skipped"].append(f"{system}: this checkout has no hsoftmax.supervised")
                continue
            pred, tr, pr = run_supervised(split, args)
        elif system == "torch_ova":
            pred, tr, pr = run_torch(split, args, "ova")
        elif system == "ours_learned":
            tree, build_s = learned_tree(split, args)
            pred, tr, pr = run_torch(split, args, "plt", tree)
            tr += build_s  # building the tree is part of training (napkinXC's fit builds its own)
            extra = {"tree": repr(tree), "tree_build_s": round(build_s, 3)}
        elif system == "ours_facets":
            tree = facet_tree(ds)
            pred, tr, pr = run_torch(split, args, "plt", tree)
            extra = {"tree": repr(tree)}
        elif system.startswith("ours_linear"):
            _warm_linear_kernels()
            trees = linear_candidates(split, args) if system == "ours_linear" else {"facets": lambda: facet_tree(ds)}
            pred, tr, pr, extra = run_linear(split, args, trees)
        else:
            raise ValueError(f"unknown system {system!r}")
        row = {"system": system, **evaluate(pred, split), "train_s": round(tr, 3), "predict_s": round(pr, 3), **extra}
        info["rows"].append(row)
        print(
            f"   {system:<13} P@1 {row['P@1']:.4f}  P@3 {row['P@3']:.4f}  P@5 {row['P@5']:.4f}  "
            f"nDCG@5 {row['nDCG@5']:.4f}  PSP@5 {row['PSP@5']:.4f}  train {tr:7.2f} s  top-5 {pr:6.3f} s",
            flush=True,
        )
    ratios(info)
    return info


def ratios(info: dict[str, Any]) -> None:
    """Ours against napkinXC (and fastText hs), as the targets of issue 12 state them."""
    rows = {r["system"]: r for r in info["rows"]}
    ref = rows.get("napkinxc_plt")
    hs = rows.get("fasttext_hs")
    for name in ("ours_learned", "ours_facets", "ours_linear", "ours_linear_facets", "supervised_plt"):
        ours = rows.get(name)
        if ours is None:
            continue
        if ref is not None:
            ours["vs_napkinxc"] = {
                "P@1_diff": round(ours["P@1"] - ref["P@1"], 4),
                "P@5_diff": round(ours["P@5"] - ref["P@5"], 4),
                "train_time_ratio": round(ours["train_s"] / max(ref["train_s"], 1e-9), 3),
                "predict_time_ratio": round(ours["predict_s"] / max(ref["predict_s"], 1e-9), 3),
            }
            v = ours["vs_napkinxc"]
            print(
                f"   {name} vs napkinXC PLT: P@1 {v['P@1_diff']:+.4f}, P@5 {v['P@5_diff']:+.4f}, "
                f"train time x{v['train_time_ratio']:.2f}, top-5 time x{v['predict_time_ratio']:.2f}",
                flush=True,
            )
        if hs is not None:
            ours["P@5_minus_fasttext_hs"] = round(ours["P@5"] - hs["P@5"], 4)


def over_seeds(datasets: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each of our systems minus napkinXC over the splits (``--seeds``) of each data set: the mean
    and standard error of the P@1 and P@5 differences, on how many splits ours is ahead, and the
    range of the time ratios. One split's P@1 carries a standard error of ~0.4 points (and
    2-thread Hogwild runs differ by a few tenths), so a difference of that size needs many splits.
    """
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for d in datasets:
        for r in d["rows"]:
            if "vs_napkinxc" in r:
                groups.setdefault((d["dataset"], r["system"]), []).append({"seed": d.get("seed"), **r["vs_napkinxc"]})
    out = []
    for (dataset, system), runs in groups.items():
        row: dict[str, Any] = {"dataset": dataset, "system": system, "seeds": [r["seed"] for r in runs]}
        for key in ("P@1_diff", "P@5_diff"):
            x = np.array([r[key] for r in runs], dtype=np.float64)
            se = float(x.std(ddof=1) / np.sqrt(x.size)) if x.size > 1 else float("nan")
            row[key] = {"mean": round(float(x.mean()), 5), "se": round(se, 5), "ahead": int((x > 0).sum()),
                        "behind": int((x < 0).sum())}  # fmt: skip
        for key in ("train_time_ratio", "predict_time_ratio"):
            x = [r[key] for r in runs]
            row[key] = {"min": min(x), "max": max(x)}
        out.append(row)
    return out


def print_over_seeds(summary: list[dict[str, Any]]) -> None:
    for r in summary:
        n = len(r["seeds"])
        p1, p5, tr, pr = r["P@1_diff"], r["P@5_diff"], r["train_time_ratio"], r["predict_time_ratio"]
        print(
            f"   {r['dataset']}, {r['system']} minus napkinXC over {n} splits (seeds {r['seeds']}): "
            f"P@1 {p1['mean']:+.4f} ± {p1['se']:.4f} (ahead on {p1['ahead']}, behind on {p1['behind']}), "
            f"P@5 {p5['mean']:+.4f} ± {p5['se']:.4f} (ahead on {p5['ahead']}, behind on {p5['behind']}), "
            f"train time x{tr['min']:.2f}-{tr['max']:.2f}, top-5 time x{pr['min']:.2f}-{pr['max']:.2f}",
            flush=True,
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="generated data, small models: a smoke run in seconds")
    ap.add_argument("--datasets", nargs="+", help="debtags, wordnet, synthetic (default: debtags wordnet)")
    ap.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=SYSTEMS)
    ap.add_argument("--dim", type=int, help="hidden size of the torch encoder and of fastText (default 256)")
    ap.add_argument("--epochs", type=int, help="epochs of the torch models (default 3)")
    ap.add_argument("--batch", type=int, help="batch size of the torch models (default 128)")
    ap.add_argument("--lr", type=float, default=0.02, help="Adam's initial lr (decays linearly to 0)")
    ap.add_argument("--init-std", type=float, default=0.1)
    ap.add_argument("--word-dropout", type=float, default=0.0, help="drop this share of input words per step")
    ap.add_argument("--arity", type=int, default=16, help="arity of the learned tree")
    ap.add_argument(
        "--linear-epochs", type=int, nargs="+", help="epoch counts ours_linear* choose from (default 10 20)"
    )
    ap.add_argument("--linear-lr", type=float, default=1.0, help="SGD lr of ours_linear* (decays linearly to 0)")
    ap.add_argument("--linear-arity", type=int, default=4, help="arity of ours_linear's k-means trees")
    ap.add_argument("--max-leaves", type=int, default=100, help="leaf-cluster size of ours_linear's second tree")
    ap.add_argument(
        "--shortcuts",
        type=int,
        nargs="*",
        default=[],
        help="more candidate trees of ours_linear: the k-means tree with this many most frequent labels "
        "under the root (each m with 8 m <= labels; default none)",
    )
    ap.add_argument("--fasttext-epochs", type=int, help="default 25")
    ap.add_argument("--fasttext-lr", type=float, default=0.2)
    ap.add_argument("--max-features", type=int, default=100_000)
    ap.add_argument("--wordnet-max", type=int, default=40_000, help="lemmas sampled from WordNet")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0, help="the split's and every model's seed")
    ap.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        help="run each data set on each of these seeds (splits) instead of --seed alone, and summarize "
        "ours minus napkinXC over them (mean, standard error, splits ahead)",
    )
    ap.add_argument("--out", type=Path, help="JSON results (default benchmarks/results/multilabel.json)")
    args = ap.parse_args(argv)
    quick = args.quick
    args.dim = args.dim or (64 if quick else 256)
    args.epochs = args.epochs or (5 if quick else 3)
    args.batch = args.batch or (32 if quick else 128)
    args.fasttext_epochs = args.fasttext_epochs or (5 if quick else 25)
    args.linear_epochs = args.linear_epochs or ([5, 10] if quick else [10, 20])
    names = args.datasets or (["synthetic"] if quick else ["debtags", "wordnet"])

    import torch

    torch.set_num_threads(args.threads)
    info = machine_info(("hsoftmax", "torch", "numpy", "numba", "scikit-learn", "napkinxc", "fasttext"))
    info["threads"] = args.threads
    print(f"multilabel benchmark, {info['date']}: {machine_summary(info)}; load average {info['loadavg']}", flush=True)
    results: dict[str, Any] = {"machine": info, "args": {k: str(v) for k, v in vars(args).items()}, "datasets": []}
    seeds = args.seeds or [args.seed]
    for name in names:
        if name not in ("debtags", "wordnet", "synthetic"):
            ap.error(f"unknown dataset {name!r}")
        fixed = load_debtags() if name == "debtags" else synthetic() if name == "synthetic" else None
        for seed in seeds:
            args.seed = seed
            # WordNet's sample of lemmas follows the seed; the other two are fixed data sets
            ds = load_wordnet(args.wordnet_max, seed) if name == "wordnet" else fixed
            if ds is None:
                note = (
                    f"{name}: its data is not on this machine (apt-cache dumpavail / wordnet-base); "
                    "using generated data"
                )
                print(note, flush=True)
                if note not in results.setdefault("notes", []):  # once, however many seeds
                    results["notes"].append(note)
                ds = synthetic()
            results["datasets"].append(run_dataset(ds, args))
    if len(seeds) > 1:
        results["over_seeds"] = over_seeds(results["datasets"])
        print(f"\n== over the splits{'' if results['over_seeds'] else ': no napkinXC rows to compare with'}")
        print_over_seeds(results["over_seeds"])
    out = args.out or HERE / "results" / "multilabel.json"
    write_json(out, results)
    print(f"\nwrote {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Taxonomy classification: WordNet noun gloss -> parent synset, every system on the same split.

The task (Debian ``wordnet-base``, WordNet 3.0, ``/usr/share/wordnet/data.noun``, read by
:func:`read_wordnet`): each noun synset's text is its words and its gloss (``physical entity : an
entity that has physical existence``), its label the synset's first hypernym (``@`` or ``@i``,
whichever the file lists first). Tokenized as fastText users would (lowercase,
``[a-z]+('[a-z]+)*|[0-9]+``). Labels with fewer than 3 examples are dropped; a seeded 90/10 split
of the examples (the few test examples whose label never occurs in training are dropped, so every
test label is a class every system knows). 7,319 labels, 62,212 train / 6,906 test examples.

Trees over the labels (all built from the training split only):

* ``wordnet``: the real hypernym tree (:func:`wordnet_paths`, then :meth:`Tree.from_paths`): each
  label hangs below the path from ``entity`` down through first hypernyms; single-child chains
  and wide nodes (up to 109 children) stay as WordNet has them. A label that is also an ancestor
  of other labels (``dog`` is a label and an ancestor of the label ``hound``) is an internal node
  *and* a class: its class is a leaf child of its own node (the decision "this node itself"
  among its hyponym subtrees), so it stays inside its subtree (tree distances then count one
  more edge at such a label: from its node to its leaf).
* ``huffman``: fastText's tree, over the training label counts.
* ``learned``: :meth:`Tree.from_embeddings` over each label's mean gloss vector (the mean TF-IDF
  vector of its training texts, reduced to 64 dimensions by a randomized SVD), balancing counts.

Systems (2 threads, 5 epochs, dim 100; the same split, tokens and test set; a system name takes
``-lrX`` to set its learning rate, e.g. ``fasttext-hs-lr0.5``):

* ``fasttext-hs``, ``fasttext-softmax``: python ``fasttext``, defaults otherwise (lr 0.1, no
  subwords, no n-grams);
* ``supervised-huffman|wordnet|learned``: :class:`hsoftmax.supervised.Classifier` at its
  (fastText's) defaults over that tree; ``supervised-own-learned``: its ``tree="learned"`` (a
  Huffman pass, then a tree from its own hidden class means, then a second pass);
* ``torch-softmax``, ``torch-hs-huffman|wordnet|learned``: the same torch bag-of-words model
  (``EmbeddingBag`` mean, sparse gradients) with an ``nn.Linear`` + cross-entropy head or a
  sparse :class:`hsoftmax.HierarchicalSoftmax` head (CPU kernels), mini-batches of 128,
  ``SparseAdam`` for the sparse tables and ``Adam`` for the dense head, lr 0.01.

Every system runs in a fresh process (peak memory is its own; ``--quick`` runs in-process), after
an untimed warm-up on 500 lines that compiles or loads the numba kernels. It is scored from its
top-5 predictions by :mod:`hsoftmax.metrics`: P@1, P@5 (fastText's definition: hits /
(5 x examples)), R@5, and against the WordNet tree the accuracy at each depth (the prediction is
in the right subtree at depth d) and the mean tree distance of the wrong predictions. "train s"
is the fit (fastText and the Classifier read the training file; the torch models get the token
ids in memory); building a tree is reported apart; "predict s" is the top-5 of the whole test set.

    python benchmarks/taxonomy.py                   # the full task (needs wordnet-base), ~30 min on 2 cores
    python benchmarks/taxonomy.py --systems fasttext-hs supervised-huffman supervised-wordnet-lr0.5
    python benchmarks/taxonomy.py --write-files DIR # also keep the split and the trees (.npz) in DIR
    python benchmarks/taxonomy.py --quick           # CI smoke run on the committed WordNet extract

``--quick`` uses ``benchmarks/data/wordnet_extract.noun`` (539 synsets of data.noun in its own
format, license beside it; ``--write-extract`` rebuilds it), 2 epochs, labels with >= 2 examples:
it runs where WordNet is not installed. Peers that are not installed (fastText is in the
``bench`` extra only) get a row saying so. Results go to ``benchmarks/results/taxonomy.json``
(and ``.md``, rewritten after every system), or to ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import re
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from common import machine_info, machine_summary, peak_rss_bytes, run_json_child, write_json, write_text

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
WORDNET_NOUNS = Path("/usr/share/wordnet/data.noun")
EXTRACT = HERE / "data" / "wordnet_extract.noun"
TOKEN = re.compile(r"[a-z]+(?:'[a-z]+)*|[0-9]+")
LABEL_PREFIX = "__label__"


# ---------------------------------------------------------------------------- WordNet data file
class Synset(NamedTuple):
    """One line of a WordNet ``data.noun`` file (the fields this benchmark reads)."""

    offset: str  # 8 digits: the synset's byte offset, its id in every pointer
    lex_filenum: int
    words: tuple[str, ...]  # lemmas, '_' for spaces
    hypernym: str | None  # the first '@' or '@i' pointer's target offset
    gloss: str  # after '|': definition and quoted examples


def parse_data_line(line: str) -> Synset:
    """Parse one synset line of a WordNet 3.0 data file (see wndb(5WN)):
    ``offset lex_filenum ss_type w_cnt [word lex_id]... p_cnt [ptr offset pos src/tgt]... | gloss``
    (``w_cnt`` is hexadecimal, ``p_cnt`` decimal; verbs' frames are not in ``data.noun``).

    >>> s = parse_data_line("00003993 03 n 01 congener 0 001 @ 00003553 n 0000 | a whole; \\"x\\"  ")
    >>> s.offset, s.words, s.hypernym, s.gloss
    ('00003993', ('congener',), '00003553', 'a whole; "x"')
    """
    data, bar, gloss = line.partition("|")
    fields = data.split()
    try:
        offset, lex_filenum, ss_type = fields[0], int(fields[1]), fields[2]
        w_cnt = int(fields[3], 16)
        words = tuple(fields[4 + 2 * i] for i in range(w_cnt))
        i = 4 + 2 * w_cnt
        p_cnt = int(fields[i])
        pointers = [fields[i + 1 + 4 * j : i + 5 + 4 * j] for j in range(p_cnt)]
    except (IndexError, ValueError) as e:
        raise ValueError(f"not a WordNet data line ({e}): {line[:80]!r}") from None
    if not bar or len(offset) != 8 or not offset.isdigit() or ss_type != "n" or len(fields) < i + 1 + 4 * p_cnt:
        raise ValueError(f"not a WordNet noun data line: {line[:80]!r}")
    hypernym = next((p[1] for p in pointers if p[0] in ("@", "@i") and p[2] == "n"), None)
    return Synset(offset, lex_filenum, words, hypernym, gloss.strip())


def read_wordnet(path: str | os.PathLike[str]) -> dict[str, Synset]:
    """Every synset of a WordNet noun data file, by offset (the license header, whose lines start
    with two spaces, is skipped)."""
    synsets: dict[str, Synset] = {}
    with open(path, encoding="latin-1") as f:  # WordNet 3.0's files are ASCII with a few Latin-1 bytes
        for line in f:
            if line.startswith("  ") or not line.strip():
                continue
            s = parse_data_line(line)
            synsets[s.offset] = s
    if not synsets:
        raise ValueError(f"{path}: no synsets (is it a WordNet data.noun file?)")
    return synsets


def tokenize(text: str) -> list[str]:
    """Lowercase words (inner apostrophes kept) and digit runs, as the corpus builder does.

    >>> tokenize("Dog's life: a (domestic) dog_breed, 1900s")
    ["dog's", 'life', 'a', 'domestic', 'dog', 'breed', '1900', 's']
    """
    return TOKEN.findall(text.lower().replace("_", " ").replace("\u2019", "'"))


def synset_text(s: Synset) -> list[str]:
    """The tokens of a synset's words and gloss."""
    return tokenize(" ".join(s.words) + " : " + s.gloss)


def synset_name(s: Synset) -> str:
    """``dog.02084071``: readable and unique (the offset is the id)."""
    return f"{s.words[0].lower()}.{s.offset}"


def ancestors(synsets: dict[str, Synset], offset: str) -> list[str]:
    """The first-hypernym chain above ``offset``, from the root down (``offset`` not included).
    A hypernym missing from the file (an extract) ends the chain there."""
    chain: list[str] = []
    seen = {offset}
    h = synsets[offset].hypernym
    while h is not None and h in synsets:
        if h in seen:
            raise ValueError(f"hypernym cycle through synset {h}")
        seen.add(h)
        chain.append(h)
        h = synsets[h].hypernym
    return chain[::-1]


#: The subtrees of the committed extract (--quick): carnivore.n.01 and musical_instrument.n.01.
EXTRACT_ROOTS = ("02075296", "03800933")


def write_extract(
    source: str | os.PathLike[str], dest: str | os.PathLike[str], roots: Sequence[str] = EXTRACT_ROOTS
) -> int:
    """Copy the license header and the lines of every synset below ``roots`` and above them
    (their first-hypernym chains to ``entity``) verbatim from ``source`` to ``dest``; how
    ``benchmarks/data/wordnet_extract.noun`` was made. Returns the number of synsets."""
    synsets = read_wordnet(source)
    children: dict[str, list[str]] = {}
    for s in synsets.values():
        if s.hypernym is not None:
            children.setdefault(s.hypernym, []).append(s.offset)
    keep = set()
    for root in roots:
        keep.update(ancestors(synsets, root))
        stack = [root]
        while stack:
            keep.add(stack[-1])
            stack.extend(children.get(stack.pop(), ()))
    with open(source, encoding="latin-1") as f:
        lines = [line for line in f if line.startswith("  ") or line[:8] in keep]
    write_text(dest, "".join(lines))  # UTF-8: the kept lines are ASCII
    return len(keep)


# ---------------------------------------------------------------------------- the task
class Task(NamedTuple):
    """The split every system shares: token lists and label indices into ``labels``."""

    labels: list[str]  # class names: synset offsets, as written after __label__
    train_tokens: list[list[str]]
    train_y: np.ndarray
    test_tokens: list[list[str]]
    test_y: np.ndarray
    paths: list[list[str]]  # WordNet internal-node names above each class (Tree.from_paths)
    info: dict[str, Any]


def build_task(synsets: dict[str, Synset], min_examples: int = 3, test_fraction: float = 0.1, seed: int = 0) -> Task:
    """The gloss -> parent task over ``synsets`` (see the module docstring)."""
    examples = [(synset_text(s), s.hypernym) for s in synsets.values() if s.hypernym in synsets]
    counts = Counter(h for _, h in examples)
    kept = [(t, h) for t, h in examples if counts[h] >= min_examples and t]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(kept))
    n_test = round(test_fraction * len(kept))
    test_idx, train_idx = order[:n_test], order[n_test:]
    train_counts = Counter(kept[i][1] for i in train_idx)
    labels = sorted(train_counts, key=lambda h: (-train_counts[h], h))  # fastText's order: by count
    index = {h: i for i, h in enumerate(labels)}
    test_known = [i for i in test_idx if kept[i][1] in index]
    paths = wordnet_paths(synsets, labels)
    info = {
        "synsets": len(synsets),
        "examples": len(kept),
        "labels_min_examples": sum(1 for c in counts.values() if c >= min_examples),
        "labels": len(labels),
        "train": len(train_idx),
        "test": len(test_known),
        "test_dropped_unseen_label": len(test_idx) - len(test_known),
        "train_tokens": sum(len(kept[i][0]) for i in train_idx),
        "min_examples": min_examples,
        "test_fraction": test_fraction,
        "seed": seed,
    }
    return Task(
        labels,
        [kept[i][0] for i in train_idx],
        np.array([index[kept[i][1]] for i in train_idx], dtype=np.int64),
        [kept[i][0] for i in test_known],
        np.array([index[kept[i][1]] for i in test_known], dtype=np.int64),
        paths,
        info,
    )


def wordnet_paths(synsets: dict[str, Synset], labels: Sequence[str]) -> list[list[str]]:
    """For :meth:`Tree.from_paths`: the internal nodes above each label, named
    ``lemma.offset``. A label that lies on another label's path is an internal node too; its
    class then hangs from its own node (its path ends with itself), not beside it."""
    chains = {h: ancestors(synsets, h) for h in labels}
    inner = {a for chain in chains.values() for a in chain}
    return [[synset_name(synsets[a]) for a in chains[h] + ([h] if h in inner else [])] for h in labels]


def write_fasttext_file(
    path: str | os.PathLike[str], labels: Sequence[str], tokens: list[list[str]], y: np.ndarray
) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for toks, i in zip(tokens, y.tolist()):
            f.write(f"{LABEL_PREFIX}{labels[i]} {' '.join(toks)}\n")


# ---------------------------------------------------------------------------- trees
def one_blas_thread() -> contextlib.AbstractContextManager[Any]:
    """numpy's BLAS on one thread (threadpoolctl, if installed) while the trees are built: its
    threads spin-wait, and on a loaded machine that made the small SVD 10x slower."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def make_trees(task: Task, seed: int = 0) -> tuple[dict[str, Any], dict[str, float]]:
    """The three label trees over ``task.labels`` and the seconds each took to build."""
    from hsoftmax import Tree

    counts = np.bincount(task.train_y, minlength=len(task.labels)).astype(np.float64)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    trees = {"huffman": Tree.huffman(counts, labels=task.labels)}
    seconds["huffman"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    trees["wordnet"] = Tree.from_paths(task.paths, labels=task.labels)
    seconds["wordnet"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    vectors = label_gloss_vectors(task, dim=64, seed=seed)
    trees["learned"] = Tree.from_embeddings(vectors, counts=counts, seed=seed, labels=task.labels)
    seconds["learned"] = time.perf_counter() - t0
    return trees, seconds


def label_gloss_vectors(task: Task, dim: int = 64, seed: int = 0) -> np.ndarray:
    """``(num_labels, dim)``: each label's mean TF-IDF gloss vector (training texts only; sublinear
    tf, smoothed idf, rows L2-normalized, as scikit-learn's ``TfidfVectorizer``), reduced to its
    top ``dim`` singular directions (LSA) and L2-normalized (cosine geometry for the k-means)."""
    from scipy import sparse

    vocab: dict[str, int] = {}
    rows, cols = [], []
    for i, toks in enumerate(task.train_tokens):
        for w in toks:
            rows.append(i)
            cols.append(vocab.setdefault(w, len(vocab)))
    n, V = len(task.train_tokens), len(task.labels)
    tf = sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, len(vocab)))
    tf.sum_duplicates()
    tf.data = 1.0 + np.log(tf.data)
    df = np.bincount(tf.indices, minlength=len(vocab))
    tfidf = tf @ sparse.diags(np.log((1 + n) / (1 + df)) + 1.0)
    norms = np.sqrt(np.asarray(tfidf.multiply(tfidf).sum(axis=1)).ravel())
    tfidf = sparse.diags(1.0 / np.maximum(norms, 1e-12)) @ tfidf
    member = sparse.csr_matrix((np.ones(n), (task.train_y, np.arange(n))), shape=(V, n))
    means = sparse.diags(1.0 / np.maximum(np.asarray(member.sum(axis=1)).ravel(), 1)) @ member @ tfidf
    reduced = top_singular_directions(means, dim, np.random.default_rng(seed))
    return (reduced / np.maximum(np.linalg.norm(reduced, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def top_singular_directions(A: Any, k: int, rng: np.random.Generator, power_iterations: int = 4) -> np.ndarray:
    """``U_k * S_k`` of a (sparse) ``(m, n)`` matrix by randomized SVD (Halko, Martinsson & Tropp
    2011): a Gaussian sketch with 10 extra columns and ``power_iterations`` power steps, each
    re-orthonormalized on the ``m`` side; then ``B = Q^T A`` is decomposed through the small
    ``B B^T`` (no dense ``(k, n)`` SVD, no QR of ``n``-row blocks)."""
    k = min(k, *A.shape)
    Q = np.linalg.qr(A @ rng.normal(size=(A.shape[1], k + 10)))[0]
    for _ in range(power_iterations):
        Q = np.linalg.qr(A @ (A.T @ Q))[0]
    Bt = A.T @ Q  # (n, k + 10): B^T
    eigval, eigvec = np.linalg.eigh(Bt.T @ Bt)  # B B^T = U_B S^2 U_B^T, ascending
    top = np.argsort(eigval)[::-1][:k]
    return (Q @ eigvec[:, top]) * np.sqrt(np.maximum(eigval[top], 0.0))


# ---------------------------------------------------------------------------- systems
class Run(NamedTuple):
    """What a system hands back: ``(n_test, 5)`` predicted class ids (``-1`` pads) and seconds."""

    top5: np.ndarray
    train_s: float
    predict_s: float
    extra: dict[str, Any]


class Skip(Exception):
    """A system that cannot run here (a peer not installed): its row says why."""


class PeerFailed(Skip):
    """A peer that failed on this data (fastText diverging): its row says how. Our own systems
    never get here: their failures end the run with an error."""


class Settings(NamedTuple):
    epochs: int
    threads: int
    dim: int
    seed: int
    batch: int  # the torch models' mini-batch (fastText and the Classifier step per example)


def label_ids(names: Sequence[Sequence[str]], index: dict[str, int], k: int = 5) -> np.ndarray:
    """Rows of predicted label names (``__label__`` prefix or not) as ``(n, k)`` class ids."""
    out = np.full((len(names), k), -1, dtype=np.int64)
    for i, row in enumerate(names):
        for j, name in enumerate(row[:k]):
            out[i, j] = index.get(name.removeprefix(LABEL_PREFIX), -1)
    return out


def run_fasttext(task: Task, files: dict[str, str], s: Settings, loss: str, lr: float | None = None) -> Run:
    if importlib.util.find_spec("fasttext") is None:
        raise Skip("fasttext is not installed (pip install fasttext, or the bench extra)")
    import fasttext

    kw: dict[str, Any] = {} if lr is None else {"lr": lr}
    t0 = time.perf_counter()
    try:
        model = fasttext.train_supervised(
            input=files["train"], loss=loss, epoch=s.epochs, thread=s.threads, verbose=0, **kw
        )
    except RuntimeError as e:  # on tiny data fastText's threads overshoot its lr schedule and it may diverge
        raise PeerFailed(f"fastText failed: {e}") from None
    train_s = time.perf_counter() - t0
    texts = [" ".join(t) for t in task.test_tokens]
    t0 = time.perf_counter()
    names, _ = model.predict(texts, k=5)
    predict_s = time.perf_counter() - t0
    index = {name: i for i, name in enumerate(task.labels)}
    return Run(label_ids(names, index), train_s, predict_s, {"lr": model.lr if lr is None else lr, "dim": model.dim})


def run_supervised(
    task: Task, files: dict[str, str], s: Settings, tree: Any, warmup_file: str, lr: float | None = None
) -> Run:
    """:class:`hsoftmax.supervised.Classifier` at its (fastText's) defaults over ``tree``: a
    :class:`Tree` over ``task.labels``, or one of its own names (``"huffman"``, ``"learned"``)."""
    try:
        from hsoftmax.supervised import Classifier
    except ImportError as e:
        raise Skip(f"hsoftmax.supervised is not available ({e})") from None

    def make() -> Any:
        kw = {} if lr is None else {"lr": lr}
        return Classifier(
            dim=s.dim, epochs=s.epochs, threads=s.threads, tree=tree, seed=s.seed + 1, progress=False, **kw
        )

    # Compiles (or loads from numba's cache) the kernels outside the timing, training's and the search's.
    make().fit(warmup_file).predict([" ".join(t) for t in task.test_tokens[:8]], k=5)
    model = make()
    t0 = time.perf_counter()
    model.fit(files["train"])
    train_s = time.perf_counter() - t0
    texts = [" ".join(t) for t in task.test_tokens]
    t0 = time.perf_counter()
    names, _ = model.predict(texts, k=5)
    predict_s = time.perf_counter() - t0
    index = {name: i for i, name in enumerate(task.labels)}
    return Run(
        label_ids(names, index),
        train_s,
        predict_s,
        {"lr": model.lr, "tree": tree if isinstance(tree, str) else "given"},
    )


def encode_bags(tokens: list[list[str]], vocab: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """EmbeddingBag input: flat word ids and each text's offset (unknown words dropped, as
    fastText drops them; a text left empty is an empty bag, a zero vector)."""
    ids = [[vocab[w] for w in t if w in vocab] for t in tokens]
    offsets = np.zeros(len(ids), dtype=np.int64)
    np.cumsum([len(x) for x in ids[:-1]], out=offsets[1:])
    return np.fromiter((w for x in ids for w in x), dtype=np.int64), offsets


def run_torch(task: Task, s: Settings, tree: Any, batch: int = 128, lr: float = 0.01) -> Run:
    """A fastText-shaped torch model: mean of word embeddings (sparse gradients) -> a head.
    ``tree=None``: ``nn.Linear`` + cross-entropy over all labels; else a sparse
    :class:`HierarchicalSoftmax` over ``tree``. Lazy Adam for every sparse table
    (``torch.optim.SparseAdam``), Adam for the dense head: the same optimizer family for both."""
    import torch
    from torch import nn

    from hsoftmax import HierarchicalSoftmax

    torch.set_num_threads(s.threads)
    vocab: dict[str, int] = {}
    for t in task.train_tokens:
        for w in t:
            vocab.setdefault(w, len(vocab))
    V = len(task.labels)

    class BagOfWords(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.EmbeddingBag(len(vocab), s.dim, mode="mean", sparse=True)
            nn.init.uniform_(self.emb.weight, -1.0 / s.dim, 1.0 / s.dim)  # fastText's input init
            self.head = nn.Linear(s.dim, V) if tree is None else HierarchicalSoftmax(s.dim, tree, sparse=True)
            head_opt = torch.optim.Adam if tree is None else torch.optim.SparseAdam
            self.opts = [torch.optim.SparseAdam(self.emb.parameters(), lr=lr), head_opt(self.head.parameters(), lr=lr)]

        def step(self, words: torch.Tensor, offsets: torch.Tensor, target: torch.Tensor) -> None:
            h = self.emb(words, offsets)
            loss = nn.functional.cross_entropy(self.head(h), target) if tree is None else self.head(h, target).loss
            loss.backward()
            for o in self.opts:
                o.step()
                o.zero_grad()

        @torch.no_grad()
        def top5(self, words: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
            h = self.emb(words, offsets)
            return self.head(h).topk(5, dim=1).indices if tree is None else self.head.topk(h, 5).indices

    words, offsets = encode_bags(task.train_tokens, vocab)
    lengths = np.diff(np.append(offsets, words.size))
    y = torch.from_numpy(task.train_y)

    def bags(rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        lens = lengths[rows]
        flat = np.concatenate([words[a : a + n] for a, n in zip(offsets[rows], lens)])
        offs = np.zeros(rows.size, dtype=np.int64)
        np.cumsum(lens[:-1], out=offs[1:])
        return torch.from_numpy(flat), torch.from_numpy(offs)

    # A throwaway model takes the first-call costs outside the timing: numba's kernels (compiled
    # or loaded from its cache), torch's optimizer set-up, the top-k search.
    warm, rows = BagOfWords(), np.arange(min(batch, len(y)))
    warm.step(*bags(rows), y[rows])
    warm.top5(*bags(rows))
    torch.manual_seed(s.seed)
    model = BagOfWords()
    rng = np.random.default_rng(s.seed)
    t0 = time.perf_counter()
    for _ in range(s.epochs):
        order = rng.permutation(len(y))
        for a in range(0, len(order), batch):
            rows = order[a : a + batch]
            model.step(*bags(rows), y[rows])
    train_s = time.perf_counter() - t0
    test_words, test_offsets = (torch.from_numpy(x) for x in encode_bags(task.test_tokens, vocab))
    t0 = time.perf_counter()
    top = model.top5(test_words, test_offsets)
    predict_s = time.perf_counter() - t0
    return Run(
        top.numpy().astype(np.int64), train_s, predict_s, {"batch": batch, "lr": lr, "optimizer": "Adam/SparseAdam"}
    )


# ---------------------------------------------------------------------------- scoring
def score(top5: np.ndarray, target: np.ndarray, wordnet: Any) -> dict[str, Any]:
    """P@1, P@5, R@5 and, against the WordNet tree, accuracy at each depth and the mean tree
    distance of the top-1 errors (a missing prediction counts as wrong and is left out of the
    distances)."""
    from hsoftmax import metrics

    out: dict[str, Any] = {
        "p_at_1": metrics.precision_at_k(top5, target, k=1),
        "p_at_5": metrics.precision_at_k(top5, target, k=5),
        "r_at_5": metrics.recall_at_k(top5, target, k=5),
    }
    first = top5[:, 0]
    ok = first >= 0
    out["no_prediction"] = int((~ok).sum())
    if ok.any():
        depth_acc = metrics.accuracy_at_depth(wordnet, first[ok], target[ok]) * ok.mean()
        out["accuracy_at_depth"] = [float(a) for a in depth_acc]
        out["mean_error_distance"] = metrics.mean_error_distance(wordnet, first[ok], target[ok])
    return out


# ---------------------------------------------------------------------------- the run
SYSTEMS = (  # the slow flat softmaxes last: a run cut short by --timeout keeps the rest
    "fasttext-hs",
    "fasttext-hs-lr0.5",
    "supervised-huffman",
    "supervised-huffman-lr0.5",
    "supervised-wordnet",
    "supervised-wordnet-lr0.5",
    "supervised-learned",
    "supervised-learned-lr0.5",
    "supervised-own-learned",
    "supervised-own-learned-lr0.5",
    "torch-hs-huffman",
    "torch-hs-wordnet",
    "torch-hs-learned",
    "torch-softmax",
    "fasttext-softmax",
)
#: The depths of the WordNet tree shown in the markdown table (all are in the JSON).
SHOWN_DEPTHS = (2, 4, 6, 8)


def split_name(name: str) -> tuple[str, str, float | None]:
    """``fasttext-hs-lr0.5`` -> ``("fasttext", "hs", 0.5)``; no ``-lrX``: the system's default lr.

    >>> split_name("supervised-own-learned"), split_name("fasttext-softmax-lr1")
    (('supervised', 'own-learned', None), ('fasttext', 'softmax', 1.0))
    """
    kind, _, variant = name.partition("-")
    m = re.fullmatch(r"(.+)-lr([0-9]*\.?[0-9]+)", variant)
    return (kind, m[1], float(m[2])) if m else (kind, variant, None)


VARIANTS = {
    "fasttext": ("hs", "softmax"),
    "supervised": ("huffman", "wordnet", "learned", "own-learned"),
    "torch": ("softmax", "hs-huffman", "hs-wordnet", "hs-learned"),
}


def run_system(name: str, task: Task, files: dict[str, str], s: Settings, trees: dict[str, Any]) -> Run:
    kind, variant, lr = split_name(name)
    if kind == "fasttext":
        return run_fasttext(task, files, s, variant, lr)
    if kind == "supervised":
        tree = trees[variant] if variant in ("wordnet", "learned") else variant.removeprefix("own-")
        return run_supervised(task, files, s, tree, files["warmup"], lr)
    if kind == "torch":
        head = None if variant == "softmax" else trees[variant.removeprefix("hs-")]
        return run_torch(task, s, head, s.batch, 0.01 if lr is None else lr)
    raise ValueError(f"unknown system {name!r}")


def check_system(name: str) -> str:
    kind, variant, _ = split_name(name)
    if variant not in VARIANTS.get(kind, ()):
        raise argparse.ArgumentTypeError(
            f"unknown system {name!r}: one of {', '.join(SYSTEMS)}, "
            "or those of fasttext-hs/softmax, supervised-huffman/wordnet/learned/own-learned, "
            "torch-softmax/hs-huffman/hs-wordnet/hs-learned; a suffix -lrX sets the learning rate"
        )
    return name


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    data = Path(args.wordnet)
    if not data.is_file():
        raise SystemExit(
            f"{data} not found: install WordNet (apt-get install wordnet-base), pass --wordnet PATH, "
            "or run --quick (the committed extract)"
        )
    s = Settings(args.epochs, args.threads, args.dim, args.seed, args.torch_batch)
    t0 = time.perf_counter()
    task = build_task(read_wordnet(data), args.min_examples, 0.1, args.seed)
    prep_s = time.perf_counter() - t0
    print(
        f"task: {task.info['labels']:,} labels, {task.info['train']:,} train / {task.info['test']:,} test "
        f"examples ({task.info['test_dropped_unseen_label']} test examples dropped: label unseen in training), "
        f"read and tokenized in {prep_s:.1f} s",
        flush=True,
    )
    with one_blas_thread():
        trees, tree_s = make_trees(task, args.seed)
    counts = np.bincount(task.train_y, minlength=len(task.labels))
    tree_info = {
        k: {
            "build_s": round(tree_s[k], 3),
            "summary": str(t.describe(counts=counts)),
            "depth": t.depth,
            "expected_code_length": t.expected_code_length(counts),
            "num_params": t.num_params,
        }
        for k, t in trees.items()
    }
    for k, t in trees.items():
        print(f"tree {k}: built in {tree_s[k]:.2f} s; {str(t.describe(counts=counts)).splitlines()[0]}", flush=True)
    info = machine_info(threads=args.threads)  # the load average as the systems start
    rows: list[dict[str, Any]] = []
    res = {
        "date": info["date"],
        "machine": info,
        "quick": args.quick,
        "in_process": args.in_process,
        "data": str(data),
        "task": task.info,
        "settings": s._asdict(),
        "trees": tree_info,
        "results": rows,
    }
    with tempfile.TemporaryDirectory(prefix="taxonomy-") as work:
        write_split(work, task, trees)
        if args.write_files:  # the same split and trees, to try other settings by hand
            write_split(args.write_files, task, trees)
        for name in args.systems:
            if args.in_process:
                row = {"system": name, **system_row(name, task, work, settings(args), trees)}
            else:
                row = {"system": name, **run_child(name, work, args)}
            rows.append(row)
            if "error" in row:
                print(f"{name:24s} {'skipped' if row.get('skipped') else 'FAILED'}: {row['error']}", flush=True)
            else:
                print(
                    f"{name:24s} P@1 {row['p_at_1']:.4f}  P@5 {row['p_at_5']:.4f}  R@5 {row['r_at_5']:.4f}  "
                    f"train {row['train_s']:7.2f} s  predict {row['predict_s']:6.3f} s  "
                    f"err dist {row.get('mean_error_distance', float('nan')):.2f}  peak {row['peak_mb']:.0f} MB",
                    flush=True,
                )
            res["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
            write_results(args.out, res)  # after every system: a long run cut short keeps its rows
    return res


def write_results(out: str, res: dict[str, Any]) -> str:
    """The JSON and its markdown table beside it, atomically; returns the markdown."""
    write_json(out, res)
    md = markdown(res)
    write_text(Path(out).with_suffix(".md"), md)
    return md


# ---------------------------------------------------------------------------- one process per system
TREE_FILES = ("huffman", "wordnet", "learned")


def write_split(folder: str | os.PathLike[str], task: Task, trees: dict[str, Any]) -> None:
    """What a system's process reads: the split in fastText's format (``train.txt``,
    ``test.txt``, and ``warmup.txt``, its first 500 lines), ``labels.txt`` (class order) and the
    trees (``NAME_tree.npz``, e.g. for ``hsoftmax supervised train --tree``)."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    write_fasttext_file(Path(folder, "train.txt"), task.labels, task.train_tokens, task.train_y)
    write_fasttext_file(Path(folder, "test.txt"), task.labels, task.test_tokens, task.test_y)
    n = min(500, len(task.train_y))
    write_fasttext_file(Path(folder, "warmup.txt"), task.labels, task.train_tokens[:n], task.train_y[:n])
    write_text(Path(folder, "labels.txt"), "".join(f"{name}\n" for name in task.labels))
    for k in TREE_FILES:
        trees[k].save(Path(folder, f"{k}_tree.npz"))


def read_split(folder: str | os.PathLike[str]) -> tuple[Task, dict[str, Any]]:
    """The :class:`Task` (without its paths) and the trees that :func:`write_split` wrote."""
    from hsoftmax import Tree

    labels = Path(folder, "labels.txt").read_text(encoding="utf-8").split()
    index = {name: i for i, name in enumerate(labels)}

    def read(name: str) -> tuple[list[list[str]], np.ndarray]:
        lines = [line.split() for line in Path(folder, name).read_text(encoding="utf-8").splitlines()]
        y = np.array([index[t[0].removeprefix(LABEL_PREFIX)] for t in lines], dtype=np.int64)
        return [t[1:] for t in lines], y

    (train_tokens, train_y), (test_tokens, test_y) = read("train.txt"), read("test.txt")
    trees = {k: Tree.load(Path(folder, f"{k}_tree.npz")) for k in TREE_FILES}
    return Task(labels, train_tokens, train_y, test_tokens, test_y, [], {}), trees


def child_args(args: argparse.Namespace) -> list[str]:
    return [
        f"--epochs={args.epochs}",
        f"--threads={args.threads}",
        f"--dim={args.dim}",
        f"--seed={args.seed}",
        f"--torch-batch={args.torch_batch}",
    ]


def run_child(name: str, work: str, args: argparse.Namespace) -> dict[str, Any]:
    """One system in a fresh interpreter (its own peak memory, threads and numba state), cut off
    after ``--timeout`` seconds."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--work", work, *child_args(args)]
    return run_json_child(cmd, timeout=args.timeout)


def settings(args: argparse.Namespace) -> Settings:
    return Settings(args.epochs, args.threads, args.dim, args.seed, args.torch_batch)


def child_main(args: argparse.Namespace) -> int:
    """``--child NAME``: run one system on the split in ``--work``; print its row as JSON."""
    task, trees = read_split(args.work)
    s = Settings(args.epochs, args.threads, args.dim, args.seed, args.torch_batch)
    print(json.dumps(system_row(args.child, task, args.work, s, trees)))
    return 0


def system_row(name: str, task: Task, work: str, s: Settings, trees: dict[str, Any]) -> dict[str, Any]:
    """Run one system and score it: its row of the results (``error`` and ``skipped`` when a peer
    cannot run here). ``peak_mb`` is this process's peak so far."""
    files = {k: str(Path(work, f"{k}.txt")) for k in ("train", "test", "warmup")}
    try:
        r = run_system(name, task, files, s, trees)
    except Skip as e:
        return {"error": str(e), "skipped": True}
    row = {"train_s": r.train_s, "predict_s": r.predict_s, **score(r.top5, task.test_y, trees["wordnet"]), **r.extra}
    row["peak_mb"] = peak_rss_bytes() / 2**20
    return row


# ---------------------------------------------------------------------------- report
def ratio_to(rows: list[dict[str, Any]], peer: str, key: str) -> dict[str, float]:
    base = next((r for r in rows if r["system"] == peer and key in r), None)
    return {r["system"]: r[key] / base[key] for r in rows if base and key in r and base[key] > 0}


def markdown(res: dict[str, Any]) -> str:
    m, t = res["machine"], res["task"]
    load = ", ".join(f"{x:.2f}" for x in m["loadavg"] or [])
    if res.get("loadavg_end"):
        load += f" (at the end {', '.join(f'{x:.2f}' for x in res['loadavg_end'])})"
    out = [
        f"Measured {res['date']} on {machine_summary(m)}; load average at the start {load}.",
        "",
        f"WordNet 3.0 noun gloss -> first hypernym: {t['labels']:,} labels (>= {t['min_examples']} examples), "
        f"{t['train']:,} train / {t['test']:,} test examples (seeded {1 - t['test_fraction']:.0%}/"
        f"{t['test_fraction']:.0%} split, {t['train_tokens']:,} training tokens); {res['settings']['epochs']} epochs, "
        f"{res['settings']['threads']} threads, dim {res['settings']['dim']}."
        + (" Quick run: the committed extract, not the whole of WordNet." if res["quick"] else ""),
        "",
    ]
    depths = [d for d in SHOWN_DEPTHS if d <= res["trees"]["wordnet"]["depth"]]
    rows = res["results"]
    speed = ratio_to(rows, "fasttext-hs", "train_s")
    head = ["system", "P@1", "P@5", "R@5", "train s", "x fastText hs time", "predict s"]
    head += [f"acc@depth {d}" for d in depths] + ["error distance"] + ([] if res["in_process"] else ["peak MB"])
    out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['system']} | skipped: {r['error']} |" + " |" * (len(head) - 2))
            continue
        acc = r.get("accuracy_at_depth", [])
        cells = [
            r["system"],
            f"{r['p_at_1']:.2%}",
            f"{r['p_at_5']:.2%}",
            f"{r['r_at_5']:.2%}",
            f"{r['train_s']:.2f}",
            f"{speed[r['system']]:.2f}" if r["system"] in speed else "",
            f"{r['predict_s']:.3f}",
        ]
        cells += [f"{acc[d - 1]:.1%}" if d <= len(acc) else "" for d in depths]
        cells.append(f"{r.get('mean_error_distance', float('nan')):.2f}")
        if not res["in_process"]:
            cells.append(f"{r['peak_mb']:.0f}")
        out.append("| " + " | ".join(cells) + " |")
    out += ["", "Trees (built from the training labels; the WordNet tree is the one the depths and distances use):", ""]
    for k, tr in res["trees"].items():
        first = tr["summary"].splitlines()[0]
        out.append(f"- {k}: {first}; built in {tr['build_s']:.2f} s")
    return "\n".join(out) + "\n"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="CI smoke run: the committed WordNet extract, 2 epochs")
    p.add_argument("--wordnet", default=None, help=f"a WordNet data.noun file (default {WORDNET_NOUNS})")
    p.add_argument("--systems", nargs="+", type=check_system, default=None, help=" ".join(SYSTEMS))
    p.add_argument("--epochs", type=int, default=None, help="default 5 (--quick: 2)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dim", type=int, default=100)
    p.add_argument("--min-examples", type=int, default=None, help="labels kept need this many examples (3; --quick: 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--torch-batch", type=int, default=128, help="mini-batch of the torch models")
    p.add_argument("--out", default=None, help="result JSON (default benchmarks/results/taxonomy.json; .md beside it)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds a system may take (default 1800)")
    p.add_argument("--write-files", metavar="DIR", default=None, help="keep the split and the trees in DIR")
    p.add_argument(
        "--in-process",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run the systems in this process (default with --quick) rather than one fresh process each",
    )
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)  # run one system (internal)
    p.add_argument("--work", default=None, help=argparse.SUPPRESS)
    p.add_argument(
        "--write-extract", metavar="PATH", default=None, help="write the --quick extract from --wordnet, then exit"
    )
    args = p.parse_args(argv)
    args.wordnet = args.wordnet or str(EXTRACT if args.quick else WORDNET_NOUNS)
    args.systems = args.systems or list(SYSTEMS)
    args.epochs = args.epochs or (2 if args.quick else 5)
    args.min_examples = args.min_examples or (2 if args.quick else 3)
    args.in_process = args.quick if args.in_process is None else args.in_process
    args.out = args.out or str(RESULTS / ("taxonomy_quick.json" if args.quick else "taxonomy.json"))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # torch's OpenMP threads spin at every barrier by default; on a shared machine a spinning
    # thread that lost its core stalls the other one (5x slower steps at a load of 10 on 2 cores).
    # Passive waiting costs nothing when the cores are free. (Set before torch is imported.)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if args.child:
        return child_main(args)
    if args.write_extract:
        source = args.wordnet if args.wordnet != str(EXTRACT) else str(WORDNET_NOUNS)
        print(f"{write_extract(source, args.write_extract)} synsets written to {args.write_extract}")
        return 0
    res = benchmark(args)
    md = write_results(args.out, res)
    print()
    print(md)
    # A peer's row may say it was not installed, diverged or ran out of time; ours must not fail.
    ours = [r for r in res["results"] if not r["system"].startswith("fasttext")]
    failed = [r["system"] for r in ours if "error" in r and not r.get("skipped")]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""The fastText-style supervised classifier: a bag of words (and hashed word n-grams) averaged
into a hidden vector, with a hierarchical softmax over any :class:`~hsoftmax.Tree` of labels.

Training is CBOW whose target is the label (:mod:`.kernels`, on the word2vec trainer's node
step); prediction is the core's exact best-first top-k search and exact all-label log-probability
(:mod:`hsoftmax.kernels.numba_cpu`) in float64, so probabilities are exact (fastText floors
them) and sum to 1 over the labels.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from ..builders import _memory_bytes
from ..files import READ_ERRORS, NpzReader, atomic_path, decode_strings, encode_strings
from ..kernels import numba_cpu as nb
from ..kernels import plt
from ..kernels.node import sigmoid_tables
from ..progress import ProgressBar
from ..tree import Tree
from ..word2vec import kernels as w2v
from . import kernels
from .data import Examples, FormatError, Lines, Vocabulary, count, encode_lines, read_lines

__all__ = ["Classifier", "TrainingError"]

_FORMAT = "hsoftmax.supervised"
_FORMAT_VERSION = 1
_CHUNK_TOKENS = 1 << 15  # tokens per work item: threads balance, the bar moves
_TOP_ROWS = 128  # top-of-tree rows scored with one matmul before the top-k search
_MAX_JSON_BYTES = 1 << 24
_TREES = ("huffman", "balanced", "learned")
_DEFAULT_BUCKET = 2_000_000  # fastText's, used when word_ngrams > 1
_LIMITS = {
    "dim": 1 << 20,
    "epochs": 1_000_000,
    "word_ngrams": 64,
    "min_count": 2**62,
    "min_count_label": 2**62,
    "bucket": 2**31 - 2**26,  # rows are int32 (words + buckets)
    "seed": 2**64 - 1,
    "arity": 1 << 16,
}


class TrainingError(RuntimeError):
    """Training failed: a worker thread raised, or the tables became non-finite (diverged)."""


def _check_int(name: str, value: Any, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not lo <= value <= _LIMITS.get(name, 2**62):
        raise ValueError(f"{name} must be in [{lo}, {_LIMITS.get(name, 2**62)}], got {value}")
    return int(value)


def _check_lr(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"lr must be a number, got {type(value).__name__}")
    if not (np.isfinite(value) and value > 0):
        raise ValueError(f"lr must be a finite number > 0, got {value}")
    return float(value)


class Classifier:
    """fastText's supervised classifier with an exact hierarchical softmax over any label tree.

    >>> lines = ["__label__fruit apple pear plum", "__label__veg leek kale bean",
    ...          "__label__fruit plum apple", "__label__veg bean leek"] * 25
    >>> clf = Classifier(dim=8, epochs=10, lr=0.5, threads=1, progress=False).fit(lines)
    >>> labels, probs = clf.predict(["apple pear", "kale leek"])
    >>> labels
    [['fruit'], ['veg']]
    >>> bool(probs[0, 0] > 0.5), clf.test(lines, k=1)
    (True, (100, 1.0, 1.0))

    Args:
        dim: size of the word vectors and of the hidden vector.
        epochs: passes over the training file.
        lr: initial learning rate; it decays linearly to 0 over all epochs' tokens (fastText's).
        word_ngrams: also feed each run of 2..``word_ngrams`` consecutive words, hashed into
            ``bucket`` rows (fastText's ``-wordNgrams``).
        min_count: words seen fewer times have no vector.
        min_count_label: labels seen fewer times are dropped.
        bucket: hashed n-gram rows; default 2,000,000 when ``word_ngrams > 1`` (fastText's), else 0.
        threads: Hogwild worker threads (default: all cores).
        tree: ``"huffman"`` (default: Huffman over the label counts, built as fastText builds
            it, ties included: :func:`.kernels.fasttext_huffman`),
            ``"balanced"``, ``"learned"`` (train over Huffman, build
            :meth:`Tree.from_embeddings <hsoftmax.Tree.from_embeddings>` from each label's mean
            hidden vector, train again over it: about twice the cost), or a labelled
            :class:`~hsoftmax.Tree` (a taxonomy): labels are matched by name, every training
            label must be in it, and tree labels without examples stay predictable.
        arity: children per node of the trees built here (``"huffman"``, ``"balanced"``,
            ``"learned"``; a given Tree keeps its own). 2 is fastText's tree; a node with ``k > 2``
            children is a softmax over ``k`` rows. Measured on WordNet glosses -> hypernym
            (7,319 labels, 5 epochs, same training time): P@1 0.106 / 0.132 / 0.127 with
            Huffman arity 2 (ties broken by index) / 4 / 8, and 0.113 with fastText's binary tree.
        seed: seeds the initial vectors and every random draw (one thread: deterministic).
        multilabel: train a probabilistic label tree (:mod:`hsoftmax.kernels.plt`) on all the
            labels of each line, instead of one label drawn per update as fastText's ``-loss
            hs`` does (inconsistent for precision@k, Wydmuch et al. 2018); :meth:`predict` then
            returns each label's marginal probability.
        label_prefix: what starts a label token.
        progress: ``True``: a tqdm bar on stderr; ``"log"``: one line per epoch; ``False``: silent.
    """

    def __init__(
        self,
        dim: int = 100,
        epochs: int = 5,
        lr: float = 0.1,
        word_ngrams: int = 1,
        min_count: int = 1,
        min_count_label: int = 1,
        bucket: int | None = None,
        threads: int | None = None,
        tree: str | Tree = "huffman",
        arity: int = 2,
        seed: int = 1,
        multilabel: bool = False,
        label_prefix: str = "__label__",
        progress: bool | str = True,
    ) -> None:
        self.dim = _check_int("dim", dim, 1)
        self.epochs = _check_int("epochs", epochs, 1)
        self.lr = _check_lr(lr)
        self.word_ngrams = _check_int("word_ngrams", word_ngrams, 1)
        self.min_count = _check_int("min_count", min_count, 1)
        self.min_count_label = _check_int("min_count_label", min_count_label, 1)
        if bucket is None:
            bucket = _DEFAULT_BUCKET if self.word_ngrams > 1 else 0
        self.bucket = _check_int("bucket", bucket, 0)
        cores = os.cpu_count() or 1
        self.threads = _check_int("threads", cores if threads is None else threads, 1)
        if self.threads > max(16, 4 * cores):
            raise ValueError(f"threads must be <= {max(16, 4 * cores)} (4 per core), got {self.threads}")
        if isinstance(tree, str):
            if tree not in _TREES:
                raise ValueError(f"tree must be one of {', '.join(_TREES)} or a labelled Tree, got {tree!r}")
        elif isinstance(tree, Tree):
            if tree.labels is None:
                raise ValueError(
                    "the tree has no labels: build it with labels=[...] (the names after the label prefix)"
                )
        else:
            raise TypeError(f"tree must be a string or a Tree, got {type(tree).__name__}")
        self.tree_spec = tree
        self.arity = _check_int("arity", arity, 2)
        self.seed = _check_int("seed", seed, 0)
        self.multilabel = bool(multilabel)
        if not isinstance(label_prefix, str) or not label_prefix or label_prefix != label_prefix.strip():
            raise ValueError(f"label_prefix must be a non-empty string without whitespace, got {label_prefix!r}")
        self.label_prefix = label_prefix
        if progress not in (True, False, "log"):
            raise ValueError(f"progress must be True, False or 'log', got {progress!r}")
        self.progress: bool | str = progress
        self.words: tuple[str, ...] = ()
        self.word_counts = np.zeros(0, dtype=np.int64)
        self.label_counts = np.zeros(0, dtype=np.int64)
        self.history: list[dict[str, float]] = []
        self._tree: Tree | None = None
        self.syn0: np.ndarray | None = None
        self.syn1: np.ndarray | None = None
        self._search: _Search | None = None

    # ------------------------------------------------------------------ properties
    @property
    def tree(self) -> Tree:
        """The label tree trained over (its labels are :attr:`labels`)."""
        if self._tree is None:
            raise ValueError("the classifier is not trained yet: call fit() first")
        return self._tree

    @property
    def labels(self) -> tuple[str, ...]:
        """Label names (without the prefix), in tree class order."""
        labels = self.tree.labels
        assert labels is not None  # every tree of a classifier is labelled
        return labels

    def config(self) -> dict[str, Any]:
        """The hyper-parameters (what :meth:`save` stores; ``tree`` is ``"custom"`` for a Tree)."""
        return {
            "dim": self.dim,
            "epochs": self.epochs,
            "lr": self.lr,
            "word_ngrams": self.word_ngrams,
            "min_count": self.min_count,
            "min_count_label": self.min_count_label,
            "bucket": self.bucket,
            "tree": self.tree_spec if isinstance(self.tree_spec, str) else "custom",
            "arity": self.arity,
            "seed": self.seed,
            "multilabel": self.multilabel,
            "label_prefix": self.label_prefix,
        }

    # ------------------------------------------------------------------ training
    def fit(self, data: str | os.PathLike | Iterable[str]) -> Classifier:
        """Train on a fastText-format file (a path) or an iterable of such lines.

        Raises:
            FormatError: a malformed line (the message names the file and line), or no label.
            ValueError: a tree that misses some training labels, or tables too big for memory.
            TrainingError: training diverged (lower ``lr``) or a worker thread failed.
        """
        lines = read_lines(data)
        vocab = count(lines, self.label_prefix, self.min_count, self.min_count_label)
        if not vocab.labels:
            raise FormatError(
                f"{lines.source}: no line has a label (a token starting with {self.label_prefix!r})"
                + (f" seen at least {self.min_count_label} times" if self.min_count_label > 1 else "")
            )
        spec = self.tree_spec
        tree = self._first_tree(vocab, lines.source)
        self.words, self.word_counts = vocab.words, vocab.word_counts
        self._set_tree(tree, vocab)
        examples = self._encode(lines)
        self._init_tables()
        self.history = []
        self._train(examples)
        if spec == "learned":
            self._relearn_tree(examples, vocab)
        return self

    def _first_tree(self, vocab: Vocabulary, source: str) -> Tree:
        spec = self.tree_spec
        if isinstance(spec, Tree):
            known = set(spec.labels or ())
            missing = [lab for lab in vocab.labels if lab not in known]
            if missing:
                shown = ", ".join(repr(m) for m in missing[:5])
                more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
                raise ValueError(
                    f"{len(missing)} label(s) of {source} are not labels of the tree: {shown}{more} "
                    f"(its {spec.num_classes} labels must include every training label)"
                )
            return spec
        if spec == "balanced":
            return Tree.balanced(len(vocab.labels), arity=self.arity, labels=vocab.labels)
        if self.arity > 2:  # huffman, and learned's first pass
            return Tree.huffman(vocab.label_counts, arity=self.arity, labels=vocab.labels)
        return _huffman(vocab)

    def _set_tree(self, tree: Tree, vocab: Vocabulary) -> None:
        self._tree = tree
        counts = np.zeros(tree.num_classes, dtype=np.int64)
        counts[[tree.index(lab) for lab in vocab.labels]] = vocab.label_counts
        self.label_counts = counts
        self._search = None

    def _encode(self, lines: Lines) -> Examples:
        word_index = {w: i for i, w in enumerate(self.words)}
        label_index = {lab: i for i, lab in enumerate(self.labels)}
        return encode_lines(lines, word_index, label_index, self.label_prefix, self.word_ngrams, self.bucket)

    def _init_tables(self) -> None:
        rows = len(self.words) + self.bucket
        if rows >= 2**31:
            raise ValueError(f"{len(self.words)} words + {self.bucket} buckets is too many input rows (ids are int32)")
        params = self._node_rows(self.tree)
        need = 4 * (rows + params) * self.dim
        available = _memory_bytes()
        if available is not None and need > available:
            raise ValueError(
                f"dim={self.dim} over {len(self.words)} words + {self.bucket} buckets needs "
                f"{need / 2**30:.1f} GiB, more than this machine's {available / 2**30:.1f} GiB (lower bucket or dim)"
            )
        # fastText's initialisation: input rows uniform in +-1/dim, node rows zero
        self.syn0 = np.empty((rows, self.dim), dtype=np.float32)
        kernels.uniform_fill(self.syn0, 1.0 / self.dim, np.uint64(self.seed))
        self.syn1 = np.zeros((params, self.dim), dtype=np.float32)
        self._search = None

    def _relearn_tree(self, examples: Examples, vocab: Vocabulary) -> None:
        """``tree="learned"``: each label's mean (unit-length) hidden vector over its lines,
        clustered into a tree with counts (frequent labels keep short paths); then train over it
        from the first pass's input vectors and fresh node rows."""
        vectors = self._label_vectors(examples)
        learned = Tree.from_embeddings(
            vectors, arity=self.arity, counts=self.label_counts, seed=self.seed, labels=self.labels
        )
        self._set_tree(learned, vocab)
        # class i of the learned tree is label i (labels=self.labels), so the examples still hold
        self.syn1 = np.zeros((self._node_rows(learned), self.dim), dtype=np.float32)
        self._train(examples)

    def _label_vectors(self, examples: Examples) -> np.ndarray:
        H = self._hidden(examples)
        H /= np.maximum(np.linalg.norm(H, axis=1, keepdims=True), 1e-12)
        per_line = np.diff(examples.label_offsets)
        V = self.tree.num_classes
        vectors = np.zeros((V, self.dim))
        np.add.at(vectors, examples.labels, np.repeat(H, per_line, axis=0))
        vectors /= np.maximum(np.bincount(examples.labels, minlength=V), 1)[:, None]
        return vectors

    def label_vectors(self, data: str | os.PathLike | Iterable[str]) -> np.ndarray:
        """``(num_labels, dim)`` float64: for each label (in :attr:`labels` order), the mean of
        the unit-length hidden vectors of the lines of ``data`` (a labelled file or lines) that
        carry it; zeros for a label no line carries. What ``tree="learned"`` clusters, for
        building a tree of your own, e.g.
        ``Tree.from_embeddings(clf.label_vectors("train.txt"), counts=clf.label_counts, labels=clf.labels)``."""
        self._require()
        return self._label_vectors(self._encode(read_lines(data)))

    def _node_rows(self, tree: Tree) -> int:
        """Rows of the node table: one per binary node (hierarchical softmax), or one per
        deciding edge (a probabilistic label tree's layout)."""
        return plt.plt_layout(tree).num_rows if self.multilabel else tree.num_params

    def _train(self, examples: Examples) -> None:
        assert self.syn0 is not None and self.syn1 is not None
        paths = plt.plt_layout(self.tree) if self.multilabel else w2v.flat_paths(self.tree, packed=True)
        tables = w2v.Tables(*sigmoid_tables(), np.zeros(0, dtype=np.uint32))
        model = kernels.Model(self.syn0, self.syn1)
        N = int(examples.tokens[-1])
        total = max(N * self.epochs, 1)
        bounds = _chunk_bounds(examples.tokens, _CHUNK_TOKENS)
        max_arity = int(self.tree.arity.max())
        bar = ProgressBar(total, self.progress, desc="supervised", unit="tok", per="example", count="tokens")
        try:
            for epoch in range(self.epochs):
                t0 = time.perf_counter()
                ll, trained = self._run_epoch(examples, bounds, epoch, N, total, model, paths, tables, max_arity, bar)
                seconds = time.perf_counter() - t0
                # every epoch the node rows (small; a diverged input row spoils them at once),
                # at the end the input rows too
                last = epoch + 1 == self.epochs
                for name, table in (("input vectors", self.syn0), ("node rows", self.syn1))[0 if last else 1 :]:
                    if not kernels.all_finite(table):
                        raise TrainingError(
                            f"training diverged: the {name} hold NaN or infinite values after epoch "
                            f"{epoch + 1} (lr={self.lr} is too high; try a smaller one)"
                        )
                stats = {
                    "epoch": epoch + 1,
                    "loss": 0.0 - ll / max(trained, 1),
                    "examples": trained,
                    "tokens": N,
                    "seconds": seconds,
                }
                self.history.append(stats)
                bar.epoch_done(stats)
        finally:
            bar.close()
        self._search = None

    def _run_epoch(
        self,
        examples: Examples,
        bounds: np.ndarray,
        epoch: int,
        N: int,
        total: int,
        model: kernels.Model,
        paths: w2v.Paths | plt.PLTLayout,
        tables: w2v.Tables,
        max_arity: int,
        bar: ProgressBar,
    ) -> tuple[float, int]:
        # the PLT kernels take int64 label ids and scratch sized for the longest label set
        labels64 = examples.labels.astype(np.int64) if self.multilabel else examples.labels
        max_labels = int(np.diff(examples.label_offsets).max(initial=1))
        lock = threading.Lock()
        next_chunk = [0]
        acc = [0.0, 0, 0]  # log-likelihood, lines trained, tokens done
        errors: list[BaseException] = []
        stop: list[bool] = []
        n_chunks = bounds.size - 1
        tokens = examples.tokens

        def worker() -> None:
            try:
                scratch = kernels.new_scratch(self.dim, max_arity)
                plt_scratch = plt.make_scratch(paths, max_labels) if isinstance(paths, plt.PLTLayout) else None
                while True:
                    with lock:
                        c = next_chunk[0]
                        next_chunk[0] += 1
                    if c >= n_chunks or errors or stop:
                        return
                    lo, hi = int(bounds[c]), int(bounds[c + 1])
                    seed = np.random.SeedSequence([self.seed, epoch, c]).generate_state(1, dtype=np.uint64)[0]
                    schedule = kernels.Schedule(self.lr, epoch * N, total, seed)
                    if plt_scratch is not None:
                        loss, trained = kernels.train_lines_plt(
                            examples, labels64, lo, hi, model, paths, plt_scratch, schedule, scratch
                        )
                        ll = -loss
                    else:
                        ll, trained = kernels.train_lines(examples, lo, hi, model, paths, tables, schedule, scratch)
                    with lock:
                        acc[0] += ll
                        acc[1] += trained
                        acc[2] += int(tokens[hi] - tokens[lo])
            except BaseException as exc:  # surface worker failures in the caller
                errors.append(exc)

        threads = [threading.Thread(target=worker, daemon=True) for _ in range(min(self.threads, n_chunks))]
        for t in threads:
            t.start()
        try:
            for t in threads:
                while t.is_alive():
                    t.join(0.1)
                    with lock:
                        done = int(acc[2])
                    bar.update_to(epoch * N + done, self.lr * (1.0 - (epoch * N + done) / total))
        except BaseException:  # Ctrl-C: let the workers finish their chunk, then re-raise
            stop.append(True)
            for t in threads:
                t.join()
            raise
        if errors:
            e = errors[0]
            raise TrainingError(f"a training thread failed: {type(e).__name__}: {e}") from e
        return float(acc[0]), int(acc[1])

    # ------------------------------------------------------------------ prediction
    def _texts(self, texts: str | Sequence[str]) -> Lines:
        if isinstance(texts, str):
            texts = [texts]
        raw = []
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"text {i} is a {type(t).__name__}, not a str")
            if "\n" in t:
                raise ValueError(f"text {i} holds a newline: predict() takes one line per text")
            raw.append(t)
        return read_lines(raw, source="<texts>")

    def _require(self) -> tuple[np.ndarray, np.ndarray]:
        if self.syn0 is None or self.syn1 is None or self._tree is None:
            raise ValueError("the classifier is not trained yet: call fit() or load() first")
        return self.syn0, self.syn1

    def _hidden(self, examples: Examples) -> np.ndarray:
        syn0, _ = self._require()
        out = np.empty((examples.num_lines, self.dim))
        kernels.hidden(examples, syn0, out)
        return out

    def hidden(self, texts: str | Sequence[str]) -> np.ndarray:
        """``(n, dim)`` float64: each text's mean input row (its words and n-grams), the vector
        the tree scores."""
        self._require()
        return self._hidden(self._encode(self._texts(texts)))

    def _searcher(self) -> _Search:
        _, syn1 = self._require()
        if self._search is None:
            self._search = _PLTSearch(self.tree, syn1) if self.multilabel else _Search(self.tree, syn1)
        return self._search

    def _topk(self, H: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = _check_int("k", k, 1)
        return self._searcher().topk(H, min(k, self.tree.num_classes))

    def predict(self, texts: str | Sequence[str], k: int = 1) -> tuple[list[list[str]], np.ndarray]:
        """The ``k`` most probable labels of each text, best first, with their exact probabilities.

        Args:
            texts: a line of text or a sequence of them (label tokens in them are ignored).
            k: labels per text (at most the number of labels).

        Returns:
            ``(labels, probs)``: ``labels[i]`` the names of text ``i``'s top labels, ``probs``
            ``(n, min(k, num_labels))`` float64, their probabilities in the same order (with
            ``multilabel=True``: each label's marginal probability, by exact best-first search
            of the label tree; they need not sum to 1).
        """
        H = self.hidden(texts)
        vals, idx = self._topk(H, k)
        names = self.labels
        return [[names[j] for j in row] for row in idx.tolist()], np.exp(vals)

    def log_probs(self, texts: str | Sequence[str]) -> np.ndarray:
        """``(n, num_labels)`` float64: the exact log-probability of every label (columns in
        :attr:`labels` order; each row's ``exp`` sums to 1), or with ``multilabel=True`` the
        log marginal of every label. Costs O(labels) per text."""
        H = self.hidden(texts)
        return self._searcher().log_probs(H)

    def test(self, data: str | os.PathLike | Iterable[str], k: int = 1) -> tuple[int, float, float]:
        """``(n, precision@k, recall@k)`` on a fastText-format file or lines, as ``fasttext test``:
        ``n`` counts the lines with a known label and an input row; precision is the share of the
        ``n * min(k, labels)`` predictions that are gold labels, recall the share of the lines'
        known gold labels that are predicted."""
        self._require()
        ex = self._encode(read_lines(data))
        n_lab = np.diff(ex.label_offsets)
        keep = (n_lab > 0) & (np.diff(ex.row_offsets) > 0)
        H = self._hidden(ex)[keep]
        n = int(keep.sum())
        if n == 0:
            return 0, float("nan"), float("nan")
        _, idx = self._topk(H, k)
        starts = ex.label_offsets[:-1][keep]
        gold = [set(ex.labels[a : a + m].tolist()) for a, m in zip(starts.tolist(), n_lab[keep].tolist())]
        tp = sum(len(g.intersection(row)) for g, row in zip(gold, idx.tolist()))
        return n, tp / idx.size, tp / int(n_lab[keep].sum())

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> None:
        """Write the classifier to one ``.npz`` (no pickle), atomically."""
        syn0, syn1 = self._require()
        word_bytes, word_offset = encode_strings(self.words)
        state: dict[str, np.ndarray] = {
            "format": np.frombuffer(_FORMAT.encode(), dtype=np.uint8).copy(),
            "version": np.array(_FORMAT_VERSION, dtype=np.int64),
            "config": _json_bytes(self.config()),
            "history": _json_bytes(self.history),
            "word_bytes": word_bytes,
            "word_offset": word_offset,
            "word_counts": self.word_counts,
            "label_counts": self.label_counts,
            "syn0": syn0,
            "syn1": syn1,
        }
        state.update({"tree_" + k: v for k, v in self.tree.state().items()})
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, **state)  # type: ignore[arg-type]

    @classmethod
    def load(cls, path: str | os.PathLike) -> Classifier:
        """Read a classifier written by :meth:`save`, trusting nothing in the file: any problem
        (damaged archive, arrays of the wrong dtype or shape, a tree without labels, non-finite
        tables) is one ``ValueError`` naming the file."""
        name = os.fspath(path)
        try:
            with NpzReader(name) as z:
                return cls._from_archive(z)
        except (*READ_ERRORS, TypeError) as e:
            raise ValueError(f"{name} is not a readable hsoftmax classifier: {_one_line(e)}") from None

    @classmethod
    def _from_archive(cls, z: NpzReader) -> Classifier:
        heads = z.headers
        for key in ("format", "version", "config"):
            if key not in heads:
                raise ValueError(f"array {key!r} is missing")
        if heads["format"].dtype != np.uint8 or bytes(z.read("format")) != _FORMAT.encode():
            raise ValueError("it is not a supervised classifier file")
        if heads["version"].dtype.kind not in "iu" or heads["version"].shape != ():
            raise ValueError("array 'version' is not an integer")
        version = int(z.read("version"))
        if version != _FORMAT_VERSION:
            raise ValueError(f"unsupported version {version} (this hsoftmax reads {_FORMAT_VERSION})")
        config = _json_value(z, "config")
        if not isinstance(config, dict):
            raise ValueError("config is not a JSON object")
        expected_keys = set(cls(progress=False).config())
        if set(config) != expected_keys:
            odd = sorted(set(config) ^ expected_keys)
            raise ValueError(f"config has unexpected or missing setting {odd[0]!r}")
        tree_spec = config.pop("tree")
        if tree_spec not in (*_TREES, "custom"):
            raise ValueError(f"config tree {tree_spec!r} is not a known tree")
        clf = cls(**config, progress=False)
        tree = Tree.from_state({k[5:]: z.read(k) for k in heads if k.startswith("tree_")})
        if tree.labels is None:
            raise ValueError("the tree has no labels")
        clf.tree_spec = tree if tree_spec == "custom" else tree_spec
        known = {"format", "version", "config", "history", "word_bytes", "word_offset", "word_counts"}
        known |= {"label_counts", "syn0", "syn1"}
        unknown = sorted(k for k in heads if k not in known and not k.startswith("tree_"))
        if unknown:
            raise ValueError(f"unexpected array {unknown[0]!r}")
        for key in known:
            if key not in heads:
                raise ValueError(f"array {key!r} is missing")
        V = heads["word_offset"].shape[0] - 1 if len(heads["word_offset"].shape) == 1 else -1
        layouts = {
            "word_bytes": ("u1", None),
            "word_offset": ("i", (V + 1,)),
            "word_counts": ("i", (V,)),
            "label_counts": ("i", (tree.num_classes,)),
            "syn0": ("f4", (V + clf.bucket, clf.dim)),
            "syn1": ("f4", (clf._node_rows(tree), clf.dim)),
        }
        for key, (kind, shape) in layouts.items():
            h = heads[key]
            ok = (
                h.dtype == np.uint8
                if kind == "u1"
                else (h.dtype.kind in "iu" if kind == "i" else h.dtype == np.float32)
            )
            if V < 1 or not ok or (len(h.shape) != 1 if shape is None else h.shape != shape):
                want = "1-D bytes" if shape is None else f"{kind} of shape {shape}"
                raise ValueError(f"array {key!r} is {h.dtype} of shape {h.shape}, expected {want}")
        words = decode_strings(z.read("word_bytes"), z.read("word_offset"), "word")
        if len(set(words)) != len(words):
            raise ValueError("the vocabulary holds a word twice")
        syn0 = np.array(z.read("syn0"), dtype=np.float32, order="C")
        syn1 = np.array(z.read("syn1"), dtype=np.float32, order="C")
        for key, table in (("syn0", syn0), ("syn1", syn1)):
            if not np.isfinite(table).all():
                raise ValueError(f"array {key!r} holds NaN or infinite values")
        history = _json_value(z, "history")
        if not (isinstance(history, list) and all(isinstance(h, dict) for h in history)):
            raise ValueError("history is not a list of epoch records")
        clf.words = tuple(words)
        clf.word_counts = np.array(z.read("word_counts"), dtype=np.int64)
        clf.label_counts = np.array(z.read("label_counts"), dtype=np.int64)
        clf._tree = tree
        clf.syn0, clf.syn1, clf.history = syn0, syn1, history
        return clf


class _Search:
    """The core's exact searches over a trained node table, in float64."""

    def __init__(self, tree: Tree, syn1: np.ndarray) -> None:
        self.W = syn1.astype(np.float64)
        self.table = nb.Table(self.W, np.empty(0))
        self.nodes = nb.Nodes(
            *(np.asarray(a, dtype=np.int64) for a in (tree.arity, tree.param_offset, tree.child_offset, tree.children))
        )
        self.V = tree.num_classes
        self.amax = max(int(tree.arity.max()), 1)

    def topk(self, H: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(log-probs, classes)``, each ``(B, k)``, best first."""
        B = H.shape[0]
        vals = np.empty((B, k))
        idx = np.empty((B, k), dtype=np.int64)
        if B == 0:
            return vals, idx
        R = min(self.W.shape[0], 2 * B, _TOP_ROWS) if B >= 8 else 0
        st = H @ self.W[:R].T
        top = nb.NodeScores(np.ascontiguousarray(st), np.log1p(np.exp(-np.abs(st))))
        nb.topk_search(np.ascontiguousarray(H), self.table, top, self.nodes, self.V, k, self.amax, vals, idx)
        return vals, idx

    def log_probs(self, H: np.ndarray) -> np.ndarray:
        S = np.ascontiguousarray(H @ self.W.T)
        out = np.empty((H.shape[0], self.V))
        nb.log_prob_all(nb.NodeScores(S, np.log1p(np.exp(-np.abs(S)))), self.nodes, self.V, out)
        return out


class _PLTSearch(_Search):
    """The PLT kernels' exact searches over the marginals (:mod:`hsoftmax.kernels.plt`)."""

    def __init__(self, tree: Tree, syn1: np.ndarray) -> None:
        self.W = syn1.astype(np.float64)
        self.bias = np.zeros(0)
        self.layout = plt.plt_layout(tree)
        self.V = tree.num_classes

    def topk(self, H: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        vals = np.empty((H.shape[0], k))
        idx = np.empty((H.shape[0], k), dtype=np.int64)
        if H.shape[0]:
            plt.topk_search(np.ascontiguousarray(H), self.W, self.bias, self.layout, k, vals, idx)
        return vals, idx

    def log_probs(self, H: np.ndarray) -> np.ndarray:
        S = H @ self.W.T
        ls = np.ascontiguousarray(np.minimum(S, 0.0) - np.log1p(np.exp(-np.abs(S))))  # log sigmoid
        out = np.empty((H.shape[0], self.V))
        if H.shape[0]:
            plt.log_marginals_all(ls, self.layout, out)
        return out


def _huffman(vocab: Vocabulary) -> Tree:
    """fastText's Huffman tree over the label counts (:func:`.kernels.fasttext_huffman`)."""
    if len(vocab.labels) == 1:
        return Tree.huffman(vocab.label_counts, labels=vocab.labels)
    off, children = kernels.fasttext_huffman(vocab.label_counts.astype(np.float64))
    return Tree(len(vocab.labels), off, children, labels=vocab.labels)


def _chunk_bounds(tokens: np.ndarray, per_chunk: int) -> np.ndarray:
    """Line indices cutting the lines into chunks of about ``per_chunk`` tokens."""
    targets = np.arange(per_chunk, int(tokens[-1]), per_chunk)
    cuts = np.searchsorted(tokens, targets)
    return np.unique(np.concatenate(([0], cuts, [tokens.size - 1]))).astype(np.int64)


def _json_bytes(value: Any) -> np.ndarray:
    return np.frombuffer(json.dumps(value).encode("utf-8"), dtype=np.uint8).copy()


def _json_value(z: NpzReader, key: str) -> Any:
    h = z.headers[key]
    if h.dtype != np.uint8 or len(h.shape) != 1 or h.shape[0] > _MAX_JSON_BYTES:
        raise ValueError(f"array {key!r} is {h.dtype} of shape {h.shape}, not JSON bytes")
    try:
        return json.loads(z.read(key).tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ValueError(f"{key} is not valid JSON: {_one_line(e)}") from None


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__

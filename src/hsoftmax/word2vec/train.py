"""The trainer: word2vec (CBOW or skip-gram) with hierarchical softmax over any :class:`Tree`.

Threads pull chunks of sentences from a shared queue and run the numba kernel on them with the GIL
released. Every random draw of a chunk comes from a stream seeded by ``(seed, epoch, chunk)`` and
the learning rate of a sentence is a function of its position in the corpus, so with one thread a
run is deterministic, and a run resumed from an epoch checkpoint equals an uninterrupted one bit for
bit. With more threads the Hogwild updates interleave and runs differ slightly, as in word2vec.c.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from ..files import atomic_path
from ..kernels.node import sigmoid_tables
from ..tree import Tree
from . import kernels
from .corpus import EncodedCorpus, _release_memory, encode_file, encode_sentences
from .keyed_vectors import KeyedVectors
from .vocab import Vocab, keep_probabilities

__all__ = ["Word2Vec"]

_CHUNK_WORDS = 16384  # words per work item: small enough to balance threads and update the bar
_CHECKPOINT_VERSION = 1


def _check_int(name: str, value: Any, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < lo:
        raise ValueError(f"{name} must be >= {lo}, got {value}")
    return int(value)


def _check_float(name: str, value: Any, lo: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not np.isfinite(value) or value < lo:
        raise ValueError(f"{name} must be a finite number >= {lo}, got {value}")
    return float(value)


class Word2Vec:
    """word2vec with hierarchical softmax.

    >>> import random
    >>> rng = random.Random(0)
    >>> sents = [[rng.choice("ab") + str(rng.randrange(5)) for _ in range(8)] for _ in range(300)]
    >>> m = Word2Vec(dim=16, min_count=1, epochs=2, threads=1, progress=False).fit(sents)
    >>> m.wv.vectors.shape
    (10, 16)
    >>> len(m.wv.most_similar("a0", topn=3))
    3

    Args:
        dim: vector size.
        window: maximum context distance; each position draws its own window in ``1..window``.
        min_count: words seen fewer times are dropped before training.
        max_vocab: keep at most this many words (the most frequent).
        sample: subsampling threshold ``t`` (word2vec's formula; 0 disables).
        sg: skip-gram if true, CBOW (mean of the context) if false.
        epochs: passes over the corpus.
        alpha: initial learning rate (default 0.025, gensim's default for both modes).
        min_alpha: learning rate reached at the end (linear decay).
        threads: worker threads (default: all cores).
        seed: seeds the initial vectors and every random draw.
        tree: ``"huffman"`` (default: a Huffman tree over the word counts), ``"balanced"``, a
            :class:`~hsoftmax.tree.Tree` over the vocabulary, or a callable ``vocab -> Tree``. A
            tree with labels is matched to the words by label; without labels word ``i`` (words
            are ordered by decreasing count) is class ``i``.
        progress: show a tqdm bar (words/s, ETA, learning rate).
    """

    def __init__(
        self,
        dim: int = 100,
        window: int = 5,
        min_count: int = 5,
        max_vocab: int | None = None,
        sample: float = 1e-3,
        sg: bool = False,
        epochs: int = 5,
        alpha: float = 0.025,
        min_alpha: float = 1e-4,
        threads: int | None = None,
        seed: int = 1,
        tree: str | Tree | Callable[[Vocab], Tree] = "huffman",
        progress: bool = True,
    ) -> None:
        self.dim = _check_int("dim", dim, 1)
        self.window = _check_int("window", window, 1)
        self.min_count = _check_int("min_count", min_count, 1)
        self.max_vocab = None if max_vocab is None else _check_int("max_vocab", max_vocab, 1)
        self.sample = _check_float("sample", sample, 0.0)
        self.sg = bool(sg)
        self.epochs = _check_int("epochs", epochs, 1)
        self.alpha = _check_float("alpha", alpha, 0.0)
        self.min_alpha = _check_float("min_alpha", min_alpha, 0.0)
        self.threads = _check_int("threads", threads if threads is not None else (os.cpu_count() or 1), 1)
        self.seed = _check_int("seed", seed, 0)
        if not (isinstance(tree, (str, Tree)) or callable(tree)):
            raise TypeError(f"tree must be 'huffman', 'balanced', a Tree or a callable, got {type(tree).__name__}")
        if isinstance(tree, str) and tree not in ("huffman", "balanced"):
            raise ValueError(f"tree must be 'huffman' or 'balanced' when a string, got {tree!r}")
        self.tree_spec = tree
        self.progress = bool(progress)
        self.vocab: Vocab | None = None
        self.tree: Tree | None = None
        self.word_classes: np.ndarray | None = None  # tree class of each word id (None: the same)
        self.syn0: np.ndarray | None = None
        self.syn1: np.ndarray | None = None
        self.epochs_done = 0
        self.history: list[dict[str, float]] = []

    # ------------------------------------------------------------------ public API
    @property
    def wv(self) -> KeyedVectors:
        """The trained input vectors as :class:`KeyedVectors` (shares memory with ``syn0``)."""
        if self.syn0 is None or self.vocab is None:
            raise ValueError("the model is not trained yet: call fit() first")
        return KeyedVectors(self.vocab.words, self.syn0, counts=self.vocab.counts)

    def config(self) -> dict[str, Any]:
        """Hyper-parameters (what a checkpoint must agree on to be resumed)."""
        tree = self.tree_spec if isinstance(self.tree_spec, str) else "custom"
        return {
            "dim": self.dim,
            "window": self.window,
            "min_count": self.min_count,
            "max_vocab": self.max_vocab,
            "sample": self.sample,
            "sg": self.sg,
            "epochs": self.epochs,
            "alpha": self.alpha,
            "min_alpha": self.min_alpha,
            "seed": self.seed,
            "tree": tree,
        }

    def fit(
        self,
        corpus: str | os.PathLike | Iterable[Sequence[str]] | EncodedCorpus,
        checkpoint: str | os.PathLike | None = None,
        resume: bool = False,
    ) -> Word2Vec:
        """Build the vocabulary and tree, then train for the remaining epochs.

        Args:
            corpus: a path to a text file (one sentence per line), an iterable of token lists, or
                an :class:`EncodedCorpus`.
            checkpoint: a directory; the full state is saved there (atomically) after each epoch.
            resume: continue from the state in ``checkpoint`` (it must exist and match this
                configuration and corpus).

        Raises:
            CorpusError: missing or empty corpus, or no word reaching ``min_count``.
            ValueError: a checkpoint that does not match, or a tree that does not fit the vocabulary.
        """
        if isinstance(corpus, EncodedCorpus):
            enc, owned = corpus, False
        else:
            enc, owned = self._encode(corpus), True
        try:
            self.build(enc, checkpoint, resume)
            self.train(enc, checkpoint)
        finally:
            if owned:
                enc.close()
        return self

    def build(
        self, corpus: EncodedCorpus, checkpoint: str | os.PathLike | None = None, resume: bool = False
    ) -> Word2Vec:
        """First half of :meth:`fit`: take the corpus's vocabulary, build the tree and initialise
        the vectors, or restore them from ``checkpoint`` when ``resume``. Checks everything that
        can be wrong before any training starts."""
        if resume and checkpoint is None:
            raise ValueError("resume=True needs a checkpoint directory")
        if not isinstance(corpus, EncodedCorpus):
            raise TypeError(f"build() takes an EncodedCorpus, got {type(corpus).__name__}")
        if resume and checkpoint is not None:  # (resume without one was refused above)
            self._load_checkpoint(os.fspath(checkpoint), corpus.vocab)
        else:
            self._setup(corpus.vocab)
        return self

    def train(self, corpus: EncodedCorpus, checkpoint: str | os.PathLike | None = None) -> Word2Vec:
        """Second half of :meth:`fit`: run the remaining epochs on an encoded corpus."""
        if corpus.vocab.words != self._require_trained().vocab.words:
            raise ValueError("the corpus was encoded with a different vocabulary")
        self._train(corpus, None if checkpoint is None else os.fspath(checkpoint))
        return self

    def save(self, path: str | os.PathLike, binary: bool | None = None) -> None:
        """Write the vectors in word2vec format (binary if ``binary`` or the name ends in ``.bin``)."""
        self.wv.save(path, binary=binary)

    def log_likelihood(self, corpus: EncodedCorpus, max_sentences: int | None = None) -> float:
        """Mean log-likelihood per prediction (full window, no subsampling) on an encoded corpus
        that uses this model's vocabulary."""
        trained = self._require_trained()
        if corpus.vocab.words != trained.vocab.words:
            raise ValueError("the corpus was encoded with a different vocabulary")
        S = corpus.num_sentences if max_sentences is None else min(max_sentences, corpus.num_sentences)
        paths = kernels.flat_paths(trained.tree, self.word_classes, packed=True)
        return float(kernels.word_loglik(kernels.Chunk(corpus.ids, corpus.offsets[: S + 1]), self._model(), paths))

    # ------------------------------------------------------------------ setup
    def _encode(self, corpus: str | os.PathLike | Iterable[Sequence[str]]) -> EncodedCorpus:
        if isinstance(corpus, (str, os.PathLike)):
            return encode_file(corpus, self.min_count, self.max_vocab)
        return encode_sentences(corpus, self.min_count, self.max_vocab)

    def _make_tree(self, vocab: Vocab) -> Tree:
        spec = self.tree_spec
        if spec == "huffman":
            return Tree.huffman(vocab.counts)
        if spec == "balanced":
            return Tree.balanced(len(vocab))
        if isinstance(spec, str):  # only if tree_spec was reassigned: __init__ checks the name
            raise ValueError(f"tree must be 'huffman' or 'balanced' when a string, got {spec!r}")
        tree = spec if isinstance(spec, Tree) else spec(vocab)
        if not isinstance(tree, Tree):
            raise TypeError(f"the tree callable must return a Tree, got {type(tree).__name__}")
        if tree.num_classes != len(vocab):
            raise ValueError(f"the tree has {tree.num_classes} classes but the vocabulary has {len(vocab)} words")
        return tree

    def _setup(self, vocab: Vocab) -> None:
        self.vocab = vocab
        self.tree = self._make_tree(vocab)
        self.word_classes = _word_classes(self.tree, vocab)
        _release_memory()  # the tree's build temporaries, before the tables take their place
        rng = np.random.default_rng(self.seed)
        # word2vec's initialisation: small uniform input vectors, zero node rows.
        self.syn0 = rng.random((len(vocab), self.dim), dtype=np.float32)
        self.syn0 -= 0.5  # in place: no full-size temporaries at peak memory
        self.syn0 /= self.dim
        self.syn1 = np.zeros((self.tree.num_params, self.dim), dtype=np.float32)
        self.epochs_done = 0
        self.history = []

    def _require_trained(self) -> _Trained:
        """The vocabulary, tree and both weight tables, which exist once :meth:`build` (or :meth:`fit`) ran."""
        if self.vocab is None or self.tree is None or self.syn0 is None or self.syn1 is None:
            raise ValueError("the model has no vectors yet: call fit() (or build()) first")
        return _Trained(self.vocab, self.tree, self.syn0, self.syn1)

    # ------------------------------------------------------------------ training loop
    def _model(self) -> kernels.Model:
        trained = self._require_trained()
        return kernels.Model(trained.syn0, trained.syn1, self.sg, self.window)

    def _train(self, enc: EncodedCorpus, checkpoint: str | None) -> None:
        trained = self._require_trained()
        paths = kernels.flat_paths(trained.tree, self.word_classes, packed=True)
        _release_memory()
        keep = _keep_thresholds(keep_probabilities(trained.vocab.counts, self.sample))
        tables = kernels.Tables(*sigmoid_tables(), keep)
        chunks = _chunk_bounds(enc.offsets, _CHUNK_WORDS)
        N = enc.num_tokens
        bar = _Bar(N * self.epochs, self.progress, initial=N * self.epochs_done)
        try:
            for epoch in range(self.epochs_done, self.epochs):
                t0 = time.perf_counter()
                stats = self._run_epoch(enc, chunks, epoch, paths, tables, bar)
                stats["seconds"] = time.perf_counter() - t0
                stats["epoch"] = epoch + 1
                self.history.append(stats)
                self.epochs_done = epoch + 1
                bar.epoch_done(stats)
                if checkpoint is not None:
                    self._save_checkpoint(checkpoint)
        finally:
            bar.close()

    def _run_epoch(
        self,
        enc: EncodedCorpus,
        chunks: np.ndarray,
        epoch: int,
        paths: kernels.Paths,
        tables: kernels.Tables,
        bar: _Bar,
    ) -> dict[str, float]:
        lock = threading.Lock()
        next_chunk = [0]
        acc = _EpochTotals()
        errors: list[BaseException] = []
        offsets = enc.offsets
        N = enc.num_tokens
        total = N * self.epochs
        max_chunk = int(np.max(offsets[chunks[1:]] - offsets[chunks[:-1]]))
        max_len = int(np.diff(offsets).max())
        max_arity = int(self._require_trained().tree.arity.max())
        model = self._model()
        done = [epoch * N]  # furthest corpus position reached: drives the bar's learning rate

        def worker() -> None:
            chunk_ids = np.empty(max_chunk, dtype=np.int32)
            scratch = kernels.new_scratch(max_len, self.dim, self.window, max_arity)
            try:
                while True:
                    with lock:
                        c = next_chunk[0]
                        next_chunk[0] += 1
                    if c >= chunks.size - 1 or errors or stop:
                        return
                    s_lo, s_hi = int(chunks[c]), int(chunks[c + 1])
                    lo = int(offsets[s_lo])
                    before = epoch * N + lo
                    # Each chunk's ids are read from disk into this thread's buffer: the corpus
                    # never sits in the process's memory.
                    chunk = kernels.Chunk(enc.read_ids(lo, offsets[s_hi], chunk_ids), offsets[s_lo : s_hi + 1] - lo)
                    schedule = kernels.Schedule(
                        self.alpha, self.min_alpha, before, total, _chunk_seed(self.seed, epoch, c)
                    )
                    stats = kernels.train_chunk(chunk, model, paths, tables, schedule, scratch)
                    with lock:
                        acc.words += stats.words
                        acc.trained += stats.trained
                        acc.loglik += stats.loglik
                        acc.predictions += stats.predictions
                        done[0] = max(done[0], before + stats.words)
            except BaseException as exc:  # surface worker failures in the caller
                errors.append(exc)

        stop: list[bool] = []
        threads = [threading.Thread(target=worker, daemon=True) for _ in range(self.threads)]
        for t in threads:
            t.start()
        try:
            for t in threads:
                while t.is_alive():
                    t.join(0.1)
                    with lock:
                        words, far = acc.words, done[0]
                    bar.update_to(epoch * N + words, self._lr_at(far, total))
        except BaseException:  # Ctrl-C: let the workers finish their chunk and stop, then re-raise
            stop.append(True)
            for t in threads:
                t.join()
            raise
        if errors:
            raise errors[0]
        return {
            "words": acc.words,
            "trained_words": acc.trained,
            "loss": -acc.loglik / max(acc.predictions, 1),
            "predictions": acc.predictions,
        }

    def _lr_at(self, words_done: int, total: int) -> float:
        return max(self.min_alpha, self.alpha - (self.alpha - self.min_alpha) * words_done / total)

    # ------------------------------------------------------------------ checkpoints
    def _save_checkpoint(self, directory: str) -> None:
        trained = self._require_trained()
        os.makedirs(directory, exist_ok=True)
        state = {
            "version": np.array(_CHECKPOINT_VERSION),
            "config": np.array(json.dumps(self.config())),
            "epochs_done": np.array(self.epochs_done),
            "history": np.array(json.dumps(self.history)),
            "words": np.array(trained.vocab.words, dtype=str),
            "counts": trained.vocab.counts,
            "syn0": trained.syn0,
            "syn1": trained.syn1,
        }
        state.update({"tree_" + k: v for k, v in trained.tree.state().items()})
        with atomic_path(os.path.join(directory, "checkpoint.npz")) as tmp, open(tmp, "wb") as f:
            # numpy >= 2.1's stubs add allow_pickle=, which a **dict could in principle fill; passing
            # it explicitly would store an "allow_pickle" array on the numpy < 2.1 we support.
            np.savez(f, **state)  # type: ignore[arg-type]

    def _load_checkpoint(self, directory: str, vocab: Vocab) -> None:
        path = os.path.join(directory, "checkpoint.npz")
        if not os.path.exists(path):
            raise ValueError(f"no checkpoint to resume from in {directory}")
        with np.load(path, allow_pickle=False) as z:
            if int(z["version"]) != _CHECKPOINT_VERSION:
                raise ValueError(f"unsupported checkpoint version {int(z['version'])}")
            saved = json.loads(str(z["config"]))
            mine = self.config()
            diff = sorted(k for k in mine if saved.get(k) != mine[k])
            if diff:
                k = diff[0]
                raise ValueError(f"checkpoint was made with {k}={saved.get(k)!r}, this run has {k}={mine[k]!r}")
            words = tuple(str(w) for w in z["words"].tolist())
            if words != vocab.words or not np.array_equal(z["counts"], vocab.counts):
                raise ValueError("checkpoint vocabulary differs from this corpus's: resume on the same corpus")
            self.vocab = vocab
            self.tree = Tree.from_state({k[5:]: z[k] for k in z.files if k.startswith("tree_")})
            self.word_classes = _word_classes(self.tree, vocab)
            self.syn0 = np.array(z["syn0"])
            self.syn1 = np.array(z["syn1"])
            self.epochs_done = int(z["epochs_done"])
            self.history = json.loads(str(z["history"]))


class _Trained(NamedTuple):
    """What :meth:`Word2Vec._require_trained` returns: the model's parts that exist after build()."""

    vocab: Vocab
    tree: Tree
    syn0: np.ndarray  # (V, dim) input vectors
    syn1: np.ndarray  # (tree.num_params, dim) node rows


@dataclass
class _EpochTotals:
    """The workers' running sums over one epoch (updated under the epoch's lock)."""

    words: int = 0
    trained: int = 0
    loglik: float = 0.0
    predictions: int = 0


def _word_classes(tree: Tree, vocab: Vocab) -> np.ndarray | None:
    """A labelled tree is matched to the vocabulary by label (any class order); an unlabelled one
    by position (word ``i`` is class ``i``)."""
    if tree.labels is None or tree.labels == vocab.words:
        return None
    labels = set(tree.labels)
    missing = [w for w in vocab.words if w not in labels][:1]
    if missing:
        raise ValueError(f"the tree's labels do not cover the vocabulary: {missing[0]!r} is not a label")
    return np.array([tree.index(w) for w in vocab.words], dtype=np.int64)


def _keep_thresholds(p_keep: np.ndarray) -> np.ndarray:
    """Keep-probabilities as uint32 thresholds: an occurrence is kept when a uniform 32-bit draw is
    below its word's threshold."""
    return np.minimum(np.floor(p_keep * 2.0**32), 2.0**32 - 1).astype(np.uint32)


def _chunk_bounds(offsets: np.ndarray, words: int) -> np.ndarray:
    """Sentence indices splitting the corpus into chunks of about ``words`` words."""
    targets = np.arange(words, int(offsets[-1]), words)
    cuts = np.searchsorted(offsets, targets)
    return np.unique(np.concatenate(([0], cuts, [offsets.size - 1]))).astype(np.int64)


def _chunk_seed(seed: int, epoch: int, chunk: int) -> np.uint64:
    return np.random.SeedSequence([seed, epoch, chunk]).generate_state(1, dtype=np.uint64)[0]


class _Bar:
    """tqdm progress over all epochs' words, with the learning rate; silent when disabled."""

    def __init__(self, total: int, enabled: bool, initial: int = 0) -> None:
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=total,
                initial=initial,
                unit="w",
                unit_scale=True,
                dynamic_ncols=True,
                smoothing=0.1,
                desc="word2vec",
            )

    def update_to(self, words_done: int, lr: float) -> None:
        """Called from the main thread only (tqdm is not thread-safe)."""
        if self.bar is not None and words_done > self.bar.n:
            self.bar.set_postfix_str(f"lr={lr:.5f}", refresh=False)
            self.bar.update(words_done - self.bar.n)

    def epoch_done(self, stats: dict[str, float]) -> None:
        if self.bar is not None:
            self.bar.write(
                f"epoch {stats['epoch']}: loss {stats['loss']:.4f} per prediction, "
                f"{stats['words'] / max(stats['seconds'], 1e-9):,.0f} words/s"
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

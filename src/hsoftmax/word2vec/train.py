"""The trainer: word2vec (CBOW or skip-gram) with hierarchical softmax over any :class:`Tree`.

Threads pull chunks of sentences from a shared queue and run the numba kernel on them with the GIL
released. Every random draw of a chunk comes from a stream seeded by ``(seed, epoch, chunk)`` and
the learning rate of a sentence is a function of its position in the corpus, so with one thread a
run is deterministic, and a run resumed from an epoch checkpoint equals an uninterrupted one bit for
bit. With more threads the Hogwild updates interleave and runs differ slightly, as in word2vec.c.
"""

from __future__ import annotations

import errno
import json
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from ..builders import _memory_bytes
from ..files import READ_ERRORS, NpzReader, atomic_path, decode_strings, encode_strings, remove_stale_temporaries
from ..kernels.node import sigmoid_tables
from ..progress import ProgressBar
from ..tree import Tree
from . import kernels
from .corpus import EncodedCorpus, _release_memory, encode_file, encode_sentences
from .grow import graft
from .keyed_vectors import KeyedVectors
from .runtime import release_jit_pages
from .vocab import Vocab, keep_probabilities

__all__ = ["Word2Vec", "TrainingError", "CheckpointBusy", "max_threads", "LIMITS"]

_CHUNK_WORDS = 16384  # words per work item: small enough to balance threads and update the bar
_CHECKPOINT_VERSION = 2  # 2: words as UTF-8 bytes + offsets (lossless), config/history as bytes
_CHECKPOINT_NAME = "checkpoint.npz"
_LOCK_NAME = "checkpoint.lock"
_MAX_JSON_BYTES = 1 << 24  # config and history are a few KB; more is a crafted file

#: The largest value each numeric setting accepts, and why (the bounds the CLI documents too).
LIMITS: dict[str, tuple[int, str]] = {
    # the tables must also fit in memory: checked once the vocabulary is known
    "dim": (1 << 20, "a vector of more than 2**20 floats is 4 MiB per word"),
    # the corpus is cut into sentences of at most 10,000 words (MAX_SENTENCE_LENGTH): no context
    # word is further away, and each thread's scratch grows with the window
    "window": (10_000, "no sentence is longer than 10,000 words, so no context word is further away"),
    # the learning-rate schedule counts epochs * tokens in 64 bits; a million passes is far
    # beyond any useful run
    "epochs": (1_000_000, "the learning-rate schedule counts words over all epochs in 64 bits"),
    "min_count": (2**62, "word counts are int64"),
    "max_vocab": (2**31 - 1, "word ids are int32"),
    # seeds feed numpy's SeedSequence, which takes any non-negative int; 64 bits is the contract
    "seed": (2**64 - 1, "seeds are 64-bit unsigned integers"),
}


def max_threads() -> int:
    """The most worker threads accepted: 4 per core (at least 16). Threads beyond the cores only
    contend for them (Hogwild updates collide more), and each holds scratch buffers."""
    return max(16, 4 * (os.cpu_count() or 1))


class TrainingError(RuntimeError):
    """Training failed: a worker thread raised, or the tables became non-finite (diverged)."""


class CheckpointBusy(RuntimeError):
    """Another run holds the checkpoint directory's lock."""


def _check_int(name: str, value: Any, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < lo:
        raise ValueError(f"{name} must be >= {lo}, got {value}")
    if name in LIMITS and value > LIMITS[name][0]:
        hi, why = LIMITS[name]
        raise ValueError(f"{name} must be <= {hi}, got {value}: {why}")
    return int(value)


def _check_float(name: str, value: Any, lo: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not np.isfinite(value) or value < lo:
        raise ValueError(f"{name} must be a finite number >= {lo}, got {value}")
    return float(value)


# Below this many words the tree's temporaries are too small to matter, and a full garbage
# collection (which walks every live object) would cost more than the whole build.
_RELEASE_MIN_VOCAB = 20_000


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
        threads: worker threads (default: all cores; at most :func:`max_threads`, 4 per core).
        seed: seeds the initial vectors and every random draw; in ``[0, 2**64)``.
        tree: ``"huffman"`` (default: a Huffman tree over the word counts), ``"balanced"``, a
            :class:`~hsoftmax.tree.Tree` over the vocabulary, or a callable ``vocab -> Tree``. A
            tree with labels is matched to the words by label; without labels word ``i`` (words
            are ordered by decreasing count) is class ``i``.
        progress: ``True``: a tqdm bar (words/s, ETA, learning rate); ``"log"``: one line per
            epoch on stderr (for logs and pipes); ``False``: silent.

    Bounds (see :data:`LIMITS`): ``dim <= 2**20``, ``window <= 10000`` (the longest sentence),
    ``epochs <= 10**6``, ``threads <= max_threads()``; and the weight tables and every thread's
    scratch must fit in the machine's memory, checked when the vocabulary is known. Training
    raises :class:`TrainingError` if the tables stop being finite (a learning rate that
    diverges) or a worker thread fails: no vectors are kept from such a run.
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
        progress: bool | str = True,
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
        if self.threads > max_threads():
            raise ValueError(
                f"threads must be <= {max_threads()} (4 per core), got {self.threads}: more threads "
                f"than cores only contend for them"
            )
        self.seed = _check_int("seed", seed, 0)
        if not (isinstance(tree, (str, Tree)) or callable(tree)):
            raise TypeError(f"tree must be 'huffman', 'balanced', a Tree or a callable, got {type(tree).__name__}")
        if isinstance(tree, str) and tree not in ("huffman", "balanced"):
            raise ValueError(f"tree must be 'huffman' or 'balanced' when a string, got {tree!r}")
        self.tree_spec = tree
        if progress not in (True, False, "log"):
            raise ValueError(f"progress must be True, False or 'log', got {progress!r}")
        self.progress: bool | str = progress
        self._lock: _DirLock | None = None
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
        update: bool = False,
    ) -> Word2Vec:
        """Build the vocabulary and tree, then train for the remaining epochs.

        With ``update=True`` a trained (or :meth:`load`-ed) model goes on training on ``corpus``,
        gensim's ``build_vocab(update=True)`` + ``train()`` in one call: the corpus's words that
        are new and reach ``min_count`` join the vocabulary (after the old words, which keep their
        ids and vectors), the counts add up, the tree grows so that the old words keep their
        paths and their inner-node rows (see :mod:`hsoftmax.word2vec.grow`), and ``epochs``
        passes run with a fresh learning-rate schedule (``alpha`` down to ``min_alpha``). The
        settings are the model's; change ``epochs``, ``alpha``, ``min_alpha`` or ``threads`` on
        it first if wanted. Only the built-in trees (``"huffman"``, ``"balanced"``, or a tree
        whose class ``i`` is word ``i``) can grow.

        >>> import random
        >>> rng = random.Random(0)
        >>> a = [[rng.choice("ab") + str(rng.randrange(5)) for _ in range(8)] for _ in range(200)]
        >>> m = Word2Vec(dim=8, min_count=1, epochs=1, threads=1, progress=False).fit(a)
        >>> old_words, old_vectors = m.vocab.words, m.wv.vectors.copy()
        >>> b = [[rng.choice("abc") + str(rng.randrange(5)) for _ in range(8)] for _ in range(200)]
        >>> len(m.fit(b, update=True).vocab)    # the c-words joined
        15
        >>> m.vocab.words[:10] == old_words, m.wv.vectors.shape  # the old words keep their ids
        (True, (15, 8))

        Args:
            corpus: a path to a text file (one sentence per line), an iterable of token lists, or
                an :class:`EncodedCorpus` (with ``update``, encoded with ``vocab=model.vocab``).
            checkpoint: a directory; the full state is saved there (atomically) after each epoch.
            resume: continue from the state in ``checkpoint`` (it must exist and match this
                configuration and corpus).
            update: continue training this model on ``corpus`` with a growing vocabulary.

        Raises:
            CorpusError: missing or empty corpus, or no word reaching ``min_count``.
            ValueError: a checkpoint that does not match or is damaged (the message names the file
                and the problem), a tree that does not fit the vocabulary, or tables that cannot
                fit in memory.
            CheckpointBusy: another run is using ``checkpoint``.
            TrainingError: training diverged or a worker thread failed.
        """
        if update:
            self._require_trained()  # before the corpus is read
        if isinstance(corpus, EncodedCorpus):
            enc, owned = corpus, False
        else:
            enc, owned = self._encode(corpus, self.vocab if update else None), True
        try:
            self.build(enc, checkpoint, resume, update=update)
            self.train(enc, checkpoint)
        finally:
            self._release_lock()
            if owned:
                enc.close()
        return self

    def build(
        self,
        corpus: EncodedCorpus,
        checkpoint: str | os.PathLike | None = None,
        resume: bool = False,
        update: bool = False,
    ) -> Word2Vec:
        """First half of :meth:`fit`: take the corpus's vocabulary, build the tree and initialise
        the vectors, or restore them from ``checkpoint`` when ``resume``. Checks everything that
        can be wrong before any training starts. With ``update``, grow the trained model for the
        corpus instead (see :meth:`fit`; the corpus must be encoded with ``vocab=model.vocab``);
        ``resume`` then restores a checkpoint of that continued run.

        With a ``checkpoint`` directory, its lock is taken here (a second run sharing the directory
        fails at once with :class:`CheckpointBusy`) and held until :meth:`train` ends."""
        if resume and checkpoint is None:
            raise ValueError("resume=True needs a checkpoint directory")
        if not isinstance(corpus, EncodedCorpus):
            raise TypeError(f"build() takes an EncodedCorpus, got {type(corpus).__name__}")
        try:
            if checkpoint is not None:
                self._take_lock(os.fspath(checkpoint))
            if update:
                self._grow(corpus.vocab)
                if resume and checkpoint is not None:
                    self._load_checkpoint(os.fspath(checkpoint), self._require_trained().vocab, self.tree)
            elif resume and checkpoint is not None:  # (resume without one was refused above)
                self._load_checkpoint(os.fspath(checkpoint), corpus.vocab)
            else:
                self._setup(corpus.vocab)
        except BaseException:
            self._release_lock()
            raise
        return self

    def train(self, corpus: EncodedCorpus, checkpoint: str | os.PathLike | None = None) -> Word2Vec:
        """Second half of :meth:`fit`: run the remaining epochs on an encoded corpus."""
        if corpus.vocab.words != self._require_trained().vocab.words:
            raise ValueError("the corpus was encoded with a different vocabulary")
        try:
            if checkpoint is not None:
                self._take_lock(os.fspath(checkpoint))
            self._train(corpus, None if checkpoint is None else os.fspath(checkpoint))
        finally:
            self._release_lock()
        return self

    def save(self, path: str | os.PathLike, binary: bool | None = None) -> None:
        """Write the whole model (gensim's ``model.save``): the vocabulary with its counts, both
        tables, the tree, the settings and the training record, in one ``.npz`` file (no pickle;
        the format of the ``--checkpoint`` files), written atomically. :meth:`load` reads it back
        for more training (:meth:`fit` with ``update=True``) or for scoring.

        For word2vec vectors, use ``model.wv.save_word2vec_format(path, binary=...)``. A name
        ending in ``.bin``, ``.txt`` or ``.vec``, or an explicit ``binary=``, still writes vectors
        as this method did before it saved models (with a ``FutureWarning``).
        """
        if binary is not None or os.fspath(path).lower().endswith(_VECTOR_SUFFIXES):
            warnings.warn(
                "Word2Vec.save() of a vector file name writes word2vec vectors; it will write the "
                "whole model for every name: call model.wv.save_word2vec_format(path, binary=...) "
                "for vectors",
                FutureWarning,
                stacklevel=2,
            )
            self.wv.save(path, binary=binary)
            return
        self._write_state(os.fspath(path))

    @classmethod
    def load(cls, path: str | os.PathLike, threads: int | None = None, progress: bool | str = True) -> Word2Vec:
        """Read a model written by :meth:`save` (or a ``--checkpoint`` directory's state), trusting
        nothing in the file: every check of ``resume=True`` applies (array layouts before any data
        is read, the vocabulary, the tree, finite tables), against the file's own settings.

        >>> import os, random, tempfile
        >>> rng = random.Random(0)
        >>> sents = [[rng.choice("ab") + str(rng.randrange(5)) for _ in range(8)] for _ in range(200)]
        >>> m = Word2Vec(dim=8, min_count=1, epochs=1, threads=1, progress=False).fit(sents)
        >>> path = os.path.join(tempfile.mkdtemp(), "w2v.model")
        >>> m.save(path)
        >>> back = Word2Vec.load(path, threads=1, progress=False)
        >>> bool((back.syn1 == m.syn1).all()), back.tree == m.tree, back.config() == m.config()
        (True, True, True)

        Args:
            path: the model file, or a checkpoint directory (its ``checkpoint.npz``).
            threads, progress: for further training (they are not part of the model).

        Raises:
            ValueError: a missing, damaged or foreign file (one line naming the file and the
                problem; word2vec vector files are recognised and pointed to ``load_vectors``).
        """
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, _CHECKPOINT_NAME)
        if not os.path.isfile(path):
            raise ValueError(f"model file not found: {path}")
        _check_model_file(path)
        try:
            with NpzReader(path) as z:
                return cls._from_file(z, threads, progress)
        except (*READ_ERRORS, TypeError) as e:
            raise ValueError(f"model file {path} cannot be loaded: {_one_line(e)}") from None

    @classmethod
    def _from_file(cls, z: NpzReader, threads: int | None, progress: bool | str) -> Word2Vec:
        _check_version(z)
        settings = _read_config(z)
        names = set(cls(progress=False, threads=1).config())
        if set(settings) != names:
            extra = sorted(set(settings) ^ names)[0]
            raise ValueError(f"config has {'an unknown' if extra in settings else 'no'} setting {extra!r}")
        for key in ("word_bytes", "word_offset", "counts"):
            if key not in z.headers:
                raise ValueError(f"array {key!r} is missing")
        if not _layout_ok(z.headers["word_offset"], "i", None) or z.headers["word_offset"].shape[0] < 2:
            raise ValueError(f"array 'word_offset' is {z.headers['word_offset'].dtype}, not word offsets")
        V = z.headers["word_offset"].shape[0] - 1
        for key, kind, shape in (("word_bytes", "u1", None), ("counts", "i", (V,))):
            if not _layout_ok(z.headers[key], kind, shape):
                h = z.headers[key]
                raise ValueError(f"array {key!r} is {h.dtype} of shape {h.shape}, expected {kind} of shape {shape}")
        words = decode_strings(z.read("word_bytes"), z.read("word_offset"), "word")
        vocab = Vocab(words, z.read("counts"))
        tree = Tree.from_state({k[5:]: z.read(k) for k in z.headers if k.startswith("tree_")})
        spec = settings.pop("tree")
        if spec not in ("huffman", "balanced", "custom"):
            raise ValueError(f"config has tree={spec!r}, not 'huffman', 'balanced' or 'custom'")
        model = cls(**settings, tree=tree if spec == "custom" else spec, threads=threads, progress=progress)
        if tree.num_classes != V:
            raise ValueError(f"the tree has {tree.num_classes} classes for {V} words")
        state = model._read_checkpoint(z, vocab, tree, first_epoch=0)
        model.vocab = vocab
        model.tree, model.word_classes, model.syn0, model.syn1, model.epochs_done, model.history = state
        return model

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
    def _encode(self, corpus: str | os.PathLike | Iterable[Sequence[str]], vocab: Vocab | None = None) -> EncodedCorpus:
        if isinstance(corpus, (str, os.PathLike)):
            return encode_file(corpus, self.min_count, self.max_vocab, vocab=vocab)
        return encode_sentences(corpus, self.min_count, self.max_vocab, vocab=vocab)

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
        self._check_memory(len(vocab), self.tree.num_params)
        if len(vocab) >= _RELEASE_MIN_VOCAB:
            _release_memory()  # the tree's build temporaries, before the tables take their place
        self.syn0 = _initial_vectors(np.random.default_rng(self.seed), len(vocab), self.dim)
        self.syn1 = np.zeros((self.tree.num_params, self.dim), dtype=np.float32)
        self.epochs_done = 0
        self.history = []

    def _grow(self, corpus_vocab: Vocab) -> None:
        """Continued training's setup: the vocabulary extended and counted, the tree grafted (old
        rows carried over), new vectors initialised as in :meth:`_setup`, a fresh schedule."""
        old = self._require_trained()
        V0 = len(old.vocab)
        if corpus_vocab.words[:V0] != old.vocab.words:
            raise ValueError(
                "update=True needs a corpus encoded with this model's vocabulary first "
                "(encode_file(..., vocab=model.vocab))"
            )
        if self.word_classes is not None or (old.tree.labels is not None and old.tree.labels != old.vocab.words):
            raise ValueError(
                "update=True grows trees whose class i is word i (tree='huffman' or 'balanced'); "
                "this model's tree is matched to the words by label"
            )
        counts = corpus_vocab.counts.copy()
        counts[:V0] += old.vocab.counts
        vocab = Vocab(corpus_vocab.words, counts)
        V = len(vocab)
        tree, syn0, syn1 = old.tree, old.syn0, old.syn1
        if V > V0:
            subtree = Tree.balanced(V - V0) if self.tree_spec == "balanced" else None
            grown = graft(old.tree, counts, subtree)
            tree = (
                grown.tree
                if old.tree.labels is None
                else Tree(V, grown.tree.child_offset, grown.tree.children, vocab.words)
            )
            self._check_memory(V, tree.num_params)
            syn1 = np.zeros((tree.num_params, self.dim), dtype=np.float32)
            syn1[grown.row_map] = old.syn1
            # the new words' vectors as _setup draws them, from a stream of their own
            fresh = _initial_vectors(np.random.default_rng([self.seed, V0]), V - V0, self.dim)
            syn0 = np.concatenate([old.syn0, fresh])
            if not isinstance(self.tree_spec, str):
                self.tree_spec = tree
        self.vocab, self.tree, self.syn0, self.syn1 = vocab, tree, syn0, syn1
        self.word_classes = None
        self.epochs_done = 0
        self.history = []

    def _check_memory(self, V: int, num_params: int) -> None:
        """Refuse up front tables (and per-thread scratch) that cannot fit in memory: numpy would
        fail half-way, or the OOM killer would end the run."""
        scratch = (2 * self.window * (self.dim + 2) + 2 * self.dim + 2 * 10_000) * 4 + _CHUNK_WORDS * 4
        need = 4 * (V + num_params) * self.dim + self.threads * scratch
        available = _memory_bytes()
        if available is not None and need > available:
            raise ValueError(
                f"dim={self.dim}, window={self.window} and {self.threads} threads over {V} words need "
                f"about {need / 2**30:.1f} GiB, more than this machine's {available / 2**30:.1f} GiB of memory"
            )

    def lock_checkpoint(self, directory: str | os.PathLike) -> None:
        """Create ``directory`` if needed and take its lock now, rather than in :meth:`build`: a
        caller with slow work before training (encoding a large corpus) learns at once that the
        directory is in use (:class:`CheckpointBusy`) or not writable (``ValueError``). Held until
        :meth:`train` (or :meth:`fit`) ends, or :meth:`unlock_checkpoint`."""
        self._take_lock(os.fspath(directory))

    def unlock_checkpoint(self) -> None:
        """Release the checkpoint directory's lock (a no-op when none is held)."""
        self._release_lock()

    def _take_lock(self, directory: str) -> None:
        if self._lock is None or self._lock.directory != os.path.realpath(directory):
            self._release_lock()
            self._lock = _DirLock(directory)

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

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
        if len(trained.vocab) >= _RELEASE_MIN_VOCAB:
            _release_memory()
        keep = _keep_thresholds(keep_probabilities(trained.vocab.counts, self.sample))
        tables = kernels.Tables(*sigmoid_tables(), keep)
        chunks = _chunk_bounds(enc.offsets, _CHUNK_WORDS)
        N = enc.num_tokens
        if N * self.epochs >= 2**62:  # the schedule's words-done counter is int64
            raise ValueError(f"{self.epochs} epochs of {N} words overflow the learning-rate schedule's counter")
        bar = ProgressBar(
            N * self.epochs,
            self.progress,
            desc="word2vec",
            unit="w",
            per="prediction",
            count="words",
            initial=N * self.epochs_done,
        )
        try:
            for epoch in range(self.epochs_done, self.epochs):
                t0 = time.perf_counter()
                stats = self._run_epoch(enc, chunks, epoch, paths, tables, bar)
                stats["seconds"] = time.perf_counter() - t0
                stats["epoch"] = epoch + 1
                # Once per epoch, outside the kernels: a learning rate that diverges turns the
                # tables into NaN/inf, which must end the run rather than be written out.
                _check_finite(trained.syn0, trained.syn1, epoch + 1, self.alpha)
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
        bar: ProgressBar,
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
        # Loading the training kernel on a run's first chunk faults ~10 MB of LLVM's pages back
        # in; they are clean and unused while training, so the thread that finishes an epoch's
        # first chunk hands them back (before most of syn1's zero pages are first touched), for
        # big vocabularies. Later epochs find nothing to release (one read of smaps each).
        release_pending = [len(self._require_trained().vocab) >= _RELEASE_MIN_VOCAB]

        def worker() -> None:
            try:  # the allocations too: a MemoryError here must fail the run, not end the thread quietly
                chunk_ids = np.empty(max_chunk, dtype=np.int32)
                scratch = kernels.new_scratch(max_len, self.dim, self.window, max_arity)
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
                        release, release_pending[0] = release_pending[0], False
                    if release:
                        release_jit_pages()
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
            e = errors[0]
            raise TrainingError(f"a training thread failed: {type(e).__name__}: {e}") from e
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
        os.makedirs(directory, exist_ok=True)
        self._write_state(os.path.join(directory, _CHECKPOINT_NAME))

    def _write_state(self, path: str) -> None:
        """The model file: a checkpoint and a saved model are the same ``.npz``."""
        trained = self._require_trained()
        word_bytes, word_offset = encode_strings(trained.vocab.words)  # lossless, unlike a 'U' array
        state = {
            "version": np.array(_CHECKPOINT_VERSION, dtype=np.int64),
            "config": _json_bytes(self.config()),
            "epochs_done": np.array(self.epochs_done, dtype=np.int64),
            "history": _json_bytes(self.history),
            "word_bytes": word_bytes,
            "word_offset": word_offset,
            "counts": trained.vocab.counts,
            "syn0": trained.syn0,
            "syn1": trained.syn1,
        }
        state.update({"tree_" + k: v for k, v in trained.tree.state().items()})
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            # numpy >= 2.1's stubs add allow_pickle=, which a **dict could in principle fill; passing
            # it explicitly would store an "allow_pickle" array on the numpy < 2.1 we support.
            np.savez(f, **state)  # type: ignore[arg-type]

    def _load_checkpoint(self, directory: str, vocab: Vocab, tree: Tree | None = None) -> None:
        """Restore the state saved in ``directory``, trusting nothing in the file.

        Every array's dtype and shape is checked against this run (vocabulary size, ``dim``, the
        tree this configuration builds) from the archive's headers, before any data is read; then
        the settings, the vocabulary, the tree and the values (finite tables, ``epochs_done`` in
        range). After this the kernels' indices are in range by construction: token ids come from
        this run's encoding (``< len(vocab)`` rows of ``syn0``), the paths from a tree equal to the
        one this run builds (rows ``< tree.num_params``, the rows of ``syn1``), and both tables
        have ``dim`` columns. Any problem is one ``ValueError`` naming the file.
        """
        path = os.path.join(directory, _CHECKPOINT_NAME)
        if not os.path.exists(path):
            raise ValueError(f"no checkpoint to resume from in {directory}")
        try:
            with NpzReader(path) as z:
                state = self._read_checkpoint(z, vocab, tree)
        except (*READ_ERRORS, TypeError) as e:
            raise ValueError(f"checkpoint {path} cannot be resumed: {_one_line(e)}") from None
        self.vocab = vocab
        self.tree, self.word_classes, self.syn0, self.syn1, self.epochs_done, self.history = state

    def _read_checkpoint(
        self, z: NpzReader, vocab: Vocab, tree: Tree | None = None, first_epoch: int = 1
    ) -> tuple[Any, ...]:
        """The checks shared by ``resume`` and :meth:`load`: ``vocab`` and ``tree`` are what the
        file must hold (default: the tree this configuration builds); ``epochs_done`` must be in
        ``first_epoch..epochs`` (a checkpoint is written after an epoch, a model may be untrained)."""
        V, dim = len(vocab), self.dim
        if tree is None:
            tree = self._make_tree(vocab)  # what this run trains: the saved one must be equal
        word_classes = _word_classes(tree, vocab)
        self._check_memory(V, tree.num_params)
        tree_state = {"tree_" + k: v for k, v in tree.state().items()}
        expected: dict[str, tuple[str, tuple[int, ...] | None]] = {
            "version": ("i", ()),
            "config": ("u1", None),
            "epochs_done": ("i", ()),
            "history": ("u1", None),
            "word_bytes": ("u1", None),
            "word_offset": ("i", (V + 1,)),
            "counts": ("i", (V,)),
            "syn0": ("f4", (V, dim)),
            "syn1": ("f4", (tree.num_params, dim)),
        }
        for k, v in tree_state.items():
            expected[k] = (v.dtype.str[1:] if v.dtype.kind == "u" else v.dtype.kind, v.shape)
        unknown = sorted(set(z.headers) - set(expected))
        missing = sorted(set(expected) - set(z.headers))
        _check_version(z)
        if unknown:
            raise ValueError(f"unexpected array {unknown[0]!r}")
        if missing:
            raise ValueError(f"array {missing[0]!r} is missing")
        # the settings first: a run with other settings is the likeliest mistake, and its message
        # names the setting rather than an array shape that follows from it
        saved = _read_config(z)
        mine = self.config()
        diff = sorted(k for k in set(mine) | set(saved) if saved.get(k) != mine.get(k))
        if diff:
            k = diff[0]
            raise ValueError(f"checkpoint was made with {k}={saved.get(k)!r}, this run has {k}={mine.get(k)!r}")
        for key, (kind, shape) in expected.items():
            h = z.headers[key]
            if not _layout_ok(h, kind, shape):
                want = "any length" if shape is None else shape
                raise ValueError(f"array {key!r} is {h.dtype} of shape {h.shape}, expected {kind} of shape {want}")
            if shape is None and (len(h.shape) != 1 or (h.shape[0] > _MAX_JSON_BYTES and key != "word_bytes")):
                raise ValueError(f"array {key!r} of shape {h.shape} is not a 1-D byte string of sane size")
        words = decode_strings(z.read("word_bytes"), z.read("word_offset"), "word")
        if tuple(words) != vocab.words or not np.array_equal(z.read("counts"), vocab.counts):
            raise ValueError("checkpoint vocabulary differs from this corpus's: resume on the same corpus")
        for k, v in tree_state.items():
            if not np.array_equal(z.read(k), v):
                raise ValueError(f"the checkpoint's tree ({k}) differs from the tree this run builds")
        epochs_done = int(z.read("epochs_done"))
        if not first_epoch <= epochs_done <= self.epochs:
            raise ValueError(f"epochs_done={epochs_done} is not in {first_epoch}..{self.epochs} (epochs)")
        history = _json_value(z.read("history"), "history")
        if not (
            isinstance(history, list) and len(history) == epochs_done and all(isinstance(h, dict) for h in history)
        ):
            raise ValueError(f"history is not a list of {epochs_done} epoch records")
        syn0 = np.array(z.read("syn0"), dtype=np.float32, order="C")  # a writable, aligned copy
        syn1 = np.array(z.read("syn1"), dtype=np.float32, order="C")
        for name, table in (("syn0", syn0), ("syn1", syn1)):
            bad = ~np.isfinite(table).all(axis=1)
            if bad.any():
                raise ValueError(f"{name} row {int(np.argmax(bad))} is not finite (NaN or infinite)")
        return tree, word_classes, syn0, syn1, epochs_done, history


_VECTOR_SUFFIXES = (".bin", ".txt", ".vec")


def _check_version(z: NpzReader) -> None:
    if "version" in z.headers and _layout_ok(z.headers["version"], "i", ()):
        version = int(z.read("version"))
        if version != _CHECKPOINT_VERSION:
            raise ValueError(f"unsupported checkpoint version {version} (this hsoftmax writes {_CHECKPOINT_VERSION})")
    elif "version" not in z.headers:
        raise ValueError("array 'version' is missing: not an hsoftmax word2vec model or checkpoint")


def _read_config(z: NpzReader) -> dict[str, Any]:
    if "config" not in z.headers:
        raise ValueError("array 'config' is missing")
    h = z.headers["config"]
    if not _layout_ok(h, "u1", None) or h.shape[0] > _MAX_JSON_BYTES:
        raise ValueError(f"array 'config' is {h.dtype} of shape {h.shape}, not JSON bytes")
    saved = _json_value(z.read("config"), "config")
    if not isinstance(saved, dict):
        raise ValueError("config is not a JSON object")
    return saved


def _check_model_file(path: str) -> None:
    """A file that is not a zip archive: say what it is when it is word2vec vectors."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError as e:
        raise ValueError(f"cannot read model file {path}: {e.strerror or e}") from None
    if head.startswith(b"PK"):
        return
    first = head.split(b"\n", 1)[0].split()
    if len(first) == 2 and all(x.isdigit() for x in first):
        raise ValueError(
            f"{path} is a word2vec vectors file, not a model: read it with load_vectors() "
            f"(a model is written by Word2Vec.save or --save-model)"
        )
    raise ValueError(f"{path} is not an hsoftmax word2vec model (an .npz written by Word2Vec.save)")


def _layout_ok(h: Any, kind: str, shape: tuple[int, ...] | None) -> bool:
    """Whether an array header has the expected dtype kind (``"i"``: any signed or unsigned
    integer; ``"u1"``: bytes; ``"f4"``: float32; ``"b"``: bool) and shape (``None``: 1-D)."""
    dt = h.dtype
    if kind == "i":
        ok = dt.kind in "iu"
    elif kind == "u1":
        ok = dt == np.uint8
    elif kind == "f4":
        ok = dt == np.float32
    else:
        ok = dt.kind == kind
    return ok and (len(h.shape) == 1 if shape is None else tuple(h.shape) == tuple(shape))


def _json_bytes(value: Any) -> np.ndarray:
    return np.frombuffer(json.dumps(value).encode("utf-8"), dtype=np.uint8).copy()


def _json_value(data: np.ndarray, what: str) -> Any:
    try:
        return json.loads(data.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ValueError(f"{what} is not valid JSON: {_one_line(e)}") from None


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _check_finite(syn0: np.ndarray, syn1: np.ndarray, epoch: int, alpha: float) -> None:
    for name, table in (("input vectors", syn0), ("node rows", syn1)):
        # by blocks of rows: np.isfinite(table) whole would be a (rows, dim) bool temporary
        # (4.5 MB on the 5M-token slice) at the end of each epoch, when memory peaks
        if not all(np.isfinite(table[i : i + 4096]).all() for i in range(0, len(table), 4096)):
            raise TrainingError(
                f"training diverged: the {name} hold NaN or infinite values after epoch {epoch} "
                f"(learning rate alpha={alpha} is too high; try a smaller one)"
            )


class _DirLock:
    """An exclusive ``flock`` on ``DIR/checkpoint.lock``, held while a run uses the directory.

    The lock goes with the process (a killed run leaves no stale lock behind); the file stays.
    Creating the directory and the lock file also proves up front that the directory is writable.
    Stale temporary files of our atomic writer in the directory are removed once the lock is held
    (only a run holding the lock writes there)."""

    def __init__(self, directory: str) -> None:
        self.directory = os.path.realpath(directory)
        if os.path.exists(directory) and not os.path.isdir(directory):
            raise ValueError(f"checkpoint path {directory} exists and is not a directory")
        try:
            os.makedirs(directory, exist_ok=True)
            self._fd: int | None = os.open(os.path.join(directory, _LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise ValueError(f"cannot use checkpoint directory {directory}: {e.strerror or e}") from None
        try:
            import fcntl
        except ImportError:  # not POSIX: no locking
            return
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(self._fd)
            self._fd = None
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise CheckpointBusy(
                    f"checkpoint directory {directory} is in use by another run (its lock {_LOCK_NAME} is held)"
                ) from None
            raise
        remove_stale_temporaries(os.path.join(directory, _CHECKPOINT_NAME), before=time.time())

    def release(self) -> None:
        if getattr(self, "_fd", None) is not None:  # absent when __init__ failed
            assert self._fd is not None
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    __del__ = release


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


def _initial_vectors(rng: np.random.Generator, rows: int, dim: int) -> np.ndarray:
    """Input vectors drawn uniformly from ``[-1/dim, 1/dim)``, as gensim 4 draws them (node rows
    start at zero). word2vec.c draws from half that range, ``[-0.5/dim, 0.5/dim)``; on the 5M-token
    slice the wider start scored higher: CBOW, 1 thread, seeds 1-3, analogy 8.17 -> 8.47%,
    SimLex 0.211 -> 0.216 (measured 2026-12-01, see README "Quality on smaller corpora").

    >>> v = _initial_vectors(np.random.default_rng(0), 1000, 10)
    >>> v.dtype.name, bool(v.min() >= -0.1 and v.max() < 0.1 and v.min() < -0.09)
    ('float32', True)
    """
    v = rng.random((rows, dim), dtype=np.float32)
    v *= 2.0  # in place: no full-size temporaries at peak memory
    v -= 1.0
    v /= dim
    return v


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

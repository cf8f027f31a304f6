"""numba kernels: one call trains CBOW or skip-gram with hierarchical softmax on a chunk of sentences.

Threads run :func:`train_chunk` concurrently (``nogil``) on different chunks and update the shared
``syn0`` (input vectors) and ``syn1`` (tree node rows) without locks, as word2vec.c and gensim do
("Hogwild"): collisions are rare and harmless for sparse updates like these.

The tree reaches the kernel as flat per-word :class:`Paths` built by :func:`flat_paths` from
:class:`hsoftmax.Tree`'s decision arrays, using the library's parametrization so the weights are
interchangeable with the torch layer: a binary node has one row ``r`` and
``p(child 1) = sigmoid(syn1[r] . h)``; a node with ``k > 2`` children has ``k`` rows and a softmax
over them. The decision math itself (the table sigmoid and its saturation, the k-ary scores and
gradient, the exact log-sigmoid) is :mod:`hsoftmax.kernels.node`'s, shared with the layer kernels.

A kernel takes a few named bundles (as gensim's ``Word2VecConfig``), not dozens of arrays:
:class:`Chunk` (the sentences), :class:`Model` (the weights and the architecture), :class:`Paths`
(the tree), :class:`Tables` (lookups), :class:`Schedule` (learning rate and seed) and
:class:`Scratch` (everything a thread writes besides the shared weights, so the kernel allocates
nothing); it returns :class:`ChunkStats`. Each function unpacks the bundles it reads once, before
its loops: reading an array out of a tuple inside a loop costs a reference-count update per read
(that made skip-gram 14% slower, measured).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit
from numpy.typing import ArrayLike, DTypeLike

from ..kernels.node import JIT, dot, kary_coef, kary_scores, log_sigmoid_and_grad, table_decision
from ..tree import Tree

__all__ = [
    "Paths",
    "Chunk",
    "Model",
    "Tables",
    "Schedule",
    "Scratch",
    "ChunkStats",
    "flat_paths",
    "new_scratch",
    "private_array",
    "hs_step",
    "next_random",
    "train_chunk",
    "word_loglik",
    "path_logprob",
    "word_logprobs",
]

_LCG_MUL = np.uint64(6364136223846793005)
_LCG_ADD = np.uint64(1442695040888963407)
_CACHE_LINE = 64


class Paths(NamedTuple):
    """Per-word decision paths as flat arrays (CSR by word), from :func:`flat_paths`."""

    start: np.ndarray  #: ``(V + 1,)`` int64: word ``w``'s steps are ``start[w]:start[w + 1]``
    row: np.ndarray  #: int32 first ``syn1`` row of each step's node (packed: ``2 * row + choice``)
    choice: np.ndarray  #: int32 child taken (binary node: the sigmoid's target, 1 or 0); empty when packed
    arity: np.ndarray  #: int32 children of the step's node; empty when packed


class Chunk(NamedTuple):
    """Sentences of an encoded corpus: sentence ``s`` is ``ids[offsets[s]:offsets[s + 1]]``."""

    ids: np.ndarray  #: int32 word ids
    offsets: np.ndarray  #: ``(S + 1,)`` int64 sentence bounds into ``ids``


class Model(NamedTuple):
    """What is trained and how it predicts."""

    syn0: np.ndarray  #: ``(V, dim)`` float32 input vectors
    syn1: np.ndarray  #: ``(num_params, dim)`` float32 node rows
    sg: bool  #: skip-gram if true, else CBOW (mean of the context)
    window: int  #: maximum context distance


class Tables(NamedTuple):
    """Read-only lookups of training."""

    sig: np.ndarray  #: from :func:`hsoftmax.kernels.node.sigmoid_tables`
    logsig: np.ndarray
    keep: np.ndarray  #: ``(V,)`` uint32: keep an occurrence when a uniform 32-bit draw is below it


class Schedule(NamedTuple):
    """Where a chunk sits in the run: the learning rate decays linearly from ``alpha`` to
    ``min_alpha`` with ``(words_before + words done in the chunk) / total_words``."""

    alpha: float
    min_alpha: float
    words_before: int
    total_words: int
    seed: np.uint64  #: seed of this chunk's random stream (subsampling, window sizes)


class Scratch(NamedTuple):
    """One thread's buffers (see :func:`new_scratch` for the shapes)."""

    sent: np.ndarray  #: int32, at least the longest sentence
    h: np.ndarray  #: ``(dim,)`` float32 CBOW hidden vector
    e: np.ndarray  #: ``(dim,)`` float32 CBOW gradient w.r.t. ``h`` (times the learning rate)
    scores: np.ndarray  #: float64, the largest arity: a k-ary node's scores
    ctx: np.ndarray  #: ``(2 * window,)`` int32 skip-gram context ids
    E: np.ndarray  #: ``(2 * window, dim)`` float32 skip-gram gradients of the contexts
    G: np.ndarray  #: ``(2 * window, max arity)`` float32 skip-gram coefficients of a node's rows


class ChunkStats(NamedTuple):
    """What :func:`train_chunk` did."""

    words: int  #: corpus words read
    trained: int  #: words kept after subsampling
    loglik: float  #: summed log-likelihood of the predictions
    predictions: int


def flat_paths(tree: Tree, classes: ArrayLike | None = None, packed: bool = False) -> Paths:
    """Per-word decision paths as flat arrays (CSR by word).

    Built by walking :class:`hsoftmax.Tree`'s ``parent``/``choice`` arrays, so the tree's padded
    ``(V, max_decisions)`` arrays are never materialised.

    Args:
        tree: a :class:`hsoftmax.Tree`.
        classes: ``(V,)`` tree class of each word id (default: word ``w`` is class ``w``).
        packed: for a tree whose deciding nodes are all binary (Huffman, balanced binary), return
            each step as one int32 ``2 * row + choice`` and empty ``choice``/``arity`` arrays: a
            third of the memory and of the loads in the hot loop. Other trees ignore it.

    Returns:
        :class:`Paths`. (int8 ``choice``/``arity`` would save memory but made the CBOW kernel 18%
        slower, measured.)

    >>> from hsoftmax.tree import Tree
    >>> start, row, choice, arity = flat_paths(Tree.huffman([4, 2, 1, 1]))
    >>> start.tolist(), arity.tolist()
    ([0, 1, 3, 6, 9], [2, 2, 2, 2, 2, 2, 2, 2, 2])
    >>> packed = flat_paths(Tree.huffman([4, 2, 1, 1]), packed=True)
    >>> bool((packed.row == 2 * row + choice).all()), packed.choice.size, packed.arity.size
    (True, 0, 0)
    """
    cls = np.arange(tree.num_classes) if classes is None else np.asarray(classes, dtype=np.int64)
    lengths = np.asarray(tree.decision_lengths, dtype=np.int64)[cls]
    start = np.zeros(lengths.size + 1, dtype=np.int64)
    np.cumsum(lengths, out=start[1:])
    packed = bool(packed) and int(np.max(tree.arity)) <= 2 and tree.num_params < 2**30
    row = np.empty(int(start[-1]), dtype=np.int32)
    paths = Paths(
        start,
        row,
        np.empty(0 if packed else row.size, dtype=np.int32),
        np.empty(0 if packed else row.size, dtype=np.int32),
    )
    _walk_paths(
        cls,
        tree.num_classes,
        np.asarray(tree.parent),
        np.asarray(tree.choice),
        np.asarray(tree.arity),
        np.asarray(tree.param_offset),
        np.asarray(tree.node_decisions),
        packed,
        paths,
    )
    return paths


@njit(**JIT)
def _walk_paths(cls, V, parent, choice_of, arity_of, param_offset, node_dec, packed, paths):
    # A deciding node (two or more children) lands at its word's start + the decisions above it,
    # so the walk up from the leaf writes the path root first.
    start, row, choice, arity = paths
    for w in range(cls.size):
        ref = cls[w]
        cur = parent[ref]
        while cur >= 0:
            a = arity_of[cur]
            if a >= 2:
                p = start[w] + node_dec[cur]
                if packed:
                    row[p] = 2 * param_offset[cur] + choice_of[ref]
                else:
                    row[p] = param_offset[cur]
                    choice[p] = choice_of[ref]
                    arity[p] = a
            ref = V + cur
            cur = parent[ref]


def private_array(shape: tuple[int, ...], dtype: DTypeLike) -> np.ndarray:
    """A zeroed scratch array for one thread that shares no cache line with any other allocation.

    Small numpy arrays of different threads can sit side by side in memory; when two threads
    keep writing their own ``h``/``e`` on a shared cache line, the line bounces between cores on
    every write (false sharing): that made 2-thread CBOW slower than 1 thread. Each scratch array
    is therefore cut, cache-line aligned, from its own buffer with a free line on both sides."""
    itemsize = np.dtype(dtype).itemsize
    n = int(np.prod(shape))
    raw = np.zeros(n * itemsize + 3 * _CACHE_LINE, dtype=np.uint8)
    start = (-raw.ctypes.data) % _CACHE_LINE + _CACHE_LINE
    return raw[start : start + n * itemsize].view(dtype).reshape(shape)


def new_scratch(max_len: int, dim: int, window: int, max_arity: int) -> Scratch:
    """One thread's :class:`Scratch` for sentences of up to ``max_len`` words, each buffer on
    cache lines of its own.

    >>> s = new_scratch(max_len=50, dim=8, window=5, max_arity=3)
    >>> s.sent.shape, s.h.shape, s.scores.shape, s.E.shape, s.G.shape
    ((50,), (8,), (3,), (10, 8), (10, 3))
    """
    max_arity = max(int(max_arity), 2)
    return Scratch(
        private_array((max_len,), np.int32),
        private_array((dim,), np.float32),
        private_array((dim,), np.float32),
        private_array((max_arity,), np.float64),
        private_array((2 * window,), np.int32),
        private_array((2 * window, dim), np.float32),
        private_array((2 * window, max_arity), np.float32),
    )


@njit(inline="always", **JIT)
def _step(p, row, choice, arity):
    """``(row, choice, arity)`` of path step ``p``, from :func:`flat_paths`'s packed or plain
    arrays (the test is the same for every step, so the compiler lifts it out of the loop)."""
    if arity.size == 0:
        code = row[p]
        return code >> 1, code & 1, 2
    return row[p], choice[p], arity[p]


@njit(inline="always", **JIT)
def hs_step(syn1, word, paths, lr, tables, scratch):
    """CBOW: score ``word`` from hidden ``scratch.h`` along its path: add ``lr * dlogp/dh`` into
    ``scratch.e`` and update the path's ``syn1`` rows. Returns ``log p(word | h)``."""
    start, prow, pchoice, parity = paths
    sig, logsig = tables.sig, tables.logsig
    h, e, scores = scratch.h, scratch.e, scratch.scores
    dim = h.shape[0]
    ll = 0.0
    for p in range(start[word], start[word + 1]):
        r, c, a = _step(p, prow, pchoice, parity)
        if a == 2:  # the common case: one row, a sigmoid
            f = np.float32(0.0)
            for k in range(dim):
                f += h[k] * syn1[r, k]
            s, dll = table_decision(f, c, sig, logsig)
            ll += dll
            g = np.float32((c - s) * lr)
            if g != 0.0:
                for k in range(dim):
                    e[k] += g * syn1[r, k]
                    syn1[r, k] += g * h[k]
        else:  # k-ary node: softmax over its k rows
            lse = kary_scores(h, syn1, r, a, scores, np.float32(0.0))
            ll += scores[c] - lse
            for j in range(a):
                g = np.float32(kary_coef(j, c, scores[j], lse) * lr)
                for k in range(dim):
                    e[k] += g * syn1[r + j, k]
                    syn1[r + j, k] += g * h[k]
    return ll


@njit(inline="always", **JIT)
def _hs_step_many(syn0, syn1, nc, word, paths, lr, tables, scratch):
    """Skip-gram: every context word ``syn0[scratch.ctx[q]]`` (``q < nc``) predicts the same
    centre ``word``, so its path is walked once for the whole window: each node's rows are read
    once and take the summed update of all contexts (a minibatch of the window) while they sit in
    cache. ``scratch.E[q]`` accumulates ``lr * dlogp/dh`` for context ``q``. Returns the summed
    log-likelihood."""
    start, prow, pchoice, parity = paths
    sig, logsig = tables.sig, tables.logsig
    ctx, E, G, scores = scratch.ctx, scratch.E, scratch.G, scratch.scores
    dim = syn0.shape[1]
    ll = 0.0
    for p in range(start[word], start[word + 1]):
        r, c, a = _step(p, prow, pchoice, parity)
        if a == 2:
            for q in range(nc):
                v = syn0[ctx[q]]
                f = np.float32(0.0)
                for k in range(dim):
                    f += v[k] * syn1[r, k]
                s, dll = table_decision(f, c, sig, logsig)
                ll += dll
                G[q, 0] = np.float32((c - s) * lr)
            for q in range(nc):  # gradients w.r.t. the contexts use the rows before the update
                g = G[q, 0]
                if g != 0.0:
                    for k in range(dim):
                        E[q, k] += g * syn1[r, k]
            for q in range(nc):
                g = G[q, 0]
                if g != 0.0:
                    v = syn0[ctx[q]]
                    for k in range(dim):
                        syn1[r, k] += g * v[k]
        else:
            for q in range(nc):
                lse = kary_scores(syn0[ctx[q]], syn1, r, a, scores, np.float32(0.0))
                ll += scores[c] - lse
                for j in range(a):
                    G[q, j] = np.float32(kary_coef(j, c, scores[j], lse) * lr)
            for q in range(nc):
                for j in range(a):
                    g = G[q, j]
                    for k in range(dim):
                        E[q, k] += g * syn1[r + j, k]
            for q in range(nc):
                v = syn0[ctx[q]]
                for j in range(a):
                    g = G[q, j]
                    for k in range(dim):
                        syn1[r + j, k] += g * v[k]
    return ll


@njit(**JIT)
def next_random(state):
    """word2vec.c's linear congruential generator (``uint64``): the trainers' one random stream."""
    return state * _LCG_MUL + _LCG_ADD


@njit(**JIT)
def train_chunk(chunk, model, paths, tables, schedule, scratch):
    """Train on every sentence of ``chunk`` (:class:`Chunk`), updating ``model.syn0`` and
    ``model.syn1`` in place (:class:`Model`) along :class:`Paths`, with :class:`Tables`, the
    :class:`Schedule` and this thread's :class:`Scratch`. Returns :class:`ChunkStats`."""
    ids, offsets = chunk.ids, chunk.offsets
    syn0, syn1, sg, window = model.syn0, model.syn1, model.sg, model.window
    alpha, min_alpha = schedule.alpha, schedule.min_alpha
    keep, sent, h, e, E, ctx = tables.keep, scratch.sent, scratch.h, scratch.e, scratch.E, scratch.ctx
    dim = syn0.shape[1]
    state = next_random(np.uint64(schedule.seed) ^ np.uint64(0x9E3779B97F4A7C15))
    words = 0
    trained = 0
    ll = 0.0
    npred = 0
    for s in range(offsets.size - 1):
        progress = (schedule.words_before + words) / schedule.total_words
        lr = max(min_alpha, alpha - (alpha - min_alpha) * progress)
        n = 0
        for t in range(offsets[s], offsets[s + 1]):
            w = ids[t]
            state = next_random(state)
            if np.uint32(state >> np.uint64(32)) < keep[w]:
                sent[n] = w
                n += 1
        words += offsets[s + 1] - offsets[s]
        trained += n
        for i in range(n):
            state = next_random(state)
            b = int((state >> np.uint64(33)) % np.uint64(window))
            lo = max(0, i - window + b)
            hi = min(n, i + window - b + 1)
            if sg:
                nc = 0
                for j in range(lo, hi):
                    if j != i:
                        ctx[nc] = sent[j]
                        nc += 1
                if nc == 0:
                    continue
                E[:nc] = 0.0
                ll += _hs_step_many(syn0, syn1, nc, sent[i], paths, lr, tables, scratch)
                npred += nc
                for q in range(nc):
                    v = syn0[ctx[q]]
                    for k in range(dim):
                        v[k] += E[q, k]
            else:
                cw = hi - lo - 1
                if cw == 0:
                    continue
                h[:] = 0.0
                for j in range(lo, hi):
                    if j != i:
                        v = syn0[sent[j]]
                        for k in range(dim):
                            h[k] += v[k]
                inv = np.float32(1.0 / cw)
                for k in range(dim):
                    h[k] *= inv
                e[:] = 0.0
                ll += hs_step(syn1, sent[i], paths, lr, tables, scratch)
                npred += 1
                for j in range(lo, hi):
                    if j != i:
                        v = syn0[sent[j]]
                        for k in range(dim):
                            v[k] += e[k]
    return ChunkStats(words, trained, ll, npred)


@njit(inline="always", **JIT)
def path_logprob(h, syn1, word, paths, scores):
    """Exact ``log p(word | h)`` in float64: ``h`` is float64 (so every product is exact), the
    binary decisions use the exact log-sigmoid (no table, no saturation) and the k-ary ones an
    exact log-softmax, as the torch layer computes them. ``scores``: float64 scratch of the
    largest arity."""
    start, prow, pchoice, parity = paths
    ll = 0.0
    for p in range(start[word], start[word + 1]):
        r, c, a = _step(p, prow, pchoice, parity)
        if a == 2:
            f = dot(h, syn1[r])
            ll += log_sigmoid_and_grad(f if c == 1 else -f)[0]
        else:
            lse = kary_scores(h, syn1, r, a, scores, 0.0)  # fills scores[:a] first
            ll += scores[c] - lse
    return ll


@njit(inline="always", **JIT)
def _max_arity(paths):
    if paths.arity.size == 0:
        return 2
    return max(2, paths.arity.max())


@njit(**JIT)
def word_loglik(chunk, model, paths):
    """Mean exact log-likelihood (:func:`path_logprob`) of the CBOW/skip-gram predictions over
    the sentences of ``chunk``, with the full window and no subsampling or update (an evaluation,
    e.g. to check training helps). Contexts are summed in float64."""
    ids, offsets = chunk.ids, chunk.offsets
    syn0, syn1, window = model.syn0, model.syn1, model.window
    dim = syn0.shape[1]
    h = np.zeros(dim)
    scores = np.zeros(_max_arity(paths))
    total = 0.0
    count = 0
    for s in range(offsets.size - 1):
        a, b = offsets[s], offsets[s + 1]
        for i in range(a, b):
            lo = max(a, i - window)
            hi = min(b, i + window + 1)
            if model.sg:
                for j in range(lo, hi):
                    if j != i:
                        for k in range(dim):
                            h[k] = syn0[ids[j], k]
                        total += path_logprob(h, syn1, ids[i], paths, scores)
                        count += 1
            elif hi - lo > 1:
                h[:] = 0.0
                for j in range(lo, hi):
                    if j != i:
                        for k in range(dim):
                            h[k] += syn0[ids[j], k]
                for k in range(dim):
                    h[k] /= hi - lo - 1
                total += path_logprob(h, syn1, ids[i], paths, scores)
                count += 1
    return total / max(count, 1)


@njit(**JIT)
def word_logprobs(H, syn1, paths, words):
    """``log p(words[i] | H[i])`` for each row of float64 ``H`` (:func:`path_logprob`): the
    evaluator's exact per-word score, e.g. to compare ``syn1`` with the torch layer."""
    out = np.empty(words.size)
    scores = np.zeros(_max_arity(paths))
    for i in range(words.size):
        out[i] = path_logprob(H[i], syn1, words[i], paths, scores)
    return out

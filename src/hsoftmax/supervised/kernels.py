"""numba kernels of the supervised classifier: CBOW whose target is the label.

Only what is supervised-specific lives here: a line's input rows (its words and hashed word
n-grams) averaged into the hidden vector, one of its labels as the target, and fastText's
gradient normalisation (the hidden vector's gradient divided by the number of input rows before
it is added to each of them). The decisions along the label's path, their table sigmoid and their
updates are the word2vec trainer's :func:`hsoftmax.word2vec.kernels.hs_step`, over the same
:class:`~hsoftmax.word2vec.kernels.Paths` and :class:`~hsoftmax.word2vec.kernels.Tables`, so the
node math exists once (:mod:`hsoftmax.kernels.node`).

Threads run :func:`train_lines` concurrently (``nogil``) on different ranges of lines, updating
the shared tables without locks (Hogwild), as fastText and the word2vec trainer do.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit, prange

from ..kernels import plt
from ..kernels.node import JIT, PARALLEL
from ..word2vec.kernels import hs_step, next_random, private_array

__all__ = [
    "Model",
    "Schedule",
    "Scratch",
    "new_scratch",
    "train_lines",
    "train_lines_plt",
    "hidden",
    "uniform_fill",
    "all_finite",
    "fasttext_huffman",
]

_BLOCK_ROWS = 4096  # rows per random stream of uniform_fill


class Model(NamedTuple):
    """What is trained."""

    syn0: np.ndarray  #: ``(num_words + bucket, dim)`` float32 input rows
    syn1: np.ndarray  #: ``(tree.num_params, dim)`` float32 node rows


class Schedule(NamedTuple):
    """fastText's learning rate: ``lr * (1 - tokens done / total_tokens)``, where line ``i`` of
    the epoch starts ``tokens_before + examples.tokens[i]`` tokens into the run."""

    lr: float
    tokens_before: int
    total_tokens: int
    seed: np.uint64  #: this range's random stream (which label of a multi-label line)


class Scratch(NamedTuple):
    """One thread's buffers, the fields :func:`~hsoftmax.word2vec.kernels.hs_step` reads."""

    h: np.ndarray  #: ``(dim,)`` float32 hidden vector
    e: np.ndarray  #: ``(dim,)`` float32 its gradient (times the learning rate)
    scores: np.ndarray  #: float64, the largest arity: a k-ary node's scores


def new_scratch(dim: int, max_arity: int) -> Scratch:
    """One thread's :class:`Scratch`, each buffer on cache lines of its own (no false sharing).

    >>> s = new_scratch(8, 3)
    >>> s.h.shape, s.e.dtype.name, s.scores.shape
    ((8,), 'float32', (3,))
    """
    return Scratch(
        private_array((dim,), np.float32),
        private_array((dim,), np.float32),
        private_array((max(int(max_arity), 2),), np.float64),
    )


@njit(**JIT)
def train_lines(examples, lo, hi, model, paths, tables, schedule, scratch):
    """One SGD step per line ``lo <= i < hi`` of ``examples``
    (:class:`~hsoftmax.supervised.data.Examples`) that has input rows and a label: the mean of
    its rows predicts one of its labels (drawn uniformly when there are several, as fastText's
    ``-loss hs``). Returns ``(summed log-likelihood, lines trained)``."""
    rows, roff, labels, loff, tokens = examples
    syn0, syn1 = model.syn0, model.syn1
    h, e = scratch.h, scratch.e
    dim = syn0.shape[1]
    lr0 = schedule.lr
    before, total = schedule.tokens_before, schedule.total_tokens
    state = next_random(np.uint64(schedule.seed) ^ np.uint64(0x9E3779B97F4A7C15))
    ll = 0.0
    trained = 0
    for i in range(lo, hi):
        a, b = roff[i], roff[i + 1]
        nl = loff[i + 1] - loff[i]
        if b == a or nl == 0:
            continue
        lr = lr0 * (1.0 - (before + tokens[i]) / total)
        target = labels[loff[i]]
        if nl > 1:
            state = next_random(state)
            target = labels[loff[i] + int((state >> np.uint64(33)) % np.uint64(nl))]
        h[:] = 0.0
        for r in range(a, b):
            v = syn0[rows[r]]
            for k in range(dim):
                h[k] += v[k]
        inv = np.float32(1.0 / (b - a))
        for k in range(dim):
            h[k] *= inv
        e[:] = 0.0
        ll += hs_step(syn1, target, paths, lr, tables, scratch)
        trained += 1
        for k in range(dim):  # fastText's normalised gradient: each row gets e / (rows)
            e[k] *= inv
        for r in range(a, b):
            v = syn0[rows[r]]
            for k in range(dim):
                v[k] += e[k]
    return ll, trained


@njit(**JIT)
def train_lines_plt(examples, labels, lo, hi, model, layout, plt_scratch, schedule, scratch):
    """The multi-label twin of :func:`train_lines`: the mean of a line's rows is the input of a
    probabilistic label tree over *all* its labels (``labels``: ``examples.labels`` as int64),
    one step of :func:`hsoftmax.kernels.plt.example_step` (its node targets and fastText's
    binary logistic at each; no bias), the input gradient normalised as fastText does. Lines
    without a label are skipped, as fastText skips them. Returns ``(summed loss, lines)``."""
    rows, roff, loff = examples.rows, examples.row_offsets, examples.label_offsets
    tokens = examples.tokens
    syn0, W = model.syn0, model.syn1
    no_bias = np.zeros(0, dtype=np.float32)
    h, e = scratch.h, scratch.e
    dim = syn0.shape[1]
    lr0 = schedule.lr
    before, total = schedule.tokens_before, schedule.total_tokens
    loss = 0.0
    trained = 0
    for i in range(lo, hi):
        a, b = roff[i], roff[i + 1]
        if b == a or loff[i + 1] == loff[i]:
            continue
        lr = np.float32(lr0 * (1.0 - (before + tokens[i]) / total))
        h[:] = 0.0
        for r in range(a, b):
            v = syn0[rows[r]]
            for k in range(dim):
                h[k] += v[k]
        inv = np.float32(1.0 / (b - a))
        for k in range(dim):
            h[k] *= inv
        e[:] = 0.0
        loss += plt.example_step(W, no_bias, h, labels[loff[i] : loff[i + 1]], layout, plt_scratch, lr, e)
        trained += 1
        for k in range(dim):
            e[k] *= inv
        for r in range(a, b):
            v = syn0[rows[r]]
            for k in range(dim):
                v[k] += e[k]
    return loss, trained


@njit(**JIT)
def hidden(examples, syn0, out):
    """``out[i]``: line ``i``'s mean input row in float64 (zeros when it has none)."""
    rows, roff = examples.rows, examples.row_offsets
    dim = syn0.shape[1]
    for i in range(roff.size - 1):
        a, b = roff[i], roff[i + 1]
        for k in range(dim):
            out[i, k] = 0.0
        for r in range(a, b):
            for k in range(dim):
                out[i, k] += syn0[rows[r], k]
        if b > a:
            for k in range(dim):
                out[i, k] /= b - a


@njit(**JIT)
def fasttext_huffman(counts):
    """fastText's Huffman tree over ``counts`` sorted in decreasing order: ``(child_offset,
    children)`` for :class:`hsoftmax.Tree` (root = node 0; each node's children are fastText's
    ``(left, right)``, codes 0 and 1).

    The classic two-queue merge, with fastText's tie-breaking: when the next leaf and the next
    merged node weigh the same, the merged node goes first. It has the same expected code length
    as :meth:`Tree.huffman <hsoftmax.Tree.huffman>` (both are optimal) but, with the many ties of
    rare labels, a different shape, and measured better: on WordNet glosses -> hypernym (7,319
    labels) P@1 0.113 against 0.106 with ties broken by class index.
    """
    V = counts.size
    M = 2 * V - 1
    weight = np.full(M, 1e300)
    weight[:V] = counts
    left = np.zeros(M, dtype=np.int64)
    right = np.zeros(M, dtype=np.int64)
    leaf = V - 1
    node = V
    for i in range(V, M):
        pick = np.zeros(2, dtype=np.int64)
        for j in range(2):
            if leaf >= 0 and weight[leaf] < weight[node]:
                pick[j] = leaf
                leaf -= 1
            else:
                pick[j] = node
                node += 1
        left[i], right[i] = pick[0], pick[1]
        weight[i] = weight[pick[0]] + weight[pick[1]]
    # fastText's node i (V <= i < M, root M - 1) is our node M - 1 - i (root 0); a ref to a node
    # is V + its id
    N = V - 1
    child_offset = np.arange(N + 1, dtype=np.int64) * 2
    children = np.empty(2 * N, dtype=np.int64)
    for n in range(N):
        i = M - 1 - n
        for q, c in enumerate((left[i], right[i])):
            children[2 * n + q] = c if c < V else V + (M - 1 - c)
    return child_offset, children


@njit(**PARALLEL)
def uniform_fill(out, scale, seed):
    """Fill the 2-d float32 ``out`` with uniform values in ``[-scale, scale)``, in parallel:
    fastText's initialisation of its input rows, without numpy's temporaries (a 2M-bucket table
    is 800 MB). Each block of rows has its own stream seeded from ``(seed, block)``, so the
    result does not depend on the number of threads."""
    rows, dim = out.shape
    blocks = (rows + _BLOCK_ROWS - 1) // _BLOCK_ROWS
    for blk in prange(blocks):
        state = next_random(np.uint64(seed) ^ (np.uint64(blk) * np.uint64(0x9E3779B97F4A7C15)))
        state = next_random(state)
        for r in range(blk * _BLOCK_ROWS, min(rows, (blk + 1) * _BLOCK_ROWS)):
            for k in range(dim):
                state = next_random(state)
                u = np.float32((state >> np.uint64(40)) * (1.0 / 16777216.0))  # 24 bits: [0, 1)
                out[r, k] = np.float32(scale * (2.0 * u - 1.0))


@njit(**PARALLEL)
def all_finite(a):
    """Whether every value of the 2-d ``a`` is finite (no temporary boolean array)."""
    bad = 0
    for r in prange(a.shape[0]):
        for k in range(a.shape[1]):
            if not np.isfinite(a[r, k]):
                bad += 1
                break
    return bad == 0

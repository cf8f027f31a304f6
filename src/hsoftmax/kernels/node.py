r"""The node math of hierarchical softmax, once, for every numba kernel.

A decision at an internal node with ``k`` children is a softmax over the children's scores:

* ``k == 1``: the child is taken with probability 1 (no parameters);
* ``k == 2``: one row ``r`` scores child 1 with :math:`s = W_r \cdot h (+ b_r)` and child 0 with
  a fixed 0, so :math:`\log p(c_1) = \log\sigma(s)` and :math:`\log p(c_0) = \log\sigma(-s)`
  (word2vec's node);
* ``k > 2``: rows ``r..r+k-1`` score the children; :math:`\log p(c_j) = s_j - \operatorname{lse}(s)`.

The layer kernels (:mod:`hsoftmax.kernels.numba_cpu`) and the word2vec/supervised trainers
(:mod:`hsoftmax.word2vec.kernels`) call these helpers instead of writing the formulas again; the
torch twin is :func:`hsoftmax.functional.child_log_probs`.

Every helper is ``inline="always"``: numba pastes it into the caller's loop, so there is no
call overhead on the hot path.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = [
    "FASTMATH",
    "JIT",
    "PARALLEL",
    "SIGMOID_RANGE",
    "TABLE_SIZE",
    "sigmoid_tables",
    "dot",
    "log_sigmoid_and_grad",
    "log_sigmoid_pair",
    "log_sum_exp",
    "kary_scores",
    "kary_coef",
    "table_decision",
]

#: The one fastmath policy of every numba kernel in the package. Reassociation and contraction
#: let dot products vectorize (and ``nsz``/``arcp`` cost nothing here); ``nnan``/``ninf`` are
#: deliberately *not* granted: ``-inf`` is a meaningful log-probability (an impossible class, a
#: saturated decision, the max of an empty set in a log-sum-exp), and with ``ninf`` LLVM may fold
#: ``x == -inf`` to false or ``max(x, -inf)`` to ``x``, so the same score would give ``-inf`` in
#: one kernel and NaN in another. ``afn`` is left out too, so ``exp``/``log1p`` are the libm ones
#: the float64 tests compare against.
FASTMATH = frozenset({"reassoc", "contract", "nsz", "arcp"})
#: Keyword arguments of a sequential kernel: releases the GIL (word2vec's Hogwild threads, the
#: torch autograd engine's threads), cached on disk (compiling costs seconds).
JIT = dict(nogil=True, cache=True, fastmath=set(FASTMATH))
#: The same for a kernel with a ``prange`` loop.
PARALLEL = dict(JIT, parallel=True)

#: Inside +-SIGMOID_RANGE the trainers' sigmoid comes from a table; beyond, it saturates to 0 or
#: 1, so a confidently right decision costs no update (as in word2vec.c).
SIGMOID_RANGE = 6.0
TABLE_SIZE = 4096


def sigmoid_tables() -> tuple[np.ndarray, np.ndarray]:
    """``(sigmoid, log_sigmoid)`` sampled at the centres of ``TABLE_SIZE`` bins on
    ``[-SIGMOID_RANGE, SIGMOID_RANGE]``, for :func:`table_decision`.

    >>> sig, logsig = sigmoid_tables()
    >>> sig.shape, sig.dtype.name, bool(abs(sig[TABLE_SIZE // 2] - 0.5) < 1e-3)
    ((4096,), 'float32', True)
    """
    x = (np.arange(TABLE_SIZE) + 0.5) / TABLE_SIZE * 2 * SIGMOID_RANGE - SIGMOID_RANGE
    return (1.0 / (1.0 + np.exp(-x))).astype(np.float32), (-np.logaddexp(0.0, -x)).astype(np.float32)


@njit(inline="always", **JIT)
def dot(w, x):
    """``w . x`` for 1-d arrays of equal length >= 1, in their own dtype."""
    s = w[0] * x[0]
    for k in range(1, w.shape[0]):
        s += w[k] * x[k]
    return s


@njit(inline="always", **JIT)
def log_sigmoid_and_grad(z):
    """``(log sigmoid(z), sigmoid(-z))``, exact and stable for any sign of ``z``: the log-prob of a
    binary decision whose signed score is ``z`` and its derivative with respect to ``z``."""
    if z >= 0:
        e = np.exp(-z)
        return -np.log1p(e), e / (1.0 + e)
    e = np.exp(z)
    return z - np.log1p(e), 1.0 / (1.0 + e)


@njit(inline="always", **JIT)
def log_sigmoid_pair(s, sp):
    """``(log p(child 1), log p(child 0)) = (log sigmoid(s), log sigmoid(-s))`` given
    ``sp = log1p(exp(-|s|))`` (computed beforehand, vectorized): one subtraction each."""
    l1 = min(s, 0.0) - sp
    return l1, l1 - s


@njit(inline="always", **JIT)
def log_sum_exp(scores, lo, k):
    """Stable ``log(sum(exp(scores[lo:lo + k])))`` for ``k >= 1``."""
    m = scores[lo]
    for r in range(lo + 1, lo + k):
        if scores[r] > m:
            m = scores[r]
    if m == -np.inf:
        return m
    z = 0.0
    for r in range(lo, lo + k):
        z += np.exp(scores[r] - m)
    return m + np.log(z)


@njit(inline="always", **JIT)
def kary_scores(x, W, r, k, scores, zero):
    """Scores of a k-ary node's rows ``W[r:r + k]`` against ``x`` into ``scores[:k]``; returns
    their log-sum-exp, so ``scores[j] - lse`` is ``log p(child j)``. The dot products accumulate
    in ``zero``'s type (float32 in training, float64 in exact evaluation)."""
    for j in range(k):
        f = zero
        row = W[r + j]
        for q in range(x.shape[0]):
            f += x[q] * row[q]
        scores[j] = f
    return log_sum_exp(scores, 0, k)


@njit(inline="always", **JIT)
def kary_coef(j, c, score_j, lse):
    """``d log p(child c) / d score_j`` at a k-ary node: ``[j == c] - softmax_j``."""
    return (1.0 if j == c else 0.0) - np.exp(score_j - lse)


@njit(inline="always", **JIT)
def table_decision(f, c, sig, logsig):
    """The trainers' binary decision: ``(sigmoid(f), log p(choice c))`` for score ``f``, from
    :func:`sigmoid_tables` inside +-SIGMOID_RANGE and saturated beyond it (where the
    log-probability is exactly 0 or the score itself)."""
    if f >= SIGMOID_RANGE:
        return np.float32(1.0), float(0.0 if c == 1 else -f)
    if f <= -SIGMOID_RANGE:
        return np.float32(0.0), float(f if c == 1 else 0.0)
    i = int((f + SIGMOID_RANGE) * (TABLE_SIZE / (2.0 * SIGMOID_RANGE)))
    # log(1 - sigmoid(f)) = log sigmoid(f) - f
    return np.float32(sig[i]), float(logsig[i] if c == 1 else logsig[i] - f)

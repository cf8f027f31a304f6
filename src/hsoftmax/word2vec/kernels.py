"""numba kernels: one call trains CBOW or skip-gram with hierarchical softmax on a chunk of sentences.

Threads run :func:`train_chunk` concurrently (``nogil``) on different chunks and update the shared
``syn0`` (input vectors) and ``syn1`` (tree node rows) without locks, as word2vec.c and gensim do
("Hogwild"): collisions are rare and harmless for sparse updates like these.

The tree reaches the kernel as flat per-word paths built by :func:`flat_paths` from
:class:`hsoftmax.Tree`'s decision arrays, using the library's parametrization so the weights are
interchangeable with the torch layer: a binary node has one row ``r`` and
``p(child 1) = sigmoid(syn1[r] . h)``; a node with ``k > 2`` children has ``k`` rows and a softmax
over them.

Everything a thread writes besides the shared tables lives in its own scratch buffers, passed in,
so the kernel allocates nothing.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["flat_paths", "sigmoid_tables", "train_chunk", "SIGMOID_RANGE"]

#: Inside +-SIGMOID_RANGE the sigmoid comes from a table; beyond, it saturates to 0 or 1, so a
#: confidently right decision costs no update (as in word2vec.c) and a confidently wrong one gets
#: the full gradient (word2vec.c skips those too).
SIGMOID_RANGE = 6.0
_TABLE_SIZE = 4096
_LCG_MUL = np.uint64(6364136223846793005)
_LCG_ADD = np.uint64(1442695040888963407)


def sigmoid_tables() -> tuple[np.ndarray, np.ndarray]:
    """``(sigmoid, log_sigmoid)`` sampled at the centres of ``_TABLE_SIZE`` bins on
    ``[-SIGMOID_RANGE, SIGMOID_RANGE]``: a lookup replaces ``exp`` in the hot loop."""
    x = (np.arange(_TABLE_SIZE) + 0.5) / _TABLE_SIZE * 2 * SIGMOID_RANGE - SIGMOID_RANGE
    return (1.0 / (1.0 + np.exp(-x))).astype(np.float32), (-np.logaddexp(0.0, -x)).astype(np.float32)


def flat_paths(tree, classes=None, packed=False) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
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
        ``start`` ``(V + 1,)`` int64: word ``w``'s steps are ``start[w]:start[w+1]``;
        ``row`` int32: first ``syn1`` row of each step's node;
        ``choice`` int32: child taken (for a binary node: the sigmoid's target, 1 or 0);
        ``arity`` int32: children of the node (2 on the fast path). (int8 would save memory but
        made the CBOW kernel 18% slower, measured.)

    >>> from hsoftmax.tree import Tree
    >>> start, row, choice, arity = flat_paths(Tree.huffman([4, 2, 1, 1]))
    >>> start.tolist(), arity.tolist()
    ([0, 1, 3, 6, 9], [2, 2, 2, 2, 2, 2, 2, 2, 2])
    >>> _, row, choice, _ = flat_paths(Tree.huffman([4, 2, 1, 1]))
    >>> _, code, no_choice, no_arity = flat_paths(Tree.huffman([4, 2, 1, 1]), packed=True)
    >>> bool((code == 2 * row + choice).all()), no_choice.size, no_arity.size
    (True, 0, 0)
    """
    cls = np.arange(tree.num_classes) if classes is None else np.asarray(classes, dtype=np.int64)
    lengths = np.asarray(tree.decision_lengths, dtype=np.int64)[cls]
    start = np.zeros(lengths.size + 1, dtype=np.int64)
    np.cumsum(lengths, out=start[1:])
    packed = bool(packed) and int(np.max(tree.arity)) <= 2 and tree.num_params < 2**30
    row = np.empty(int(start[-1]), dtype=np.int32)
    choice = np.empty(0 if packed else row.size, dtype=np.int32)
    arity = np.empty(0 if packed else row.size, dtype=np.int32)
    _walk_paths(cls, start, tree.num_classes, np.asarray(tree.parent), np.asarray(tree.choice),
                np.asarray(tree.arity), np.asarray(tree.param_offset), np.asarray(tree._node_decisions),
                packed, row, choice, arity)
    return start, row, choice, arity


@numba.njit(nogil=True, cache=True)
def _walk_paths(cls, start, V, parent, choice_of, arity_of, param_offset, node_dec, packed, row, choice, arity):
    # A deciding node (two or more children) lands at its word's start + the decisions above it,
    # so the walk up from the leaf writes the path root first.
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


@numba.njit(nogil=True, cache=True, inline="always")
def _step(p, prow, pchoice, parity):
    """``(row, choice, arity)`` of path step ``p``, from :func:`flat_paths`'s packed or plain
    arrays (the test is the same for every step, so the compiler lifts it out of the loop)."""
    if parity.size == 0:
        code = prow[p]
        return code >> 1, code & 1, 2
    return prow[p], pchoice[p], parity[p]


@numba.njit(nogil=True, cache=True, fastmath=True, inline="always")
def _binary_decision(f, c, sig, logsig):
    """``(sigmoid(f), log p(choice c))`` for a binary node's score ``f``: from the tables inside
    +-SIGMOID_RANGE, saturated beyond it (where the log-probability is exactly 0 or the score)."""
    if f >= SIGMOID_RANGE:
        return np.float32(1.0), float(0.0 if c == 1 else -f)
    if f <= -SIGMOID_RANGE:
        return np.float32(0.0), float(f if c == 1 else 0.0)
    i = int((f + SIGMOID_RANGE) * (_TABLE_SIZE / (2.0 * SIGMOID_RANGE)))
    # log(1 - sigmoid(f)) = log sigmoid(f) - f
    return np.float32(sig[i]), float(logsig[i] if c == 1 else logsig[i] - f)


@numba.njit(nogil=True, cache=True, fastmath=True, inline="always")
def _kary_scores(v, syn1, r, a, scores, zero):
    """Scores of a k-ary node's ``a`` rows (from ``r``) against ``v`` into ``scores[:a]``;
    returns their log-sum-exp, so ``scores[j] - lz`` is ``log p(child j)``. The dot products
    accumulate in ``zero``'s type: float32 in training, float64 in the exact evaluation."""
    m = -np.inf
    for j in range(a):
        f = zero
        for k in range(v.shape[0]):
            f += v[k] * syn1[r + j, k]
        scores[j] = f
        m = max(m, f)
    z = 0.0
    for j in range(a):
        z += np.exp(scores[j] - m)
    return m + np.log(z)


@numba.njit(nogil=True, cache=True, fastmath=True, inline="always")
def _hs_step(h, e, syn1, word, pstart, prow, pchoice, parity, lr, sig, logsig, scores):
    """Score ``word`` from hidden ``h`` along its path: add ``lr * dlogp/dh`` into ``e`` and update
    the path's ``syn1`` rows. Returns ``log p(word | h)``."""
    dim = h.shape[0]
    ll = 0.0
    for p in range(pstart[word], pstart[word + 1]):
        r, c, a = _step(p, prow, pchoice, parity)
        if a == 2:  # the common case: one row, a sigmoid
            f = np.float32(0.0)
            for k in range(dim):
                f += h[k] * syn1[r, k]
            s, dll = _binary_decision(f, c, sig, logsig)
            ll += dll
            g = np.float32((c - s) * lr)
            if g != 0.0:
                for k in range(dim):
                    e[k] += g * syn1[r, k]
                    syn1[r, k] += g * h[k]
        else:  # k-ary node: softmax over its k rows
            lz = _kary_scores(h, syn1, r, a, scores, np.float32(0.0))
            ll += scores[c] - lz
            for j in range(a):
                g = np.float32(((1.0 if j == c else 0.0) - np.exp(scores[j] - lz)) * lr)
                for k in range(dim):
                    e[k] += g * syn1[r + j, k]
                    syn1[r + j, k] += g * h[k]
    return ll


@numba.njit(nogil=True, cache=True, fastmath=True, inline="always")
def _hs_step_many(syn0, ctx, nc, E, G, syn1, word, pstart, prow, pchoice, parity, lr, sig, logsig, scores):
    """Skip-gram: every context word ``syn0[ctx[q]]`` (``q < nc``) predicts the same centre
    ``word``, so its path is walked once for the whole window: each node's rows are read once and
    take the summed update of all contexts (a minibatch of the window) while they sit in cache.
    ``E[q]`` accumulates ``lr * dlogp/dh`` for context ``q``. Returns the summed log-likelihood."""
    dim = syn0.shape[1]
    ll = 0.0
    for p in range(pstart[word], pstart[word + 1]):
        r, c, a = _step(p, prow, pchoice, parity)
        if a == 2:
            for q in range(nc):
                v = syn0[ctx[q]]
                f = np.float32(0.0)
                for k in range(dim):
                    f += v[k] * syn1[r, k]
                s, dll = _binary_decision(f, c, sig, logsig)
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
                v = syn0[ctx[q]]
                lz = _kary_scores(v, syn1, r, a, scores, np.float32(0.0))
                ll += scores[c] - lz
                for j in range(a):
                    G[q, j] = np.float32(((1.0 if j == c else 0.0) - np.exp(scores[j] - lz)) * lr)
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


@numba.njit(nogil=True, cache=True)
def _next(state):
    return state * _LCG_MUL + _LCG_ADD


@numba.njit(nogil=True, cache=True, fastmath=True)
def train_chunk(ids, offsets, s_lo, s_hi, syn0, syn1, pstart, prow, pchoice, parity, keep,
                sg, window, alpha, min_alpha, words_before, total_words, seed,
                sig, logsig, sent, h, e, scores, ctx, E, G):
    """Train on sentences ``s_lo:s_hi`` of an encoded corpus.

    Args:
        ids: ``(N,)`` int32 word ids; offsets: ``(S + 1,)`` int64 sentence bounds.
        syn0: ``(V, dim)`` float32 input vectors; syn1: ``(num_params, dim)`` float32 node rows.
        pstart, prow, pchoice, parity: the tree, from :func:`flat_paths` (plain or packed).
        keep: ``(V,)`` uint32: keep an occurrence when a uniform 32-bit draw is below it.
        sg: skip-gram if true, else CBOW (mean of the context).
        alpha, min_alpha: learning rate at progress 0, floor at progress 1; it decays linearly
            with ``(words_before + words done here) / total_words``.
        seed: uint64 seed of this chunk's random stream (subsampling, window sizes).
        sig, logsig: tables from :func:`sigmoid_tables`.
        sent: int32 scratch of at least the longest sentence; h, e: ``(dim,)`` float32 scratch;
            scores: float64 scratch of the largest arity; ctx: ``(2 * window,)`` int32,
            E: ``(2 * window, dim)`` float32 and G: ``(2 * window, max arity)`` float32 scratch
            for skip-gram's window-at-once step.

    Returns:
        ``(words, trained, loglik, predictions)``: corpus words read, words kept after
        subsampling, summed log-likelihood of the predictions and their number.
    """
    dim = syn0.shape[1]
    state = _next(np.uint64(seed) ^ np.uint64(0x9E3779B97F4A7C15))
    words = 0
    trained = 0
    ll = 0.0
    npred = 0
    for s in range(s_lo, s_hi):
        progress = (words_before + words) / total_words
        lr = max(min_alpha, alpha - (alpha - min_alpha) * progress)
        n = 0
        for t in range(offsets[s], offsets[s + 1]):
            w = ids[t]
            state = _next(state)
            if np.uint32(state >> np.uint64(32)) < keep[w]:
                sent[n] = w
                n += 1
        words += offsets[s + 1] - offsets[s]
        trained += n
        for i in range(n):
            state = _next(state)
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
                ll += _hs_step_many(syn0, ctx, nc, E, G, syn1, sent[i], pstart, prow, pchoice, parity,
                                    lr, sig, logsig, scores)
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
                ll += _hs_step(h, e, syn1, sent[i], pstart, prow, pchoice, parity, lr, sig, logsig, scores)
                npred += 1
                for j in range(lo, hi):
                    if j != i:
                        v = syn0[sent[j]]
                        for k in range(dim):
                            v[k] += e[k]
    return words, trained, ll, npred


@numba.njit(nogil=True, cache=True, fastmath=True)
def word_loglik(ids, offsets, s_lo, s_hi, syn0, syn1, pstart, prow, pchoice, parity, sg, window, h, scores):
    """Mean log-likelihood of the CBOW/skip-gram predictions over sentences ``s_lo:s_hi`` with the
    full window and no subsampling or update (an evaluation, e.g. to check training helps).
    Uses exact log-sigmoids."""
    dim = syn0.shape[1]
    total = 0.0
    count = 0
    for s in range(s_lo, s_hi):
        a, b = offsets[s], offsets[s + 1]
        for i in range(a, b):
            lo = max(a, i - window)
            hi = min(b, i + window + 1)
            if sg:
                for j in range(lo, hi):
                    if j != i:
                        total += _path_loglik(syn0[ids[j]], syn1, ids[i], pstart, prow, pchoice, parity, scores)
                        count += 1
            elif hi - lo > 1:
                h[:] = 0.0
                for j in range(lo, hi):
                    if j != i:
                        for k in range(dim):
                            h[k] += syn0[ids[j], k]
                for k in range(dim):
                    h[k] /= hi - lo - 1
                total += _path_loglik(h, syn1, ids[i], pstart, prow, pchoice, parity, scores)
                count += 1
    return total / max(count, 1)


@numba.njit(nogil=True, cache=True, fastmath=True)
def _path_loglik(h, syn1, word, pstart, prow, pchoice, parity, scores):
    dim = h.shape[0]
    ll = 0.0
    for p in range(pstart[word], pstart[word + 1]):
        r, c, a = _step(p, prow, pchoice, parity)
        if a == 2:
            f = 0.0
            for k in range(dim):
                f += h[k] * syn1[r, k]
            x = f if c == 1 else -f
            ll += -np.log1p(np.exp(-x)) if x > 0 else x - np.log1p(np.exp(x))
        else:
            lz = _kary_scores(h, syn1, r, a, scores, 0.0)  # fills scores[:a] first
            ll += scores[c] - lz
    return ll

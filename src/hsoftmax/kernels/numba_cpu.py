r"""numba CPU kernels for the hot paths of the torch layer (bridged by :mod:`hsoftmax.kernels.autograd`).

They compute exactly the same math as :mod:`hsoftmax.functional`'s torch code (same
parametrization, same normalization, the node math of :mod:`hsoftmax.kernels.node`), but read
every weight row straight from the table instead of gathering ``(B, depth, d)`` copies, and they
produce the node-table gradient already coalesced (unique, sorted rows), so neither the autograd
engine nor the optimizer has to sort or sum duplicate rows.

Conventions: ``h`` is ``(B, d)``; the node table is a :class:`Table` ``(W (P, d), b (P,))`` with
``b`` a length-0 array when the layer has no bias, all of one float dtype (float32 or float64;
each dtype compiles once and is cached on disk). Kernels take the tree and their schedules as a
few named bundles (:class:`Nodes`, :class:`Decisions`, :class:`Paths`, :class:`GroupPlan`,
:class:`EntryInfo`, :class:`Items`; numba passes a NamedTuple of arrays as a plain struct, at no
cost), and the planning kernels return them. Every kernel that writes into an output array
writes all of it, so callers may pass ``np.empty`` buffers.

The fastmath policy is :data:`hsoftmax.kernels.node.FASTMATH` (why: see there).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit, prange

from .node import JIT, PARALLEL, dot, log_sigmoid_and_grad, log_sigmoid_pair, log_sum_exp


# ---------------------------------------------------------------------------- bundles
class Table(NamedTuple):
    """A node table ``W (P, d)``, ``b (P,)`` (length 0: no bias), or its gradient rows."""

    W: np.ndarray
    b: np.ndarray


class Nodes(NamedTuple):
    """The tree's per-node arrays (int64, see :mod:`hsoftmax.tree`): ``arity (N,)``,
    ``param_offset (N+1,)`` (node ``n``'s rows start there), ``child_offset (N+1,)`` and
    ``children (E,)`` (refs: ``< V`` a class, else node ``ref - V``)."""

    arity: np.ndarray
    param_offset: np.ndarray
    child_offset: np.ndarray
    children: np.ndarray


class Decisions(NamedTuple):
    """Each class's root-to-leaf decisions: ``nodes (V, D)`` and ``choices (V, D)`` int32, padded
    past ``lengths (V,)`` int64."""

    nodes: np.ndarray
    choices: np.ndarray
    lengths: np.ndarray


class Paths(NamedTuple):
    """A binary tree's padded paths: ``rows (V, D)`` int32, the table row of each decision, and
    ``signs (V, D)`` int8: +1 (child 1), -1 (child 0), 0 (padding, always at the end of a row)."""

    rows: np.ndarray
    signs: np.ndarray


class NodeScores(NamedTuple):
    """Precomputed node scores ``s`` (bias included) and ``sp = log1p(exp(-|s|))`` (vectorized
    beforehand: a scalar ``exp`` + ``log1p`` per node in the kernel is slower)."""

    s: np.ndarray
    sp: np.ndarray


class RowGroups(NamedTuple):
    """A binary batch's path rows, coalesced: ``rows (U,)`` the distinct rows, sorted; the flat
    path entries ``i * D + j`` that use ``rows[u]`` are ``entries[start[u]:start[u + 1]]``."""

    rows: np.ndarray
    start: np.ndarray
    entries: np.ndarray


class GroupPlan(NamedTuple):
    """A batch's decisions grouped by node (see :func:`group_plan`)."""

    groups: np.ndarray  # (G,) the nodes visited, ascending
    gstart: np.ndarray  # (G+1,) entries[gstart[g]:gstart[g+1]] are the decisions at groups[g]
    entries: np.ndarray  # flat decisions f = i * D + j, in example order within a group
    score_offset: np.ndarray  # (B*D+1,) decision f's node scores are S[score_offset[f]:score_offset[f+1]]
    vstart: np.ndarray  # (G+1,) where each group's rows start in the coalesced gradient


class Items(NamedTuple):
    """Work items and their thread schedule: thread ``t`` runs ``items[perm[tstart[t]:tstart[t+1]]]``."""

    items: np.ndarray  # (n, 3 or 4) int64, see work_items
    perm: np.ndarray
    tstart: np.ndarray


class WorkItems(NamedTuple):
    """The three item lists of a grouped batch (see :func:`work_items`)."""

    forward: Items
    input_grad: Items
    rows: Items


class EntryInfo(NamedTuple):
    """Per grouped entry ``e``: its ``example``, the start of its node scores in S
    (``score_start``), its ``choice``; and ``position[f]``, the entry of flat decision f (-1 if none)."""

    example: np.ndarray
    score_start: np.ndarray
    choice: np.ndarray
    position: np.ndarray


# ---------------------------------------------------------------------------- binary paths
@njit(**PARALLEL)
def binary_forward(h, table, paths, target, out, coef):
    """Sum of ``log sigmoid(sign * (W[r] . h + b[r]))`` along each target's padded path.

    target: ``(B,)`` int64. Writes ``out (B,)`` and ``coef (B, D)``, the derivative of each
    example's log-prob with respect to each path score (0 on padding), kept for backward.
    """
    W, b = table.W, table.b
    rows, signs = paths.rows, paths.signs
    B = h.shape[0]
    D = rows.shape[1]
    has_b = b.shape[0] > 0
    for i in prange(B):
        t = target[i]
        x = h[i]
        acc = 0.0
        for j in range(D):
            sg = signs[t, j]
            if sg == 0:
                coef[i, j] = 0.0
                continue
            r = rows[t, j]
            s = dot(W[r], x)
            if has_b:
                s += b[r]
            ls, sn = log_sigmoid_and_grad(sg * s)
            acc += ls
            coef[i, j] = sg * sn
        out[i] = acc


@njit(**PARALLEL)
def binary_grad_input(go, coef, W, paths, target, gh):
    """``gh[i] = sum_j go[i] * coef[i, j] * W[rows[target[i], j]]``."""
    rows = paths.rows
    B, d = gh.shape
    D = rows.shape[1]
    for i in prange(B):
        t = target[i]
        g = gh[i]
        for k in range(d):
            g[k] = 0.0
        for j in range(D):
            c = coef[i, j] * go[i]
            if c == 0.0:
                continue
            w = W[rows[t, j]]
            for k in range(d):
                g[k] += c * w[k]


@njit(**JIT)
def _group_rows(paths, target, mark):
    """Coalesce the batch's path rows into a :class:`RowGroups`. ``mark`` is a ``(P,)`` int32
    scratch array of -1 that is restored to -1 before returning (so it can be reused without a
    P-sized reset)."""
    rows, signs = paths.rows, paths.signs
    B = target.shape[0]
    D = rows.shape[1]
    n = 0
    uniq = np.empty(B * D, np.int64)
    for i in range(B):
        t = target[i]
        for j in range(D):
            if signs[t, j] == 0:
                break
            r = rows[t, j]
            if mark[r] < 0:
                mark[r] = 0
                uniq[n] = r
                n += 1
    uniq = np.sort(uniq[:n])
    for s in range(n):
        mark[uniq[s]] = s
    start = np.zeros(n + 1, np.int64)
    for i in range(B):
        t = target[i]
        for j in range(D):
            if signs[t, j] == 0:
                break
            start[mark[rows[t, j]] + 1] += 1
    for s in range(n):
        start[s + 1] += start[s]
    fill = start[:-1].copy()
    entries = np.empty(start[n], np.int64)
    for i in range(B):
        t = target[i]
        for j in range(D):
            if signs[t, j] == 0:
                break
            s = mark[rows[t, j]]
            entries[fill[s]] = i * D + j
            fill[s] += 1
    for s in range(n):
        mark[uniq[s]] = -1
    return RowGroups(uniq, start, entries)


@njit(**JIT)
def _binary_rows_range(go, coef, h, rg, perm, grad, table, lr, fused, upd_b):
    uniq, start, entries = rg.rows, rg.start, rg.entries
    gw, gb = grad.W, grad.b
    W, b = table.W, table.b
    D = coef.shape[1]
    d = h.shape[1]
    acc = np.empty(d, h.dtype)
    for q in range(perm.shape[0]):
        s = perm[q]
        a = acc if fused else gw[s]
        for k in range(d):
            a[k] = 0.0
        cb = 0.0
        for e in range(start[s], start[s + 1]):
            f = entries[e]
            i = f // D
            c = coef[i, f - i * D] * go[i]
            cb += c
            x = h[i]
            for k in range(d):
                a[k] += c * x[k]
        if fused:
            w = W[uniq[s]]
            for k in range(d):
                w[k] -= lr * a[k]
            if upd_b:
                b[uniq[s]] -= lr * cb
        elif gb.shape[0] > 0:
            gb[s] = cb


@njit(**PARALLEL)
def _binary_rows(go, coef, h, rg, perm, tstart, grad, table, lr, fused, upd_b):
    """Each row of ``rg``'s gradient into ``grad`` (``fused=False``), or ``table``'s rows updated
    in place by ``-lr *`` it (``fused=True``; the bias too when ``upd_b``). Thread t does the row
    groups ``perm[tstart[t]:tstart[t + 1]]`` (see :func:`balance`)."""
    for t in prange(tstart.shape[0] - 1):
        _binary_rows_range(go, coef, h, rg, perm[tstart[t] : tstart[t + 1]], grad, table, lr, fused, upd_b)


def _row_schedule(rg: RowGroups, threads: int) -> tuple[np.ndarray, np.ndarray]:
    return balance((np.diff(rg.start) + 2).astype(np.float64), threads)


def binary_grad_params(go, coef, h, paths, target, mark, want_bias, alloc=np.empty, threads=1):
    """Coalesced node-table gradient of a binary-path batch.

    Returns ``(uniq (U,) int64 sorted rows, gw (U, d), gb (U,) or None)``: the gradient of
    ``sum_i go[i] * out[i]`` with respect to ``W[uniq]`` and ``b[uniq]``; every other row's
    gradient is zero. ``alloc(shape, dtype)`` allocates ``gw``.
    """
    rg = _group_rows(paths, target, mark)
    gw = alloc((rg.rows.shape[0], h.shape[1]), h.dtype)
    gb = np.empty(rg.rows.shape[0] if want_bias else 0, h.dtype)
    perm, tstart = _row_schedule(rg, threads)
    _binary_rows(go, coef, h, rg, perm, tstart, Table(gw, gb), Table(h[:0], gb), 0.0, False, False)
    return rg.rows, gw, (gb if want_bias else None)


def binary_sgd_params(go, coef, h, paths, target, mark, table, lr, update_w, update_b, threads=1):
    """Plain SGD in place with the gradient :func:`binary_grad_params` would return:
    ``W[r] -= lr * gw`` (if ``update_w``) and ``b[r] -= lr * gb`` (if ``update_b``) for the
    batch's rows, without materializing the gradient. The input gradient, which reads the old
    rows, must be computed before."""
    rg = _group_rows(paths, target, mark)
    perm, tstart = _row_schedule(rg, threads)
    if update_w:
        _binary_rows(go, coef, h, rg, perm, tstart, Table(h[:0], table.b[:0]), table, lr, True, update_b)
    elif update_b:  # bias only: the weight rows are left as they are
        gw = np.empty((rg.rows.shape[0], h.shape[1]), h.dtype)
        gb = np.empty(rg.rows.shape[0], h.dtype)
        _binary_rows(go, coef, h, rg, perm, tstart, Table(gw, gb), Table(h[:0], gb), 0.0, False, False)
        table.b[rg.rows] -= lr * gb


# ---------------------------------------------------------------------------- work balancing
@njit(**JIT)
def balance(cost, T):
    """Deal work items over ``T`` threads, largest first, each to the least loaded thread (LPT).
    Returns ``(perm, tstart)``: thread t runs items ``perm[tstart[t]:tstart[t + 1]]``. numba's
    ``prange`` splits an index range into equal contiguous chunks, which is badly unbalanced when
    item costs vary by orders of magnitude (a two-level tree's clusters do)."""
    n = cost.shape[0]
    order = np.argsort(-cost, kind="mergesort")
    load = np.zeros(T, np.float64)
    owner = np.empty(n, np.int64)
    count = np.zeros(T, np.int64)
    for q in range(n):
        t = 0
        for u in range(1, T):
            if load[u] < load[t]:
                t = u
        load[t] += cost[order[q]]
        owner[order[q]] = t
        count[t] += 1
    tstart = np.zeros(T + 1, np.int64)
    for t in range(T):
        tstart[t + 1] = tstart[t] + count[t]
    fill = tstart[:-1].copy()
    perm = np.empty(n, np.int64)
    for it in range(n):  # keep each thread's items in their original (memory) order
        t = owner[it]
        perm[fill[t]] = it
        fill[t] += 1
    return perm, tstart


# ---------------------------------------------------------------------------- grouped nodes
# Any tree (two-level, k-ary, taxonomies): the batch's decisions are grouped by node, so the rows
# of a node are read once per group of examples that pass through it (a two-level tree's cluster
# block is read once per batch, not once per example). Work is cut into items of at most _CE
# examples (forward, input gradient) or _CR rows (weight gradient) so one wide node, e.g. the root
# that every example visits, still spreads over all cores. A decision is named by its flat index
# f = i * D + j (example i, step j); S holds each decision's node scores at
# S[score_offset[f]:score_offset[f+1]].
_CE = 32
_CR = 8


@njit(**JIT)
def group_plan(decisions, target, arity, mark):
    """Group the decisions of a batch by node: a :class:`GroupPlan`. A group's gradient rows are
    ``param_offset[groups[g]] + 0..`` (its node's block). ``mark`` (N,) int32 scratch of -1,
    restored on return."""
    dn, lengths = decisions.nodes, decisions.lengths
    B = target.shape[0]
    D = dn.shape[1]
    G = 0
    seen = np.empty(B * D, np.int64)
    soff = np.zeros(B * D + 1, np.int64)
    for i in range(B):
        t = target[i]
        for j in range(D):
            f = i * D + j
            if j < lengths[t]:
                n = dn[t, j]
                if mark[n] < 0:
                    mark[n] = 0
                    seen[G] = n
                    G += 1
                k = arity[n]
                soff[f + 1] = 1 if k == 2 else k
    for f in range(B * D):
        soff[f + 1] += soff[f]
    groups = np.sort(seen[:G])
    for g in range(G):
        mark[groups[g]] = g
    gstart = np.zeros(G + 1, np.int64)
    for i in range(B):
        t = target[i]
        for j in range(lengths[t]):
            gstart[mark[dn[t, j]] + 1] += 1
    for g in range(G):
        gstart[g + 1] += gstart[g]
    fill = gstart[:-1].copy()
    entries = np.empty(gstart[G], np.int64)
    for i in range(B):
        t = target[i]
        for j in range(lengths[t]):
            g = mark[dn[t, j]]
            entries[fill[g]] = i * D + j
            fill[g] += 1
    for g in range(G):
        mark[groups[g]] = -1
    vstart = np.zeros(G + 1, np.int64)
    for g in range(G):
        k = arity[groups[g]]
        vstart[g + 1] = vstart[g] + (1 if k == 2 else k)
    return GroupPlan(groups, gstart, entries, soff, vstart)


@njit(**JIT)
def work_items(plan, first, T):
    """The :class:`WorkItems` for groups ``first..G-1`` (``first=1`` leaves group 0, a root done
    with BLAS, out), each list with its thread assignment from :func:`balance`:

    * ``forward.items (n, 3)``: (group, entry lo, entry hi), at most _CE entries;
    * ``input_grad.items (n, 3)``: the same for groups with more than _CE entries only: their
      input gradient, computed before the row pass;
    * ``rows.items (m, 4)``: (group, row lo, row hi, whole): the row pass of the backward. A group
      of at most _CE entries is one item (``whole=1``) that also computes its entries' input
      gradient in the same pass over its rows; a bigger group is cut into _CR-row items
      (``whole=0``)."""
    gstart, vstart = plan.gstart, plan.vstart
    G = plan.groups.shape[0]
    nf = 0
    ne = 0
    nr = 0
    for g in range(first, G):
        cnt = gstart[g + 1] - gstart[g]
        chunks = (cnt + _CE - 1) // _CE
        nf += chunks
        if cnt > _CE:
            ne += chunks
            nr += (vstart[g + 1] - vstart[g] + _CR - 1) // _CR
        else:
            nr += 1
    fitems = np.empty((nf, 3), np.int64)
    fcost = np.empty(nf, np.float64)
    eitems = np.empty((ne, 3), np.int64)
    ecost = np.empty(ne, np.float64)
    ritems = np.empty((nr, 4), np.int64)
    rcost = np.empty(nr, np.float64)
    a = 0
    c = 0
    r = 0
    for g in range(first, G):
        cnt = gstart[g + 1] - gstart[g]
        rows = vstart[g + 1] - vstart[g]
        for lo in range(gstart[g], gstart[g + 1], _CE):
            hi = min(lo + _CE, gstart[g + 1])
            fitems[a, 0] = g
            fitems[a, 1] = lo
            fitems[a, 2] = hi
            fcost[a] = rows * (hi - lo + 2.0)
            a += 1
            if cnt > _CE:
                eitems[c, 0] = g
                eitems[c, 1] = lo
                eitems[c, 2] = hi
                ecost[c] = rows * (hi - lo + 2.0)
                c += 1
        if cnt > _CE:
            for lo in range(0, rows, _CR):
                hi = min(lo + _CR, rows)
                ritems[r, 0] = g
                ritems[r, 1] = lo
                ritems[r, 2] = hi
                ritems[r, 3] = 0
                rcost[r] = (hi - lo) * (cnt + 2.0)
                r += 1
        else:
            ritems[r, 0] = g
            ritems[r, 1] = 0
            ritems[r, 2] = rows
            ritems[r, 3] = 1
            rcost[r] = rows * (2.0 * cnt + 2.0)
            r += 1
    fperm, fstart = balance(fcost, T)
    eperm, estart = balance(ecost, T)
    rperm, rstart = balance(rcost, T)
    return WorkItems(Items(fitems, fperm, fstart), Items(eitems, eperm, estart), Items(ritems, rperm, rstart))


@njit(**JIT)
def entry_info(plan, decisions, target):
    """The :class:`EntryInfo` of a plan's entries (hoisted out of the inner loops)."""
    entries, soff = plan.entries, plan.score_offset
    dc = decisions.choices
    D = dc.shape[1]
    n = entries.shape[0]
    ex = np.empty(n, np.int64)
    sb = np.empty(n, np.int64)
    ch = np.empty(n, np.int64)
    pos = np.full(soff.shape[0] - 1, -1, np.int64)
    for e in range(n):
        f = entries[e]
        i = f // D
        ex[e] = i
        sb[e] = soff[f]
        ch[e] = dc[target[i], f - i * D]
        pos[f] = e
    return EntryInfo(ex, sb, ch, pos)


@njit(**JIT)
def _forward_items(h, table, nodes, groups, ent, items, perm, S, lpe):
    W, b = table.W, table.b
    arity, poff = nodes.arity, nodes.param_offset
    ex, sb, ch = ent.example, ent.score_start, ent.choice
    has_b = b.shape[0] > 0
    d = h.shape[1]
    for q in range(perm.shape[0]):
        it = perm[q]
        n = groups[items[it, 0]]
        lo = items[it, 1]
        hi = items[it, 2]
        k = arity[n]
        o = poff[n]
        nrows = 1 if k == 2 else k
        for r in range(nrows):
            w = W[o + r]
            bb = b[o + r] if has_b else 0.0
            e = lo
            # Four examples per pass over the row: each weight load feeds four dot products.
            while e + 4 <= hi:
                x0 = h[ex[e]]
                x1 = h[ex[e + 1]]
                x2 = h[ex[e + 2]]
                x3 = h[ex[e + 3]]
                a0 = w[0] * x0[0]
                a1 = w[0] * x1[0]
                a2 = w[0] * x2[0]
                a3 = w[0] * x3[0]
                for q2 in range(1, d):
                    wq = w[q2]
                    a0 += wq * x0[q2]
                    a1 += wq * x1[q2]
                    a2 += wq * x2[q2]
                    a3 += wq * x3[q2]
                S[sb[e] + r] = a0 + bb
                S[sb[e + 1] + r] = a1 + bb
                S[sb[e + 2] + r] = a2 + bb
                S[sb[e + 3] + r] = a3 + bb
                e += 4
            while e < hi:
                S[sb[e] + r] = dot(w, h[ex[e]]) + bb
                e += 1
        for e in range(lo, hi):
            j = ch[e]
            s0 = sb[e]
            if k == 2:
                sg = 1.0 if j == 1 else -1.0
                ls, sn = log_sigmoid_and_grad(sg * S[s0])
                lpe[e] = ls
                S[s0] = sg * sn
            else:
                lse = log_sum_exp(S, s0, k)
                lpe[e] = S[s0 + j] - lse
                for r in range(k):
                    S[s0 + r] = np.exp(S[s0 + r] - lse)


@njit(**PARALLEL)
def grouped_forward(h, table, nodes, groups, ent, work, S, lpe):
    """Scores and log-prob of every grouped decision of ``work`` (``lpe``, by entry). On return
    S holds, per decision, what backward needs: for a binary node the derivative of the log-prob
    w.r.t. its score, for a k-ary node the softmax."""
    items, perm, tstart = work.items, work.perm, work.tstart
    for t in prange(tstart.shape[0] - 1):
        _forward_items(h, table, nodes, groups, ent, items, perm[tstart[t] : tstart[t + 1]], S, lpe)


@njit(**PARALLEL)
def sum_decisions(vals, position, decisions, target, out):
    """``out[i] = sum_j vals[position[i * D + j]]`` over example i's decisions."""
    lengths = decisions.lengths
    D = decisions.nodes.shape[1]
    for i in prange(out.shape[0]):
        acc = 0.0
        for j in range(lengths[target[i]]):
            acc += vals[position[i * D + j]]
        out[i] = acc


@njit(inline="always", **JIT)
def _gcoef(S, s0, k, r, j, go_i):
    """d(go_i * log p(choice j)) / d(score r) from what grouped_forward left in S: the binary
    derivative itself, or the softmax (so the k-ary coefficient is ``[r == j] - p_r``, the form of
    :func:`~hsoftmax.kernels.node.kary_coef` with the exp already taken in the forward)."""
    if k == 2:
        return go_i * S[s0]
    return go_i * ((1.0 if r == j else 0.0) - S[s0 + r])


@njit(**PARALLEL)
def grouped_grad_input(go, W, nodes, groups, ent, work, S, ghd):
    """Per-entry input gradients ``ghd[e]`` of the entries of ``work`` (each entry belongs to
    one item, so no races); :func:`sum_rows_by_example` adds them up per example."""
    items, perm, tstart = work.items, work.perm, work.tstart
    for t in prange(tstart.shape[0] - 1):
        _grad_input_range(go, W, nodes, groups, ent, items, perm[tstart[t] : tstart[t + 1]], S, ghd)


@njit(**JIT)
def _grad_input_range(go, W, nodes, groups, ent, items, perm, S, ghd):
    arity, poff = nodes.arity, nodes.param_offset
    ex, sb, ch = ent.example, ent.score_start, ent.choice
    d = W.shape[1]
    for q in range(perm.shape[0]):
        it = perm[q]
        n = groups[items[it, 0]]
        lo = items[it, 1]
        hi = items[it, 2]
        k = arity[n]
        o = poff[n]
        nrows = 1 if k == 2 else k
        for e in range(lo, hi):
            g = ghd[e]
            for q2 in range(d):
                g[q2] = 0.0
        for r in range(nrows):
            w = W[o + r]
            e = lo
            while e + 4 <= hi:
                c0 = _gcoef(S, sb[e], k, r, ch[e], go[ex[e]])
                c1 = _gcoef(S, sb[e + 1], k, r, ch[e + 1], go[ex[e + 1]])
                c2 = _gcoef(S, sb[e + 2], k, r, ch[e + 2], go[ex[e + 2]])
                c3 = _gcoef(S, sb[e + 3], k, r, ch[e + 3], go[ex[e + 3]])
                g0 = ghd[e]
                g1 = ghd[e + 1]
                g2 = ghd[e + 2]
                g3 = ghd[e + 3]
                for q2 in range(d):
                    wq = w[q2]
                    g0[q2] += c0 * wq
                    g1[q2] += c1 * wq
                    g2[q2] += c2 * wq
                    g3[q2] += c3 * wq
                e += 4
            while e < hi:
                c = _gcoef(S, sb[e], k, r, ch[e], go[ex[e]])
                g = ghd[e]
                for q2 in range(d):
                    g[q2] += c * w[q2]
                e += 1


@njit(**PARALLEL)
def sum_rows_by_example(ghd, position, decisions, target, gh):
    """``gh[i] = sum_j ghd[position[i * D + j]]`` over example i's decisions."""
    lengths = decisions.lengths
    D = decisions.nodes.shape[1]
    d = gh.shape[1]
    for i in prange(gh.shape[0]):
        g = gh[i]
        for q in range(d):
            g[q] = 0.0
        for j in range(lengths[target[i]]):
            x = ghd[position[i * D + j]]
            for q in range(d):
                g[q] += x[q]


@njit(**JIT)
def _row_pass_range(go, h, table, lr, nodes, plan, ent, S, items, perm, ghd, grad, fused):
    """The row pass of the grouped backward for one thread's items (see grouped_backward_rows)."""
    W, b = table.W, table.b
    gw, gb = grad.W, grad.b
    arity, poff = nodes.arity, nodes.param_offset
    groups, gstart, vstart = plan.groups, plan.gstart, plan.vstart
    ex, sb, ch = ent.example, ent.score_start, ent.choice
    d = h.shape[1]
    has_b = b.shape[0] > 0
    want_b = gb.shape[0] > 0
    acc = np.empty(d, h.dtype)  # the row's gradient when it is applied in place (fused)
    for q in range(perm.shape[0]):
        it = perm[q]
        g_ = items[it, 0]
        n = groups[g_]
        k = arity[n]
        o = poff[n]
        lo = gstart[g_]
        hi = gstart[g_ + 1]
        whole = items[it, 3] == 1
        if whole:
            for e in range(lo, hi):
                gz = ghd[e]
                for q2 in range(d):
                    gz[q2] = 0.0
        for r in range(items[it, 1], items[it, 2]):
            w = W[o + r]
            a = acc if fused else gw[vstart[g_] + r]
            for q2 in range(d):
                a[q2] = 0.0
            cb = 0.0
            e = lo
            # Four entries per pass: one read of the weight row and one read-modify-write of
            # the gradient row feed four entries' FMAs.
            while e + 4 <= hi:
                c0 = _gcoef(S, sb[e], k, r, ch[e], go[ex[e]])
                c1 = _gcoef(S, sb[e + 1], k, r, ch[e + 1], go[ex[e + 1]])
                c2 = _gcoef(S, sb[e + 2], k, r, ch[e + 2], go[ex[e + 2]])
                c3 = _gcoef(S, sb[e + 3], k, r, ch[e + 3], go[ex[e + 3]])
                cb += c0 + c1 + c2 + c3
                x0 = h[ex[e]]
                x1 = h[ex[e + 1]]
                x2 = h[ex[e + 2]]
                x3 = h[ex[e + 3]]
                if whole:
                    g0 = ghd[e]
                    g1 = ghd[e + 1]
                    g2 = ghd[e + 2]
                    g3 = ghd[e + 3]
                    for q2 in range(d):
                        wq = w[q2]
                        g0[q2] += c0 * wq
                        g1[q2] += c1 * wq
                        g2[q2] += c2 * wq
                        g3[q2] += c3 * wq
                        a[q2] += c0 * x0[q2] + c1 * x1[q2] + c2 * x2[q2] + c3 * x3[q2]
                else:
                    for q2 in range(d):
                        a[q2] += c0 * x0[q2] + c1 * x1[q2] + c2 * x2[q2] + c3 * x3[q2]
                e += 4
            while e < hi:
                c = _gcoef(S, sb[e], k, r, ch[e], go[ex[e]])
                cb += c
                x = h[ex[e]]
                if whole:
                    gz = ghd[e]
                    for q2 in range(d):
                        gz[q2] += c * w[q2]
                        a[q2] += c * x[q2]
                else:
                    for q2 in range(d):
                        a[q2] += c * x[q2]
                e += 1
            if fused:
                # Plain SGD on the row, after its old value served the input gradient above.
                for q2 in range(d):
                    w[q2] -= lr * a[q2]
                if has_b and want_b:
                    b[o + r] -= lr * cb
            elif want_b:
                gb[vstart[g_] + r] = cb


@njit(**PARALLEL)
def grouped_backward_rows(go, h, table, lr, nodes, plan, ent, S, work, ghd, grad, fused):
    """One pass over the rows of every item of ``work`` (the ``rows`` list of :func:`work_items`):
    each row's gradient, ``sum_e coef(e, r) * h[example[e]]``, and for ``whole`` items also the
    input gradient of the group's entries (``ghd``) from the same read of the row. Not fused: the
    gradient goes to ``grad`` (row ``vstart[g] + r``; ``grad.b`` may be empty). Fused:
    ``W[row] -= lr * grad`` (and ``b`` likewise when ``grad.b`` is non-empty) in place, and
    ``grad.W`` is not touched. Items that are not whole must have their input gradient computed
    (reading ``W``) before this runs."""
    items, perm, tstart = work.items, work.perm, work.tstart
    for t in prange(tstart.shape[0] - 1):
        _row_pass_range(go, h, table, lr, nodes, plan, ent, S, items, perm[tstart[t] : tstart[t + 1]], ghd, grad, fused)


@njit(**JIT)
def group_rows_index(plan, param_offset):
    """Table row ids of the coalesced gradient rows (ascending, since nodes own disjoint,
    increasing row blocks)."""
    groups, vstart = plan.groups, plan.vstart
    out = np.empty(vstart[-1], np.int64)
    for g in range(groups.shape[0]):
        o = param_offset[groups[g]]
        for r in range(vstart[g + 1] - vstart[g]):
            out[vstart[g] + r] = o + r
    return out


# ---------------------------------------------------------------------------- optimizer
@njit(**PARALLEL)
def sgd_rows(W, rows, G, lr, wd):
    """``W[rows[s]] -= lr * (G[s] + wd * W[rows[s]])`` for distinct ``rows`` (int64), in
    parallel: torch's ``index_add_`` runs this on one thread at about half the memory bandwidth."""
    d = W.shape[1]
    for s in prange(rows.shape[0]):
        w = W[rows[s]]
        g = G[s]
        if wd != 0.0:
            for k in range(d):
                w[k] -= lr * (g[k] + wd * w[k])
        else:
            for k in range(d):
                w[k] -= lr * g[k]


# ---------------------------------------------------------------------------- top-k search
@njit(**JIT)
def _with_room(hv, hr, n, need):
    """``(hv, hr)`` with room for ``need`` entries: the same arrays when they have it, else new
    ones of twice that size holding the first ``n`` entries (a heap or a stack that outgrew
    its first guess; every search kernel grows its buffers this way)."""
    if need <= hv.shape[0]:
        return hv, hr
    hv2 = np.empty(2 * need, hv.dtype)
    hr2 = np.empty(2 * need, hr.dtype)
    hv2[:n] = hv[:n]
    hr2[:n] = hr[:n]
    return hv2, hr2


@njit(**JIT)
def _heap_push(hv, hr, n, v, r):
    """Push (v, r) on a max-heap of n entries held in hv/hr (capacity checked by the caller)."""
    c = n
    while c > 0:
        p = (c - 1) >> 1
        if hv[p] >= v:
            break
        hv[c] = hv[p]
        hr[c] = hr[p]
        c = p
    hv[c] = v
    hr[c] = r


@njit(**JIT)
def _heap_pop(hv, hr, n):
    """Remove the max of a heap of n entries (n >= 1); returns it."""
    top_v = hv[0]
    top_r = hr[0]
    n -= 1
    v = hv[n]
    r = hr[n]
    c = 0
    while True:
        a = 2 * c + 1
        if a >= n:
            break
        if a + 1 < n and hv[a + 1] > hv[a]:
            a += 1
        if hv[a] <= v:
            break
        hv[c] = hv[a]
        hr[c] = hr[a]
        c = a
    hv[c] = v
    hr[c] = r
    return top_v, top_r


@njit(**JIT)
def _topk_one(x, table, st, spt, nodes, V, K, amax, vals, idx):
    """Best-first search for one example (a function of its own, so that numba's parfor pass
    cannot hoist the heap allocations out of the parallel loop and share them across threads).
    ``st`` holds this example's precomputed scores of the first ``R = st.shape[0]`` table rows
    (bias included) and ``spt`` their ``log1p(exp(-|s|))``; rows past R are scored here."""
    W, b = table.W, table.b
    arity, poff, child_offset, children = nodes.arity, nodes.param_offset, nodes.child_offset, nodes.children
    has_b = b.shape[0] > 0
    R = st.shape[0]
    cap = 64 + 2 * amax
    hv = np.empty(cap, np.float64)
    hr = np.empty(cap, np.int64)
    sc = np.empty(amax, np.float64)
    n = 0
    found = 0
    lp = 0.0
    ref = V  # the root
    while found < K:
        if ref < V:
            vals[found] = lp
            idx[found] = ref
            found += 1
            if found == K or n == 0:
                break
            lp, ref = _heap_pop(hv, hr, n)
            n -= 1
            continue
        node = ref - V
        k = arity[node]
        o = poff[node]
        c0 = child_offset[node]
        hv, hr = _with_room(hv, hr, n, n + k)
        # Expand the node; the best child is kept in hand instead of pushed and popped again
        # when nothing on the heap beats it (it would be the next pop anyway).
        if k == 1:
            ref = children[c0]
            continue
        if k == 2:
            if o < R:
                l1, l0 = log_sigmoid_pair(st[o], spt[o])
            else:
                s = dot(W[o], x)
                if has_b:
                    s += b[o]
                l1, l0 = log_sigmoid_pair(s, np.log1p(np.exp(-abs(s))))
            if l1 >= l0:
                best_lp, best_ref = lp + l1, children[c0 + 1]
                _heap_push(hv, hr, n, lp + l0, children[c0])
            else:
                best_lp, best_ref = lp + l0, children[c0]
                _heap_push(hv, hr, n, lp + l1, children[c0 + 1])
            n += 1
        else:
            pre = o + k <= R
            for r in range(k):
                if pre:
                    s = st[o + r]
                else:
                    s = dot(W[o + r], x)
                    if has_b:
                        s += b[o + r]
                sc[r] = s
            lse = log_sum_exp(sc, 0, k)
            rb = 0
            for r in range(1, k):
                if sc[r] > sc[rb]:
                    rb = r
            for r in range(k):
                if r != rb:
                    _heap_push(hv, hr, n, lp + (sc[r] - lse), children[c0 + r])
                    n += 1
            best_lp, best_ref = lp + (sc[rb] - lse), children[c0 + rb]
        if best_lp >= hv[0]:
            lp, ref = best_lp, best_ref
        else:
            _heap_push(hv, hr, n, best_lp, best_ref)
            n += 1
            lp, ref = _heap_pop(hv, hr, n)
            n -= 1


@njit(**PARALLEL)
def topk_search(h, table, top, nodes, V, K, amax, vals, idx):
    """Exact top-K classes of each row of ``h`` by best-first search (one heap per example).

    A node's log-prob bounds every class below it, since each edge adds a log-prob <= 0, so
    classes leave the heap in exactly descending order. Log-probs accumulate in float64.
    ``amax`` is the largest arity (precomputed: scanning ``arity`` here would cost O(nodes) per
    call). ``top``: :class:`NodeScores` ``(B, R)`` of the first R table rows (the top of the tree,
    which most searches expand), computed beforehand with one BLAS matmul; R may be 0. Writes
    ``vals (B, K)`` (float64 or h's dtype) and ``idx (B, K)`` int64."""
    St, SPt = top.s, top.sp
    for i in prange(h.shape[0]):
        _topk_one(h[i], table, St[i], SPt[i], nodes, V, K, amax, vals[i], idx[i])


# ---------------------------------------------------------------------------- all classes
@njit(**JIT)
def _log_prob_one(s, sp, nodes, V, out):
    """One example: node scores ``s (P,)`` -> class log-probs ``out (V,)``, top-down in BFS order
    (a parent's id is smaller than its children's, so its log-prob is ready when reached).
    ``sp = log1p(exp(-|s|))``, computed beforehand with vectorized math."""
    arity, poff, child_offset, children = nodes.arity, nodes.param_offset, nodes.child_offset, nodes.children
    N = arity.shape[0]
    node_lp = np.empty(N, s.dtype)
    node_lp[0] = 0.0
    for n in range(N):
        lp = node_lp[n]
        k = arity[n]
        c0 = child_offset[n]
        o = poff[n]
        if k == 1:
            c = children[c0]
            if c < V:
                out[c] = lp
            else:
                node_lp[c - V] = lp
            continue
        if k == 2:
            l1, l0 = log_sigmoid_pair(s[o], sp[o])
            for r in range(2):
                c = children[c0 + r]
                v = lp + (l1 if r == 1 else l0)
                if c < V:
                    out[c] = v
                else:
                    node_lp[c - V] = v
            continue
        lse = log_sum_exp(s, o, k)
        for r in range(k):
            c = children[c0 + r]
            v = lp + (s[o + r] - lse)
            if c < V:
                out[c] = v
            else:
                node_lp[c - V] = v


@njit(**PARALLEL)
def log_prob_all(scores, nodes, V, out):
    """``out (B, V)``: exact log-probabilities of every class from :class:`NodeScores` ``(B, P)``
    (``sp`` is only read at binary nodes)."""
    S, SP = scores.s, scores.sp
    for i in prange(S.shape[0]):
        _log_prob_one(S[i], SP[i], nodes, V, out[i])

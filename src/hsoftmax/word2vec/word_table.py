"""Tokenizing and counting a UTF-8 corpus at the byte level, in numba, with no Python strings.

:class:`WordTable` is an open-addressing hash table over byte strings whose words live back to
back in one ``uint8`` arena. :meth:`WordTable.add_block` splits a block of complete lines into
tokens, gives each distinct token a provisional id (in order of first appearance), counts it and
returns the block's ids and per-line token counts. Only the words that make the vocabulary ever
become Python strings: counting 13M tokens with a ``dict`` of ``str`` instead costs ~100 MB of
small objects that the allocator cannot hand back (fragmentation) and twice the time.

Tokens are split exactly where Python's ``str.split()`` splits the decoded text: on every Unicode
whitespace character (the ASCII ones and U+0085, U+00A0, U+1680, U+2000-U+200A, U+2028, U+2029,
U+202F, U+205F, U+3000), plus NUL; lines end at ``\\n`` only. Splitting bytes gives the same
tokens as splitting the decoded text because UTF-8's decoder restarts at every byte that cannot
continue a sequence, and each whitespace sequence starts with such a byte. Invalid UTF-8 inside a
token is resolved afterwards (see :meth:`WordTable.word`), per distinct word instead of per
occurrence, by Python's own decoder: one U+FFFD per maximal subpart of an ill-formed sequence, so
the words are exactly those of ``text.decode("utf-8", "replace").split()`` (a maximal subpart
never spans a whitespace character, which starts with a byte that cannot continue a sequence).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..kernels.node import JIT

__all__ = ["WordTable"]

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)
_NEED_ROOM = 1  # _scan's status: stopped before a new word, grow the arrays and call again


@njit(inline="always", **JIT)
def _space_len(buf, i, n):
    """Bytes of the whitespace character starting at ``buf[i]`` (0 when it is not one)."""
    b = buf[i]
    if b < 0x80:
        return 1 if (b == 32 or 9 <= b <= 13 or 28 <= b <= 31 or b == 0) else 0
    if b == 0xC2:
        return 2 if i + 1 < n and (buf[i + 1] == 0x85 or buf[i + 1] == 0xA0) else 0
    if i + 2 >= n or b < 0xE1 or b > 0xE3:
        return 0
    b1, b2 = buf[i + 1], buf[i + 2]
    if b == 0xE1:
        return 3 if b1 == 0x9A and b2 == 0x80 else 0
    if b == 0xE3:
        return 3 if b1 == 0x80 and b2 == 0x80 else 0
    if b1 == 0x80:  # 0xE2 0x80: U+2000-U+200A, U+2028, U+2029, U+202F
        return 3 if (0x80 <= b2 <= 0x8A or b2 == 0xA8 or b2 == 0xA9 or b2 == 0xAF) else 0
    return 3 if b1 == 0x81 and b2 == 0x9F else 0  # U+205F


@njit(inline="always", **JIT)
def _fnv(buf, i, j):
    """FNV-1a hash of ``buf[i:j]``: the one hash of the table (scanning and lookups)."""
    h = _FNV_OFFSET
    for k in range(i, j):
        h = (h ^ np.uint64(buf[k])) * _FNV_PRIME
    return h


@njit(**JIT)
def _find(table, hashes, starts, arena, buf, i, j, h):
    """Slot of the word ``buf[i:j]`` (hash ``h``): where it is, or the empty slot it would take."""
    mask = table.size - 1
    slot = h & np.uint64(mask)
    n = j - i
    while True:
        w = table[slot]
        if w < 0:
            return slot
        if hashes[w] == h and starts[w + 1] - starts[w] == n:
            a = starts[w]
            same = True
            for k in range(n):
                if arena[a + k] != buf[i + k]:
                    same = False
                    break
            if same:
                return slot
        slot = (slot + np.uint64(1)) & np.uint64(mask)


@njit(**JIT)
def _scan(buf, state, table, hashes, starts, counts, arena, out_ids, line_lens):
    """Tokenize ``buf`` from ``state[0]``; ``state`` = (position, words, ids out, lines out,
    tokens in the current line). Returns ``_NEED_ROOM`` when a new word does not fit (the state
    then points at that word, so the call can be repeated after growing), else 0."""
    n = buf.size
    i, nwords, nout, nlines, cur = state[0], state[1], state[2], state[3], state[4]
    status = 0
    while i < n:
        b = buf[i]
        if b == 10:
            if cur > 0:
                line_lens[nlines] = cur
                nlines += 1
                cur = 0
            i += 1
            continue
        s = _space_len(buf, i, n)
        if s > 0:
            i += s
            continue
        j = i
        while j < n and buf[j] != 10 and _space_len(buf, j, n) == 0:
            j += 1
        h = _fnv(buf, i, j)
        slot = _find(table, hashes, starts, arena, buf, i, j, h)
        w = table[slot]
        if w < 0:
            end = starts[nwords] + (j - i)
            if nwords + 1 >= hashes.size or 2 * (nwords + 1) > table.size or end > arena.size:
                status = _NEED_ROOM
                break
            w = nwords
            table[slot] = w
            hashes[w] = h
            a = starts[w]
            for k in range(j - i):
                arena[a + k] = buf[i + k]
            starts[w + 1] = end
            nwords += 1
        counts[w] += 1
        out_ids[nout] = w
        nout += 1
        cur += 1
        i = j
    state[0], state[1], state[2], state[3], state[4] = i, nwords, nout, nlines, cur
    return status


@njit(**JIT)
def _lookup(table, hashes, starts, arena, token):
    """Provisional id of the whole ``token``, or -1."""
    return table[_find(table, hashes, starts, arena, token, 0, token.size, _fnv(token, 0, token.size))]


@njit(**JIT)
def _rehash(table, hashes, nwords):
    table[:] = -1
    mask = np.uint64(table.size - 1)
    for w in range(nwords):
        slot = hashes[w] & mask
        while table[slot] >= 0:
            slot = (slot + np.uint64(1)) & mask
        table[slot] = w


@njit(**JIT)
def _valid_utf8(arena, starts, nwords):
    """Whether each word is well-formed UTF-8 (Unicode's table 3-7: no overlong forms, no
    surrogates, nothing above U+10FFFF), i.e. whether Python decodes it without an error."""
    ok = np.ones(nwords, dtype=np.bool_)
    for w in range(nwords):
        i, e = starts[w], starts[w + 1]
        while i < e:
            b = arena[i]
            if b < 0x80:
                i += 1
                continue
            if 0xC2 <= b <= 0xDF:
                need, lo, hi = 1, 0x80, 0xBF
            elif 0xE0 <= b <= 0xEF:
                need = 2
                lo = 0xA0 if b == 0xE0 else 0x80
                hi = 0x9F if b == 0xED else 0xBF
            elif 0xF0 <= b <= 0xF4:
                need = 3
                lo = 0x90 if b == 0xF0 else 0x80
                hi = 0x8F if b == 0xF4 else 0xBF
            else:
                ok[w] = False
                break
            if i + need >= e:  # truncated at the end of the word
                ok[w] = False
                break
            c = arena[i + 1]
            if c < lo or c > hi:
                ok[w] = False
                break
            for k in range(2, need + 1):
                c = arena[i + k]
                if c < 0x80 or c > 0xBF:
                    ok[w] = False
                    break
            if not ok[w]:
                break
            i += need + 1
    return ok


@njit(**JIT)
def _gather(arena, starts, words, sep):
    """The bytes of ``words`` joined by ``sep`` (one decode then yields all their strings)."""
    total = 0
    for w in words:
        total += starts[w + 1] - starts[w] + 1
    out = np.empty(max(total - 1, 0), dtype=np.uint8)
    o = 0
    for q in range(words.size):
        w = words[q]
        for k in range(starts[w], starts[w + 1]):
            out[o] = arena[k]
            o += 1
        if q + 1 < words.size:
            out[o] = sep
            o += 1
    return out


def _grown(a: np.ndarray, size: int, fill: int | None = None) -> np.ndarray:
    out = np.empty(size, dtype=a.dtype) if fill is None else np.full(size, fill, dtype=a.dtype)
    out[: a.size] = a
    return out


class WordTable:
    """Distinct byte-string tokens with counts, built block by block.

    >>> t = WordTable()
    >>> ids, lines = t.add_block("the cat\\u00a0sat\\n\\nthe end\\n".encode())
    >>> ids.tolist(), lines.tolist(), t.counts.tolist()
    ([0, 1, 2, 0, 3], [3, 2], [2, 1, 1, 1])
    >>> t.word(1), len(t)
    ('cat', 4)
    """

    def __init__(self, capacity: int = 1 << 14) -> None:
        cap = max(16, int(capacity))
        self._table = np.full(2 * cap, -1, dtype=np.int32)
        self._hashes = np.zeros(cap, dtype=np.uint64)
        self._starts = np.zeros(cap + 1, dtype=np.int64)
        self._counts = np.zeros(cap, dtype=np.int64)
        self._arena = np.zeros(16 * cap, dtype=np.uint8)
        self._n = 0

    def __len__(self) -> int:
        return self._n

    @property
    def counts(self) -> np.ndarray:
        """``(len(self),)`` int64 occurrences of each word, by provisional id (a view)."""
        return self._counts[: self._n]

    def add_block(self, data: bytes) -> tuple[np.ndarray, np.ndarray]:
        """Tokenize and count a block of complete lines (it should end with ``\\n``; a last line
        without one is treated as unfinished and its tokens are not counted in ``lines``).

        Returns:
            ``ids`` ``(tokens,)`` int32 provisional word ids, ``lines`` ``(lines,)`` int64 tokens
            per non-empty line.
        """
        buf = np.frombuffer(data, dtype=np.uint8)
        out_ids = np.empty(buf.size // 2 + 1, dtype=np.int32)
        line_lens = np.empty(data.count(b"\n") + 1, dtype=np.int64)
        state = np.array([0, self._n, 0, 0, 0], dtype=np.int64)
        while (
            _scan(buf, state, self._table, self._hashes, self._starts, self._counts, self._arena, out_ids, line_lens)
            == _NEED_ROOM
        ):
            self._n = int(state[1])
            self._make_room(words=1, nbytes=buf.size - int(state[0]))
        self._n = int(state[1])
        return out_ids[: state[2]], line_lens[: state[3]]

    def _make_room(self, words: int, nbytes: int) -> None:
        """Double whatever is full: the word arrays, the hash table (kept at most half full),
        the byte arena."""
        need = self._n + words + 1
        if need >= self._hashes.size:
            cap = 2 * self._hashes.size
            self._hashes = _grown(self._hashes, cap)
            self._counts = _grown(self._counts, cap, 0)
            self._starts = _grown(self._starts, cap + 1, 0)
        if 2 * need > self._table.size:
            self._table = np.empty(2 * self._table.size, dtype=np.int32)
            _rehash(self._table, self._hashes, self._n)
        used = int(self._starts[self._n])
        if used + nbytes > self._arena.size:
            self._arena = _grown(self._arena, max(2 * self._arena.size, used + nbytes))

    def word_bytes(self, w: int) -> bytes:
        return self._arena[self._starts[w] : self._starts[w + 1]].tobytes()

    def word(self, w: int, errors: str = "replace") -> str:
        """Word ``w`` decoded (invalid UTF-8 handled by the ``errors`` handler)."""
        return self.word_bytes(w).decode("utf-8", errors)

    def words(self, ids: np.ndarray) -> list[str]:
        """Decode many well-formed words at once (one joined decode, not one per word)."""
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size == 0:
            return []
        return _gather(self._arena, self._starts, ids, np.uint8(10)).tobytes().decode("utf-8").split("\n")

    def find(self, token: bytes) -> int:
        """Provisional id of ``token``, or -1."""
        return int(_lookup(self._table, self._hashes, self._starts, self._arena, np.frombuffer(token, dtype=np.uint8)))

    def invalid_utf8(self) -> np.ndarray:
        """Provisional ids of the words that are not well-formed UTF-8."""
        return np.flatnonzero(~_valid_utf8(self._arena, self._starts, self._n))

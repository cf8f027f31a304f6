"""fastText-format files: reading, counting and encoding lines into the kernels' flat arrays.

A line is whitespace-separated tokens; a token starting with the label prefix (``__label__``)
names a label, every other token is a word, and labels may stand anywhere on the line (several
per line). As in fastText, each line ends with the word ``</s>``, word ``i``'s input row is ``i``
and the hashed word n-grams (``word_ngrams > 1``) take rows ``num_words + bucket_id``, hashed
with fastText's FNV-1a and n-gram formula so that the buckets match fastText's; words dropped by
``min_count`` leave no row but still take part in n-grams, again as in fastText.

Lines are split and counted at the byte level (``bytes.split``, ``collections.Counter``); only
vocabulary words and labels become Python strings, and numba turns each line's token codes into
input rows (:func:`encode_lines`).
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
from collections.abc import Iterable
from typing import NamedTuple

import numpy as np
from numba import njit

from ..kernels.node import JIT
from ..word2vec.word_table import WordTable

__all__ = ["EOS", "FormatError", "Lines", "Examples", "Vocabulary", "read_lines", "count", "encode_lines"]

#: The end-of-line word fastText adds to every line.
EOS = "</s>"

_NGRAM_MUL = np.uint64(116049371)  # fastText's word n-gram hash combination
_FNV_OFFSET = np.uint32(2166136261)
_FNV_PRIME = np.uint32(16777619)


class FormatError(ValueError):
    """A malformed input line (the message names the file and the line number)."""


class Lines(NamedTuple):
    """Tokenized lines: the distinct tokens, and each line's tokens as codes into them."""

    distinct: list[str]  #: distinct tokens in order of first appearance
    counts: np.ndarray  #: int64 occurrences of each distinct token
    codes: np.ndarray  #: int32 all tokens of all lines, as indices into ``distinct``
    offsets: np.ndarray  #: ``(n + 1,)`` int64: line ``i``'s tokens are ``codes[offsets[i]:offsets[i + 1]]``
    raw: bytes  #: the text itself (to find the line of an error)
    source: str  #: the file name (or ``"<lines>"``), for error messages


class Vocabulary(NamedTuple):
    """Words (most frequent first, ``</s>`` included) and labels of a training file."""

    words: tuple[str, ...]
    word_counts: np.ndarray  #: int64
    labels: tuple[str, ...]  #: names without the prefix, most frequent first
    label_counts: np.ndarray  #: int64


class Examples(NamedTuple):
    """Encoded lines, as the kernels read them (CSR by line)."""

    rows: np.ndarray  #: int32 input rows of all lines (words, then n-gram buckets)
    row_offsets: np.ndarray  #: ``(n + 1,)`` int64: line ``i``'s rows are ``rows[row_offsets[i]:row_offsets[i + 1]]``
    labels: np.ndarray  #: int32 tree classes of all lines' labels (unknown labels dropped)
    label_offsets: np.ndarray  #: ``(n + 1,)`` int64
    tokens: np.ndarray  #: ``(n + 1,)`` int64 cumulative tokens read (fastText's learning-rate clock)

    @property
    def num_lines(self) -> int:
        return int(self.row_offsets.size - 1)


def _open_bytes(path: str) -> bytes:
    ext = os.path.splitext(path)[1].lower()
    if ext == ".gz":
        return gzip.decompress(_read(path))
    if ext in (".xz", ".lzma"):
        return lzma.decompress(_read(path))
    if ext == ".bz2":
        return bz2.decompress(_read(path))
    return _read(path)


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def read_lines(data: str | os.PathLike | Iterable[str], source: str | None = None) -> Lines:
    """Tokenize a fastText-format file (a path; ``.gz``/``.xz``/``.bz2`` are decompressed) or an
    iterable of lines (``str``, one example each; a ``str`` holding newlines is several lines).

    Tokens are split where ``str.split()`` splits (any Unicode whitespace), at the byte level
    (:class:`hsoftmax.word2vec.word_table.WordTable`); only distinct tokens become strings.

    Raises:
        OSError: the file cannot be read.
        FormatError: a line holds a NUL or U+0001 byte (not a text file) or is not valid UTF-8 (the
            message names the file and the line).

    >>> lines = read_lines(["__label__a hello world", "", "__label__b hello"])
    >>> lines.distinct, lines.codes.tolist(), lines.offsets.tolist()
    (['__label__a', 'hello', 'world', '__label__b'], [0, 1, 2, 3, 1], [0, 3, 3, 5])
    """
    if isinstance(data, (str, os.PathLike)):
        name = os.fspath(data)
        raw = _open_bytes(name)
        if raw.endswith(b"\n"):
            raw = raw[:-1]  # the final newline ends the last line; it starts none
        elif not raw:
            return _no_lines(name)
    elif isinstance(data, (bytes, bytearray)):
        raise TypeError("pass a path or an iterable of str lines, not bytes")
    else:
        name = "<lines>"
        parts = []
        for i, line in enumerate(data):
            if not isinstance(line, str):
                raise TypeError(f"line {i + 1} is a {type(line).__name__}, not a str")
            parts.append(line.encode("utf-8", "surrogatepass"))
        raw = b"\n".join(parts)
        if not parts:
            return _no_lines(name)
    return _tokenize(raw, name if source is None else source)


def _no_lines(source: str) -> Lines:
    return Lines([], np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int32), np.zeros(1, dtype=np.int64), b"", source)


_MARK = b"\x01"  # starts every line, so that empty lines are counted too (and then dropped)


def _tokenize(raw: bytes, source: str) -> Lines:
    _check_text(raw, source)
    table = WordTable()
    ids, lengths = table.add_block(_MARK + b" " + raw.replace(b"\n", b"\n" + _MARK + b" ") + b"\n")
    # the mark is the buffer's first token: provisional id 0; drop it and shift the others down
    codes = ids[ids != 0] - 1
    offsets = np.zeros(lengths.size + 1, dtype=np.int64)
    np.cumsum(lengths - 1, out=offsets[1:])
    return Lines(table.words(np.arange(1, len(table))), table.counts[1:].copy(), codes, offsets, raw, source)


def _check_text(raw: bytes, source: str) -> None:
    """The whole input at once (fast on clean text); only on failure find the line."""
    for byte in (b"\x00", _MARK):
        bad = raw.find(byte)
        if bad >= 0:
            line = raw.count(b"\n", 0, bad) + 1
            raise FormatError(f"{source}, line {line}: a control byte {byte!r}; this is not a text file")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise FormatError(f"{source}, line {line}: not valid UTF-8 ({e.reason} at byte {e.start})") from None


def count(lines: Lines, label_prefix: str, min_count: int, min_count_label: int) -> Vocabulary:
    """Words and labels of ``lines``, most frequent first (ties in order of first appearance);
    words below ``min_count`` and labels below ``min_count_label`` dropped. ``</s>`` counts once
    per line, as in fastText.

    Raises:
        FormatError: a bare label prefix (a label with no name).
    """
    words: list[tuple[str, int]] = []
    labels: list[tuple[str, int]] = []
    n_lines = lines.offsets.size - 1
    eos_count = n_lines
    for tok, c in zip(lines.distinct, lines.counts.tolist()):
        if c == 0:
            continue
        if tok.startswith(label_prefix):
            if len(tok) == len(label_prefix):
                raise FormatError(f"{_where(lines, tok)}: {label_prefix!r} without a label name after it")
            labels.append((tok[len(label_prefix) :], c))
        elif tok == EOS:
            eos_count += c
        else:
            words.append((tok, c))
    words.append((EOS, eos_count))
    words = sorted((wc for wc in words if wc[1] >= min_count), key=lambda wc: -wc[1])
    labels = sorted((lc for lc in labels if lc[1] >= min_count_label), key=lambda lc: -lc[1])
    return Vocabulary(
        tuple(w for w, _ in words),
        np.array([c for _, c in words], dtype=np.int64),
        tuple(lab for lab, _ in labels),
        np.array([c for _, c in labels], dtype=np.int64),
    )


def _where(lines: Lines, token: str) -> str:
    """``"FILE, line N"`` of the first line holding ``token``."""
    code = lines.distinct.index(token)
    first = int(np.argmax(lines.codes == code))
    line = int(np.searchsorted(lines.offsets, first, side="right"))
    return f"{lines.source}, line {line}"


def encode_lines(
    lines: Lines,
    word_index: dict[str, int],
    label_index: dict[str, int],
    label_prefix: str,
    word_ngrams: int,
    bucket: int,
) -> Examples:
    """Input rows and label classes of every line.

    ``word_index`` maps a word to its row (``</s>`` must be there to be added; absent words
    leave no row), ``label_index`` a label name (without the prefix) to its tree class (absent
    labels are dropped, as fastText drops labels it does not know). Duplicate labels on a line
    count once. With ``word_ngrams = n > 1`` and ``bucket > 0`` each run of 2..n consecutive
    words adds row ``len(word_index) + hash % bucket``.
    """
    distinct = list(lines.distinct)
    codes = lines.codes
    distinct.append(EOS)  # the end-of-line word's code is the last one
    kind = np.full(len(distinct), -1, dtype=np.int64)  # word row, -1: unknown word, -2: a label
    label = np.full(len(distinct), -1, dtype=np.int64)
    for i, t in enumerate(distinct):
        if t.startswith(label_prefix):
            kind[i] = -2
            label[i] = label_index.get(t[len(label_prefix) :], -1)
        else:
            kind[i] = word_index.get(t, -1)
    data, off = _concat([t.encode("utf-8", "surrogatepass") for t in distinct])
    if word_ngrams > 1 and bucket > 0:
        # fastText keeps the hashes as int32 and widens them to uint64 (sign extension)
        hashes = _fnv1a(data, off).view(np.int32).astype(np.int64).view(np.uint64)
    else:
        hashes = np.zeros(len(distinct), dtype=np.uint64)
    n = int(word_ngrams) if bucket > 0 else 1
    return Examples(*_encode(codes, lines.offsets, kind, label, hashes, len(distinct) - 1, len(word_index), n, bucket))


def _concat(strings: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    off = np.zeros(len(strings) + 1, dtype=np.int64)
    np.cumsum([len(s) for s in strings], out=off[1:])
    return np.frombuffer(b"".join(strings), dtype=np.uint8), off


@njit(**JIT)
def _fnv1a(data, off):
    """fastText's token hash: 32-bit FNV-1a over the bytes, each sign-extended from int8 first
    (fastText hashes ``char``s), so the n-gram buckets match fastText's."""
    out = np.empty(off.size - 1, dtype=np.uint32)
    for i in range(off.size - 1):
        h = np.uint64(_FNV_OFFSET)
        for p in range(off[i], off[i + 1]):
            b = np.uint64(data[p])
            if b >= 128:
                b |= np.uint64(0xFFFFFF00)
            h = ((h ^ b) * np.uint64(_FNV_PRIME)) & np.uint64(0xFFFFFFFF)
        out[i] = h
    return out


@njit(**JIT)
def _encode(codes, offsets, kind, label, hashes, eos_code, num_words, n, bucket):
    L = offsets.size - 1
    # upper bounds: every token a word (plus </s>), each with n - 1 n-grams
    cap = (codes.size + L) * n
    rows = np.empty(cap, dtype=np.int32)
    labs = np.empty(codes.size, dtype=np.int32)
    row_off = np.zeros(L + 1, dtype=np.int64)
    lab_off = np.zeros(L + 1, dtype=np.int64)
    tokens = np.zeros(L + 1, dtype=np.int64)
    line_hashes = np.empty(codes.size + 1, dtype=np.uint64)
    nr = 0
    nl = 0
    for i in range(L):
        m = 0
        for t in range(offsets[i], offsets[i + 1] + 1):
            c = codes[t] if t < offsets[i + 1] else eos_code
            k = kind[c]
            if k == -2:
                lab = label[c]
                if lab >= 0:
                    dup = False
                    for q in range(lab_off[i], nl):
                        if labs[q] == lab:
                            dup = True
                    if not dup:
                        labs[nl] = lab
                        nl += 1
                continue
            if k >= 0:
                rows[nr] = k
                nr += 1
            line_hashes[m] = hashes[c]
            m += 1
        if n > 1:
            for a in range(m):
                h = line_hashes[a]
                for b in range(a + 1, min(m, a + n)):
                    h = h * _NGRAM_MUL + line_hashes[b]
                    rows[nr] = np.int32(np.int64(h % np.uint64(bucket)) + num_words)
                    nr += 1
        row_off[i + 1] = nr
        lab_off[i + 1] = nl
        tokens[i + 1] = tokens[i] + (offsets[i + 1] - offsets[i]) + 1  # + </s>
    return rows[:nr].copy(), row_off, labs[:nl].copy(), lab_off, tokens

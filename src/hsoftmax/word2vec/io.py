"""The word2vec vector formats (text and binary), written atomically.

Text: a header line ``"<count> <dim>"``, then one line per word: the word and ``dim`` numbers.
Binary: the same header, then per word its UTF-8 bytes, a space, ``dim`` little-endian float32
values and a newline. gensim's ``KeyedVectors.load_word2vec_format`` reads both.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from typing import BinaryIO

import numpy as np

from ..files import atomic_path

__all__ = ["write_word2vec", "read_word2vec", "is_binary_name"]

_NUMBER_CHARS = b"0123456789.+-eEinfatyINFATY \r"  # what a text row's values are written with
_MAX_VALUE_CHARS = 32  # "%.9g" needs at most 15 characters and a space; other writers a few more


def is_binary_name(path: str | os.PathLike) -> bool:
    """The naming convention: ``.bin`` means binary, anything else text."""
    return os.fspath(path).lower().endswith(".bin")


def write_word2vec(
    path: str | os.PathLike, words: Sequence[str], vectors: np.ndarray, binary: bool | None = None
) -> None:
    """Write ``vectors`` (``(len(words), dim)``) in word2vec format, atomically.

    Text values are written with 9 significant digits, enough to read back the exact float32.
    Rows are formatted a block at a time (:data:`_TEXT_BLOCK_VALUES` values), so writing text
    costs a few MB beyond the table, whatever its size.
    """
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] != len(words):
        raise ValueError(f"vectors must have shape ({len(words)}, dim), got {vectors.shape}")
    for w in words:
        if not w or any(ch.isspace() for ch in w):
            raise ValueError(f"word {w!r} is empty or contains whitespace: the format cannot hold it")
    binary = is_binary_name(path) if binary is None else bool(binary)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(f"{len(words)} {vectors.shape[1]}\n".encode())
        if binary:
            le = vectors.astype("<f4", copy=False)
            for w, v in zip(words, le):
                f.write(w.encode("utf-8") + b" " + v.tobytes() + b"\n")
        else:
            _write_text_rows(f, words, vectors)


# About 8k values per block: a block's Python floats and text take about 0.5 MB (64k values took
# 4 MB at the run's peak), and blocks are still large enough that the per-block overhead vanishes
# next to the formatting itself (44,554 x 100 values: 1.8 s, against 2.3 s with 64k).
_TEXT_BLOCK_VALUES = 1 << 13


def _write_text_rows(f: BinaryIO, words: Sequence[str], vectors: np.ndarray) -> None:
    """The text rows, a block of rows at a time: never the whole table as Python floats or text.

    ``tolist()`` turns float32 into the same Python floats row by row as for the whole table,
    and ``"%.9g"`` formats them as before, so the bytes do not depend on the block size.
    """
    dim = vectors.shape[1]
    fmt = " ".join(["%.9g"] * dim)
    rows = max(1, _TEXT_BLOCK_VALUES // dim)
    names = iter(words)  # iterated, not sliced: a Sequence need not take slices
    for lo in range(0, len(vectors), rows):
        block = vectors[lo : lo + rows].tolist()
        text = "".join(w + " " + fmt % tuple(v) + "\n" for w, v in zip(itertools.islice(names, len(block)), block))
        f.write(text.encode("utf-8"))


def read_word2vec(path: str | os.PathLike, binary: bool | None = None) -> tuple[list[str], np.ndarray]:
    """Read word2vec text or binary vectors: ``(words, (count, dim) float32)``.

    The format is sniffed from the first row, not taken from the name: a text row is a word and
    ``dim`` numbers, a binary row a word, a space, ``4 * dim`` bytes and a newline. ``binary``
    given explicitly must agree with the file (else the error says which flag to drop). Text rows
    may end with a space before the newline (word2vec.c writes them so) and ``\r\n``.

    Raises:
        ValueError: the file is not in the format (bad header, a header claiming more rows than
            the file can hold, short rows, truncated data), or holds a word twice or a NaN or
            infinite value. The message names the file, and the row where there is one.
    """
    path = os.fspath(path)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        line = f.readline(256)
        header = line.split()
        try:
            if len(header) != 2 or not line.endswith(b"\n"):
                raise ValueError
            count, dim = int(header[0]), int(header[1])
        except ValueError:
            raise ValueError(f"{path}: the first line must be '<count> <dim>'") from None
        if count < 0 or dim < 1:
            raise ValueError(f"{path}: bad header {count} {dim}")
        rest = size - len(line)
        # The smallest rows: "w 0 0 ... 0\n" (2 bytes a value) and "w " + 4 bytes a value (the
        # last row's newline optional). A header claiming more than fits is refused before any
        # allocation proportional to it.
        if count and rest < min(count * (2 * dim + 2), count * (4 * dim + 3)) - 1:
            raise ValueError(
                f"{path}: the header claims {count} vectors of dim {dim}, more than the file's {size} bytes can hold"
            )
        is_binary = _sniff(f, path, dim) if count else bool(binary)
        if binary is not None and bool(binary) != is_binary:
            fix = "drop --binary (binary=True)" if binary else "pass --binary (binary=True), or drop binary=False"
            kind = "text" if not is_binary else "binary"
            raise ValueError(f"{path} is in word2vec {kind} format: {fix}")
        if is_binary:
            if rest < count * (4 * dim + 3) - 1:
                raise ValueError(f"{path}: truncated: {count} binary vectors of dim {dim} need more than {rest} bytes")
            words, vectors = _read_binary(f, path, count, dim)
        else:
            words, vectors = _read_text(f, path, count, dim)
        if f.read(1 << 16).strip():
            raise ValueError(f"{path}: data after the {count} vectors the header announces")
    _check_vectors(path, words, vectors)
    return words, vectors


def _sniff(f: BinaryIO, path: str, dim: int) -> bool:
    """Whether the first row (read, then the file rewound to it) is binary rather than text.

    Text when the row after the word is made of number characters (a text row with the wrong
    number of values is then reported as such by the text reader); binary when the word is
    followed by a space and at least ``4 * dim`` bytes (gensim writes no newline after a binary
    row, word2vec.c does, so what follows proves nothing)."""
    pos = f.tell()
    limit = _MAX_VALUE_CHARS * dim + 4096  # a whole text row, or a binary row with its word
    head = f.read(limit)
    f.seek(pos)
    space = head.find(b" ")
    line = head.split(b"\n", 1)[0]
    if space > 0 and len(line) > space and not line[space:].translate(None, _NUMBER_CHARS):
        return False
    if space > 0 and b"\n" not in head[:space] and len(head) >= space + 1 + 4 * dim:
        return True
    raise ValueError(f"{path}: the first row is neither a text row ('word' and {dim} numbers) nor a binary one")


def _text_values(line: bytes, dim: int) -> tuple[bytes, np.ndarray]:
    parts = line.rstrip(b"\r").rstrip(b" ").split(b" ")
    if len(parts) != dim + 1 or not parts[0]:
        raise ValueError(f"has {len(parts) - 1} values, expected {dim}")
    return parts[0], np.array(parts[1:], dtype=np.float32)


def _read_text(f: BinaryIO, path: str, count: int, dim: int) -> tuple[list[str], np.ndarray]:
    words: list[str] = []
    vectors = np.empty((count, dim), dtype=np.float32)
    for i in range(count):
        line = f.readline()
        if not line:
            raise ValueError(f"{path}: truncated: {i} of {count} vectors")
        try:
            word, vectors[i] = _text_values(line.rstrip(b"\n"), dim)
        except ValueError as e:
            raise ValueError(
                f"{path}: line {i + 2} {e}" if "values" in str(e) else f"{path}: line {i + 2}: {e}"
            ) from None
        words.append(word.decode("utf-8", "replace"))
    return words, vectors


def _read_binary(f: BinaryIO, path: str, count: int, dim: int) -> tuple[list[str], np.ndarray]:
    words: list[str] = []
    vectors = np.empty((count, dim), dtype=np.float32)
    nbytes = 4 * dim
    for i in range(count):
        word = bytearray()
        while True:
            ch = f.read(1)
            if not ch:
                raise ValueError(f"{path}: truncated at word {i}")
            if ch == b" ":
                break
            if ch != b"\n":  # the newline after the previous vector
                word += ch
            if len(word) > 1 << 16:
                raise ValueError(f"{path}: word {i} is longer than 64 KiB: not a binary vectors file")
        data = f.read(nbytes)
        if len(data) != nbytes:
            raise ValueError(f"{path}: truncated vector for word {i}")
        if not word:
            raise ValueError(f"{path}: word {i} is empty")
        words.append(word.decode("utf-8", "replace"))
        vectors[i] = np.frombuffer(data, dtype="<f4")
    return words, vectors


def _check_vectors(path: str, words: list[str], vectors: np.ndarray) -> None:
    if len(set(words)) != len(words):
        seen: dict[str, int] = {}
        for i, w in enumerate(words):
            if w in seen:
                raise ValueError(f"{path}: word {w!r} appears twice (vectors {seen[w]} and {i})")
            seen[w] = i
    bad = ~np.isfinite(vectors).all(axis=1)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{path}: the vector of {words[i]!r} (row {i}) holds NaN or infinite values")

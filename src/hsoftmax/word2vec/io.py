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


# About 64k values per block: a block's Python floats and text take a few MB, and blocks are
# still large enough that the per-block overhead vanishes next to the formatting itself.
_TEXT_BLOCK_VALUES = 1 << 16


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

    Raises:
        ValueError: the file is not in the format (bad header, short rows, truncated data).
    """
    path = os.fspath(path)
    binary = is_binary_name(path) if binary is None else bool(binary)
    with open(path, "rb") as f:
        header = f.readline().split()
        try:
            count, dim = int(header[0]), int(header[1])
        except (IndexError, ValueError):
            raise ValueError(f"{path}: the first line must be '<count> <dim>'") from None
        if count < 0 or dim < 1:
            raise ValueError(f"{path}: bad header {count} {dim}")
        return _read_binary(f, path, count, dim) if binary else _read_text(f, path, count, dim)


def _read_text(f: BinaryIO, path: str, count: int, dim: int) -> tuple[list[str], np.ndarray]:
    words: list[str] = []
    vectors = np.empty((count, dim), dtype=np.float32)
    for i in range(count):
        parts = f.readline().decode("utf-8", "replace").rstrip("\n").split(" ")
        if len(parts) != dim + 1:
            raise ValueError(f"{path}: line {i + 2} has {len(parts) - 1} values, expected {dim}")
        words.append(parts[0])
        vectors[i] = np.array(parts[1:], dtype=np.float32)
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
        data = f.read(nbytes)
        if len(data) != nbytes:
            raise ValueError(f"{path}: truncated vector for word {i}")
        words.append(word.decode("utf-8", "replace"))
        vectors[i] = np.frombuffer(data, dtype="<f4")
    return words, vectors

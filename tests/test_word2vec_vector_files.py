"""Hostile vector files: the format is sniffed, word2vec.c's own layout is read, and duplicate
words, non-finite rows, lying headers and truncation are clear errors naming the file."""

from __future__ import annotations

import numpy as np
import pytest

from hsoftmax.word2vec import KeyedVectors
from hsoftmax.word2vec.io import read_word2vec


@pytest.fixture(scope="module")
def small_kv():
    rng = np.random.default_rng(1)
    words = ["the", "of", "naïve", "x'y", "z9"]
    return KeyedVectors(words, rng.standard_normal((5, 7)).astype(np.float32) * 3)


def test_format_is_sniffed_not_taken_from_the_name(tmp_path, small_kv):
    text, binary = tmp_path / "really_text.bin", tmp_path / "really_binary.txt"
    small_kv.save(text, binary=False)
    small_kv.save(binary, binary=True)
    for path in (text, binary):
        np.testing.assert_array_equal(read_word2vec(path)[1], small_kv.vectors)
    with pytest.raises(ValueError, match="text format: drop --binary"):
        read_word2vec(text, binary=True)
    with pytest.raises(ValueError, match="binary format: pass --binary"):
        read_word2vec(binary, binary=False)


def test_word2vec_c_text_layout_is_read(tmp_path):
    path = tmp_path / "v.txt"
    path.write_bytes(b"2 3\nthe 0.1 0.2 0.3 \nof 1 2 3 \r\n")  # word2vec.c ends each row with a space
    words, vectors = read_word2vec(path)
    assert words == ["the", "of"]
    np.testing.assert_array_equal(vectors, np.array([[0.1, 0.2, 0.3], [1, 2, 3]], dtype=np.float32))


@pytest.mark.parametrize(
    "data,pattern",
    [
        (b"2 2\na 1 2\na 3 4\n", "'a' appears twice"),
        (b"2 2\na 1 nan\nb 3 4\n", "NaN or infinite"),
        (b"2 2\na 1 2\nb inf 4\n", "NaN or infinite"),
        (b"10000000000 2\na 1 2\n", "more than the file"),
        (b"3 1000000000\na 1 2\n", "more than the file"),
        (b"2 2\na 1.5555 2.5555\n", "truncated"),
        (b"1 2\na 1 2 3\n", "line 2 has 3 values, expected 2"),
        (b"1 2\na 1 2\nb 3 4\n", "data after"),
        (b"hello\n", "first line"),
        (b"", "first line"),
    ],
)
def test_bad_vector_files_are_clear_errors(tmp_path, data, pattern):
    path = tmp_path / "v.txt"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=pattern) as e:
        read_word2vec(path)
    assert str(path) in str(e.value)

"""The byte-level word table: grows past its capacity, decodes and finds words."""

from __future__ import annotations

import numpy as np


def test_word_table_grows_past_its_capacity():
    from hsoftmax.word2vec.word_table import WordTable

    t = WordTable(capacity=16)
    words = [f"w{i}" for i in range(5000)]
    ids, lines = t.add_block((" ".join(words + words[:10]) + "\n").encode())
    assert len(t) == 5000 and lines.tolist() == [5010]
    assert ids.tolist() == list(range(5000)) + list(range(10))
    assert t.counts[:12].tolist() == [2] * 10 + [1, 1]
    assert t.words(np.array([4999, 0, 17])) == ["w4999", "w0", "w17"]
    assert t.find(b"w123") == 123 and t.find(b"nope") == -1

"""word2vec corpus encoding: files (plain, .xz, .gz, invalid UTF-8) and token lists give the same
ids; the byte tokenizer splits where str.split() does; ids are read from disk in chunks."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conftest import topic_corpus
from hsoftmax.word2vec import CorpusError, encode_file, encode_sentences


@pytest.fixture(scope="module")
def corpus():
    return topic_corpus()


def test_encode_sentences_drops_rare_words_and_keeps_boundaries():
    c = encode_sentences([["a", "b", "a", "z"], ["y"], ["b", "c", "b"]], min_count=2)
    assert c.vocab.words == ("b", "a")
    assert np.asarray(c.ids).tolist() == [1, 0, 1, 0, 0]
    assert c.offsets.tolist() == [0, 3, 5]  # the sentence left empty is gone
    assert c.raw_words == 8
    c.close()


def test_long_sentences_are_cut():
    c = encode_sentences([["w"] * 25], min_count=1, max_sentence_length=10)
    assert c.offsets.tolist() == [0, 10, 20, 25]
    c.close()


def test_encode_file_matches_encode_sentences_and_counts_bad_utf8(tmp_path, corpus):
    path = tmp_path / "c.txt"
    with open(path, "wb") as f:
        for s in corpus[:200]:
            f.write((" ".join(s) + "\n").encode())
        f.write(b"caf\xff\xfe the\n\n   \n")
    a = encode_file(path, min_count=2)
    b = encode_sentences([*corpus[:200], ["caf\ufffd\ufffd", "the"]], min_count=2)
    assert a.vocab.words == b.vocab.words
    np.testing.assert_array_equal(np.asarray(a.ids), np.asarray(b.ids))
    np.testing.assert_array_equal(a.offsets, b.offsets)
    assert a.replaced == 2 and b.replaced == 0
    a.close(), b.close()


# Pieces that stress the byte-level tokenizer: every kind of Unicode whitespace, NUL, \r, invalid
# UTF-8 (stray continuation, truncated sequences, surrogate, overlong, a lead byte before a
# whitespace sequence), a literal U+FFFD (collides with decoded invalid bytes) and a non-ASCII word.
_PIECES = [
    b"a",
    b"bb",
    b"a",
    b" ",
    b" ",
    b"\t",
    b"\n",
    b"\n",
    b"\r",
    b"\x00",
    b"\x0b",
    b"\x1c",
    b"\x1f",
    "\u0085".encode(),
    "\u00a0".encode(),
    "\u1680".encode(),
    "\u2000".encode(),
    "\u200a".encode(),
    "\u2028".encode(),
    "\u202f".encode(),
    "\u205f".encode(),
    "\u3000".encode(),
    "\u200b".encode(),
    b"\xff",
    b"\x80",
    b"\xe2\x80",
    b"\xe2",
    b"\xed\xa0\x80",
    b"\xc0\xaf",
    b"\xf4\x90\x80\x80",
    b"\xf0\x9f\x98",
    b"\xf0",
    b"\xe0\x80\xaf",
    b"\xf8\x88\x80\x80\x80",
    "\ufffd".encode(),
    "caf\u00e9".encode(),
    "\U0001f600".encode(),
]


def _reference_encoding(data: bytes):
    """What decoding the whole text first with Python's own ``errors="replace"`` (one U+FFFD per
    maximal subpart of an ill-formed sequence) and splitting it with str.split() gives."""
    text = data.decode("utf-8", "replace")
    # every U+FFFD is a replacement except the literal ones (EF BF BD always decodes as itself)
    replaced = text.count("\ufffd") - data.count("\ufffd".encode())
    sentences = [line.replace("\x00", " ").split() for line in text.split("\n")]
    return sentences, replaced


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.lists(st.sampled_from(_PIECES), max_size=60).map(b"".join), st.binary(max_size=80)))
@example(b"\xff \x80 \xef\xbf\xbd x\xff x\xe2\x80\n x\x80\x80 \xe2\x80\xe2\x80 \xfe\xff")  # merges
@example(b"x\xe2\x80 y\xf0\x9f\x98 \xed\xa0\x80 \xc0\xaf \xf4\x90\x80\x80\n")  # one U+FFFD per maximal subpart
def test_byte_tokenizer_matches_decode_then_split(tmp_path, data):
    path = tmp_path / "c.txt"
    path.write_bytes(data)
    sentences, replaced = _reference_encoding(data)
    if not any(sentences):
        with pytest.raises(CorpusError, match="no words"):
            encode_file(path, min_count=1)
        return
    a = encode_file(path, min_count=1)
    b = encode_sentences(sentences, min_count=1)
    assert a.vocab.words == b.vocab.words
    assert a.vocab.counts.tolist() == b.vocab.counts.tolist()
    np.testing.assert_array_equal(np.asarray(a.ids), np.asarray(b.ids))
    np.testing.assert_array_equal(a.offsets, b.offsets)
    assert (a.raw_words, a.replaced) == (b.raw_words, replaced)
    a.close(), b.close()


def test_invalid_utf8_becomes_one_replacement_per_maximal_subpart(tmp_path):
    """The issue's case: a truncated 3-byte sequence is one U+FFFD, as Python's decoder gives."""
    path = tmp_path / "c.txt"
    path.write_bytes(b"x\xe2\x80 x\xe2\x80 \xed\xa0\x80\n")
    enc = encode_file(path, min_count=1)
    assert dict(zip(enc.vocab.words, enc.vocab.counts.tolist())) == {"x\ufffd": 2, "\ufffd\ufffd\ufffd": 1}
    assert enc.replaced == 5
    enc.close()


def test_stale_work_folders_of_dead_runs_are_removed(tmp_path):
    """kill -9 skips every cleanup: the next run removes a dead pid's encoded-corpus folder, and
    nothing else (a live pid's, a foreign name, a folder holding other files)."""
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"hsoftmax-corpus-{dead.pid}-abc123"
    stale.mkdir()
    (stale / "ids.i32").write_bytes(b"\0" * 8)
    live = tmp_path / f"hsoftmax-corpus-{os.getpid()}-zz"
    live.mkdir()
    foreign = tmp_path / f"hsoftmax-corpus-{dead.pid}-keep"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("not ours")
    enc = encode_sentences([["a", "b"]], min_count=1, workdir=str(tmp_path))
    names = sorted(p.name for p in tmp_path.iterdir())
    assert stale.name not in names and live.name in names and foreign.name in names
    assert any(n.startswith(f"hsoftmax-corpus-{os.getpid()}-") and n != live.name for n in names)
    enc.close()


def test_blocks_split_only_between_lines(tmp_path, monkeypatch, corpus):
    """Reads far smaller than a line (and lines longer than a read) give the same encoding."""
    from hsoftmax.word2vec import corpus as corpus_mod

    path = tmp_path / "c.txt"
    text = "\n".join(" ".join(s) for s in corpus[:300]) + "\n" + " ".join(corpus[0] * 40)  # no final newline
    path.write_text(text, encoding="utf-8")
    whole = encode_file(path, min_count=2)
    monkeypatch.setattr(corpus_mod, "_READ_BYTES", 7)
    small = encode_file(path, min_count=2)
    assert small.vocab.words == whole.vocab.words
    np.testing.assert_array_equal(np.asarray(small.ids), np.asarray(whole.ids))
    np.testing.assert_array_equal(small.offsets, whole.offsets)
    whole.close(), small.close()


def test_corpus_ids_are_read_in_chunks(tmp_path, corpus):
    c = encode_sentences(corpus[:50], min_count=1)
    buf = np.empty(100, dtype=np.int32)
    np.testing.assert_array_equal(c.read_ids(7, 60, buf), np.asarray(c.ids)[7:60])
    c.close()
    with pytest.raises(ValueError, match="closed"):
        c.read_ids(0, 5, buf)


def test_bad_corpora(tmp_path):
    with pytest.raises(CorpusError, match="not found"):
        encode_file(tmp_path / "nope.txt")
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(CorpusError, match="no words"):
        encode_file(tmp_path / "empty.txt")
    (tmp_path / "rare.txt").write_text("a b c\n")
    with pytest.raises(CorpusError, match="min_count"):
        encode_file(tmp_path / "rare.txt", min_count=2)
    with pytest.raises(TypeError):
        encode_sentences("not a list of sentences")


def test_compressed_corpora_and_the_embedded_one(tmp_path, corpus):
    import gzip
    import lzma

    text = "".join(" ".join(s) + "\n" for s in corpus[:300]).encode()
    (tmp_path / "c.txt").write_bytes(text)
    (tmp_path / "c.txt.xz").write_bytes(lzma.compress(text))
    (tmp_path / "c.txt.gz").write_bytes(gzip.compress(text))
    plain = encode_file(tmp_path / "c.txt", min_count=1)
    for name in ("c.txt.xz", "c.txt.gz"):
        other = encode_file(tmp_path / name, min_count=1)
        assert other.vocab.words == plain.vocab.words
        np.testing.assert_array_equal(np.asarray(other.ids), np.asarray(plain.ids))
        other.close()
    plain.close()
    (tmp_path / "bad.xz").write_bytes(b"not xz at all")
    with pytest.raises(CorpusError, match="cannot read"):
        encode_file(tmp_path / "bad.xz")

    from hsoftmax.word2vec import embedded_corpus_path

    path = embedded_corpus_path()
    assert os.path.getsize(path) > 1_000_000
    with lzma.open(path, "rt", encoding="utf-8") as f:
        head = [next(f) for _ in range(3)]
    assert head[1].startswith("in the beginning god created the heaven and the earth")
    assert os.path.exists(os.path.join(os.path.dirname(path), "LICENSE"))

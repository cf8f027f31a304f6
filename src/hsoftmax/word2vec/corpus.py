"""Reading a corpus once and encoding it to token ids.

A corpus is UTF-8 text, one sentence (or paragraph) per line, tokens separated by whitespace,
already tokenized (this is what word2vec.c, gensim's ``corpus_file`` and fastText read). It is
read in one streaming pass: each token gets a provisional id in order of first appearance and the
provisional ids go to a temporary file on disk. The vocabulary is then chosen from the counts and a
vectorised remap writes the final ``int32`` ids (words below ``min_count`` dropped) to a second
file, which training memory-maps. No Python list of strings ever holds the corpus.
"""

from __future__ import annotations

import codecs
import contextlib
import gc
import gzip
import lzma
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from .vocab import Vocab

__all__ = ["EncodedCorpus", "CorpusError", "encode_file", "encode_sentences", "embedded_corpus_path"]


def embedded_corpus_path() -> str:
    """Path of the corpus shipped with the package: the King James Bible and Jane Austen's six
    novels (public domain, about 1.5M tokens, xz-compressed; see ``hsoftmax/data/README.md``)."""
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "kjv_austen.txt.xz")

#: Longer sentences are cut into pieces of this many in-vocabulary words (as gensim does), so
#: per-thread scratch buffers have a fixed size.
MAX_SENTENCE_LENGTH = 10000
_READ_BYTES = 1 << 20  # 1 MiB of text per read: bounded memory, few Python round trips
_EOL = "\x00"  # not whitespace, so split() keeps it as a token marking the end of a line
_EOL_SPACED = " \x00 "
_BLOCK = 1 << 20  # tokens per remap block

_replaced = [0]


def _count_and_replace(exc: UnicodeDecodeError) -> tuple[str, int]:
    # One U+FFFD per invalid sequence, like errors="replace", but counted for the report.
    _replaced[0] += 1
    return "\ufffd", exc.start + 1


codecs.register_error("hsoftmax.count_replace", _count_and_replace)


@contextlib.contextmanager
def _no_gc():
    # Millions of short-lived token strings would trigger the cyclic collector over and over
    # (they hold no cycles): pausing it makes encoding about twice as fast.
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


class CorpusError(ValueError):
    """The corpus cannot be trained on (missing, empty, or no word reaches ``min_count``)."""


class EncodedCorpus:
    """A corpus as in-vocabulary token ids plus sentence boundaries.

    Attributes:
        vocab: the :class:`~hsoftmax.word2vec.vocab.Vocab`.
        ids: ``(num_tokens,)`` int32 word ids, memory-mapped from ``workdir``.
        offsets: ``(num_sentences + 1,)`` int64; sentence ``s`` is ``ids[offsets[s]:offsets[s+1]]``.
        raw_words: tokens read, out-of-vocabulary ones included.
        replaced: invalid UTF-8 sequences that were replaced by U+FFFD.
    """

    def __init__(self, vocab: Vocab, ids: np.ndarray, offsets: np.ndarray, raw_words: int,
                 replaced: int = 0, tmpdir: tempfile.TemporaryDirectory | None = None) -> None:
        self.vocab = vocab
        self.ids = ids
        self.offsets = offsets
        self.raw_words = int(raw_words)
        self.replaced = int(replaced)
        self._tmpdir = tmpdir  # keeps the memory-mapped file alive as long as this object

    @property
    def num_tokens(self) -> int:
        return int(self.offsets[-1])

    @property
    def num_sentences(self) -> int:
        return int(self.offsets.size - 1)

    def close(self) -> None:
        """Drop the memory map and delete the temporary files."""
        self.ids = np.zeros(0, dtype=np.int32)
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None

    def __repr__(self) -> str:
        return (f"EncodedCorpus({self.num_tokens} tokens in vocabulary of {self.raw_words} read, "
                f"{self.num_sentences} sentences, {len(self.vocab)} words)")


class _Encoder:
    """Streams token lists to provisional ids on disk and counts them."""

    def __init__(self, workdir: str) -> None:
        self.index: dict[str, int] = {_EOL: 0}
        self.counts = np.zeros(1, dtype=np.int64)
        self.lengths: list[np.ndarray] = []
        self.path = os.path.join(workdir, "provisional.i32")
        self.file = open(self.path, "wb")
        self.raw_words = 0

    def add_tokens(self, toks: list[str]) -> None:
        """Add a block of tokens in which ``_EOL`` marks the end of each sentence."""
        if not toks:
            return
        index = self.index
        sd = index.setdefault
        # setdefault with len(index) gives a new word the next free id in one lookup.
        arr = np.fromiter((sd(w, len(index)) for w in toks), dtype=np.int32, count=len(toks))
        eol = np.flatnonzero(arr == 0)  # id 0 is the end-of-sentence marker
        starts = np.concatenate(([-1], eol[:-1]))
        lens = eol - starts - 1
        words = arr[arr != 0]
        if words.size == 0:
            return
        words.tofile(self.file)
        self.raw_words += words.size
        binc = np.bincount(words, minlength=len(index))
        if binc.size > self.counts.size:
            binc[: self.counts.size] += self.counts
            self.counts = binc
        else:
            self.counts += binc
        self.lengths.append(lens[lens > 0])

    def add(self, sentences: Iterable[Sequence[str]]) -> None:
        """Add a block of sentences given as token lists."""
        toks: list[str] = []
        for s in sentences:
            toks += s
            toks.append(_EOL)
        self.add_tokens(toks)

    def finish(self, min_count: int, max_vocab: int | None, tmpdir, replaced: int,
               max_sentence_length: int) -> EncodedCorpus:
        self.file.close()
        if self.raw_words == 0:
            raise CorpusError("the corpus contains no words")
        words = list(self.index)  # insertion order == provisional id order
        counts = dict(zip(words[1:], self.counts[1:].tolist()))
        vocab = Vocab.from_counts(counts, min_count, max_vocab)
        lut = np.full(len(words), -1, dtype=np.int32)
        lut[[self.index[w] for w in vocab.words]] = np.arange(len(vocab), dtype=np.int32)
        del words, counts  # the full word table is no longer needed: free it before _remap
        self.index = {}
        raw_off = np.zeros(sum(a.size for a in self.lengths) + 1, dtype=np.int64)
        np.cumsum(np.concatenate(self.lengths), out=raw_off[1:])
        self.lengths = []
        _release_memory()
        ids, off = _remap(self.path, lut, raw_off, os.path.join(tmpdir.name, "ids.i32"))
        os.remove(self.path)
        off = _split_long(off, max_sentence_length)
        return EncodedCorpus(vocab, ids, off, self.raw_words, replaced, tmpdir)


def _release_memory() -> None:
    """Hand the word table's freed memory back to the OS before the big arrays are allocated, so
    it does not add to the peak (glibc keeps freed small objects otherwise). No-op elsewhere."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _remap(src: str, lut: np.ndarray, raw_off: np.ndarray, dst: str) -> tuple[np.ndarray, np.ndarray]:
    """Provisional ids -> final ids, out-of-vocabulary tokens dropped, in sentence-aligned blocks.

    Blocks are read with plain reads into fresh buffers rather than through a memory map, so the
    pages of the provisional file never count towards this process's resident memory."""
    new_off = np.zeros_like(raw_off)
    kept = 0
    ns = raw_off.size - 1
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        s = 0
        while s < ns:
            # Whole sentences up to about _BLOCK tokens (at least one sentence).
            e = max(s + 1, int(np.searchsorted(raw_off, raw_off[s] + _BLOCK, side="right")) - 1)
            e = min(e, ns)
            n = int(raw_off[e] - raw_off[s])
            block = lut[np.fromfile(fin, dtype=np.int32, count=n)]
            keep = block >= 0
            csum = np.zeros(n + 1, dtype=np.int64)
            np.cumsum(keep, out=csum[1:])
            new_off[s + 1 : e + 1] = kept + csum[raw_off[s + 1 : e + 1] - raw_off[s]]
            block[keep].tofile(fout)
            kept += int(csum[-1])
            s = e
    if kept == 0:  # unreachable when the vocabulary is non-empty, kept for safety
        raise CorpusError("no token of the corpus is in the vocabulary")
    ids = np.memmap(dst, dtype=np.int32, mode="r", shape=(kept,))
    return ids, np.unique(new_off)  # unique() drops sentences left empty


def _split_long(off: np.ndarray, limit: int) -> np.ndarray:
    """Cut sentences longer than ``limit`` into ``limit``-sized pieces."""
    lengths = np.diff(off)
    long = np.flatnonzero(lengths > limit)
    if long.size == 0:
        return off
    cuts = [np.arange(off[s] + limit, off[s + 1], limit) for s in long]  # only the long ones
    return np.union1d(off, np.concatenate(cuts)).astype(np.int64)


def _open_binary(path: str):
    """Plain, ``.xz`` or ``.gz`` files, decompressed on the fly."""
    if path.endswith(".xz"):
        return lzma.open(path, "rb")
    if path.endswith(".gz"):
        return gzip.open(path, "rb")
    return open(path, "rb")


def _iter_file_blocks(path: str) -> Iterator[list[str]]:
    """Yield blocks of tokens of about 1 MiB of text each, ``_EOL`` ending every line."""
    dec = codecs.getincrementaldecoder("utf-8")("hsoftmax.count_replace")
    rest = ""
    with _open_binary(path) as f:
        while True:
            data = f.read(_READ_BYTES)
            text = rest + dec.decode(data, final=not data)
            if data:
                cut = text.rfind("\n")
                if cut < 0:  # a line longer than the read size: keep reading
                    rest = text
                    continue
                text, rest = text[: cut + 1], text[cut + 1 :]
            elif text and not text.endswith("\n"):
                text += "\n"
            # One split() for the whole block: newlines become marker tokens, so sentence
            # boundaries survive without a Python list per line.
            yield text.replace(_EOL, " ").replace("\n", _EOL_SPACED).split()
            if not data:
                return


def _check_params(min_count: int, max_sentence_length: int) -> None:
    if isinstance(min_count, bool) or not isinstance(min_count, (int, np.integer)) or min_count < 1:
        raise ValueError(f"min_count must be an int >= 1, got {min_count!r}")
    if not isinstance(max_sentence_length, (int, np.integer)) or max_sentence_length < 1:
        raise ValueError(f"max_sentence_length must be an int >= 1, got {max_sentence_length!r}")


def encode_file(path: str | os.PathLike, min_count: int = 5, max_vocab: int | None = None,
                workdir: str | None = None, max_sentence_length: int = MAX_SENTENCE_LENGTH) -> EncodedCorpus:
    """Read a text corpus (one sentence per line; ``.xz``/``.gz`` are decompressed on the fly)
    and encode it to token ids.

    Invalid UTF-8 is replaced by U+FFFD and counted in ``.replaced``.

    Raises:
        CorpusError: the file is missing or unreadable, contains no words, or no word reaches
            ``min_count``.
    """
    _check_params(min_count, max_sentence_length)
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CorpusError(f"corpus file not found: {path}")
    if os.path.isdir(path):
        raise CorpusError(f"corpus path is a directory, not a file: {path}")
    tmp = tempfile.TemporaryDirectory(prefix="hsoftmax-corpus-", dir=workdir)
    try:
        enc = _Encoder(tmp.name)
        before = _replaced[0]
        try:
            with _no_gc():
                for block in _iter_file_blocks(path):
                    enc.add_tokens(block)
        except (OSError, EOFError, lzma.LZMAError) as e:  # unreadable or corrupt compressed file
            raise CorpusError(f"cannot read corpus {path}: {getattr(e, 'strerror', None) or e}") from None
        return _finish(enc, min_count, max_vocab, tmp, _replaced[0] - before, max_sentence_length, path)
    except BaseException:
        tmp.cleanup()
        raise


def encode_sentences(sentences: Iterable[Sequence[str]], min_count: int = 5, max_vocab: int | None = None,
                     workdir: str | None = None, max_sentence_length: int = MAX_SENTENCE_LENGTH) -> EncodedCorpus:
    """Encode an iterable of token lists (streamed in blocks of 10,000 sentences).

    >>> c = encode_sentences([["a", "b", "a"], ["b", "c"]], min_count=2)
    >>> c.vocab.words, np.asarray(c.ids).tolist(), c.offsets.tolist()
    (('a', 'b'), [0, 1, 0, 1], [0, 3, 4])
    """
    _check_params(min_count, max_sentence_length)
    if isinstance(sentences, (str, bytes)):
        raise TypeError("sentences must be an iterable of token lists, not a string (use encode_file for a path)")
    tmp = tempfile.TemporaryDirectory(prefix="hsoftmax-corpus-", dir=workdir)
    try:
        enc = _Encoder(tmp.name)
        block: list[Sequence[str]] = []
        for s in sentences:  # the collector stays on here: the caller's iterator may need it
            if isinstance(s, str):
                raise TypeError("each sentence must be a sequence of tokens, got a str")
            block.append(s)
            if len(block) >= 10000:
                enc.add(block)
                block = []
        enc.add(block)
        return _finish(enc, min_count, max_vocab, tmp, 0, max_sentence_length, "the corpus")
    except BaseException:
        tmp.cleanup()
        raise


def _finish(enc, min_count, max_vocab, tmp, replaced, max_sentence_length, name) -> EncodedCorpus:
    try:
        return enc.finish(min_count, max_vocab, tmp, replaced, max_sentence_length)
    except CorpusError as e:
        raise CorpusError(f"{name}: {e}") from None
    except ValueError as e:  # the vocabulary's "no word reaches min_count"
        raise CorpusError(f"{name}: {e}") from None

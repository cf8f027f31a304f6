"""Reading a corpus once and encoding it to token ids.

A corpus is UTF-8 text, one sentence (or paragraph) per line, tokens separated by whitespace,
already tokenized (this is what word2vec.c, gensim's ``corpus_file`` and fastText read). It is
read in one streaming pass: each token gets a provisional id in order of first appearance and the
provisional ids go to a temporary file on disk. The vocabulary is then chosen from the counts and a
vectorised remap writes the final ``int32`` ids (words below ``min_count`` dropped) to a second
file, which training reads chunk by chunk. No Python list of strings ever holds the corpus; a file
is tokenized and counted at the byte level (:mod:`.word_table`), so only vocabulary words ever
become Python strings.
"""

from __future__ import annotations

import codecs
import errno
import functools
import gc
import gzip
import io
import lzma
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np

from .runtime import release_jit_pages, start_numba
from .vocab import Vocab, no_word_reaches, rank
from .word_table import WordTable

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
_BLOCK = 1 << 18  # tokens per remap block (its temporaries are ~20 bytes per token)

_replaced = [0]


def _count_and_replace(exc: UnicodeError) -> tuple[str, int]:
    # Exactly errors="replace", but counted for the report: one U+FFFD per error the decoder
    # reports, resuming at its end. The decoder reports each maximal subpart of an ill-formed
    # sequence (Unicode's "U+FFFD substitution of maximal subparts"): b"x\xe2\x80" is one error
    # covering both bytes, so resuming at exc.start + 1 would give two U+FFFD.
    if not isinstance(exc, UnicodeDecodeError):  # a codec error handler may be handed any kind
        raise exc
    _replaced[0] += 1
    return "\ufffd", exc.end


codecs.register_error("hsoftmax.count_replace", _count_and_replace)


_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}
_TMP_PREFIX = "hsoftmax-corpus-"
_TMP_PATTERN = re.compile(r"hsoftmax-corpus-(\d+)-[A-Za-z0-9_]+")
_TMP_FILES = {"provisional.i32", "ids.i32"}


def _new_workdir(workdir: str | None) -> tempfile.TemporaryDirectory[str]:
    """The encoded corpus's temporary directory, named with this process's id so that one left
    by a killed run (``kill -9`` skips every cleanup) is recognised and removed by the next."""
    _remove_stale_workdirs(workdir if workdir is not None else tempfile.gettempdir())
    return tempfile.TemporaryDirectory(prefix=f"{_TMP_PREFIX}{os.getpid()}-", dir=workdir)


def _remove_stale_workdirs(parent: str) -> list[str]:
    """Remove ``hsoftmax-corpus-<pid>-*`` directories of processes that no longer exist.

    Only directories owned by this user whose pid is dead on this machine and which hold nothing
    but our two files; a live pid (even a reused one) keeps its directory."""
    removed: list[str] = []
    try:
        entries = os.listdir(parent)
    except OSError:
        return removed
    for entry in entries:
        m = _TMP_PATTERN.fullmatch(entry)
        if m is None or _pid_alive(int(m.group(1))):
            continue
        full = os.path.join(parent, entry)
        try:
            st = os.lstat(full)
            if not os.path.isdir(full) or os.path.islink(full) or st.st_uid != os.getuid():
                continue
            if set(os.listdir(full)) <= _TMP_FILES:
                shutil.rmtree(full)
                removed.append(entry)
        except OSError:
            continue
    return removed


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # someone else's live process, or unknown: keep it
    return True


class CorpusError(ValueError):
    """The corpus cannot be trained on (missing, empty, or no word reaches ``min_count``)."""


class EncodedCorpus:
    """A corpus as in-vocabulary token ids plus sentence boundaries.

    The ids stay on disk (in a temporary directory that lives as long as this object): training
    reads them a chunk at a time with :meth:`read_ids`, so they never add to the process's memory.

    Attributes:
        vocab: the :class:`~hsoftmax.word2vec.vocab.Vocab`.
        ids: ``(num_tokens,)`` int32 word ids, memory-mapped on first access.
        offsets: ``(num_sentences + 1,)`` int64; sentence ``s`` is ``ids[offsets[s]:offsets[s+1]]``.
        raw_words: tokens read, out-of-vocabulary ones included.
        replaced: invalid UTF-8 sequences that were replaced by U+FFFD.
    """

    def __init__(
        self,
        vocab: Vocab,
        ids_path: str,
        offsets: np.ndarray,
        raw_words: int,
        replaced: int = 0,
        tmpdir: tempfile.TemporaryDirectory[str] | None = None,
    ) -> None:
        self.vocab = vocab
        self.offsets = offsets
        self.raw_words = int(raw_words)
        self.replaced = int(replaced)
        self._path = ids_path
        self._ids: np.ndarray | None = None
        self._fd: int | None = os.open(ids_path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        self._tmpdir = tmpdir  # keeps the ids file alive as long as this object

    @property
    def num_tokens(self) -> int:
        return int(self.offsets[-1])

    @property
    def num_sentences(self) -> int:
        return int(self.offsets.size - 1)

    @property
    def ids(self) -> np.ndarray:
        if self._ids is None:
            if self._fd is None:
                raise ValueError("the corpus is closed")
            self._ids = np.memmap(self._path, dtype=np.int32, mode="r", shape=(self.num_tokens,))
        return self._ids

    def read_ids(self, start: int, stop: int, out: np.ndarray) -> np.ndarray:
        """Tokens ``start:stop`` into the front of ``out`` (int32, large enough); returns that view.

        A positional read (no shared file position, the GIL released during the copy), so worker
        threads call it concurrently. The pages go through the OS's cache, not this process's
        memory, as gensim's and word2vec.c's reads of the text do.
        """
        if self._fd is None:
            raise ValueError("the corpus is closed")
        n = int(stop) - int(start)
        view = out[:n]
        mv = view.data.cast("B")  # a memoryview of the ids' bytes (numpy's stubs type .data)
        got, pos = 0, int(start) * 4
        while got < mv.nbytes:
            k = _pread_into(self._fd, mv[got:], pos + got)
            if k <= 0:
                raise OSError(f"the encoded corpus {self._path} is shorter than expected")
            got += k
        return view

    def close(self) -> None:
        """Drop the memory map, close and delete the temporary files."""
        self._ids = None
        self._close_fd()
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None

    def _close_fd(self) -> None:
        fd = getattr(self, "_fd", None)  # absent when __init__ failed before opening the file
        if fd is not None:
            os.close(fd)
            self._fd = None

    __del__ = _close_fd  # the temporary directory has a finalizer of its own

    def __repr__(self) -> str:
        return (
            f"EncodedCorpus({self.num_tokens} tokens in vocabulary of {self.raw_words} read, "
            f"{self.num_sentences} sentences, {len(self.vocab)} words)"
        )


def _pread_copy(fd: int, mv: memoryview, pos: int) -> int:
    """os.preadv's fallback for systems without it (one copy more)."""
    data = os.pread(fd, mv.nbytes, pos)
    mv[: len(data)] = data
    return len(data)


#: Read at a file position into a buffer, without moving a shared file offset.
_pread_into = (lambda fd, mv, pos: os.preadv(fd, [mv], pos)) if hasattr(os, "preadv") else _pread_copy


class _Encoder:
    """Streams token lists to provisional ids on disk and counts them."""

    def __init__(self, workdir: str) -> None:
        self.index: dict[str, int] = {_EOL: 0}
        self.counts = np.zeros(1, dtype=np.int64)
        self.lengths: list[np.ndarray] = []
        self.path = os.path.join(workdir, "provisional.i32")
        self.file = open(self.path, "wb")  # noqa: SIM115 - held across add_* calls, closed by finish()
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

    def finish(
        self,
        min_count: int,
        max_vocab: int | None,
        tmpdir: tempfile.TemporaryDirectory[str],
        max_sentence_length: int,
        base: Vocab | None = None,
    ) -> EncodedCorpus:
        self.file.close()
        if self.raw_words == 0:
            raise CorpusError("the corpus contains no words")
        words = list(self.index)  # insertion order == provisional id order
        if base is None:
            counts = dict(zip(words[1:], self.counts[1:].tolist()))
            vocab = Vocab.from_counts(counts, min_count, max_vocab)
            prov = np.array([self.index[w] for w in vocab.words], dtype=np.int64)
            del counts
        else:
            found = np.array([self.index.get(w, -1) if w != _EOL else -1 for w in base.words], dtype=np.int64)
            vocab, prov = _extended(base, found, self.counts, min_count, max_vocab, functools.partial(_pick, words))
        lut = np.full(len(words), -1, dtype=np.int32)
        lut[prov[prov >= 0]] = np.flatnonzero(prov >= 0).astype(np.int32)
        del words  # the full word table is no longer needed: free it before _remap
        self.index = {}
        lengths, self.lengths = self.lengths, []
        return _encoded(self.path, lut, lengths, vocab, self.raw_words, 0, tmpdir, max_sentence_length)


class _ByteEncoder:
    """The file path: blocks of bytes tokenized and counted by a :class:`WordTable`, provisional
    ids (from 0) streamed to disk."""

    def __init__(self, workdir: str) -> None:
        self.table = WordTable()
        self.lengths: list[np.ndarray] = []
        self.path = os.path.join(workdir, "provisional.i32")
        self.file = open(self.path, "wb")  # noqa: SIM115 - held across add_* calls, closed by finish()
        self.raw_words = 0

    def add_block(self, data: bytes) -> None:
        ids, lines = self.table.add_block(data)
        ids.tofile(self.file)
        self.raw_words += ids.size
        self.lengths.append(lines)

    def finish(
        self,
        min_count: int,
        max_vocab: int | None,
        tmpdir: tempfile.TemporaryDirectory[str],
        max_sentence_length: int,
        base: Vocab | None = None,
    ) -> EncodedCorpus:
        self.file.close()
        if self.raw_words == 0:
            raise CorpusError("the corpus contains no words")
        t = self.table
        counts = t.counts.copy()
        canon, names, replaced = self._merge_invalid(counts)
        if base is not None:
            by_text = {text: w for w, text in names.items()}
            found = np.array(
                [by_text.get(w, t.find(w.encode("utf-8", "surrogatepass"))) for w in base.words], dtype=np.int64
            )
            vocab, prov = _extended(
                base, found, counts, min_count, max_vocab, functools.partial(_decoded, t, names=names)
            )
            lut = np.full(len(t), -1, dtype=np.int32)
            lut[prov[prov >= 0]] = np.flatnonzero(prov >= 0).astype(np.int32)
            lut = lut[canon]
            del t, canon, self.table
            return _encoded(self.path, lut, self.lengths, vocab, self.raw_words, replaced, tmpdir, max_sentence_length)
        kept = np.flatnonzero(counts >= min_count)
        if kept.size == 0:
            raise no_word_reaches(min_count, int(np.count_nonzero(counts)), int(counts.max()))
        kept_words = _decoded(t, kept, names)
        kept_counts = counts[kept]
        order = rank(kept_words, kept_counts.tolist(), max_vocab)
        vocab = Vocab([kept_words[i] for i in order], kept_counts[order])
        lut = np.full(len(t), -1, dtype=np.int32)
        lut[kept[order]] = np.arange(len(order), dtype=np.int32)
        lut = lut[canon]  # a merged word's tokens take its canonical word's id
        del kept_words, t, canon, self.table  # the word table's memory goes before _encoded's arrays
        return _encoded(self.path, lut, self.lengths, vocab, self.raw_words, replaced, tmpdir, max_sentence_length)

    def _merge_invalid(self, counts: np.ndarray) -> tuple[np.ndarray, dict[int, str], int]:
        """Decode the words that are not well-formed UTF-8 (each invalid sequence becomes U+FFFD,
        counted once per occurrence) and merge each into the word with the same text, so the
        vocabulary is what decoding the whole text first would give. ``counts`` is updated in
        place; returns each word's canonical id, the texts of the invalid canonical words, and
        the replacements made."""
        t = self.table
        canon = np.arange(len(t), dtype=np.int64)
        names: dict[int, str] = {}
        seen: dict[str, int] = {}
        replaced = 0
        for w in t.invalid_utf8().tolist():
            before = _replaced[0]
            text = t.word(w, "hsoftmax.count_replace")
            replaced += (_replaced[0] - before) * int(counts[w])
            c = t.find(text.encode("utf-8"))  # a well-formed word that reads the same
            if c < 0:
                c = seen.setdefault(text, w)
            if c == w:
                names[w] = text
            else:
                canon[w] = c
                counts[c] += counts[w]
                counts[w] = 0
        return canon, names, replaced


def _pick(words: list[str], ids: np.ndarray) -> list[str]:
    return [words[i] for i in ids.tolist()]


def _decoded(table: WordTable, ids: np.ndarray, names: dict[int, str]) -> list[str]:
    """The texts of words ``ids`` of a table: well-formed words are decoded in one go; the merged
    invalid ones already have a text in ``names``."""
    plain = iter(table.words(np.array([w for w in ids.tolist() if w not in names], dtype=np.int64)))
    return [names[w] if w in names else next(plain) for w in ids.tolist()]


def _extended(
    base: Vocab,
    found: np.ndarray,
    counts: np.ndarray,
    min_count: int,
    max_vocab: int | None,
    texts: Callable[[np.ndarray], list[str]],
) -> tuple[Vocab, np.ndarray]:
    """``base`` extended by a new corpus (continued training): its words keep their ids, counted
    in this corpus (0 where absent); the other words reaching ``min_count`` follow, most frequent
    first, up to ``max_vocab`` words in all.

    Args:
        found: provisional id of each ``base`` word in this corpus, or -1.
        counts: occurrences of each provisional id (the sentence encoder's end-of-line marker
            has count 0, so it is never kept).
        texts: decodes provisional ids.

    Returns:
        the vocabulary and the provisional id of each of its words (-1: absent from this corpus).
    """
    fresh = counts.copy()
    fresh[found[found >= 0]] = 0  # already in the vocabulary
    cand = np.flatnonzero(fresh >= min_count)
    cand_words = texts(cand)
    room = None if max_vocab is None else max(0, max_vocab - len(base))
    order = rank(cand_words, counts[cand].tolist(), room)
    old_counts = np.where(found >= 0, counts[np.maximum(found, 0)], 0)
    vocab = Vocab(base.words + tuple(cand_words[i] for i in order), np.concatenate([old_counts, counts[cand[order]]]))
    if vocab.total == 0:
        raise CorpusError("no word of the corpus is in the vocabulary or reaches min_count")
    return vocab, np.concatenate([found, cand[order]])


def _encoded(
    prov_path: str,
    lut: np.ndarray,
    lengths: list[np.ndarray],
    vocab: Vocab,
    raw_words: int,
    replaced: int,
    tmpdir: tempfile.TemporaryDirectory[str],
    max_sentence_length: int,
) -> EncodedCorpus:
    """Provisional ids on disk + the provisional -> final id table -> an :class:`EncodedCorpus`."""
    # A full collection walks every live object (a second or more in a process holding torch and
    # a test suite); below a million words the temporaries are too small to lower the peak.
    release = raw_words >= _RELEASE_MIN_WORDS
    if release:
        _release_memory()
    raw_off = np.zeros(sum(a.size for a in lengths) + 1, dtype=np.int64)
    np.cumsum(np.concatenate(lengths), out=raw_off[1:])
    lengths.clear()
    dst = os.path.join(tmpdir.name, "ids.i32")
    off = _remap(prov_path, lut, raw_off, dst)
    os.remove(prov_path)
    off = _split_long(off, max_sentence_length)
    if release:
        _release_memory()
    return EncodedCorpus(vocab, dst, off, raw_words, replaced, tmpdir)


_RELEASE_MIN_WORDS = 1_000_000  # corpora this big hand their build temporaries back to the OS


def _release_memory() -> None:
    """Hand the word table's freed memory back to the OS before the big arrays are allocated, so
    it does not add to the peak (glibc keeps freed small objects otherwise), and LLVM's clean
    pages that the kernels just loaded touched again (:func:`.runtime.release_jit_pages`). No-op
    elsewhere."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    release_jit_pages()


def _remap(src: str, lut: np.ndarray, raw_off: np.ndarray, dst: str) -> np.ndarray:
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
    # Sentences left empty repeat their start: drop them (the offsets are already sorted).
    return new_off[np.concatenate(([True], new_off[1:] != new_off[:-1]))]


def _split_long(off: np.ndarray, limit: int) -> np.ndarray:
    """Cut sentences longer than ``limit`` into ``limit``-sized pieces."""
    lengths = np.diff(off)
    long = np.flatnonzero(lengths > limit)
    if long.size == 0:
        return off
    cuts = [np.arange(off[s] + limit, off[s + 1], limit) for s in long]  # only the long ones
    return np.union1d(off, np.concatenate(cuts)).astype(np.int64)


def _open_binary(path: str) -> io.BufferedIOBase:
    """Plain, ``.xz`` or ``.gz`` files, decompressed on the fly."""
    if path.endswith(".xz"):
        return lzma.open(path, "rb")
    if path.endswith(".gz"):
        return gzip.open(path, "rb")
    return open(path, "rb")


def _iter_file_blocks(path: str) -> Iterator[bytes]:
    """Yield blocks of complete lines, about 1 MiB each; the last line always ends with ``\\n``."""
    parts: list[bytes] = []  # a line longer than one read, gathered until its newline
    with _open_binary(path) as f:
        while True:
            data = f.read(_READ_BYTES)
            if not data:
                rest = b"".join(parts)
                if rest:
                    yield rest + b"\n"
                return
            cut = data.rfind(b"\n")
            if cut < 0:
                parts.append(data)
                continue
            yield b"".join(parts) + data[: cut + 1] if parts else data[: cut + 1]
            parts = [data[cut + 1 :]]


def _check_params(min_count: int, max_sentence_length: int) -> None:
    if isinstance(min_count, bool) or not isinstance(min_count, (int, np.integer)) or min_count < 1:
        raise ValueError(f"min_count must be an int >= 1, got {min_count!r}")
    if not isinstance(max_sentence_length, (int, np.integer)) or max_sentence_length < 1:
        raise ValueError(f"max_sentence_length must be an int >= 1, got {max_sentence_length!r}")


def encode_file(
    path: str | os.PathLike,
    min_count: int = 5,
    max_vocab: int | None = None,
    workdir: str | None = None,
    max_sentence_length: int = MAX_SENTENCE_LENGTH,
    vocab: Vocab | None = None,
) -> EncodedCorpus:
    """Read a text corpus (one sentence per line; ``.xz``/``.gz`` are decompressed on the fly)
    and encode it to token ids.

    Invalid UTF-8 is replaced by U+FFFD and counted in ``.replaced``.

    With ``vocab`` (a trained model's, for continued training) its words keep their ids and are
    kept whatever their count here (0 where absent; ``.vocab.counts`` are this corpus's counts);
    the words not in it that reach ``min_count`` follow, most frequent first, up to ``max_vocab``
    words in all.

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
    tmp = _new_workdir(workdir)
    start_numba()  # numba's target set up and LLVM's pages handed back before the word table grows
    try:
        enc = _ByteEncoder(tmp.name)
        try:
            for block in _iter_file_blocks(path):
                enc.add_block(block)
        except (OSError, EOFError, lzma.LZMAError) as e:  # unreadable or corrupt compressed file
            if isinstance(e, OSError) and e.errno in _WRITE_ERRNOS:
                raise  # writing the provisional ids failed (a full disk), not reading the corpus
            raise CorpusError(f"cannot read corpus {path}: {getattr(e, 'strerror', None) or e}") from None
        return _finish(lambda: enc.finish(min_count, max_vocab, tmp, max_sentence_length, vocab), path)
    except BaseException:
        tmp.cleanup()
        raise


def encode_sentences(
    sentences: Iterable[Sequence[str]],
    min_count: int = 5,
    max_vocab: int | None = None,
    workdir: str | None = None,
    max_sentence_length: int = MAX_SENTENCE_LENGTH,
    vocab: Vocab | None = None,
) -> EncodedCorpus:
    """Encode an iterable of token lists (streamed in blocks of 10,000 sentences); ``vocab`` as
    in :func:`encode_file`.

    >>> c = encode_sentences([["a", "b", "a"], ["b", "c"]], min_count=2)
    >>> c.vocab.words, np.asarray(c.ids).tolist(), c.offsets.tolist()
    (('a', 'b'), [0, 1, 0, 1], [0, 3, 4])
    """
    _check_params(min_count, max_sentence_length)
    if isinstance(sentences, (str, bytes)):
        raise TypeError("sentences must be an iterable of token lists, not a string (use encode_file for a path)")
    tmp = _new_workdir(workdir)
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
        return _finish(lambda: enc.finish(min_count, max_vocab, tmp, max_sentence_length, vocab), "the corpus")
    except BaseException:
        tmp.cleanup()
        raise


def _finish(finish: Callable[[], EncodedCorpus], name: str) -> EncodedCorpus:
    try:
        return finish()
    except ValueError as e:  # a CorpusError, or the vocabulary's "no word reaches min_count"
        raise CorpusError(f"{name}: {e}") from None

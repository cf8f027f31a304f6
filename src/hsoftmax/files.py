"""Atomic file writes and distrustful ``.npz`` reads: how the library writes and reads its files.

Writes (:func:`atomic_path`): a reader of ``path`` sees either the old file or the complete new
one, never a half-written file; after a crash or a failure (or Ctrl-C) nothing is left behind but
the old file.

Reads (:class:`NpzReader`): a file may be truncated, bit-flipped or crafted, so nothing in it is
trusted before it is checked: each array's header (dtype, shape) is read first and checked against
the member's size in the archive, the caller can check every claimed shape against the others
before any array's data is read, and every failure is a ``ValueError`` (see :data:`READ_ERRORS`).

Strings (:func:`encode_strings`, :func:`decode_strings`): UTF-8 bytes plus offsets, lossless where a
numpy ``'U'`` array is not, and readable without pickle.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import struct
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from typing import BinaryIO, NamedTuple

import numpy as np

__all__ = [
    "atomic_path",
    "remove_stale_temporaries",
    "NpyHeader",
    "NpzReader",
    "READ_ERRORS",
    "encode_strings",
    "decode_strings",
]

# What reading a damaged archive raises, from zipfile, zlib and numpy's header parser (a flipped
# bit in a zip header can select an unsupported or encrypted method, rename a member or cut a
# stream short). OSError covers a bzip2 stream too and an unreadable file.
READ_ERRORS = (
    OSError,
    EOFError,
    zipfile.BadZipFile,
    zlib.error,
    NotImplementedError,
    RuntimeError,
    KeyError,
    ValueError,
    UnicodeDecodeError,
    struct.error,
    OverflowError,
)

# Deflate never expands more than 1032:1 (a 258-byte match per 2 bits at best); a member claiming
# more is corrupt, and the bound keeps a small file from making us allocate much (1 KiB -> 1 MiB).
_DEFLATE_MAX_RATIO = 1032
_DEFLATE_SLACK = 1024
_END_RECORD_SIZE = 22  # zip "end of central directory" record without a comment

_CREATE_ATTEMPTS = 100


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path beside ``path``; on success it is synced and replaces ``path``.

    Open the yielded path yourself (``open(tmp, "wb")``; ``np.savez`` given a name would append
    ``.npz`` to it) and close it before the block ends. The new file gets the permissions
    ``open()`` would give it: those of the file it replaces, or ``0o666`` less the umask for a
    new file. When ``path`` is a symbolic link, the file it points to is replaced and the link
    stays a link.

    >>> import os, tempfile
    >>> d = tempfile.mkdtemp()
    >>> with atomic_path(os.path.join(d, "x.txt")) as tmp:
    ...     with open(tmp, "w") as f:
    ...         _ = f.write("done")
    >>> os.listdir(d), open(os.path.join(d, "x.txt")).read()
    (['x.txt'], 'done')
    """
    # Resolve links first: os.replace on the link's own name would swap the link for a regular
    # file, and the temporary file must sit in the target's directory (same filesystem).
    target = os.path.realpath(os.fspath(path))
    tmp = _create_beside(target)
    try:
        yield tmp
        _copy_mode(target, tmp)
        _fsync_file(tmp)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    _fsync_directory(os.path.dirname(target))


def _create_beside(target: str) -> str:
    """Create an empty, unused ``.<name>.<random>.tmp`` file in ``target``'s directory.

    ``tempfile.mkstemp`` would create it ``0o600`` whatever the umask; ``os.open`` with ``0o666``
    lets the kernel apply the umask exactly as ``open()`` does for a new file.
    """
    directory, name = os.path.split(target)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    for _ in range(_CREATE_ATTEMPTS):
        tmp = os.path.join(directory, f".{name}.{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(tmp, flags, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"could not create a temporary file beside {target!r}")


def _copy_mode(target: str, tmp: str) -> None:
    """Give the new file the permission bits of the one it replaces, as overwriting would.

    Done after the caller has written, so that replacing a read-only file still works.
    """
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        return
    os.chmod(tmp, mode)


def _fsync_file(path: str) -> None:
    # The data must be on disk before the rename makes it visible, or a crash could leave an
    # empty file under the final name. POSIX syncs through a read-only descriptor; Windows
    # needs a writable one.
    fd = os.open(path, os.O_RDONLY if os.name == "posix" else os.O_RDWR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_directory(directory: str) -> None:
    # Makes the rename itself durable. Best effort: the file is already in place, and some
    # filesystems (and every non-POSIX system) cannot sync a directory.
    if os.name != "posix":
        return
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def remove_stale_temporaries(path: str | os.PathLike, before: float) -> list[str]:
    """Delete the temporary files :func:`atomic_path` left beside ``path`` when a process was
    killed (``kill -9``, power loss) before it could clean up; returns the names removed.

    Only files named exactly as :func:`atomic_path` names them (``.<name>.<8 hex digits>.tmp``),
    regular files (not links) owned by this user, and last modified before ``before`` (a
    ``time.time()``; pass this process's start, so that a temporary file another live process is
    still writing, which it keeps touching, is left alone).
    """
    target = os.path.realpath(os.fspath(path))
    directory, name = os.path.split(target)
    prefix, removed = f".{name}.", list[str]()
    try:
        entries = os.listdir(directory)
    except OSError:
        return removed
    for entry in entries:
        middle = entry[len(prefix) : -len(".tmp")]
        if not (entry.startswith(prefix) and entry.endswith(".tmp") and len(middle) == 8):
            continue
        if any(c not in "0123456789abcdef" for c in middle):
            continue
        full = os.path.join(directory, entry)
        try:
            st = os.lstat(full)
            if stat.S_ISREG(st.st_mode) and st.st_uid == os.getuid() and st.st_mtime < before:
                os.remove(full)
                removed.append(entry)
        except OSError:
            continue
    return removed


class NpyHeader(NamedTuple):
    """What an ``.npy`` member says about itself before its data is read."""

    dtype: np.dtype
    shape: tuple[int, ...]
    data_offset: int  # bytes of magic and header before the data


class NpzReader:
    """An ``.npz`` archive written by ``np.savez``/``np.savez_compressed``, read array by array.

    ``headers`` (key -> :class:`NpyHeader`) is known on opening, from the first bytes of each
    member only; :meth:`read` then reads one array, checking that its data is exactly what the
    header announced and (at the end of the member) its CRC. Never unpickles: object arrays are
    refused. Use as a context manager.

    >>> import io, os, tempfile
    >>> f = os.path.join(tempfile.mkdtemp(), "a.npz")
    >>> np.savez_compressed(f, x=np.arange(3))
    >>> with NpzReader(f) as z:
    ...     z.headers["x"].shape, z.read("x").tolist()
    ((3,), [0, 1, 2])
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self._file = open(os.fspath(path), "rb")  # noqa: SIM115 - owned by the reader, closed in close()
        try:
            self._zip = zipfile.ZipFile(self._file)
            _check_member_count(self._file, len(self._zip.infolist()))
            self._members: dict[str, zipfile.ZipInfo] = {}
            for info in self._zip.infolist():
                key = _member_key(info.filename)
                if key in self._members:
                    raise ValueError(f"array {key!r} is stored twice")
                self._members[key] = info
            self.headers = {key: self._header(info) for key, info in self._members.items()}
        except BaseException:
            self._file.close()
            raise

    def __enter__(self) -> NpzReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._zip.close()
        self._file.close()

    def _header(self, info: zipfile.ZipInfo) -> NpyHeader:
        key = _member_key(info.filename)
        if info.compress_type == zipfile.ZIP_STORED:
            if info.file_size != info.compress_size:
                raise ValueError(f"array {key!r}: stored size {info.compress_size} != size {info.file_size}")
        elif info.compress_type == zipfile.ZIP_DEFLATED:
            if info.file_size > _DEFLATE_MAX_RATIO * info.compress_size + _DEFLATE_SLACK:
                raise ValueError(
                    f"array {key!r} claims {info.file_size} bytes from {info.compress_size} compressed "
                    f"bytes, more than deflate can expand"
                )
        else:
            method = info.compress_type
            raise ValueError(f"array {key!r} uses compression method {method}, not one numpy writes")
        with self._zip.open(info) as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"array {key!r} has .npy format version {version}, not 1.0 or 2.0")
            offset = f.tell()
        if dtype.hasobject:
            raise ValueError(f"array {key!r} holds Python objects (pickle), which are never loaded")
        nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
        if offset + nbytes != info.file_size:
            raise ValueError(
                f"array {key!r} of shape {shape} and dtype {dtype} needs {nbytes} bytes, "
                f"the archive holds {info.file_size - offset}"
            )
        return NpyHeader(dtype, tuple(shape), offset)

    def read(self, key: str) -> np.ndarray:
        """The array ``key`` (read-only), after its size and CRC are checked."""
        info, header = self._members[key], self.headers[key]
        nbytes = info.file_size - header.data_offset
        with self._zip.open(info) as f:
            f.read(header.data_offset)
            data = f.read(nbytes)
            if len(data) != nbytes or f.read(1):  # reading to the end checks the CRC
                raise ValueError(f"array {key!r} is truncated")
        return np.frombuffer(data, dtype=header.dtype).reshape(header.shape)


def _check_member_count(f: BinaryIO, listed: int) -> None:
    """The end record's count of members must match the directory that was read.

    zipfile trusts each directory entry's lengths: a flipped bit in one can swallow the entries
    after it, and the archive would read as one with fewer arrays (a tree without its labels).
    numpy never writes an archive comment, so the end record is the last 22 bytes.
    """
    f.seek(-_END_RECORD_SIZE, os.SEEK_END)
    end = f.read(_END_RECORD_SIZE)
    signature = end[:4]
    (total,) = struct.unpack_from("<H", end, 10)
    (comment_size,) = struct.unpack_from("<H", end, 20)
    if signature != b"PK\x05\x06" or comment_size != 0:
        raise ValueError("the archive does not end with its directory's end record")
    if total != listed:
        raise ValueError(f"the archive's directory lists {listed} arrays but its end record says {total}")


def _member_key(filename: str) -> str:
    if not filename.endswith(".npy"):
        raise ValueError(f"unexpected member {filename!r} (not a .npy array)")
    return filename[:-4]


# ---------------------------------------------------------------------------- strings as arrays
def encode_strings(strings: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(bytes, offsets)``: the UTF-8 of every string concatenated (``uint8``) and the ``(n + 1,)``
    int64 offsets where each starts, so that ``bytes[offsets[i]:offsets[i + 1]]`` is string ``i``.

    Lossless for every ``str`` (``surrogatepass`` keeps even a lone surrogate), unlike a numpy
    ``'U'`` array, which drops trailing NUL characters; and plain integer arrays, which
    ``np.savez`` without pickle, ``torch.load(weights_only=True)`` and safetensors all carry.

    >>> data, offset = encode_strings(["a\\x00", "", "é"])
    >>> data.tolist(), offset.tolist()
    ([97, 0, 195, 169], [0, 2, 2, 4])
    >>> decode_strings(data, offset)
    ['a\\x00', '', 'é']
    """
    encoded = [s.encode("utf-8", "surrogatepass") for s in strings]
    offset = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in encoded], out=offset[1:])
    return np.frombuffer(b"".join(encoded), dtype=np.uint8).copy(), offset


def decode_strings(data: np.ndarray, offset: np.ndarray, what: str = "string") -> list[str]:
    """Inverse of :func:`encode_strings`; bad offsets or UTF-8 are a ``ValueError`` naming ``what``."""
    off = np.asarray(offset).astype(np.int64)
    if off.ndim != 1 or off.size == 0 or off[0] != 0 or off[-1] != data.size or np.any(np.diff(off) < 0):
        raise ValueError(f"{what} offsets must start at 0, be non-decreasing and end at {data.size}")
    raw = np.ascontiguousarray(data).tobytes()
    out: list[str] = []
    try:  # around the loop, not in it: the string that failed is the next one, number len(out)
        for a, b in zip(off[:-1].tolist(), off[1:].tolist()):
            out.append(raw[a:b].decode("utf-8", "surrogatepass"))
    except UnicodeDecodeError as e:
        raise ValueError(f"{what} {len(out)} is not valid UTF-8: {e.reason}") from None
    return out

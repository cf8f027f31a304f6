"""Atomic file writes: the one way the library writes a file (trees, vectors, checkpoints).

A reader of ``path`` sees either the old file or the complete new one, never a half-written file;
after a crash or a failure (or Ctrl-C) nothing is left behind but the old file.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Iterator

__all__ = ["atomic_path"]

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

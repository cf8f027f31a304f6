"""hsoftmax.files.atomic_path: atomic replacement, clean failure, permissions, symbolic links."""

from __future__ import annotations

import contextlib
import os
import stat
import sys

import pytest

from hsoftmax.files import atomic_path

posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX permissions and symbolic links")


def write(path, data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_success_replaces_the_file_and_leaves_nothing_else(tmp_path):
    f = tmp_path / "out.bin"
    f.write_bytes(b"old")
    with atomic_path(f) as tmp:
        assert os.path.dirname(tmp) == str(tmp_path)  # same directory: os.replace is atomic
        with open(tmp, "wb") as g:
            g.write(b"new")
        assert f.read_bytes() == b"old"  # nothing visible until the block succeeds
    assert f.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["out.bin"]


def test_new_file_is_created(tmp_path):
    write(tmp_path / "fresh.txt", b"hello")
    assert (tmp_path / "fresh.txt").read_bytes() == b"hello"
    assert os.listdir(tmp_path) == ["fresh.txt"]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_failure_keeps_the_old_file_and_removes_the_temporary(tmp_path, error):
    f = tmp_path / "out.bin"
    f.write_bytes(b"old")
    with pytest.raises(error):
        with atomic_path(f) as tmp, open(tmp, "wb") as g:
            g.write(b"half")
            raise error()
    assert f.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["out.bin"]


def test_failure_without_an_old_file_leaves_the_directory_empty(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "never.bin"):
            raise RuntimeError("disk full")
    assert os.listdir(tmp_path) == []


@posix_only
@pytest.mark.parametrize("mask,expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_new_file_mode_follows_the_umask(tmp_path, mask, expected):
    f = tmp_path / "out.bin"
    with umask(mask):
        write(f, b"x")
        with open(tmp_path / "reference", "wb"):
            pass
    assert mode(f) == expected == mode(tmp_path / "reference")  # what open() gives a new file


@posix_only
def test_replacing_keeps_the_old_file_mode(tmp_path):
    # open() on an existing file keeps its permissions; so does an atomic replacement, even of a
    # read-only file.
    f = tmp_path / "out.bin"
    for old_mode in (0o640, 0o444):
        f.write_bytes(b"old")
        os.chmod(f, old_mode)
        with umask(0o022):
            write(f, b"new")
        assert f.read_bytes() == b"new" and mode(f) == old_mode
        os.chmod(f, 0o644)


@posix_only
def test_symlink_target_is_written_and_the_link_stays_a_link(tmp_path):
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "vectors.bin"
    target.write_bytes(b"old")
    link = tmp_path / "link.bin"
    link.symlink_to(os.path.join("real", "vectors.bin"))  # relative, in another directory
    write(link, b"new")
    assert link.is_symlink() and os.readlink(link) == os.path.join("real", "vectors.bin")
    assert target.read_bytes() == b"new"
    assert sorted(os.listdir(tmp_path)) == ["link.bin", "real"]
    assert os.listdir(tmp_path / "real") == ["vectors.bin"]


@posix_only
def test_dangling_symlink_creates_its_target(tmp_path):
    link = tmp_path / "link.bin"
    link.symlink_to(tmp_path / "missing.bin")
    write(link, b"new")
    assert link.is_symlink() and (tmp_path / "missing.bin").read_bytes() == b"new"


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_unwritable_directory_raises_and_leaves_no_file(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root ignores directory permissions")
    d = tmp_path / "ro"
    d.mkdir()
    os.chmod(d, 0o555)
    try:
        with pytest.raises(PermissionError):
            write(d / "out.bin", b"x")
        assert os.listdir(d) == []
    finally:
        os.chmod(d, 0o755)

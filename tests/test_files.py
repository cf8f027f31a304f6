"""hsoftmax.files: atomic_path (atomic replacement, clean failure, permissions, symbolic links) and
NpzReader (every damaged or crafted archive is a ValueError before large allocations)."""

from __future__ import annotations

import contextlib
import io
import os
import stat
import struct
import sys
import tracemalloc
import zipfile

import numpy as np
import pytest

from hsoftmax.files import READ_ERRORS, NpzReader, atomic_path, decode_strings, encode_strings

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

    def crash_mid_write():
        with atomic_path(f) as tmp, open(tmp, "wb") as g:
            g.write(b"half")
            raise error()

    with pytest.raises(error):
        crash_mid_write()
    assert f.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["out.bin"]


def test_failure_without_an_old_file_leaves_the_directory_empty(tmp_path):
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "never.bin"):
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


# ---------------------------------------------------------------------------- NpzReader
def npy_bytes(header: dict, data: bytes) -> bytes:
    f = io.BytesIO()
    np.lib.format.write_array_header_1_0(f, header)
    return f.getvalue() + data


def zip_with(path, members: dict[str, bytes], method=zipfile.ZIP_STORED) -> None:
    with zipfile.ZipFile(path, "w", method) as z:
        for name, data in members.items():
            z.writestr(name, data)


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_npz_reader_reads_what_numpy_writes(tmp_path, save):
    arrays = {
        "a": np.arange(5, dtype=np.int32),
        "s": np.array(7),
        "u": np.array(["x", "yz"]),
        "e": np.zeros(0, dtype=np.uint8),
    }
    save(tmp_path / "a.npz", **arrays)
    with NpzReader(tmp_path / "a.npz") as z:
        assert {k: (h.dtype, h.shape) for k, h in z.headers.items()} == {
            k: (v.dtype, v.shape) for k, v in arrays.items()
        }
        for k, v in arrays.items():
            got = z.read(k)
            assert got.dtype == v.dtype and np.array_equal(got, v)


def test_npz_reader_refuses_pickled_objects(tmp_path):
    np.savez(tmp_path / "o.npz", o=np.array([{"x": 1}], dtype=object))
    with pytest.raises(ValueError, match="Python objects"):
        NpzReader(tmp_path / "o.npz")


def test_npz_reader_checks_claimed_sizes_before_reading(tmp_path):
    # A 100-byte member whose header claims 8 TB: refused from the header, nothing allocated.
    huge = npy_bytes({"descr": "<i8", "fortran_order": False, "shape": (10**12,)}, b"\0" * 16)
    zip_with(tmp_path / "h.npz", {"children.npy": huge})
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="needs 8000000000000 bytes, the archive holds 16"):
            NpzReader(tmp_path / "h.npz")
        assert tracemalloc.get_traced_memory()[1] < 1 << 20
    finally:
        tracemalloc.stop()


def test_npz_reader_refuses_impossible_compression_ratios(tmp_path):
    f = tmp_path / "r.npz"
    np.savez_compressed(f, z=np.zeros(10_000, dtype=np.uint8))
    raw = bytearray(f.read_bytes())
    with zipfile.ZipFile(f) as z:
        info = z.infolist()[0]
    # Claim a far larger uncompressed size in the central directory entry.
    central = raw.rindex(b"PK\x01\x02")
    assert struct.unpack_from("<L", raw, central + 24)[0] == info.file_size
    struct.pack_into("<L", raw, central + 24, info.compress_size * 2000)
    f.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="more than deflate can expand"):
        NpzReader(f)


def test_npz_reader_notices_hidden_members(tmp_path):
    # A damaged directory entry can swallow the entries after it: the end record's count tells.
    f = tmp_path / "m.npz"
    np.savez(f, a=np.arange(3), b=np.arange(4))
    raw = bytearray(f.read_bytes())
    struct.pack_into("<HH", raw, len(raw) - 22 + 8, 3, 3)  # the end record now says 3 members
    f.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="lists 2 arrays but its end record says 3"):
        NpzReader(f)


@pytest.mark.parametrize(
    "members,match",
    [
        ({"notes.txt": b"hi"}, "not a .npy array"),
        ({"a.npy": b"\x93NUMPY\x09\x00"}, "format version|magic"),
        (
            {"a.npy": npy_bytes({"descr": "<i8", "fortran_order": False, "shape": (2,)}, b"\0" * 8)},
            "needs 16 bytes, the archive holds 8",
        ),
        ({"a.npy": b"garbage"}, "magic string"),
    ],
)
def test_npz_reader_refuses_malformed_members(tmp_path, members, match):
    zip_with(tmp_path / "x.npz", members)
    with pytest.raises(ValueError, match=match):
        NpzReader(tmp_path / "x.npz")


def test_read_errors_cover_what_damaged_archives_raise(tmp_path):
    f = tmp_path / "c.npz"
    np.savez_compressed(f, a=np.arange(1000))
    raw = f.read_bytes()
    for data in [b"", raw[:10], raw[: len(raw) // 2], raw[:-1], b"PK" + raw[2:40]]:
        f.write_bytes(data)
        with pytest.raises(READ_ERRORS), NpzReader(f) as z:
            z.read("a")


# ---------------------------------------------------------------------------- strings as arrays
def test_strings_round_trip_losslessly_as_plain_arrays():
    strings = ["a\x00", "a", "", "\x00\x00", "\ud800", "\U0001f600", "é"]
    data, offset = encode_strings(strings)
    assert data.dtype == np.uint8 and offset.dtype == np.int64 and offset.shape == (len(strings) + 1,)
    assert decode_strings(data, offset) == strings
    assert np.array(strings, dtype=str).tolist() != strings  # what a 'U' array would have lost
    assert decode_strings(*encode_strings([])) == []


@pytest.mark.parametrize(
    "data,offset,match",
    [
        (b"abc", [0, 2], "offsets must"),
        (b"abc", [1, 3], "offsets must"),
        (b"abc", [0, 2, 1, 3], "offsets must"),
        (b"abc", [], "offsets must"),
        (b"a\xffc", [0, 1, 2, 3], "name 1 is not valid UTF-8"),
    ],
)
def test_decode_strings_checks_offsets_and_utf8(data, offset, match):
    with pytest.raises(ValueError, match=match):
        decode_strings(np.frombuffer(data, np.uint8), np.array(offset, dtype=np.int64), "name")

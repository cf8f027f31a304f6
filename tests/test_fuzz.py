"""Fuzzing the word2vec trainer's and the CLI's inputs: damaged checkpoints, hostile flags, random
vector files, and (in ``make fuzz``) kill -9 then --resume and a full or read-only file system.

Every case must end in a precise exception (``ValueError`` / exit status 2 with a one-line
message) or in a correct result: a resumed run equal bit for bit to resuming from the intact
checkpoint, a vectors file read back exactly. ``make test`` runs a few examples of each
(``HSOFTMAX_FUZZ_EXAMPLES``, default 25, keeps it well under a minute); ``make fuzz`` runs many
more and the fault tests (``HSOFTMAX_FUZZ_LONG=1``). Each test counts its cases in
:data:`CASES`; the session prints the counts at the end (``-s`` shows them).
"""

from __future__ import annotations

import collections
import contextlib
import io
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hsoftmax.cli import main
from hsoftmax.files import encode_strings
from hsoftmax.tree import Tree
from hsoftmax.word2vec import Word2Vec
from hsoftmax.word2vec.io import read_word2vec, write_word2vec

EXAMPLES = int(os.environ.get("HSOFTMAX_FUZZ_EXAMPLES", "25"))
LONG = os.environ.get("HSOFTMAX_FUZZ_LONG") == "1"
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=not LONG,  # make test: the same cases every run; make fuzz: new ones each time
)
CASES: collections.Counter[str] = collections.Counter()


def _sentences(n=120, seed=0):
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(12)] + ["a\x00", "é"]  # a NUL-ended word must round-trip
    return [[rng.choice(words) for _ in range(6)] for _ in range(n)]


KW = dict(dim=8, window=3, min_count=1, epochs=2, threads=1, seed=5, progress=False)


class _StopAfterFirstCheckpoint(Word2Vec):
    def _save_checkpoint(self, directory):
        super()._save_checkpoint(directory)
        raise KeyboardInterrupt


@pytest.fixture(scope="module")
def checkpoint():
    """``(path to a checkpoint after epoch 1 of 2, its bytes, its arrays, the resumed syn0/syn1)``."""
    d = tempfile.mkdtemp(prefix="hsoftmax-fuzz-")
    with pytest.raises(KeyboardInterrupt):
        _StopAfterFirstCheckpoint(**KW).fit(_sentences(), checkpoint=d)
    path = os.path.join(d, "checkpoint.npz")
    with open(path, "rb") as f:
        data = f.read()
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    ref = Word2Vec(**KW).fit(_sentences(), checkpoint=d, resume=True)
    assert ref.vocab is not None and "a\x00" in ref.vocab.words  # the lossless vocabulary, resumed
    yield path, data, arrays, (ref.syn0.copy(), ref.syn1.copy())
    shutil.rmtree(d, ignore_errors=True)


def _resume_outcome(directory, ref, what):
    """Resume from ``directory``: a one-line ValueError naming the file, or the reference result."""
    try:
        m = Word2Vec(**KW).fit(_sentences(), checkpoint=directory, resume=True)
    except ValueError as e:
        msg = str(e)
        assert "\n" not in msg and "checkpoint" in msg, msg
        CASES[f"checkpoint {what}: clear error"] += 1
        return
    np.testing.assert_array_equal(m.syn0, ref[0])
    np.testing.assert_array_equal(m.syn1, ref[1])
    CASES[f"checkpoint {what}: correct result"] += 1


@FUZZ
@given(
    kind=st.sampled_from(["truncate", "flip", "overwrite"]),
    pos=st.floats(0, 1, exclude_max=True),
    bit=st.integers(0, 7),
    junk=st.binary(min_size=1, max_size=64),
)
def test_damaged_checkpoint_bytes(checkpoint, tmp_path_factory, kind, pos, bit, junk):
    _, data, _, ref = checkpoint
    i = int(pos * len(data))
    if kind == "truncate":
        bad = data[:i]
    elif kind == "flip":
        bad = data[:i] + bytes([data[i] ^ (1 << bit)]) + data[i + 1 :]
    else:
        bad = data[:i] + junk + data[i + len(junk) :]
    d = tmp_path_factory.mktemp("ck")
    (d / "checkpoint.npz").write_bytes(bad)
    _resume_outcome(d, ref, kind)


def _mutations():
    keys = st.sampled_from(
        [
            *("syn0", "syn1", "counts", "word_bytes", "word_offset", "epochs_done", "version", "config"),
            *("history", "tree_children", "tree_child_offset", "tree_num_classes"),
        ]
    )
    dtypes = st.sampled_from(["int8", "int32", "int64", "uint8", "float16", "float32", "float64", "bool", "U3"])
    return st.one_of(
        st.tuples(st.just("rows"), keys, st.integers(-1000, 1000)),  # syn1[:1], syn0[:-1000], padding
        st.tuples(st.just("cols"), keys, st.integers(-8, 8)),  # syn1[:, :4], extra columns
        st.tuples(st.just("dtype"), keys, dtypes),
        st.tuples(st.just("swap"), keys, keys),
        st.tuples(st.just("drop"), keys, st.just(0)),
        st.tuples(st.just("extra"), st.just("extra"), st.just(0)),
        st.tuples(st.just("scalar"), keys, st.integers(-(2**63), 2**63 - 1)),  # epochs_done=99, version
        st.tuples(st.just("nan"), st.sampled_from(["syn0", "syn1"]), st.sampled_from([np.nan, np.inf, -np.inf])),
        st.tuples(st.just("kary"), st.just("tree"), st.integers(3, 5)),  # a 4-ary tree
        st.tuples(st.just("words"), st.just("word_bytes"), st.sampled_from(["a", "a\x00\x00", "w0", "\udcff"])),
    )


def _mutate(arrays, mutation):
    kind, key, arg = mutation
    a = dict(arrays)
    if kind == "rows" and a[key].ndim >= 1:
        a[key] = a[key][:arg] if arg <= 0 else np.concatenate([a[key]] + [a[key][:1]] * min(arg, 3))
    elif kind == "cols" and a[key].ndim == 2:
        a[key] = a[key][:, :arg] if arg <= 0 else np.concatenate([a[key], a[key][:, :arg]], axis=1)
    elif kind == "dtype":
        a[key] = a[key].astype(arg)
    elif kind == "swap":
        a[key], a[arg] = a[arg], a[key]
    elif kind == "drop":
        del a[key]
    elif kind == "extra":
        a["extra"] = np.zeros(3)
    elif kind == "scalar":
        a[key] = np.array(arg)
    elif kind == "nan":
        a[key] = a[key].copy()
        a[key][len(a[key]) // 2, 0] = arg
    elif kind == "kary":
        V = int(a["tree_num_classes"])
        for k, v in Tree.balanced(V, arity=arg).state().items():
            a["tree_" + k] = v
        a["syn1"] = np.zeros((Tree.balanced(V, arity=arg).num_params, a["syn0"].shape[1]), dtype=np.float32)
    elif kind == "words":
        raw, offs = bytes(a["word_bytes"]), a["word_offset"]
        ws = [raw[offs[i] : offs[i + 1]].decode("utf-8", "surrogatepass") for i in range(len(offs) - 1)]
        ws[-1] = arg  # another vocabulary (or the same word twice)
        a["word_bytes"], a["word_offset"] = encode_strings(ws)
    return a


@FUZZ
@given(mutations=st.lists(_mutations(), min_size=1, max_size=3))
def test_damaged_checkpoint_arrays(checkpoint, tmp_path_factory, mutations):
    """Resized, retyped, swapped, missing or extra arrays, settings out of range, NaN rows, another
    tree, another vocabulary: each a one-line error before any kernel runs, never a crash."""
    _, _, arrays, ref = checkpoint
    for m in mutations:
        # a mutation that does not apply to this array (e.g. columns of a 1-D one) is skipped
        with contextlib.suppress(ValueError, TypeError, KeyError, IndexError, OverflowError):
            arrays = _mutate(arrays, m)
    d = tmp_path_factory.mktemp("ck")
    with open(d / "checkpoint.npz", "wb") as f:
        np.savez(f, **arrays)
    _resume_outcome(d, ref, f"arrays ({len(mutations)} edits)")


# ---------------------------------------------------------------------------- hostile CLI flags
@pytest.fixture(scope="module")
def cli_corpus():
    d = tempfile.mkdtemp(prefix="hsoftmax-fuzz-cli-")
    path = os.path.join(d, "c.txt")
    with open(path, "w") as f:
        for s in _sentences(200, seed=1):
            f.write(" ".join(w.replace("\x00", "") for w in s) + "\n")
    yield path
    shutil.rmtree(d, ignore_errors=True)


_NUMERIC_FLAGS = ["--dim", "--window", "--min-count", "--max-vocab", "--sample", "--epochs", "--alpha"]
_NUMERIC_FLAGS += ["--threads", "--seed"]
# Values the run accepts and finishes quickly with (larger valid values are valid but slow: the
# bounds themselves are checked by test_cli's tests of the limits).
_CHEAP = {"--dim": 64, "--window": 50, "--epochs": 3, "--threads": 4}
_VALUES = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.integers(-3, 70).map(str),
    st.sampled_from(["nan", "inf", "-inf", "1e400", "", "abc", "0x10", "1" * 60, "-0", "1e-320", "2**64", "1.5"]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)


def _cheap(flag, value):
    try:
        v = float(value)
    except ValueError:
        return True
    return flag not in _CHEAP or not (v >= 1) or v <= _CHEAP[flag] or v > 2**62


@FUZZ
@given(flags=st.lists(st.tuples(st.sampled_from(_NUMERIC_FLAGS), _VALUES), min_size=1, max_size=3))
def test_hostile_flags(cli_corpus, tmp_path_factory, capsys, flags):
    from hypothesis import assume

    assume(all(_cheap(f, v) for f, v in flags))
    out = tmp_path_factory.mktemp("out") / "v.txt"
    argv = ["word2vec", cli_corpus, "-o", str(out), "--no-progress", "--dim", "8", "--epochs", "1"]
    argv += ["--threads", "1", "--min-count", "1"]
    for f, v in flags:
        argv += [f, v]  # the later flag wins: the fuzzed value is the one used
    code = main(argv)
    _, err = capsys.readouterr()
    errors = [ln for ln in err.splitlines() if ln.startswith("hsoftmax: error:")]
    assert "Traceback" not in err
    if code == 0:
        words, vectors = read_word2vec(out)
        assert vectors.shape[0] == len(words) and np.isfinite(vectors).all()
        CASES["flags: trained"] += 1
    else:
        assert code == 2 and len(errors) == 1, err
        assert not out.exists()
        CASES["flags: clear error"] += 1


# ---------------------------------------------------------------------------- vector files
@st.composite
def vector_files(draw):
    n = draw(st.integers(1, 6))
    dim = draw(st.integers(1, 5))
    words = draw(
        st.lists(
            st.text(st.characters(blacklist_categories=("Z", "Cc", "Cs")), min_size=1, max_size=5),
            min_size=n,
            max_size=n,
            unique=True,
        )
    )
    vectors = np.array(
        draw(st.lists(st.floats(-1e6, 1e6, width=32), min_size=n * dim, max_size=n * dim)), dtype=np.float32
    ).reshape(n, dim)
    binary = draw(st.booleans())
    layout = draw(st.sampled_from(["ours", "trailing-space", "crlf", "no-newline"]))
    buf = io.BytesIO()
    buf.write(f"{n} {dim}\n".encode())
    for w, v in zip(words, vectors):
        if binary:
            buf.write(w.encode() + b" " + v.astype("<f4").tobytes() + (b"" if layout == "no-newline" else b"\n"))
        else:
            row = w + " " + " ".join(f"{x:.9g}" for x in v.tolist())
            row += {"ours": "\n", "trailing-space": " \n", "crlf": "\r\n", "no-newline": "\n"}[layout]
            buf.write(row.encode())
    return words, vectors, binary, buf.getvalue()


@FUZZ
@given(
    f=vector_files(),
    damage=st.sampled_from(["none", "truncate", "flip", "duplicate", "nan", "huge-header", "extra"]),
    pos=st.floats(0, 1, exclude_max=True),
    flag=st.sampled_from([None, True, False]),
)
def test_random_vector_files(tmp_path_factory, f, damage, pos, flag):
    words, vectors, binary, data = f
    i = int(pos * len(data))
    if damage == "truncate":
        data = data[:i]
    elif damage == "flip":
        data = data[:i] + bytes([data[i] ^ 0x10]) + data[i + 1 :]
    elif damage == "duplicate" and len(words) > 1:
        data = data.replace(words[1].encode() + b" ", words[0].encode() + b" ", 1)
    elif damage == "nan":
        vectors = vectors.copy()
        vectors[-1, 0] = np.nan
        buf = tempfile.mktemp(dir=tmp_path_factory.mktemp("v"))
        write_word2vec(buf, words, vectors, binary)
        with open(buf, "rb") as fh:
            data = fh.read()
    elif damage == "huge-header":
        data = b"10000000000 " + data.split(b" ", 1)[1]
    elif damage == "extra":
        data = data + b"zz 1 2 3\n"
    path = tmp_path_factory.mktemp("v") / ("v.bin" if flag is None and not binary else "v.txt")
    path.write_bytes(data)  # the name lies about the format half the time: the reader sniffs
    try:
        got_words, got = read_word2vec(path, binary=flag)
    except ValueError as e:
        assert str(path) in str(e) and "\n" not in str(e), e  # noqa: PT017 - either outcome is allowed
        CASES[f"vectors {damage}: clear error"] += 1
        return
    assert damage != "huge-header" and damage != "nan" and (damage != "duplicate" or len(words) == 1)
    assert flag is None or flag == binary  # a contradicting flag is an error naming the fix
    assert got.shape == (len(got_words), vectors.shape[1]) or damage != "none"
    assert len(set(got_words)) == len(got_words) and np.isfinite(got).all()
    if damage == "none":
        assert got_words == words
        np.testing.assert_array_equal(got, vectors)
    CASES[f"vectors {damage}: correct result"] += 1


def test_evaluate_refuses_bad_vectors(tmp_path, capsys):
    for name, data in [
        ("huge.txt", b"10000000000 3\na 1 2 3\n"),
        ("nan.txt", b"2 2\na 1 nan\nb 1 2\n"),
        ("dup.txt", b"2 2\na 1 2\na 1 2\n"),
        ("text-as-binary.txt", b"1 2\na 1 2\n"),
    ]:
        (tmp_path / name).write_bytes(data)
        argv = ["evaluate", str(tmp_path / name), "--neighbours", "a"]
        code = main([*argv, "--binary"] if name.startswith("text-as") else argv)
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("hsoftmax: error:") and len(err.splitlines()) == 1, err
        CASES["evaluate: clear error"] += 1
    (tmp_path / "w2vc.txt").write_bytes(b"2 2\na 1 0 \nb 0 1 \n")  # word2vec.c's layout
    assert main(["evaluate", str(tmp_path / "w2vc.txt"), "--neighbours", "a"]) == 0
    assert "neighbours of a: b" in capsys.readouterr().out


# ---------------------------------------------------------------------------- faults: kill -9, full disk
def _cli(*args, **kw):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.join(os.path.dirname(__file__), "..", "src")])}
    return subprocess.Popen([sys.executable, "-m", "hsoftmax.cli", *args], env=env, **kw)


def _big_corpus(path, n=20000):
    rng = random.Random(2)
    with open(path, "w") as f:
        for _ in range(n):
            f.write(" ".join(f"t{rng.randrange(3)}w{rng.randrange(40)}" for _ in range(10)) + "\n")


@pytest.mark.skipif(not LONG and os.environ.get("HSOFTMAX_FUZZ_KILL") is None, reason="make fuzz runs it")
@pytest.mark.parametrize("trial", range(int(os.environ.get("HSOFTMAX_FUZZ_KILLS", "8"))))
def test_kill_9_then_resume(tmp_path, trial):
    """kill -9 at a random moment, then --resume: the result equals an uninterrupted run, and the
    killed run's temporary folder and files are cleaned by the next run."""
    corpus = tmp_path / "c.txt"
    _big_corpus(corpus)
    base = ["word2vec", str(corpus), "--dim", "16", "--epochs", "4", "--threads", "1", "--min-count", "1"]
    base += ["--no-progress", "--tmp-dir", str(tmp_path)]
    full = tmp_path / "full.bin"
    assert _cli(*base, "-o", str(full), stderr=subprocess.DEVNULL).wait() == 0
    ck, out = tmp_path / "ck", tmp_path / "out.bin"
    p = _cli(*base, "-o", str(out), "--checkpoint", str(ck), stderr=subprocess.DEVNULL)
    rng = random.Random(trial if not LONG else None)
    if trial % 2:  # a random moment after the k-th checkpoint (mid-epoch or mid-write)
        k, seen, last = rng.randrange(1, 4), 0, None
        while seen < k and p.poll() is None:
            mtime = (ck / "checkpoint.npz").stat().st_mtime_ns if (ck / "checkpoint.npz").exists() else None
            if mtime != last and mtime is not None:
                seen, last = seen + 1, mtime
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.3))
    else:  # any moment from the start: reading the corpus, the first epoch
        time.sleep(rng.uniform(0.2, 3.0))
    p.send_signal(signal.SIGKILL)
    p.wait()
    resume = ["--resume"] if (ck / "checkpoint.npz").exists() else []
    code = _cli(*base, "-o", str(out), "--checkpoint", str(ck), *resume, stderr=subprocess.PIPE)
    _, err = code.communicate()
    assert code.returncode == 0, err
    from hsoftmax.word2vec import load_vectors

    np.testing.assert_array_equal(load_vectors(out).vectors, load_vectors(full).vectors)
    leftovers = [n for n in os.listdir(tmp_path) if n.startswith("hsoftmax-corpus-") or n.endswith(".tmp")]
    assert leftovers == [] and [n for n in os.listdir(ck) if n.endswith(".tmp")] == []
    CASES["kill -9 then resume: equal to uninterrupted" + (" (from a checkpoint)" if resume else "")] += 1


def _tmpfs(path, options):
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    os.makedirs(path, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, check=False)
    return r.returncode == 0


@pytest.mark.skipif(not LONG, reason="make fuzz runs it")
def test_full_and_read_only_file_systems(tmp_path, capsys):
    small, ro = tmp_path / "small", tmp_path / "ro"
    if not _tmpfs(small, "size=64k"):
        pytest.skip("cannot mount a tmpfs here (needs root and mount permission)")
    try:
        corpus = tmp_path / "c.txt"
        _big_corpus(corpus, 300)
        base = ["word2vec", str(corpus), "--dim", "64", "--epochs", "1", "--threads", "1", "--min-count", "1"]
        base += ["--no-progress"]
        # the output cannot fit: refused before training
        assert main([*base, "-o", str(small / "v.txt")]) == 2
        err = capsys.readouterr().err
        assert "free" in err and not os.listdir(small), err
        CASES["full disk: refused up front"] += 1
        # the checkpoint fills the disk during training: one line, exit 2, nothing partial left
        (small / "filler").write_bytes(b"\0" * 20000)
        assert main([*base, "--dim", "128", "-o", str(tmp_path / "v.bin"), "--checkpoint", str(small / "ck")]) == 2
        err = capsys.readouterr().err
        assert "disk is full" in err and err.count("hsoftmax: error:") == 1, err
        assert [n for n in os.listdir(small / "ck") if n.endswith(".tmp")] == []
        assert not (tmp_path / "v.bin").exists()
        CASES["full disk: during a checkpoint"] += 1
        if _tmpfs(ro, "ro,size=64k"):
            try:
                assert main([*base, "-o", str(ro / "v.txt")]) == 2
                assert "cannot write in the output directory" in capsys.readouterr().err
                assert main([*base, "-o", str(tmp_path / "v.txt"), "--checkpoint", str(ro / "ck")]) == 2
                assert "checkpoint" in capsys.readouterr().err
                CASES["read-only file system: refused up front"] += 2
            finally:
                subprocess.run(["umount", str(ro)], check=False)
    finally:
        subprocess.run(["umount", str(small)], check=False)


def test_report_case_counts():
    """Last in the file: prints how many cases each fuzz test ran, by outcome."""
    total = sum(CASES.values())
    print(f"\nfuzz cases: {total}")
    for k, v in sorted(CASES.items()):
        print(f"  {v:6d}  {k}")
    assert total > 0

"""The ``hsoftmax`` command: word2vec and evaluate, good runs and bad input."""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys

import numpy as np
import pytest

from hsoftmax.cli import main
from hsoftmax.tree import Tree
from hsoftmax.word2vec import load_vectors


def write_corpus(path, n=400, seed=0):
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            t = rng.randrange(3)
            f.write(" ".join(f"t{t}w{rng.randrange(8)}" for _ in range(8)) + "\n")
    return path


@pytest.fixture
def corpus(tmp_path):
    return str(write_corpus(tmp_path / "corpus.txt"))


FAST = ["--dim", "8", "--epochs", "1", "--threads", "1", "--no-progress", "--min-count", "1"]


def run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, pattern):
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("hsoftmax: error:") and pattern in lines[0], lines[0]


@pytest.mark.parametrize("name,binary", [("v.txt", False), ("v.bin", True)])
def test_word2vec_writes_format_by_extension(tmp_path, corpus, capsys, name, binary):
    out = tmp_path / name
    code, _, err = run(["word2vec", corpus, "-o", str(out), *FAST], capsys)
    assert code == 0, err
    kv = load_vectors(out, binary=binary)
    assert kv.vectors.shape == (24, 8)
    if binary:
        with pytest.raises(ValueError, match=re.escape(str(out))):  # read as text: the error names the file
            load_vectors(out, binary=False)
    else:
        lines = out.read_text().splitlines()
        assert lines[0] == "24 8" and all(len(ln.split()) == 9 for ln in lines[1:])


# None: not given, so CBOW for a new model and the model's own mode with --continue
@pytest.mark.parametrize("flag,sg", [(None, None), ("--cbow", False), ("--skipgram", True)])
def test_mode_flags(flag, sg):
    from hsoftmax.cli import build_parser

    argv = ["word2vec", "c.txt", "-o", "v.txt"] + ([flag] if flag else [])
    assert build_parser().parse_args(argv).sg is sg


def test_binary_flag_overrides_the_name(tmp_path, corpus, capsys):
    out = tmp_path / "v.txt"
    assert run(["word2vec", corpus, "-o", str(out), "--binary", *FAST], capsys)[0] == 0
    kv = load_vectors(out, binary=True)
    assert len(kv) == 24
    with pytest.raises(ValueError, match=re.escape(str(out))):
        load_vectors(out, binary=False)


@pytest.mark.parametrize("tree", ["balanced", "FILE"])
def test_tree_option(tmp_path, corpus, capsys, tree):
    if tree == "FILE":
        tree = str(tmp_path / "tree.npz")
        Tree.balanced(24, arity=4).save(tree)
    out = tmp_path / "v.txt"
    code, _, err = run(["word2vec", corpus, "-o", str(out), "--skipgram", "--tree", tree, *FAST], capsys)
    assert code == 0, err
    assert len(load_vectors(out)) == 24


def test_tree_file_of_wrong_size(tmp_path, corpus, capsys):
    tree = str(tmp_path / "tree.npz")
    Tree.balanced(5).save(tree)
    out = tmp_path / "v.txt"
    code, _, err = run(["word2vec", corpus, "-o", str(out), "--tree", tree, *FAST], capsys)
    assert_one_line_error(code, err, "classes")
    assert not out.exists()


@pytest.mark.parametrize(
    "content,pattern",
    [
        (None, "not found"),
        (b"", "no words"),
        (b"\n  \n", "no words"),
        (b"a b c\nd e\n", "min_count=5"),
    ],
    ids=["missing", "empty", "blank", "rare"],
)
def test_bad_corpus_is_one_line_exit_2_no_output(tmp_path, capsys, content, pattern):
    path = tmp_path / "c.txt"
    if content is not None:
        path.write_bytes(content)
    out = tmp_path / "v.bin"
    code, _, err = run(["word2vec", str(path), "-o", str(out), "--no-progress"], capsys)
    assert_one_line_error(code, err, pattern)
    assert not out.exists()
    assert sorted(os.listdir(tmp_path)) == ([] if content is None else ["c.txt"])


def test_invalid_utf8_is_replaced_and_reported(tmp_path, capsys):
    path = tmp_path / "c.txt"
    path.write_bytes(b"ok ok ok x\xff y\n" * 5)
    out = tmp_path / "v.txt"
    code, _, err = run(["word2vec", str(path), "-o", str(out), *FAST], capsys)
    assert code == 0
    assert "replaced 5 invalid UTF-8" in err
    assert "x\ufffd" in load_vectors(out)


@pytest.mark.parametrize(
    "argv,pattern",
    [
        (["word2vec", "c.txt"], "nothing to write"),
        (["word2vec", "c.txt", "-o", "v.txt", "--dim", "0"], "--dim"),
        (["word2vec", "c.txt", "-o", "v.txt", "--cbow", "--skipgram"], "not allowed"),
        (["word2vec", "c.txt", "-o", "v.txt", "--resume"], "--checkpoint"),
        (["word2vec", "c.txt", "-o", "v.txt", "--tree", "nonsense"], "--tree"),
        (["word2vec", "c.txt", "-o", "nodir/v.txt"], "directory"),
        (["word2vec", "c.txt", "-o", "v.txt", "--tmp-dir", "nodir"], "--tmp-dir"),
        (["evaluate", "missing.txt"], "not found"),
        ([], "required"),
    ],
    ids=["no-output", "dim", "mode", "resume", "tree", "outdir", "tmpdir", "eval-missing", "no-command"],
)
def test_usage_errors(tmp_path, capsys, monkeypatch, argv, pattern):
    monkeypatch.chdir(tmp_path)
    write_corpus(tmp_path / "c.txt")
    code, _, err = run(argv, capsys)
    assert_one_line_error(code, err, pattern)
    assert not (tmp_path / "v.txt").exists()


def test_tmp_dir_holds_the_encoded_corpus_while_training(tmp_path, corpus, capsys, monkeypatch):
    from hsoftmax.word2vec import Word2Vec

    work = tmp_path / "work"
    work.mkdir()
    seen = []
    train = Word2Vec.train

    def spy(self, enc, checkpoint=None):
        seen.append(sorted(p.name for p in work.iterdir()))
        return train(self, enc, checkpoint)

    monkeypatch.setattr(Word2Vec, "train", spy)
    argv = [
        "word2vec",
        corpus,
        "-o",
        str(tmp_path / "v.txt"),
        "--dim",
        "8",
        "--min-count",
        "1",
        "--epochs",
        "1",
        "--no-progress",
        "--tmp-dir",
        str(work),
    ]
    assert run(argv, capsys)[0] == 0
    assert len(seen) == 1 and len(seen[0]) == 1 and seen[0][0].startswith("hsoftmax-corpus-")
    assert list(work.iterdir()) == []  # deleted afterwards


def test_checkpoint_resume_matches_uninterrupted(tmp_path, corpus, capsys, monkeypatch):
    from hsoftmax.word2vec import Word2Vec

    base = ["--dim", "8", "--threads", "1", "--no-progress", "--min-count", "1", "--epochs", "3"]
    full = tmp_path / "full.bin"
    assert run(["word2vec", corpus, "-o", str(full), *base], capsys)[0] == 0

    real_save = Word2Vec._save_checkpoint

    def save_then_interrupt(self, directory):
        real_save(self, directory)
        if self.epochs_done == 1:
            raise KeyboardInterrupt  # Ctrl-C right after the first epoch's checkpoint

    monkeypatch.setattr(Word2Vec, "_save_checkpoint", save_then_interrupt)
    ck = tmp_path / "ck"
    out = tmp_path / "resumed.bin"
    assert run(["word2vec", corpus, "-o", str(out), "--checkpoint", str(ck), *base], capsys)[0] == 130
    assert not out.exists()  # an interrupted run leaves no output
    assert sorted(os.listdir(ck)) == ["checkpoint.lock", "checkpoint.npz"]  # no temporary files left
    monkeypatch.setattr(Word2Vec, "_save_checkpoint", real_save)
    code, _, err = run(["word2vec", corpus, "-o", str(out), "--checkpoint", str(ck), "--resume", *base], capsys)
    assert code == 0, err
    np.testing.assert_array_equal(load_vectors(out).vectors, load_vectors(full).vectors)

    code, _, err = run(
        ["word2vec", corpus, "-o", str(tmp_path / "x.bin"), *base[:-1], "4", "--checkpoint", str(ck), "--resume"],
        capsys,
    )
    assert_one_line_error(code, err, "epochs")
    assert not (tmp_path / "x.bin").exists()


def test_evaluate_prints_scores(tmp_path, corpus, capsys):
    out = tmp_path / "v.txt"
    assert run(["word2vec", corpus, "-o", str(out), *FAST], capsys)[0] == 0
    q = tmp_path / "q.txt"
    q.write_text(": topic\nt0w1 t0w2 t1w1 t1w2\nt0w1 t0w2 zz t1w2\n")
    pairs = tmp_path / "p.tsv"
    pairs.write_text("# header\nt0w1\tt0w2\t9\nt0w1\tt1w1\t1\nt1w3\tt1w4\t8\nzz\tt0w1\t3\n")
    code, stdout, err = run(
        ["evaluate", str(out), "--analogies", str(q), "--similarity", str(pairs), "--neighbours", "t0w1"], capsys
    )
    assert code == 0, err
    assert "(0/1; 1 skipped" in stdout or "(1/1; 1 skipped" in stdout
    assert "3 pairs, 1 skipped" in stdout
    assert "neighbours of t0w1:" in stdout


def test_console_script_entry_point(tmp_path):
    """`python -m hsoftmax.cli` (what the console script calls) exits 2 on a missing corpus."""
    r = subprocess.run(
        [sys.executable, "-m", "hsoftmax.cli", "word2vec", str(tmp_path / "none.txt"), "-o", str(tmp_path / "v.txt")],
        capture_output=True,
        check=False,
        text=True,
    )
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "not found" in r.stderr


# ---------------------------------------------------------------------------- issue 13 / 14
def test_output_that_is_the_corpus_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_corpus(tmp_path / "c.txt")
    (tmp_path / "out").mkdir()
    os.symlink("c.txt", tmp_path / "link.txt")
    os.link(tmp_path / "c.txt", tmp_path / "hard.txt")
    before = (tmp_path / "c.txt").read_bytes()
    for output in ["c.txt", "./out/../c.txt", "link.txt", "hard.txt", str(tmp_path / "c.txt")]:
        code, _, err = run(["word2vec", "c.txt", "-o", output, *FAST], capsys)
        assert_one_line_error(code, err, "is the corpus")
    code, _, err = run(["word2vec", "link.txt", "-o", "c.txt", *FAST], capsys)
    assert_one_line_error(code, err, "is the corpus")
    assert (tmp_path / "c.txt").read_bytes() == before


@pytest.mark.parametrize(
    "extra,pattern",
    [
        (["-o", "."], "is a directory"),
        (["-o", "v.txt", "--checkpoint", "c.txt"], "--checkpoint must be a directory"),
        (["-o", "v.txt", "--threads", "1000000"], "--threads"),
        (["-o", "v.txt", "--dim", "1000000000"], "--dim"),
        (["-o", "v.txt", "--epochs", str(10**20)], "--epochs"),
        (["-o", "v.txt", "--seed", "-1"], "--seed"),
        (["-o", "v.txt", "--seed", str(2**64)], "--seed"),
        (["-o", "v.txt", "--window", "1000000000"], "--window"),
        (["-o", "v.txt", "--min-count", "1" * 200], "expected an integer"),
        (["-output", "v.txt"], "did you mean --output?"),
        (["-o", "v.txt", "-size", "5"], "did you mean --dim?"),
        (["-o", "v.txt", "-threads", "5"], "did you mean --threads?"),
        (["-o", "v.txt", "-minCount", "5"], "did you mean --min-count?"),
        (["-o", "v.txt", "-cbow", "0"], "--skipgram"),
        (["-o", "v.txt", "-negative", "5"], "no negative sampling"),
        (["--out", "v.txt"], "unrecognized arguments: --out"),  # no abbreviations
        (["-o", "v.txt", "--alpha", "1e30"], "diverged"),
    ],
)
def test_hostile_flags_and_outputs_are_one_line_errors(tmp_path, capsys, monkeypatch, extra, pattern):
    monkeypatch.chdir(tmp_path)
    write_corpus(tmp_path / "c.txt")
    base = ["--dim", "8", "--epochs", "1", "--no-progress", "--min-count", "1"]
    code = main(["word2vec", "c.txt", *base, *extra])
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if ln.startswith("hsoftmax: error:")]
    assert code == 2 and len(errors) == 1 and pattern in errors[0], err
    assert "Traceback" not in err and not (tmp_path / "v.txt").exists() and not (tmp_path / "utput").exists()


def test_version(capsys):
    from hsoftmax import __version__

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"hsoftmax {__version__}"


def test_busy_checkpoint_directory(tmp_path, corpus, capsys):
    from hsoftmax.word2vec import Word2Vec, encode_file

    holder = Word2Vec(dim=8, min_count=1, epochs=1, threads=1, progress=False)
    enc = encode_file(corpus, min_count=1)
    try:
        holder.build(enc, checkpoint=tmp_path / "ck")
        code, _, err = run(
            ["word2vec", corpus, "-o", str(tmp_path / "v.txt"), "--checkpoint", str(tmp_path / "ck"), *FAST], capsys
        )
        assert_one_line_error(code, err, "in use by another run")
    finally:
        holder.unlock_checkpoint()
        enc.close()
    assert not (tmp_path / "v.txt").exists()


def test_stale_temporary_outputs_are_removed(tmp_path, corpus, capsys):
    old = tmp_path / ".v.txt.0123abcd.tmp"  # what atomic_path leaves behind after kill -9
    old.write_text("partial")
    os.utime(old, (1, 1))
    other = tmp_path / ".v.txt.notours.tmp"
    other.write_text("keep")
    assert run(["word2vec", corpus, "-o", str(tmp_path / "v.txt"), *FAST], capsys)[0] == 0
    assert not old.exists() and other.exists()


def test_status_goes_to_stderr_one_line_per_epoch_when_not_a_terminal(tmp_path, corpus, capsys):
    code, out, err = run(
        [
            "word2vec",
            corpus,
            "-o",
            str(tmp_path / "v.txt"),
            "--dim",
            "8",
            "--epochs",
            "2",
            "--min-count",
            "1",
            "--threads",
            "1",
        ],
        capsys,
    )
    assert code == 0 and out == ""
    assert [ln.split(":")[0] for ln in err.splitlines() if ln.startswith("epoch")] == ["epoch 1", "epoch 2"]


def test_save_model_and_continue_with_new_words(tmp_path, corpus, capsys):
    from hsoftmax.word2vec import Word2Vec

    model = tmp_path / "w2v.model"
    assert run(["word2vec", corpus, "--save-model", str(model), *FAST], capsys)[0] == 0  # no -o needed
    first = Word2Vec.load(model)
    more = tmp_path / "more.txt"
    with open(more, "w") as f:  # the old words and a new topic
        rng = random.Random(1)
        for _ in range(300):
            t = rng.randrange(4)
            f.write(" ".join(f"t{t}w{rng.randrange(8)}" for _ in range(8)) + "\n")
    out, grown = tmp_path / "v.txt", tmp_path / "grown.model"
    argv = ["word2vec", str(more), "--continue", str(model), "-o", str(out), "--save-model", str(grown)]
    code, _, err = run([*argv, "--epochs", "2", "--threads", "1", "--no-progress"], capsys)
    assert code == 0, err
    assert "8 new" in err and f"continuing {model}" in err
    m = Word2Vec.load(grown)
    assert m.vocab.words[:24] == first.vocab.words and len(m.vocab) == 32 and m.dim == 8 and m.epochs == 2
    assert np.array_equal(m.vocab.counts[:24] > first.vocab.counts, np.ones(24, bool))  # counts added up
    assert load_vectors(out).vectors.shape == (32, 8)
    # the model's settings stay: a flag that contradicts one is an error, not silently ignored
    code, _, err = run([*argv, "--dim", "16", "--no-progress"], capsys)
    assert_one_line_error(code, err, "--dim 16 differs from the model's dim=8")
    code, _, err = run(["word2vec", str(more), "--continue", str(out), "-o", str(out)], capsys)
    assert_one_line_error(code, err, "load_vectors")  # vectors are not a model

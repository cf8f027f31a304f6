"""``hsoftmax supervised train/test/predict``: fastText's output formats, and one-line errors."""

from __future__ import annotations

import random
import re

import numpy as np
import pytest

from hsoftmax import Tree
from hsoftmax.cli import main
from hsoftmax.supervised import Classifier

FAST = ["--dim", "8", "--epochs", "5", "--lr", "0.5", "--threads", "1", "--no-progress"]


def write_lines(path, n=300, seed=0):
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            t = rng.randrange(4)
            f.write(f"__label__T{t} " + " ".join(f"t{t}w{rng.randrange(6)}" for _ in range(5)) + "\n")
    return str(path)


def run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, pattern):
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("hsoftmax: error:") and pattern in lines[0], lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("sup")
    train = write_lines(d / "train.txt")
    model = str(d / "model.npz")
    assert main(["supervised", "train", train, "-o", model, *FAST]) == 0
    return d, train, model


def test_train_writes_a_loadable_model(trained):
    _, _, model = trained
    clf = Classifier.load(model)
    assert sorted(clf.labels) == ["T0", "T1", "T2", "T3"] and clf.dim == 8


def test_test_prints_fastText_format(trained, capsys):
    d, _, model = trained
    heldout = write_lines(d / "test.txt", n=100, seed=1)
    code, out, _ = run(["supervised", "test", model, heldout, "-k", "2"], capsys)
    assert code == 0
    n, p, r = Classifier.load(model).test(heldout, k=2)
    assert out == f"N\t{n}\nP@2\t{p:.3g}\nR@2\t{r:.3g}\n"
    assert re.fullmatch(r"N\t100\nP@2\t0\.5\nR@2\t1\n", out)  # 4 topics, learned perfectly


def test_predict_prints_labels_and_probabilities(trained, capsys, tmp_path):
    _, _, model = trained
    texts = tmp_path / "texts.txt"
    texts.write_text("t1w0 t1w3\n\nt2w2 __label__T0\n")
    code, out, _ = run(["supervised", "predict", model, str(texts), "-k", "2"], capsys)
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 3
    labels, probs = Classifier.load(model).predict(["t1w0 t1w3", "", "t2w2 __label__T0"], k=2)
    for line, names, p in zip(lines, labels, probs):
        fields = line.split()
        assert fields[0::2] == ["__label__" + n for n in names]
        np.testing.assert_allclose([float(x) for x in fields[1::2]], p, rtol=1e-5)
    assert lines[0].startswith("__label__T1 ") and lines[2].startswith("__label__T2 ")
    code, out, _ = run(["supervised", "predict", model, str(texts), "--no-prob"], capsys)
    assert out.splitlines()[0] == "__label__T1" and len(out.splitlines()) == 3


def test_predict_reads_standard_input(trained, capsys, monkeypatch):
    import io

    _, _, model = trained
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"t3w1 t3w2\n")))
    code, out, _ = run(["supervised", "predict", model, "-"], capsys)
    assert code == 0 and out.startswith("__label__T3 ")


def test_train_over_a_tree_file(trained, capsys, tmp_path):
    _, train, _ = trained
    tree = tmp_path / "tree.npz"
    Tree.from_paths([["a"], ["a"], ["b"], ["b"], ["b"]], labels=["T0", "T1", "T2", "T3", "spare"]).save(tree)
    model = str(tmp_path / "m.npz")
    code, _, err = run(["supervised", "train", train, "-o", model, "--tree", str(tree), *FAST], capsys)
    assert code == 0, err
    assert Classifier.load(model).labels == ("T0", "T1", "T2", "T3", "spare")


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        (b"__label__a x\n__label__b \xff\n", "train.txt, line 2: not valid UTF-8"),
        (b"__label__a x\n__label__ y\n", "train.txt, line 2: '__label__' without a label name"),
        (b"x y z\n", "no line has a label"),
    ],
)
def test_train_malformed_file_is_one_line_error(tmp_path, capsys, content, pattern):
    bad = tmp_path / "train.txt"
    bad.write_bytes(content)
    out = tmp_path / "m.npz"
    code, _, err = run(["supervised", "train", str(bad), "-o", str(out), *FAST], capsys)
    assert_one_line_error(code, err, pattern)
    assert not out.exists()


def test_usage_errors(trained, capsys, tmp_path):
    _, train, model = trained
    code, _, err = run(["supervised", "train", train, "-o", str(tmp_path / "m.npz"), "-lr", "0.5"], capsys)
    assert_one_line_error(code, err, "did you mean --lr?")
    code, _, err = run(["supervised", "train", str(tmp_path / "none.txt"), "-o", "m.npz"], capsys)
    assert_one_line_error(code, err, "training file not found")
    code, _, err = run(["supervised", "train", train, "-o", train], capsys)
    assert_one_line_error(code, err, "is the corpus")
    code, _, err = run(["supervised", "test", str(tmp_path / "nope.npz"), train], capsys)
    assert_one_line_error(code, err, "model file not found")
    code, _, err = run(["supervised", "test", train, train], capsys)  # a text file is no model
    assert_one_line_error(code, err, "is not a readable hsoftmax classifier")
    wrong_tree = tmp_path / "t.npz"
    Tree.huffman([1, 1], labels=["T0", "zz"]).save(wrong_tree)
    code, _, err = run(["supervised", "train", train, "-o", str(tmp_path / "m.npz"), "--tree", str(wrong_tree)], capsys)
    assert_one_line_error(code, err, "are not labels of the tree")
    texts = tmp_path / "bin.txt"
    texts.write_bytes(b"fine\nnot\x00text\n")
    code, _, err = run(["supervised", "predict", model, str(texts)], capsys)
    assert_one_line_error(code, err, "bin.txt, line 2: a control byte")
    code, _, err = run(["supervised", "predict", model, str(texts), "-k", "0"], capsys)
    assert_one_line_error(code, err, "must be in [1,")


def test_train_multilabel(tmp_path, capsys):
    rng = random.Random(0)
    train = tmp_path / "multi.txt"
    with open(train, "w") as f:
        for _ in range(300):
            t = rng.randrange(4)
            f.write(
                f"__label__T{t} __label__T{(t + 1) % 4} "
                + " ".join(f"t{t}w{rng.randrange(6)}" for _ in range(5))
                + "\n"
            )
    model = str(tmp_path / "m.npz")
    code, _, err = run(["supervised", "train", str(train), "-o", model, "--multilabel", *FAST], capsys)
    assert code == 0, err
    clf = Classifier.load(model)
    assert clf.multilabel
    texts = tmp_path / "t.txt"
    texts.write_text("t2w1 t2w4\n")
    code, out, _ = run(["supervised", "predict", model, str(texts), "-k", "2"], capsys)
    fields = out.split()
    assert code == 0 and fields[0::2] == ["__label__T2", "__label__T3"]
    assert all(float(p) > 0.8 for p in fields[1::2])  # both labels: marginals, not a distribution
    code, out, _ = run(["supervised", "test", model, str(train), "-k", "2"], capsys)
    assert out == "N\t300\nP@2\t1\nR@2\t1\n"

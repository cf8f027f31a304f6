"""hsoftmax.supervised: exact predictions over every kind of tree, fastText's formats and
semantics, save/load, and clear errors on bad input."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest

from hsoftmax import Tree
from hsoftmax.files import NpzReader
from hsoftmax.supervised import Classifier, FormatError
from hsoftmax.supervised.data import _concat, _fnv1a, read_lines

TOPICS = 12


def topic_lines(n: int = 600, seed: int = 0, multi: bool = False) -> list[str]:
    """fastText-format lines: topic ``t``'s words are ``t_w0..t_w7``, with some shared noise."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        t = rng.randrange(TOPICS)
        labels = [f"__label__L{t}"]
        if multi and rng.random() < 0.5:
            labels.append(f"__label__L{(t + 1) % TOPICS}")
        words = [f"t{t}_w{rng.randrange(8)}" if rng.random() < 0.8 else f"noise{rng.randrange(20)}" for _ in range(6)]
        out.append(" ".join(labels + words))
    return out


def taxonomy() -> Tree:
    """Two levels over the topics plus two labels no line uses, a chain and a 3-way node."""
    paths = [["even"] if t % 2 == 0 else ["odd", f"odd{t % 3}"] for t in range(TOPICS)] + [["even"], ["x", "y"]]
    return Tree.from_paths(paths, labels=[f"L{t}" for t in range(TOPICS)] + ["unused", "chain"])


def fit(tree: str | Tree = "huffman", **kw) -> Classifier:
    args = dict(dim=16, epochs=5, lr=0.5, threads=1, progress=False, tree=tree)
    args.update(kw)
    return Classifier(**args).fit(topic_lines())


TREES = {
    "huffman": "huffman",
    "balanced": "balanced",
    "learned": "learned",
    "ternary": Tree.huffman(np.arange(1, TOPICS + 1), arity=3, labels=[f"L{t}" for t in range(TOPICS)]),
    "taxonomy": taxonomy(),
}
TEXTS = ["t0_w1 t0_w2 noise3", "t5_w0", "", "unseen words only", "t3_w1 t7_w2 __label__L3"]


@pytest.fixture(scope="module", params=list(TREES))
def model(request) -> Classifier:
    return fit(TREES[request.param], word_ngrams=2, bucket=1000)


def test_learns_the_topics(model):
    n, p1, r1 = model.test(topic_lines(300, seed=1))
    assert n == 300 and p1 == r1 and p1 > 0.9


def test_probabilities_are_exact_and_normalized(model):
    lp = model.log_probs(TEXTS)
    assert lp.shape == (len(TEXTS), model.tree.num_classes)
    np.testing.assert_allclose(np.exp(lp).sum(axis=1), 1.0, rtol=1e-12)
    # the same as the torch layer's exact log-probabilities with the node table as its weight
    torch = pytest.importorskip("torch")
    from hsoftmax import HierarchicalSoftmax

    layer = HierarchicalSoftmax(model.dim, model.tree, bias=False).double()
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(model.syn1.astype(np.float64)))
        want = layer.log_prob(torch.from_numpy(model.hidden(TEXTS))).numpy()
    np.testing.assert_allclose(lp, want, rtol=1e-10, atol=1e-12)


def test_topk_is_the_sorted_distribution(model):
    V = model.tree.num_classes
    labels, probs = model.predict(TEXTS, k=V + 5)  # k beyond the labels: all of them
    lp = model.log_probs(TEXTS)
    assert probs.shape == (len(TEXTS), V)
    for i in range(len(TEXTS)):
        assert sorted(labels[i]) == sorted(model.labels)
        cols = [model.labels.index(lab) for lab in labels[i]]
        np.testing.assert_allclose(probs[i], np.exp(lp[i, cols]), rtol=1e-12)
        assert np.all(np.diff(probs[i]) <= 1e-15)  # best first
        np.testing.assert_allclose(np.sort(probs[i])[::-1], np.sort(np.exp(lp[i]))[::-1], rtol=1e-12)
    top3, p3 = model.predict(TEXTS, k=3)
    assert [row[:3] for row in labels] == top3 and np.array_equal(p3, probs[:, :3])


def test_save_load_round_trip(model, tmp_path):
    path = tmp_path / "m.npz"
    model.save(path)
    back = Classifier.load(path)
    assert back.config() == model.config() and back.tree == model.tree and back.words == model.words
    assert back.predict(TEXTS, k=3)[0] == model.predict(TEXTS, k=3)[0]
    np.testing.assert_array_equal(back.predict(TEXTS, k=3)[1], model.predict(TEXTS, k=3)[1])
    assert back.test(topic_lines(100, seed=2), k=2) == model.test(topic_lines(100, seed=2), k=2)
    assert isinstance(back.tree_spec, Tree) == isinstance(model.tree_spec, Tree)


def test_taxonomy_keeps_its_extra_labels():
    clf = fit(taxonomy())
    assert clf.labels == taxonomy().labels and clf.label_counts[clf.labels.index("unused")] == 0
    assert set(clf.predict("t1_w1", k=len(clf.labels))[0][0]) == set(taxonomy().labels)


def test_learned_tree_is_built_from_the_data():
    clf = fit("learned")
    assert clf.tree != fit("huffman").tree and clf.tree.labels == clf.labels
    assert len(clf.history) == 2 * clf.epochs  # two passes


def test_test_is_fastText_precision_and_recall():
    clf = fit()
    lines = ["__label__L0 __label__L5 t0_w1 t0_w2", "__label__L3 t3_w1", "no label t0_w1", "__label__nope t1_w1"]
    n, p, r = clf.test(lines, k=2)
    labels, _ = clf.predict(lines[:2], k=2)
    gold = [{"L0", "L5"}, {"L3"}]
    tp = sum(len(g & set(row)) for g, row in zip(gold, labels))
    assert n == 2  # lines without a known label do not count, as in fastText
    assert p == tp / 4 and r == tp / 3


def test_one_thread_is_deterministic_and_seed_matters():
    a, b, c = fit(seed=3), fit(seed=3), fit(seed=4)
    assert np.array_equal(a.syn0, b.syn0) and np.array_equal(a.syn1, b.syn1)
    assert not np.array_equal(a.syn0, c.syn0)


def test_hogwild_threads_train_too():
    clf = fit(threads=2)
    assert clf.test(topic_lines(300, seed=1))[1] > 0.9


def test_word_ngrams_use_fastText_hashing():
    def reference(token: bytes) -> int:  # fastText's Dictionary::hash: FNV-1a over int8 chars
        h = 2166136261
        for b in token:
            h = ((h ^ ((b - 256) & 0xFFFFFFFF if b >= 128 else b)) * 16777619) & 0xFFFFFFFF
        return h

    toks = [b"a", b"hello", "caf\u00e9".encode(), "\u65e5\u672c".encode(), b""]
    assert _fnv1a(*_concat(toks)).tolist() == [reference(t) for t in toks]
    assert reference(b"a") == 0xE40C292C  # the published FNV-1a test vector
    clf = Classifier(dim=4, epochs=1, word_ngrams=3, bucket=97, threads=1, progress=False).fit(["__label__a x y"])
    ex = clf._encode(read_lines(["x y"]))
    # x, y, </s>, then the n-grams xy, x y </s>, y </s>: 3 words and 3 buckets in [3, 3 + 97)
    rows = ex.rows.tolist()
    assert sorted(rows[:3]) == sorted(clf.words.index(w) for w in ("x", "y", "</s>"))
    assert len(rows) == 6 and all(3 <= r < 100 for r in rows[3:])


def test_reads_files_and_compressed_files(tmp_path):
    import gzip

    lines = topic_lines(200)
    plain = tmp_path / "train.txt"
    plain.write_text("\n".join(lines) + "\n")
    packed = tmp_path / "train.txt.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    a = Classifier(dim=8, epochs=2, threads=1, progress=False).fit(plain)
    b = Classifier(dim=8, epochs=2, threads=1, progress=False).fit(str(packed))
    c = Classifier(dim=8, epochs=2, threads=1, progress=False).fit(lines)
    assert np.array_equal(a.syn0, b.syn0) and np.array_equal(a.syn0, c.syn0)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"__label__a ok\n__label__b bad\x00byte\n", "train.txt, line 2: a control byte"),
        (b"__label__a ok\n\n__label__b caf\xe9\n", "train.txt, line 3: not valid UTF-8"),
        (b"__label__a ok\n__label__a fine\n__label__ nothing\n", "train.txt, line 3: '__label__' without a label name"),
        (b"no labels here\nnor here\n", "train.txt: no line has a label"),
        (b"", "train.txt: no line has a label"),
    ],
)
def test_malformed_files_name_the_line(tmp_path, content, message):
    path = tmp_path / "train.txt"
    path.write_bytes(content)
    with pytest.raises(FormatError, match=message.replace("(", r"\(")) as err:
        Classifier(progress=False).fit(path)
    assert "\n" not in str(err.value)


def test_tree_errors():
    lines = topic_lines(50)
    small = Tree.huffman([1, 1, 1], labels=["L0", "L1", "other"])
    with pytest.raises(ValueError, match=r"10 label\(s\) of <lines> are not labels of the tree: 'L\d+'"):
        Classifier(tree=small, progress=False).fit(lines)
    with pytest.raises(ValueError, match="the tree has no labels"):
        Classifier(tree=Tree.huffman([1, 2]))
    with pytest.raises(ValueError, match="tree must be one of"):
        Classifier(tree="kmeans")


@pytest.mark.parametrize(
    ("kw", "error"),
    [
        ({"dim": 0}, ValueError),
        ({"epochs": 1.5}, TypeError),
        ({"lr": -1}, ValueError),
        ({"lr": float("nan")}, ValueError),
        ({"word_ngrams": 0}, ValueError),
        ({"bucket": -1}, ValueError),
        ({"threads": 0}, ValueError),
        ({"label_prefix": ""}, ValueError),
        ({"progress": "yes"}, ValueError),
    ],
)
def test_bad_settings(kw, error):
    with pytest.raises(error):
        Classifier(**kw)


def test_predict_input_errors():
    clf = fit()
    with pytest.raises(ValueError, match="newline"):
        clf.predict(["one\ntwo"])
    with pytest.raises(TypeError):
        clf.predict([b"bytes"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="k must be"):
        clf.predict("x", k=0)
    with pytest.raises(ValueError, match="not trained"):
        Classifier(progress=False).predict("x")
    labels, probs = clf.predict([])
    assert labels == [] and probs.shape == (0, 1)


def test_diverging_training_fails():
    from hsoftmax.supervised import TrainingError

    with pytest.raises(TrainingError, match="diverged"):
        fit(lr=1e30, epochs=1)


def _tampered(tmp_path, clf: Classifier, key: str, value) -> str:
    good = tmp_path / "good.npz"
    clf.save(good)
    with NpzReader(good) as z:
        arrays = {k: np.array(z.read(k)) for k in z.headers}
    if value is None:
        del arrays[key]
    else:
        arrays[key] = value
    bad = str(tmp_path / "bad.npz")
    np.savez(bad, **arrays)
    return bad


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("syn1", None, "array 'syn1' is missing"),
        ("syn1", np.zeros((3, 16), dtype=np.float32), "array 'syn1' is float32 of shape \\(3, 16\\)"),
        ("syn0", "nan", "array 'syn0' holds NaN"),
        ("format", np.frombuffer(b"something else", dtype=np.uint8), "not a supervised classifier"),
        ("config", np.frombuffer(b'{"dim": 16}', dtype=np.uint8), "config has unexpected or missing setting"),
        ("extra", np.zeros(2), "unexpected array 'extra'"),
        ("tree_label_bytes", None, "tree data has"),
    ],
)
def test_load_rejects_damaged_files(tmp_path, key, value, message):
    clf = fit(epochs=1)
    if isinstance(value, str):
        value = clf.syn0.copy()
        value[2, 3] = np.nan
    bad = _tampered(tmp_path, clf, key, value)
    with pytest.raises(ValueError, match=message) as err:
        Classifier.load(bad)
    assert os.path.basename(bad) in str(err.value)


def test_load_rejects_non_archives(tmp_path):
    path = tmp_path / "junk.npz"
    path.write_bytes(b"not a zip at all")
    with pytest.raises(ValueError, match=r"junk\.npz is not a readable hsoftmax classifier"):
        Classifier.load(path)


# ---------------------------------------------------------------------------- multilabel (PLT)
MULTI_TREES = {"huffman": "huffman", "ternary": TREES["ternary"], "taxonomy": taxonomy()}


@pytest.fixture(scope="module", params=list(MULTI_TREES))
def multi(request) -> Classifier:
    args = dict(dim=16, epochs=5, lr=0.5, threads=1, progress=False, tree=MULTI_TREES[request.param], multilabel=True)
    return Classifier(**args).fit(topic_lines(multi=True))


def _path_log_marginals(clf: Classifier, H: np.ndarray) -> np.ndarray:
    """By the definition: a label's log marginal is the sum of log sigmoid(h . W[r]) over the
    rows r of the edges on its path (edges without a row are certain)."""
    from hsoftmax.kernels.plt import plt_layout

    lay = plt_layout(clf.tree)
    V = clf.tree.num_classes
    S = H @ clf.syn1.astype(np.float64).T
    logsig = -np.logaddexp(0.0, -S)
    out = np.zeros((H.shape[0], V))
    for label in range(V):
        ref = label
        while lay.parent[ref] >= 0:
            if lay.ref_row[ref] >= 0:
                out[:, label] += logsig[:, lay.ref_row[ref]]
            ref = V + lay.parent[ref]
    return out


def test_multilabel_marginals_are_products_along_the_path(multi):
    H = multi.hidden(TEXTS)
    lp = multi.log_probs(TEXTS)
    np.testing.assert_allclose(lp, _path_log_marginals(multi, H), rtol=1e-10, atol=1e-12)
    assert np.all(lp <= 0.0)
    torch = pytest.importorskip("torch")
    from hsoftmax import LabelTree

    layer = LabelTree(multi.dim, multi.tree, bias=False).double()
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(multi.syn1.astype(np.float64)))
        want = layer.log_marginals(torch.from_numpy(H)).numpy()
    np.testing.assert_allclose(lp, want, rtol=1e-10, atol=1e-12)


def test_multilabel_topk_is_the_sorted_marginals(multi):
    V = multi.tree.num_classes
    labels, probs = multi.predict(TEXTS, k=V)
    lp = multi.log_probs(TEXTS)
    for i in range(len(TEXTS)):
        cols = [multi.labels.index(lab) for lab in labels[i]]
        assert sorted(cols) == list(range(V))
        np.testing.assert_allclose(probs[i], np.exp(lp[i, cols]), rtol=1e-12)
        assert np.all(np.diff(probs[i]) <= 1e-15)


def test_multilabel_learns_calibrated_marginals(multi):
    # half the lines carry their topic's label and the next topic's too: each label's marginal is
    # learned, so the topic comes first with P@1 near perfect, and the neighbour's marginal
    # matches how often it is there (fastText's pick-one-label training would split the mass)
    heldout = topic_lines(300, seed=1, multi=True)
    n, p1, _ = multi.test(heldout, k=1)
    assert n == 300 and p1 > 0.9
    topic4 = [ln for ln in heldout if ln.startswith("__label__L4 ")]
    labels, probs = multi.predict(topic4, k=2)
    assert all(row == ["L4", "L5"] for row in labels)
    rate = np.mean(["__label__L5" in ln for ln in topic4])
    assert abs(probs[:, 1].mean() - rate) < 0.1 and probs[:, 0].mean() > 0.9
    assert probs.sum(axis=1).mean() > 1.2  # marginals, not one distribution


def test_multilabel_save_load_round_trip(multi, tmp_path):
    multi.save(tmp_path / "m.npz")
    back = Classifier.load(tmp_path / "m.npz")
    assert back.multilabel and back.tree == multi.tree
    np.testing.assert_array_equal(back.log_probs(TEXTS), multi.log_probs(TEXTS))


def test_label_vectors_are_means_of_unit_hidden_vectors():
    clf = fit(epochs=2)
    lines = ["__label__L0 t0_w1", "__label__L0 __label__L3 t0_w2 t3_w1", "__label__L3 t3_w4", "no label"]
    vec = clf.label_vectors(lines)
    H = clf.hidden(["t0_w1", "t0_w2 t3_w1", "t3_w4"])
    H /= np.linalg.norm(H, axis=1, keepdims=True)
    L0, L3 = clf.labels.index("L0"), clf.labels.index("L3")
    np.testing.assert_allclose(vec[L0], (H[0] + H[1]) / 2)
    np.testing.assert_allclose(vec[L3], (H[1] + H[2]) / 2)
    others = [j for j in range(len(clf.labels)) if j not in (L0, L3)]
    assert vec.shape == (len(clf.labels), clf.dim) and not vec[others].any()

"""Whole-model files (Word2Vec.save / Word2Vec.load) and continued training with a growing
vocabulary (fit(update=True)): round trips, damaged and foreign files, and a grown tree in which
the old words keep their paths and node rows."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest

from conftest import topic_corpus, topic_separation
from hsoftmax.tree import Tree
from hsoftmax.word2vec import Word2Vec, encode_sentences, kernels, load_vectors
from hsoftmax.word2vec.grow import graft

KW = dict(dim=12, window=3, min_count=1, epochs=2, threads=1, seed=3, progress=False)


@pytest.fixture(scope="module")
def corpus_a():
    return topic_corpus(n_sentences=600)


@pytest.fixture(scope="module")
def corpus_b():
    """Topic 0's words renamed: a corpus with new words (and the old topics beside them)."""
    return [[("new" + w) if w.startswith("t0") else w for w in s] for s in topic_corpus(n_sentences=600, seed=1)]


@pytest.fixture(scope="module")
def trained(corpus_a):
    return Word2Vec(**KW).fit(corpus_a)


def _scores(m, sentences):
    """The evaluator's per-word HS log-probabilities of words in their CBOW context."""
    enc = encode_sentences(sentences, min_count=1)
    try:
        ids = np.array([m.vocab[w] for w in enc.vocab.words])[np.asarray(enc.ids)]
        words = ids[m.window : m.window + 200]
        H = np.stack(
            [
                m.syn0[np.r_[ids[i - m.window : i], ids[i + 1 : i + 1 + m.window]]].mean(0)
                for i in range(m.window, m.window + 200)
            ]
        ).astype(np.float64)
    finally:
        enc.close()
    return kernels.word_logprobs(H, m.syn1, kernels.flat_paths(m.tree, m.word_classes, packed=True), words)


def _path_rows(tree, syn1, w):
    """Word ``w``'s path as (choice, node row) pairs: what scoring and training read."""
    nodes, choices = tree.path(w)
    return [(int(c), syn1[tree.param_offset[j]].copy()) for j, c in zip(nodes, choices) if tree.arity[j] >= 2]


def test_save_load_round_trip(tmp_path, trained, corpus_a):
    path = tmp_path / "w2v.model"
    trained.save(path)
    back = Word2Vec.load(path, threads=1, progress=False)
    assert back.config() == trained.config() and back.vocab.words == trained.vocab.words
    assert np.array_equal(back.vocab.counts, trained.vocab.counts) and back.tree == trained.tree
    assert np.array_equal(back.syn0, trained.syn0) and np.array_equal(back.syn1, trained.syn1)
    assert back.epochs_done == trained.epochs_done and back.history == trained.history
    np.testing.assert_array_equal(_scores(back, corpus_a[:50]), _scores(trained, corpus_a[:50]))
    # the word2vec export is still there, from the loaded model too
    back.wv.save_word2vec_format(tmp_path / "v.bin", binary=True)
    assert np.array_equal(load_vectors(tmp_path / "v.bin").vectors, trained.syn0)


def test_loaded_model_continues_as_the_original(tmp_path, corpus_a, corpus_b):
    a = Word2Vec(**KW).fit(corpus_a)
    a.save(tmp_path / "a.model")
    b = Word2Vec.load(tmp_path / "a.model", threads=1, progress=False)
    a.fit(corpus_b, update=True)
    b.fit(corpus_b, update=True)
    assert a.vocab.words == b.vocab.words and np.array_equal(a.syn0, b.syn0) and np.array_equal(a.syn1, b.syn1)


def test_vector_file_names_still_write_vectors(tmp_path, trained):
    with pytest.warns(FutureWarning, match="save_word2vec_format"):
        trained.save(tmp_path / "v.bin")
    assert load_vectors(tmp_path / "v.bin").vectors.shape == trained.syn0.shape
    with pytest.raises(ValueError, match="load_vectors"):
        Word2Vec.load(tmp_path / "v.bin")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        trained.save(tmp_path / "plain")  # any other name: the model, no warning
    assert Word2Vec.load(tmp_path / "plain").tree == trained.tree


@pytest.mark.parametrize(
    "edit,pattern",
    [
        (lambda z: {**z, "syn1": z["syn1"][:1]}, "syn1"),
        (lambda z: {**z, "syn0": z["syn0"][:, :4]}, "syn0"),
        (lambda z: {**z, "counts": z["counts"][:-1]}, "counts"),
        (lambda z: {**z, "syn0": np.where(np.arange(z["syn0"].shape[0])[:, None] == 2, np.inf, z["syn0"])}, "row 2"),
        (lambda z: {**z, "tree_children": z["tree_children"][::-1].copy()}, "tree|node|class"),
        (lambda z: {**z, **{"tree_" + k: v for k, v in Tree.balanced(3).state().items()}}, "3 classes"),
        (lambda z: {k: v for k, v in z.items() if k != "syn1"}, "'syn1' is missing"),
        (lambda z: {**z, "extra": np.zeros(2)}, "unexpected array 'extra'"),
        (lambda z: {**z, "version": np.array(7)}, "version 7"),
        (lambda z: {**z, "config": np.frombuffer(b'{"dim": 12}', dtype=np.uint8)}, "setting"),
        (lambda z: {**z, "config": np.frombuffer(b"[1, 2", dtype=np.uint8)}, "not valid JSON"),
        (lambda z: {**z, "epochs_done": np.array(5)}, "epochs_done=5"),
    ],
    ids=[
        "syn1",
        "dim",
        "counts",
        "inf",
        "children",
        "tree-size",
        "missing",
        "extra",
        "version",
        "config",
        "json",
        "epochs",
    ],
)
def test_crafted_model_files_are_refused(tmp_path, trained, edit, pattern):
    path = tmp_path / "m.npz"
    trained.save(path)
    with np.load(path) as z:
        arrays = edit({k: z[k] for k in z.files})
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(ValueError, match=pattern) as e:
        Word2Vec.load(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("cut", [0, 3, 200, -40])
def test_truncated_foreign_and_missing_model_files(tmp_path, trained, cut):
    path = tmp_path / "m.npz"
    trained.save(path)
    path.write_bytes(path.read_bytes()[:cut])
    with pytest.raises(ValueError, match=re.escape(str(path))):
        Word2Vec.load(path)
    (tmp_path / "t.npz").write_bytes(b"hello world\n")
    with pytest.raises(ValueError, match="not an hsoftmax word2vec model"):
        Word2Vec.load(tmp_path / "t.npz")
    Tree.balanced(4).save(tmp_path / "tree.npz")  # an npz of ours, but not a model
    with pytest.raises(ValueError, match="'version' is missing"):
        Word2Vec.load(tmp_path / "tree.npz")
    with pytest.raises(ValueError, match="not found"):
        Word2Vec.load(tmp_path / "absent.npz")


def test_update_keeps_old_paths_and_rows(corpus_a, corpus_b):
    m = Word2Vec(**KW).fit(corpus_a)
    old_tree, old_syn0, old_syn1, V0 = m.tree, m.syn0.copy(), m.syn1.copy(), len(m.vocab)
    old_counts = m.vocab.counts.copy()
    enc = encode_sentences(corpus_b, min_count=1, vocab=m.vocab)
    try:
        m.build(enc, update=True)  # grown, not trained yet: the rows are exactly the old ones
        new = m.vocab.words[V0:]
        assert new and all(w.startswith("newt0") for w in new)
        assert np.array_equal(m.vocab.counts[:V0], old_counts + enc.vocab.counts[:V0])
        assert np.array_equal(m.syn0[:V0], old_syn0) and m.syn0.shape == (len(m.vocab), KW["dim"])
        point = graft(old_tree, m.vocab.counts).point
        under = 0
        for w in range(V0):
            before, after = _path_rows(old_tree, old_syn1, w), _path_rows(m.tree, m.syn1, w)
            if len(after) == len(before) + 1:  # under the graft point: one decision inserted
                under += 1
                after = [p for p in after if np.any(p[1])]  # the new node's row is zero
            assert len(after) == len(before)
            for (c0, r0), (c1, r1) in zip(before, after):
                assert c0 == c1 and np.array_equal(r0, r1)
        assert under < V0 and (point >= V0 or under == 1)  # the others keep their paths exactly
        assert m.tree.num_classes == len(m.vocab) and m.syn1.shape[0] == m.tree.num_params
        for w in range(V0, len(m.vocab)):  # new words: valid paths through the new node
            nodes, _ = m.tree.path(w)
            assert len(nodes) >= 1 and not np.any(m.syn1[m.tree.param_offset[nodes[-1]]])
        m.train(enc)
    finally:
        enc.close()
    assert m.epochs_done == KW["epochs"] and np.isfinite(m.syn0).all()
    within, across = topic_separation(m.wv)
    assert within > across + 0.2  # the new words (topic 0 renamed) learned their topic too
    newt = [w for w in m.vocab.words if w.startswith("newt0")]
    sims = m.wv.similarity(newt[0], newt[1]), m.wv.similarity(newt[0], "t3w1")
    assert sims[0] > sims[1]


def test_update_with_no_new_words_trains_on(corpus_a):
    m = Word2Vec(**KW).fit(corpus_a)
    tree, syn1 = m.tree, m.syn1.copy()
    m.fit(corpus_a[:100], update=True)
    assert m.tree == tree and m.syn1.shape == syn1.shape and not np.array_equal(m.syn1, syn1)
    assert m.history[-1]["words"] > 0 and m.epochs_done == KW["epochs"]


def test_update_errors(corpus_a, corpus_b):
    with pytest.raises(ValueError, match="call fit"):
        Word2Vec(**KW).fit(corpus_a, update=True)
    m = Word2Vec(**KW).fit(corpus_a)
    enc = encode_sentences(corpus_b, min_count=1)  # not encoded with the model's vocabulary
    try:
        with pytest.raises(ValueError, match=re.escape("vocab=model.vocab")):
            m.build(enc, update=True)
    finally:
        enc.close()
    labelled = Word2Vec(**{**KW, "tree": lambda v: Tree.balanced(len(v), labels=sorted(v.words))}).fit(corpus_a)
    with pytest.raises(ValueError, match="by label"):
        labelled.fit(corpus_b, update=True)


def test_balanced_tree_grows_balanced_subtree(corpus_a, corpus_b):
    m = Word2Vec(**{**KW, "tree": "balanced", "epochs": 1}).fit(corpus_a)
    V0 = len(m.vocab)
    m.fit(corpus_b, update=True)
    depths = m.tree.class_depth[V0:]
    assert depths.max() - depths.min() <= 1  # the new words' subtree is balanced


def test_graft_point_minimises_the_added_code_length():
    old = Tree.huffman([100, 50, 20, 10, 5, 5])
    # rare new words go deep (by a rare old word); frequent ones go by the root
    rare = graft(old, np.array([100, 50, 20, 10, 5, 5, 1, 1]))
    frequent = graft(old, np.array([100, 50, 20, 10, 5, 5, 400, 300]))
    assert rare.point < 6 and frequent.point == 6  # a word; the root (ref V0)
    assert frequent.tree.class_depth[6:].max() <= 2
    for g, counts in ((rare, [100, 50, 20, 10, 5, 5, 1, 1]), (frequent, [100, 50, 20, 10, 5, 5, 400, 300])):
        c = np.array(counts, dtype=float)
        assert g.code_length >= g.rebuilt_code_length - 1e-12
        assert g.code_length == pytest.approx(g.tree.expected_code_length(c))


def test_continued_run_resumes_from_its_checkpoint_bit_for_bit(tmp_path, corpus_a, corpus_b):
    base = Word2Vec(**KW).fit(corpus_a)
    base.save(tmp_path / "a.model")
    whole = Word2Vec.load(tmp_path / "a.model", threads=1, progress=False).fit(corpus_b, update=True)

    class StopAfterFirst(Word2Vec):
        def _save_checkpoint(self, directory):
            super()._save_checkpoint(directory)
            raise KeyboardInterrupt

    stopped = StopAfterFirst.load(tmp_path / "a.model", threads=1, progress=False)
    with pytest.raises(KeyboardInterrupt):
        stopped.fit(corpus_b, checkpoint=tmp_path / "ck", update=True)
    resumed = Word2Vec.load(tmp_path / "a.model", threads=1, progress=False)
    resumed.fit(corpus_b, checkpoint=tmp_path / "ck", resume=True, update=True)
    assert resumed.tree == whole.tree and resumed.epochs_done == whole.epochs_done == KW["epochs"]
    assert np.array_equal(resumed.syn0, whole.syn0) and np.array_equal(resumed.syn1, whole.syn1)
    # a checkpoint of the continued run does not resume a run from scratch (another tree)
    with pytest.raises(ValueError, match="cannot be resumed"):
        Word2Vec(**KW).fit(corpus_b, checkpoint=tmp_path / "ck", resume=True)

"""The word2vec trainer: CBOW and skip-gram learn co-occurrence on any tree (labelled trees matched
by label), bad parameters and mismatched trees fail clearly, checkpoints resume bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import taxonomy_paths, topic_corpus, topic_separation
from hsoftmax.tree import Tree
from hsoftmax.word2vec import Word2Vec, encode_sentences, kernels


@pytest.fixture(scope="module")
def corpus():
    return topic_corpus()


def test_default_tree_is_huffman_over_counts(corpus):
    m = Word2Vec(dim=8, min_count=1, epochs=1, threads=1, progress=False).fit(corpus)
    assert m.tree == Tree.huffman(m.vocab.counts)
    assert m.syn1.shape == (m.tree.num_params, 8)
    assert m.vocab.words[0] in ("the", "of", "and")  # most frequent first


@pytest.mark.parametrize("sg", [False, True], ids=["cbow", "skipgram"])
def test_training_learns_cooccurrence(corpus, sg):
    enc = encode_sentences(corpus, min_count=1)
    try:
        m = Word2Vec(
            dim=24, window=4, min_count=1, sample=0, sg=sg, epochs=4, threads=2, seed=3, progress=False, alpha=0.05
        )
        m._setup(enc.vocab)
        before = m.log_likelihood(enc, max_sentences=300)
        m.fit(enc)
        after = m.log_likelihood(enc, max_sentences=300)
    finally:
        enc.close()
    same, other = topic_separation(m.wv)
    assert same > other + 0.3, (same, other)
    assert after > before + 0.5, (before, after)  # log-likelihood per prediction went up
    losses = [h["loss"] for h in m.history]
    assert losses[-1] < losses[0]


@pytest.mark.parametrize(
    "make_tree",
    [
        lambda v: Tree.huffman(v.counts, arity=3),
        lambda v: Tree.balanced(len(v), arity=2),
        lambda v: Tree.balanced(len(v), arity=5),
        lambda v: Tree.from_paths(taxonomy_paths(v.words), labels=list(v.words)),
    ],
    ids=["huffman3", "balanced2", "balanced5", "taxonomy"],
)
@pytest.mark.parametrize("sg", [False, True], ids=["cbow", "skipgram"])
def test_other_trees_train(corpus, make_tree, sg):
    m = Word2Vec(
        dim=24,
        window=4,
        min_count=1,
        sample=0,
        epochs=4,
        threads=1,
        seed=3,
        progress=False,
        alpha=0.05,
        tree=make_tree,
        sg=sg,
    )
    m.fit(corpus)
    assert m.tree == make_tree(m.vocab)
    same, other = topic_separation(m.wv)
    assert same > other + 0.3, (same, other)
    assert m.history[-1]["loss"] < m.history[0]["loss"]


def test_labelled_tree_is_matched_by_label(corpus):
    """A taxonomy whose classes are in alphabetical order, not the vocabulary's: each word must
    train along the path of its own label."""
    words = sorted({w for s in corpus for w in s})
    tree = Tree.from_paths(taxonomy_paths(words), labels=words)
    m = Word2Vec(
        dim=24, window=4, min_count=1, sample=0, epochs=4, threads=1, seed=3, progress=False, alpha=0.05, tree=tree
    ).fit(corpus)
    assert m.vocab.words != tuple(words)
    start, row, choice, _ = kernels.flat_paths(m.tree, m.word_classes)
    for w in ("the", "t2w5"):
        i = m.vocab[w]
        nodes, choices = tree.path(tree.index(w))
        deciding = [(n, c) for n, c in zip(nodes, choices) if tree.arity[n] >= 2]
        assert row[start[i] : start[i + 1]].tolist() == [int(tree.param_offset[n]) for n, _ in deciding]
        assert choice[start[i] : start[i + 1]].tolist() == [int(c) for _, c in deciding]
    same, other = topic_separation(m.wv)
    assert same > other + 0.3
    wrong = Tree.balanced(len(words), labels=[w + "x" for w in words])
    with pytest.raises(ValueError, match="labels"):
        Word2Vec(dim=8, min_count=1, epochs=1, progress=False, tree=wrong).fit(corpus)


def test_tree_must_match_vocabulary(corpus):
    with pytest.raises(ValueError, match="classes"):
        Word2Vec(dim=8, min_count=1, epochs=1, progress=False, tree=Tree.balanced(3)).fit(corpus)


def test_bad_parameters():
    with pytest.raises(ValueError, match="dim must be >= 1"):
        Word2Vec(dim=0)
    with pytest.raises(TypeError):
        Word2Vec(window=2.5)
    with pytest.raises(ValueError, match="tree must be 'huffman' or 'balanced'"):
        Word2Vec(tree="random")
    with pytest.raises(ValueError, match="sample must be a finite number"):
        Word2Vec(sample=-1)


def test_resume_is_bit_for_bit(tmp_path, corpus, monkeypatch):
    kw = dict(dim=16, min_count=1, epochs=3, threads=1, seed=7, progress=False)
    full = Word2Vec(**kw).fit(corpus)

    saves = []
    real_save = Word2Vec._save_checkpoint

    def save_then_crash(self, directory):
        real_save(self, directory)
        saves.append(self.epochs_done)
        if self.epochs_done == 1:
            raise KeyboardInterrupt  # the run dies right after its first checkpoint

    monkeypatch.setattr(Word2Vec, "_save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        Word2Vec(**kw).fit(corpus, checkpoint=tmp_path)
    monkeypatch.setattr(Word2Vec, "_save_checkpoint", real_save)
    assert saves == [1]
    resumed = Word2Vec(**kw).fit(corpus, checkpoint=tmp_path, resume=True)
    assert resumed.epochs_done == 3
    np.testing.assert_array_equal(resumed.syn0, full.syn0)
    np.testing.assert_array_equal(resumed.syn1, full.syn1)
    with pytest.raises(ValueError, match="dim"):
        Word2Vec(**{**kw, "dim": 8}).fit(corpus, checkpoint=tmp_path, resume=True)


def test_resume_needs_a_checkpoint(tmp_path, corpus):
    with pytest.raises(ValueError, match="no checkpoint"):
        Word2Vec(dim=8, min_count=1, epochs=1, progress=False).fit(corpus, checkpoint=tmp_path, resume=True)


# ---------------------------------------------------------------------------- issue 13: reliability
def _first_checkpoint(tmp_path, sentences, **kw):
    class StopAfterFirst(Word2Vec):
        def _save_checkpoint(self, directory):
            super()._save_checkpoint(directory)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        StopAfterFirst(**kw).fit(sentences, checkpoint=tmp_path)
    return tmp_path / "checkpoint.npz"


def test_checkpoint_vocabulary_is_lossless(tmp_path):
    sentences = [["a\x00", "a", "b", "\udcff"]] * 30  # a trailing NUL, a lone surrogate
    kw = dict(dim=8, min_count=1, epochs=2, threads=1, progress=False)
    _first_checkpoint(tmp_path, sentences, **kw)
    m = Word2Vec(**kw).fit(sentences, checkpoint=tmp_path, resume=True)
    assert set(m.vocab.words) == {"a\x00", "a", "b", "\udcff"} and m.epochs_done == 2


@pytest.mark.parametrize(
    "edit,pattern",
    [
        (lambda z: {**z, "syn1": z["syn1"][:1]}, "syn1"),
        (lambda z: {**z, "syn0": z["syn0"][:1]}, "syn0"),
        (lambda z: {**z, "syn0": z["syn0"][:-1000]}, "syn0"),
        (lambda z: {**z, "syn1": z["syn1"][:, :4]}, "syn1"),
        (lambda z: {**z, "syn0": z["syn0"][:, :8]}, "syn0"),
        (lambda z: {**z, "syn0": z["syn0"].astype(np.float64)}, "syn0"),
        (lambda z: {**z, "epochs_done": np.array(99)}, "epochs_done=99"),
        (lambda z: {**z, "epochs_done": np.array(0)}, "epochs_done=0"),
        (lambda z: {**z, "syn0": np.where(np.arange(z["syn0"].shape[0])[:, None] == 3, np.nan, z["syn0"])}, "row 3"),
        (
            lambda z: {**z, **{"tree_" + k: v for k, v in Tree.balanced(len(z["counts"]), arity=4).state().items()}},
            "tree",
        ),
        (lambda z: {k: v for k, v in z.items() if k != "counts"}, "'counts' is missing"),
        (lambda z: {**z, "version": np.array(1)}, "version 1"),
    ],
    ids=[
        "syn1[:1]",
        "syn0[:1]",
        "syn0[:-1000]",
        "syn1[:,:4]",
        "syn0[:,:8]",
        "f64",
        "epochs99",
        "epochs0",
        "nan",
        "4-ary",
        "missing",
        "version",
    ],
)
def test_crafted_checkpoints_are_refused_before_training(tmp_path, corpus, edit, pattern):
    kw = dict(dim=16, min_count=1, epochs=2, threads=1, progress=False)
    path = _first_checkpoint(tmp_path, corpus, **kw)
    with np.load(path) as z:
        arrays = edit({k: z[k] for k in z.files})
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(ValueError, match=pattern) as e:
        Word2Vec(**kw).fit(corpus, checkpoint=tmp_path, resume=True)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("cut", [0, 1, 100, -30])
def test_empty_or_truncated_checkpoint(tmp_path, corpus, cut):
    kw = dict(dim=8, min_count=1, epochs=2, threads=1, progress=False)
    path = _first_checkpoint(tmp_path, corpus, **kw)
    path.write_bytes(path.read_bytes()[:cut])
    with pytest.raises(ValueError, match="cannot be resumed"):
        Word2Vec(**kw).fit(corpus, checkpoint=tmp_path, resume=True)


def test_checkpoint_directory_is_locked(tmp_path, corpus):
    from hsoftmax.word2vec.train import CheckpointBusy

    holder = Word2Vec(dim=8, min_count=1, epochs=1, threads=1, progress=False)
    enc = encode_sentences(corpus, min_count=1)
    try:
        holder.build(enc, checkpoint=tmp_path)  # holds the lock until train() ends
        with pytest.raises(CheckpointBusy, match="in use by another run"):
            Word2Vec(dim=8, min_count=1, epochs=1, threads=1, progress=False).fit(enc, checkpoint=tmp_path)
        holder.train(enc, checkpoint=tmp_path)
        Word2Vec(dim=8, min_count=1, epochs=1, threads=1, progress=False).fit(enc, checkpoint=tmp_path)  # free again
    finally:
        enc.close()


@pytest.mark.parametrize(
    "kw,pattern",
    [
        (dict(dim=2**21), "dim must be <="),
        (dict(window=10**9), "window must be <="),
        (dict(epochs=10**20), "epochs must be <="),
        (dict(seed=-1), "seed must be >= 0"),
        (dict(seed=2**64), "seed must be <="),
        (dict(threads=10**6), "threads must be <="),
        (dict(max_vocab=2**40), "max_vocab must be <="),
        (dict(progress="bar"), "progress"),
    ],
)
def test_settings_are_bounded(kw, pattern):
    with pytest.raises(ValueError, match=pattern):
        Word2Vec(**kw)


def test_tables_that_cannot_fit_in_memory_are_refused(corpus, monkeypatch):
    from hsoftmax.word2vec import train as train_mod

    monkeypatch.setattr(train_mod, "_memory_bytes", lambda: 1 << 20)
    with pytest.raises(ValueError, match="more than this machine"):
        Word2Vec(dim=2**16, min_count=1, epochs=1, threads=1, progress=False).fit(corpus)


def test_diverging_learning_rate_fails(corpus, tmp_path):
    from hsoftmax.word2vec.train import TrainingError

    with pytest.raises(TrainingError, match="diverged"):
        Word2Vec(dim=8, min_count=1, epochs=2, threads=1, alpha=1e30, progress=False).fit(corpus, checkpoint=tmp_path)
    assert not (tmp_path / "checkpoint.npz").exists()  # a diverged state is never saved


def test_a_failing_worker_fails_the_run(corpus, monkeypatch):
    from hsoftmax.word2vec.train import TrainingError

    def no_memory(*args, **kw):
        raise MemoryError("scratch")

    monkeypatch.setattr(kernels, "new_scratch", no_memory)
    with pytest.raises(TrainingError, match="MemoryError: scratch"):
        Word2Vec(dim=8, min_count=1, epochs=1, threads=3, progress=False).fit(corpus)


def test_progress_log_writes_one_line_per_epoch_to_stderr(corpus, capsys):
    Word2Vec(dim=8, min_count=1, epochs=2, threads=1, progress="log").fit(corpus)
    out, err = capsys.readouterr()
    assert out == "" and [ln.split(":")[0] for ln in err.splitlines()] == ["epoch 1", "epoch 2"]

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

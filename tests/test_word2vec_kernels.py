"""The word2vec kernels: packed and plain paths train alike, one k-ary step is the exact softmax
gradient, skip-gram's window step equals single steps, binary nodes follow the sigmoid convention,
and syn1 in the torch layer scores every word exactly as the word2vec evaluator does."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import taxonomy_paths, topic_corpus
from hsoftmax.kernels.node import sigmoid_tables
from hsoftmax.tree import Tree
from hsoftmax.word2vec import Word2Vec, encode_sentences, kernels


@pytest.fixture(scope="module")
def corpus():
    return topic_corpus()


def _tables(V=1):
    return kernels.Tables(*sigmoid_tables(), np.full(V, 2**32 - 1, dtype=np.uint32))


def _scratch(h, dim, max_arity=3, window=2):
    """A :class:`kernels.Scratch` whose hidden vector is ``h`` (CBOW) and whose e is zero."""
    s = kernels.new_scratch(8, dim, window, max_arity)
    if h is not None:
        s.h[:] = h
    return s


@pytest.mark.parametrize("sg", [False, True], ids=["cbow", "skipgram"])
def test_packed_binary_paths_train_exactly_like_plain_ones(monkeypatch, corpus, sg):
    """The trainer's packed paths (2 * row + choice per step) give bit-identical vectors."""
    enc = encode_sentences(corpus[:400], min_count=2)
    packed = Word2Vec(dim=16, min_count=2, epochs=1, threads=1, sg=sg, progress=False).fit(enc)
    plain_paths = kernels.flat_paths
    monkeypatch.setattr(kernels, "flat_paths", lambda tree, classes=None, packed=False: plain_paths(tree, classes))
    plain = Word2Vec(dim=16, min_count=2, epochs=1, threads=1, sg=sg, progress=False).fit(enc)
    assert kernels.flat_paths(packed.tree)[2].size > 0  # the patch really gives plain paths
    np.testing.assert_array_equal(packed.syn0, plain.syn0)
    np.testing.assert_array_equal(packed.syn1, plain.syn1)
    enc.close()


def test_kary_kernel_matches_exact_softmax_gradient():
    """One k-ary step: the update of syn1 is lr * (onehot - softmax) outer h, and ll is exact."""
    tree = Tree.balanced(3, arity=3)  # root with 3 leaf children
    paths = kernels.flat_paths(tree)
    rng = np.random.default_rng(0)
    h = rng.standard_normal(6).astype(np.float32)
    syn1 = rng.standard_normal((3, 6)).astype(np.float32)
    s = syn1 @ h
    p = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
    new = syn1 + 0.1 * np.outer(np.eye(3)[2] - p, h)
    ll = kernels.hs_step(syn1, 2, paths, 0.1, _tables(), _scratch(h, 6))
    assert ll == pytest.approx(np.log(p[2]), rel=1e-4)
    np.testing.assert_allclose(syn1, new, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("tree", [Tree.huffman([9, 5, 3, 2, 1]), Tree.balanced(5, arity=3)], ids=["binary", "3-ary"])
def test_window_step_equals_sequential_steps_from_the_same_rows(tree):
    """Skip-gram's window-at-once step: each context's gradient and log-likelihood are those of a
    single step taken from the same syn1 rows, and syn1 receives the sum of the single updates."""
    paths = kernels.flat_paths(tree)
    rng = np.random.default_rng(1)
    syn0 = rng.standard_normal((5, 8)).astype(np.float32) * 0.5
    syn1 = rng.standard_normal((tree.num_params, 8)).astype(np.float32) * 0.5
    ctx = np.array([1, 3, 4], dtype=np.int32)
    word, lr = 2, 0.05
    window = kernels.new_scratch(8, 8, 2, 3)
    window.ctx[:3] = ctx
    batched = syn1.copy()
    ll = kernels._hs_step_many(syn0, batched, 3, word, paths, lr, _tables(), window)
    total_ll, delta = 0.0, np.zeros_like(syn1)
    for q, c in enumerate(ctx):
        one = syn1.copy()
        single = _scratch(syn0[c], 8)
        total_ll += kernels.hs_step(one, word, paths, lr, _tables(), single)
        delta += one - syn1
        np.testing.assert_allclose(window.E[q], single.e, rtol=1e-4, atol=1e-6)
    assert ll == pytest.approx(total_ll, rel=1e-4)
    np.testing.assert_allclose(batched, syn1 + delta, rtol=1e-4, atol=1e-6)


def test_binary_step_follows_the_sigmoid_convention():
    """child 1 <-> sigmoid(s): pushing towards child 1 raises syn1[r] . h."""
    tree = Tree.balanced(2)
    paths = kernels.flat_paths(tree)
    assert paths.choice.tolist() == [0, 1]
    h = np.ones(4, dtype=np.float32)
    for word, sign in ((1, 1), (0, -1)):
        syn1 = np.zeros((1, 4), dtype=np.float32)
        ll = kernels.hs_step(syn1, word, paths, 0.5, _tables(), _scratch(h, 4, max_arity=2))
        assert ll == pytest.approx(np.log(0.5), abs=2e-3)
        assert np.sign(syn1 @ h)[0] == sign


def test_train_chunk_reports_its_work():
    """ChunkStats: every word read, all kept without subsampling, one CBOW prediction per word
    with a context, and the summed log-likelihood of an untrained (all-zero) syn1 is exact."""
    tree = Tree.huffman([4, 3, 2, 1])
    paths = kernels.flat_paths(tree, packed=True)
    chunk = kernels.Chunk(np.array([0, 1, 2, 3, 0, 1], np.int32), np.array([0, 4, 6], np.int64))
    model = kernels.Model(np.full((4, 5), 0.1, np.float32), np.zeros((tree.num_params, 5), np.float32), False, 2)
    schedule = kernels.Schedule(0.025, 1e-4, 0, 6, np.uint64(3))
    stats = kernels.train_chunk(chunk, model, paths, _tables(4), schedule, kernels.new_scratch(4, 5, 2, 2))
    assert isinstance(stats, kernels.ChunkStats)
    assert (stats.words, stats.trained, stats.predictions) == (6, 6, 6)
    depth = np.diff(paths.start)[chunk.ids]  # every decision has p = 1/2 (up to the table's bin)
    assert stats.loglik == pytest.approx(-np.log(2) * depth.sum(), rel=1e-3)
    assert np.abs(model.syn1).sum() > 0  # and the rows moved


def _cbow_contexts(enc, syn0, window, max_sentences):
    """The evaluator's CBOW predictions: (centre word, mean of its full window in float64)."""
    words, hidden = [], []
    ids = np.asarray(enc.ids)
    for s in range(max_sentences):
        a, b = int(enc.offsets[s]), int(enc.offsets[s + 1])
        for i in range(a, b):
            ctx = [ids[j] for j in range(max(a, i - window), min(b, i + window + 1)) if j != i]
            if ctx:
                words.append(ids[i])
                hidden.append(syn0[ctx].astype(np.float64).mean(axis=0))
    return np.array(words, dtype=np.int64), np.array(hidden)


@pytest.mark.parametrize(
    "make_tree",
    [
        "huffman",
        lambda v: Tree.huffman(v.counts, arity=4),
        # classes in alphabetical order, not the vocabulary's: word_classes maps words to classes
        lambda v: Tree.from_paths(taxonomy_paths(sorted(v.words)), labels=sorted(v.words)),
    ],
    ids=["huffman", "huffman4", "labelled"],
)
def test_syn1_in_the_layer_scores_words_as_the_evaluator(corpus, make_tree):
    """word2vec's node table and the layer's are the same thing: a trained ``syn1`` as
    ``HierarchicalSoftmax(bias=False).weight`` gives each word (target: its tree class) the
    log-probability the word2vec evaluator computes, and the evaluator's mean is their mean."""
    torch = pytest.importorskip("torch")
    from hsoftmax import HierarchicalSoftmax

    enc = encode_sentences(corpus[:300], min_count=1)
    try:
        m = Word2Vec(
            dim=16,
            window=3,
            min_count=1,
            sample=0,
            epochs=2,
            threads=1,
            seed=5,
            alpha=0.05,
            progress=False,
            tree=make_tree,
        ).fit(enc)
        words, H = _cbow_contexts(enc, m.syn0, m.window, 40)
        evaluator = m.log_likelihood(enc, max_sentences=40)
    finally:
        enc.close()
    classes = np.arange(len(m.vocab)) if m.word_classes is None else m.word_classes
    if make_tree != "huffman" and m.tree.labels is not None:
        assert not np.array_equal(classes, np.arange(len(m.vocab)))  # the mapping is really exercised
    ours = kernels.word_logprobs(H, m.syn1, kernels.flat_paths(m.tree, m.word_classes, packed=True), words)
    assert ours.mean() == pytest.approx(evaluator, rel=1e-12)
    assert ours.min() < -1.0 and np.ptp(ours) > 0.5  # trained, not a table of constants

    hs = HierarchicalSoftmax(m.dim, m.tree, bias=False, dtype=torch.float64)
    with torch.no_grad():
        hs.weight.copy_(torch.from_numpy(m.syn1))
        x, target = torch.from_numpy(H), torch.from_numpy(classes[words])
        layer = hs(x, target).output.numpy()
        full = hs.log_prob(x).numpy()[np.arange(words.size), classes[words]]
    np.testing.assert_allclose(layer, ours, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(full, ours, rtol=1e-10, atol=1e-12)

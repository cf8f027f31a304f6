"""word2vec: vocabulary, subsampling, corpus encoding, training (CBOW, skip-gram, any tree),
formats (gensim reads ours), evaluation (matches gensim's), checkpoints, atomic writes."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hsoftmax.tree import Tree
from hsoftmax.word2vec import (
    CorpusError, KeyedVectors, Vocab, Word2Vec, encode_file, encode_sentences, keep_probabilities,
    load_vectors, spearman,
)
from hsoftmax.word2vec import kernels
from hsoftmax.word2vec.io import atomic_path, read_word2vec, write_word2vec

TOPICS, PER_TOPIC = 4, 12


def topic_corpus(n_sentences=1500, length=10, seed=0):
    """Sentences drawn from one topic each: words of a topic co-occur, words of different
    topics never do, plus a few topic-free filler words everywhere."""
    rng = random.Random(seed)
    fillers = ["the", "of", "and"]
    out = []
    for _ in range(n_sentences):
        t = rng.randrange(TOPICS)
        out.append([f"t{t}w{rng.randrange(PER_TOPIC)}" if rng.random() < 0.8 else rng.choice(fillers)
                    for _ in range(length)])
    return out


def topic_separation(kv: KeyedVectors) -> tuple[float, float]:
    """Mean cosine within a topic and across topics."""
    u = kv.unit_vectors
    topic = {w: int(w[1]) for w in kv.words if w[0] == "t" and w[1].isdigit()}
    ws = list(topic)
    ids = np.array([kv.index[w] for w in ws])
    sims = u[ids] @ u[ids].T
    same = np.array([[topic[a] == topic[b] for b in ws] for a in ws])
    off_diag = ~np.eye(len(ws), dtype=bool)
    return float(sims[same & off_diag].mean()), float(sims[~same].mean())


@pytest.fixture(scope="module")
def corpus():
    return topic_corpus()


# ------------------------------------------------------------------ vocabulary and subsampling
def test_vocab_order_min_count_and_max_vocab():
    counts = {"b": 5, "a": 5, "c": 9, "d": 1, "e": 2}
    v = Vocab.from_counts(counts, min_count=2)
    assert v.words == ("c", "a", "b", "e")  # by count, ties alphabetical
    assert v.counts.tolist() == [9, 5, 5, 2]
    assert Vocab.from_counts(counts, min_count=2, max_vocab=2).words == ("c", "a")
    with pytest.raises(ValueError, match="min_count=10"):
        Vocab.from_counts(counts, min_count=10)


def test_keep_probability_is_word2vecs_formula():
    counts = np.array([5000, 300, 20, 1])
    t = 1e-3
    f = counts / counts.sum()
    expected = np.minimum(1.0, np.sqrt(t / f) + t / f)
    np.testing.assert_allclose(keep_probabilities(counts, t), expected)
    assert keep_probabilities(counts, t)[0] < 0.1  # the frequent word is mostly dropped
    np.testing.assert_array_equal(keep_probabilities(counts, 0.0), 1.0)


def test_subsampling_keeps_the_expected_share(corpus):
    enc = encode_sentences(corpus, min_count=1)
    try:
        m = Word2Vec(dim=8, min_count=1, sample=1e-3, epochs=1, threads=1, progress=False).fit(enc)
        p = keep_probabilities(enc.vocab.counts, 1e-3)
        expected = float((enc.vocab.counts * p).sum())
        assert m.history[0]["trained_words"] == pytest.approx(expected, rel=0.03)
        assert m.history[0]["trained_words"] < 0.5 * enc.num_tokens
    finally:
        enc.close()


# ------------------------------------------------------------------ corpus encoding
def test_encode_sentences_drops_rare_words_and_keeps_boundaries():
    c = encode_sentences([["a", "b", "a", "z"], ["y"], ["b", "c", "b"]], min_count=2)
    assert c.vocab.words == ("b", "a")
    assert np.asarray(c.ids).tolist() == [1, 0, 1, 0, 0]
    assert c.offsets.tolist() == [0, 3, 5]  # the sentence left empty is gone
    assert c.raw_words == 8
    c.close()


def test_long_sentences_are_cut():
    c = encode_sentences([["w"] * 25], min_count=1, max_sentence_length=10)
    assert c.offsets.tolist() == [0, 10, 20, 25]
    c.close()


def test_encode_file_matches_encode_sentences_and_counts_bad_utf8(tmp_path, corpus):
    path = tmp_path / "c.txt"
    with open(path, "wb") as f:
        for s in corpus[:200]:
            f.write((" ".join(s) + "\n").encode())
        f.write(b"caf\xff\xfe the\n\n   \n")
    a = encode_file(path, min_count=2)
    b = encode_sentences(corpus[:200] + [["caf\ufffd\ufffd", "the"]], min_count=2)
    assert a.vocab.words == b.vocab.words
    np.testing.assert_array_equal(np.asarray(a.ids), np.asarray(b.ids))
    np.testing.assert_array_equal(a.offsets, b.offsets)
    assert a.replaced == 2 and b.replaced == 0
    a.close(), b.close()


# Pieces that stress the byte-level tokenizer: every kind of Unicode whitespace, NUL, \r, invalid
# UTF-8 (stray continuation, truncated sequences, surrogate, overlong, a lead byte before a
# whitespace sequence), a literal U+FFFD (collides with decoded invalid bytes) and a non-ASCII word.
_PIECES = [b"a", b"bb", b"a", b" ", b" ", b"\t", b"\n", b"\n", b"\r", b"\x00", b"\x0b", b"\x1c", b"\x1f",
           "\u0085".encode(), "\u00a0".encode(), "\u1680".encode(), "\u2000".encode(), "\u200a".encode(),
           "\u2028".encode(), "\u202f".encode(), "\u205f".encode(), "\u3000".encode(), "\u200b".encode(),
           b"\xff", b"\x80", b"\xe2\x80", b"\xe2", b"\xed\xa0\x80", b"\xc0\xaf", b"\xf4\x90\x80\x80",
           "\ufffd".encode(), "caf\u00e9".encode(), "\U0001f600".encode()]


def _reference_encoding(data: bytes):
    """What decoding the whole text first and splitting it with str.split() gives."""
    from hsoftmax.word2vec import corpus as corpus_mod

    before = corpus_mod._replaced[0]
    text = data.decode("utf-8", "hsoftmax.count_replace")
    replaced = corpus_mod._replaced[0] - before
    sentences = [line.replace("\x00", " ").split() for line in text.split("\n")]
    return sentences, replaced


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(_PIECES), max_size=60).map(b"".join))
@example(b"\xff \x80 \xef\xbf\xbd x\xff x\xe2\x80\n x\x80\x80 \xe2\x80\xe2\x80 \xfe\xff")  # merges
def test_byte_tokenizer_matches_decode_then_split(tmp_path, data):
    path = tmp_path / "c.txt"
    path.write_bytes(data)
    sentences, replaced = _reference_encoding(data)
    if not any(sentences):
        with pytest.raises(CorpusError, match="no words"):
            encode_file(path, min_count=1)
        return
    a = encode_file(path, min_count=1)
    b = encode_sentences(sentences, min_count=1)
    assert a.vocab.words == b.vocab.words
    assert a.vocab.counts.tolist() == b.vocab.counts.tolist()
    np.testing.assert_array_equal(np.asarray(a.ids), np.asarray(b.ids))
    np.testing.assert_array_equal(a.offsets, b.offsets)
    assert (a.raw_words, a.replaced) == (b.raw_words, replaced)
    a.close(), b.close()


def test_blocks_split_only_between_lines(tmp_path, monkeypatch, corpus):
    """Reads far smaller than a line (and lines longer than a read) give the same encoding."""
    from hsoftmax.word2vec import corpus as corpus_mod

    path = tmp_path / "c.txt"
    text = "\n".join(" ".join(s) for s in corpus[:300]) + "\n" + " ".join(corpus[0] * 40)  # no final newline
    path.write_text(text, encoding="utf-8")
    whole = encode_file(path, min_count=2)
    monkeypatch.setattr(corpus_mod, "_READ_BYTES", 7)
    small = encode_file(path, min_count=2)
    assert small.vocab.words == whole.vocab.words
    np.testing.assert_array_equal(np.asarray(small.ids), np.asarray(whole.ids))
    np.testing.assert_array_equal(small.offsets, whole.offsets)
    whole.close(), small.close()


def test_word_table_grows_past_its_capacity():
    from hsoftmax.word2vec.word_table import WordTable

    t = WordTable(capacity=16)
    words = [f"w{i}" for i in range(5000)]
    ids, lines = t.add_block((" ".join(words + words[:10]) + "\n").encode())
    assert len(t) == 5000 and lines.tolist() == [5010]
    assert ids.tolist() == list(range(5000)) + list(range(10))
    assert t.counts[:12].tolist() == [2] * 10 + [1, 1]
    assert t.words(np.array([4999, 0, 17])) == ["w4999", "w0", "w17"]
    assert t.find(b"w123") == 123 and t.find(b"nope") == -1


def test_corpus_ids_are_read_in_chunks(tmp_path, corpus):
    c = encode_sentences(corpus[:50], min_count=1)
    buf = np.empty(100, dtype=np.int32)
    np.testing.assert_array_equal(c.read_ids(7, 60, buf), np.asarray(c.ids)[7:60])
    c.close()
    with pytest.raises(ValueError, match="closed"):
        c.read_ids(0, 5, buf)


def test_bad_corpora(tmp_path):
    with pytest.raises(CorpusError, match="not found"):
        encode_file(tmp_path / "nope.txt")
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(CorpusError, match="no words"):
        encode_file(tmp_path / "empty.txt")
    (tmp_path / "rare.txt").write_text("a b c\n")
    with pytest.raises(CorpusError, match="min_count"):
        encode_file(tmp_path / "rare.txt", min_count=2)
    with pytest.raises(TypeError):
        encode_sentences("not a list of sentences")


# ------------------------------------------------------------------ training
def test_default_tree_is_huffman_over_counts(corpus):
    m = Word2Vec(dim=8, min_count=1, epochs=1, threads=1, progress=False).fit(corpus)
    assert m.tree == Tree.huffman(m.vocab.counts)
    assert m.syn1.shape == (m.tree.num_params, 8)
    assert m.vocab.words[0] in ("the", "of", "and")  # most frequent first


@pytest.mark.parametrize("sg", [False, True], ids=["cbow", "skipgram"])
def test_training_learns_cooccurrence(corpus, sg):
    enc = encode_sentences(corpus, min_count=1)
    try:
        m = Word2Vec(dim=24, window=4, min_count=1, sample=0, sg=sg, epochs=4, threads=2, seed=3,
                     progress=False, alpha=0.05)
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


@pytest.mark.parametrize("make_tree", [
    lambda v: Tree.huffman(v.counts, arity=3),
    lambda v: Tree.balanced(len(v), arity=2),
    lambda v: Tree.balanced(len(v), arity=5),
    # a two-level "taxonomy": each topic's words under one node, fillers under another
    lambda v: Tree.from_paths([["topic" + w[1] if w[1].isdigit() else "filler"] for w in v.words],
                              labels=list(v.words)),
], ids=["huffman3", "balanced2", "balanced5", "taxonomy"])
@pytest.mark.parametrize("sg", [False, True], ids=["cbow", "skipgram"])
def test_other_trees_train(corpus, make_tree, sg):
    m = Word2Vec(dim=24, window=4, min_count=1, sample=0, epochs=4, threads=1, seed=3, progress=False,
                 alpha=0.05, tree=make_tree, sg=sg)
    m.fit(corpus)
    assert m.tree == make_tree(m.vocab)
    same, other = topic_separation(m.wv)
    assert same > other + 0.3, (same, other)
    assert m.history[-1]["loss"] < m.history[0]["loss"]


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
    start, row, choice, arity = kernels.flat_paths(tree)
    rng = np.random.default_rng(0)
    h = rng.standard_normal(6).astype(np.float32)
    syn1 = rng.standard_normal((3, 6)).astype(np.float32)
    e = np.zeros(6, dtype=np.float32)
    s = syn1 @ h
    p = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
    new = syn1 + 0.1 * np.outer(np.eye(3)[2] - p, h)
    sig, logsig = kernels.sigmoid_tables()
    ll = kernels._hs_step(h, e, syn1, 2, start, row, choice, arity, 0.1, sig, logsig, np.zeros(3))
    assert ll == pytest.approx(np.log(p[2]), rel=1e-4)
    np.testing.assert_allclose(syn1, new, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("tree", [Tree.huffman([9, 5, 3, 2, 1]), Tree.balanced(5, arity=3)], ids=["binary", "3-ary"])
def test_window_step_equals_sequential_steps_from_the_same_rows(tree):
    """Skip-gram's window-at-once step: each context's gradient and log-likelihood are those of a
    single step taken from the same syn1 rows, and syn1 receives the sum of the single updates."""
    start, row, choice, arity = kernels.flat_paths(tree)
    sig, logsig = kernels.sigmoid_tables()
    rng = np.random.default_rng(1)
    syn0 = rng.standard_normal((5, 8)).astype(np.float32) * 0.5
    syn1 = rng.standard_normal((tree.num_params, 8)).astype(np.float32) * 0.5
    ctx = np.array([1, 3, 4], dtype=np.int32)
    word, lr = 2, 0.05
    E = np.zeros((3, 8), np.float32)
    G = np.zeros((3, 3), np.float32)
    batched = syn1.copy()
    ll = kernels._hs_step_many(syn0, ctx, 3, E, G, batched, word, start, row, choice, arity, lr, sig, logsig,
                               np.zeros(3))
    total_ll, delta = 0.0, np.zeros_like(syn1)
    for q, c in enumerate(ctx):
        one = syn1.copy()
        e = np.zeros(8, np.float32)
        total_ll += kernels._hs_step(syn0[c].copy(), e, one, word, start, row, choice, arity, lr, sig, logsig,
                                     np.zeros(3))
        delta += one - syn1
        np.testing.assert_allclose(E[q], e, rtol=1e-4, atol=1e-6)
    assert ll == pytest.approx(total_ll, rel=1e-4)
    np.testing.assert_allclose(batched, syn1 + delta, rtol=1e-4, atol=1e-6)


def test_binary_step_follows_the_sigmoid_convention():
    """child 1 <-> sigmoid(s): pushing towards child 1 raises syn1[r] . h."""
    tree = Tree.balanced(2)
    start, row, choice, arity = kernels.flat_paths(tree)
    assert choice.tolist() == [0, 1]
    h = np.ones(4, dtype=np.float32)
    sig, logsig = kernels.sigmoid_tables()
    for word, sign in ((1, 1), (0, -1)):
        syn1 = np.zeros((1, 4), dtype=np.float32)
        ll = kernels._hs_step(h, np.zeros(4, np.float32), syn1, word, start, row, choice, arity, 0.5,
                              sig, logsig, np.zeros(2))
        assert ll == pytest.approx(np.log(0.5), abs=2e-3)
        assert np.sign(syn1 @ h)[0] == sign


def test_labelled_tree_is_matched_by_label(corpus):
    """A taxonomy whose classes are in alphabetical order, not the vocabulary's: each word must
    train along the path of its own label."""
    words = sorted({w for s in corpus for w in s})
    tree = Tree.from_paths([["topic" + w[1] if w[1].isdigit() else "filler"] for w in words], labels=words)
    m = Word2Vec(dim=24, window=4, min_count=1, sample=0, epochs=4, threads=1, seed=3, progress=False,
                 alpha=0.05, tree=tree).fit(corpus)
    assert m.vocab.words != tuple(words)
    start, row, choice, arity = kernels.flat_paths(m.tree, m.word_classes)
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
    with pytest.raises(ValueError):
        Word2Vec(dim=0)
    with pytest.raises(TypeError):
        Word2Vec(window=2.5)
    with pytest.raises(ValueError):
        Word2Vec(tree="random")
    with pytest.raises(ValueError):
        Word2Vec(sample=-1)


# ------------------------------------------------------------------ checkpoints
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


# ------------------------------------------------------------------ formats
@pytest.fixture(scope="module")
def small_kv():
    rng = np.random.default_rng(1)
    words = ["the", "of", "naïve", "x'y", "z9"]
    return KeyedVectors(words, rng.standard_normal((5, 7)).astype(np.float32) * 3)


@pytest.mark.parametrize("name,binary", [("v.txt", None), ("v.bin", None), ("v.vec", True)])
def test_gensim_reads_our_vectors(tmp_path, small_kv, name, binary):
    gensim_models = pytest.importorskip("gensim.models")
    path = tmp_path / name
    small_kv.save(path, binary=binary)
    is_bin = name.endswith(".bin") or bool(binary)
    g = gensim_models.KeyedVectors.load_word2vec_format(str(path), binary=is_bin)
    assert list(g.index_to_key) == list(small_kv.words)
    np.testing.assert_array_equal(g.vectors, small_kv.vectors)
    ours = load_vectors(path, binary=binary)
    np.testing.assert_array_equal(ours.vectors, small_kv.vectors)


@pytest.mark.parametrize("binary", [False, True])
def test_we_read_gensims_vectors(tmp_path, small_kv, binary):
    gensim_models = pytest.importorskip("gensim.models")
    g = gensim_models.KeyedVectors(7)
    g.add_vectors(list(small_kv.words), small_kv.vectors)
    path = tmp_path / "g.out"
    g.save_word2vec_format(str(path), binary=binary)
    words, vectors = read_word2vec(path, binary=binary)
    assert words == list(small_kv.words)
    np.testing.assert_allclose(vectors, small_kv.vectors, rtol=1e-6)


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    path = tmp_path / "v.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            with open(tmp, "w") as f:
                f.write("half")
            raise RuntimeError("crash mid-write")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["v.txt"]
    with pytest.raises(ValueError, match="whitespace"):
        write_word2vec(tmp_path / "w.txt", ["a b"], np.zeros((1, 2)))
    assert not (tmp_path / "w.txt").exists()


def test_most_similar_excludes_queries(small_kv):
    res = small_kv.most_similar("the", topn=10)
    assert len(res) == 4 and "the" not in [w for w, _ in res]
    assert [s for _, s in res] == sorted((s for _, s in res), reverse=True)
    u = small_kv.unit_vectors
    assert res[0][1] == pytest.approx(max(float(u[0] @ u[i]) for i in range(1, 5)), rel=1e-6)


# ------------------------------------------------------------------ evaluation vs gensim
def _gensim_data(name):
    gensim = pytest.importorskip("gensim")
    return os.path.join(os.path.dirname(gensim.__file__), "test", "test_data", name)


def _structured_vectors():
    """Vectors where capital-country analogies hold for part of the questions, random elsewhere."""
    path = _gensim_data("questions-words.txt")
    rng = np.random.default_rng(0)
    words: dict[str, np.ndarray] = {}
    offset = rng.standard_normal(30)
    with open(path) as f:
        lines = f.read().lower().splitlines()
    for line in lines[1:300]:  # capital-common-countries: country = capital + offset
        if line.startswith(":"):
            break
        cap, country = line.split()[:2]
        words.setdefault(cap, rng.standard_normal(30) * 2)
        words.setdefault(country, words[cap] + offset + rng.standard_normal(30) * 0.3)
    for line in lines:
        if not line.startswith(":"):
            for w in line.split():
                words.setdefault(w, rng.standard_normal(30))
    names = sorted(words)[: int(len(words) * 0.9)]  # leave some words out of the vocabulary
    return names, np.array([words[w] for w in names], dtype=np.float32)


def test_analogy_and_similarity_match_gensim():
    gensim_models = pytest.importorskip("gensim.models")
    words, vectors = _structured_vectors()
    kv = KeyedVectors(words, vectors)
    g = gensim_models.KeyedVectors(vectors.shape[1])
    g.add_vectors(words, vectors)

    ours = kv.evaluate_analogies(_gensim_data("questions-words.txt"))
    score, sections = g.evaluate_word_analogies(_gensim_data("questions-words.txt"))
    total = sections[-1]
    assert ours.correct == len(total["correct"]) > 10
    assert ours.total == len(total["correct"]) + len(total["incorrect"])
    assert ours.accuracy == pytest.approx(score)

    for name in ("wordsim353.tsv", "simlex999.txt"):
        (pearson, _), (spear, _), oov = g.evaluate_word_pairs(_gensim_data(name))
        r = kv.evaluate_similarity(_gensim_data(name))
        assert r.spearman == pytest.approx(spear, abs=1e-6)
        assert r.pearson == pytest.approx(pearson, abs=1e-6)
        total_pairs = r.pairs + r.skipped
        assert oov == pytest.approx(100 * r.skipped / total_pairs)


def test_spearman_handles_ties_like_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 5, 50).astype(float)
    y = x + rng.integers(0, 3, 50)
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y)[0], abs=1e-12)


def test_compressed_corpora_and_the_embedded_one(tmp_path, corpus):
    import gzip
    import lzma

    text = "".join(" ".join(s) + "\n" for s in corpus[:300]).encode()
    (tmp_path / "c.txt").write_bytes(text)
    (tmp_path / "c.txt.xz").write_bytes(lzma.compress(text))
    (tmp_path / "c.txt.gz").write_bytes(gzip.compress(text))
    plain = encode_file(tmp_path / "c.txt", min_count=1)
    for name in ("c.txt.xz", "c.txt.gz"):
        other = encode_file(tmp_path / name, min_count=1)
        assert other.vocab.words == plain.vocab.words
        np.testing.assert_array_equal(np.asarray(other.ids), np.asarray(plain.ids))
        other.close()
    plain.close()
    (tmp_path / "bad.xz").write_bytes(b"not xz at all")
    with pytest.raises(CorpusError, match="cannot read"):
        encode_file(tmp_path / "bad.xz")

    from hsoftmax.word2vec import embedded_corpus_path

    path = embedded_corpus_path()
    assert os.path.getsize(path) > 1_000_000
    with lzma.open(path, "rt", encoding="utf-8") as f:
        head = [next(f) for _ in range(3)]
    assert head[1].startswith("in the beginning god created the heaven and the earth")
    assert os.path.exists(os.path.join(os.path.dirname(path), "LICENSE"))

"""Synthetic corpora for the word2vec tests (imported by the tests/test_word2vec_*.py files)."""

from __future__ import annotations

import random

import numpy as np

from hsoftmax.word2vec import KeyedVectors

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


def taxonomy_paths(words):
    """A two-level "taxonomy" over topic words: each topic's words under one node, fillers under
    another."""
    return [["topic" + w[1] if w[1].isdigit() else "filler"] for w in words]

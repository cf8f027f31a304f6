"""fastText-style text classification with an exact hierarchical softmax, in a few seconds.

1. Single label: WordNet noun glosses -> their lexicographer file (``noun.animal``,
   ``noun.artifact``, ... 25 labels) from Debian's ``wordnet-base``; without it, generated topic
   lines. Train over fastText's Huffman tree, test (N, P@1, R@1 as ``fasttext test`` prints them),
   predict the top 3 labels with their exact probabilities, save and load.
2. Multi-label: generated lines carrying one to three tags; ``multilabel=True`` trains a
   probabilistic label tree and predicts each tag's marginal probability.

Run: ``python examples/supervised_demo.py`` (the same as ``hsoftmax supervised train/test/predict``).
"""

from __future__ import annotations

import os
import random
import re
import tempfile
import time

from hsoftmax.supervised import Classifier

WORDNET = "/usr/share/wordnet/data.noun"
#: WordNet's lexicographer files of nouns, by number (its ``lexnames`` file, 03-28)
LEXNAMES = [
    "Tops",
    "act",
    "animal",
    "artifact",
    "attribute",
    "body",
    "cognition",
    "communication",
    "event",
    "feeling",
    "food",
    "group",
    "location",
    "motive",
    "object",
    "person",
    "phenomenon",
    "plant",
    "possession",
    "process",
    "quantity",
    "relation",
    "shape",
    "state",
    "substance",
    "time",
]


def wordnet_lines(limit: int = 30_000) -> list[str] | None:
    """``__label__noun.X gloss words`` per noun synset, shuffled; None without wordnet-base."""
    if not os.path.exists(WORDNET):
        return None
    out = []
    with open(WORDNET, encoding="latin-1") as f:
        for line in f:
            if line.startswith("  "):  # the license header
                continue
            head, _, gloss = line.partition(" | ")
            label = "noun." + LEXNAMES[int(head.split()[1]) - 3]
            out.append(f"__label__{label} " + " ".join(re.findall(r"[a-z0-9]+", gloss.lower())))
    random.Random(0).shuffle(out)
    return out[:limit]


def topic_lines(n: int, seed: int, tags: bool = False) -> list[str]:
    """Generated lines: topic t uses words t_w0..t_w9 (80%) and shared noise; with ``tags``, one
    to three topics per line, each a label."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        topics = rng.sample(range(20), rng.randint(1, 3) if tags else 1)
        words = [
            f"t{rng.choice(topics)}_w{rng.randrange(10)}" if rng.random() < 0.8 else f"n{rng.randrange(50)}"
            for _ in range(8)
        ]
        out.append(" ".join([f"__label__topic{t}" for t in topics] + words))
    return out


def main() -> None:
    lines = wordnet_lines() or topic_lines(6000, seed=0)
    source = "WordNet noun glosses -> lexicographer file" if os.path.exists(WORDNET) else "generated topics"
    cut = len(lines) * 9 // 10
    train, test = lines[:cut], lines[cut:]
    clf = Classifier(epochs=5, threads=2, progress=False)
    t0 = time.perf_counter()
    clf.fit(train)
    print(
        f"{source}: {len(train)} training lines, {len(clf.labels)} labels, trained in {time.perf_counter() - t0:.1f}s"
    )
    n, p1, r1 = clf.test(test, k=1)
    print(f"N\t{n}\nP@1\t{p1:.3g}\nR@1\t{r1:.3g}")
    text = "a large dog that was kept to guard the house" if os.path.exists(WORDNET) else "t3_w1 t3_w5 n7"
    labels, probs = clf.predict(text, k=3)
    print(f"{text!r} -> " + ", ".join(f"{lab} {p:.3f}" for lab, p in zip(labels[0], probs[0])))
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "model.npz")
        clf.save(path)
        again = Classifier.load(path)
        assert again.predict(text, k=3)[0] == labels, "a loaded model predicts the same"
        print(f"saved and loaded {os.path.getsize(path) / 2**20:.1f} MiB: same predictions")

    multi = Classifier(dim=32, epochs=5, lr=0.2, threads=2, progress=False, multilabel=True)
    multi.fit(topic_lines(6000, seed=1, tags=True))
    n, p1, _ = multi.test(topic_lines(600, seed=2, tags=True), k=1)
    _, p3, r3 = multi.test(topic_lines(600, seed=2, tags=True), k=3)
    print(f"multi-label (1-3 tags of 20 per line): N {n}, P@1 {p1:.3f}, P@3 {p3:.3f}, R@3 {r3:.3f}")
    labels, probs = multi.predict("t4_w1 t4_w2 t9_w3 t9_w7", k=3)
    print(
        "'t4_w1 t4_w2 t9_w3 t9_w7' -> marginals " + ", ".join(f"{lab} {p:.3f}" for lab, p in zip(labels[0], probs[0]))
    )


if __name__ == "__main__":
    main()

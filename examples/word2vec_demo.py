"""word2vec with hierarchical softmax on the embedded corpus (KJV Bible + Jane Austen, 1.5M tokens).

Trains CBOW over a Huffman tree with a progress bar, then prints nearest neighbours of a few
words and the analogy / similarity scores (using the evaluation files shipped with gensim, when it
is installed). About half a minute on 2 cores.

    python examples/word2vec_demo.py [--skipgram] [--epochs 10] [--threads N] [--save vectors.bin]
"""

from __future__ import annotations

import argparse
import os
import time

from hsoftmax.word2vec import Word2Vec, embedded_corpus_path, encode_file
from hsoftmax.word2vec.evaluate import gensim_test_file

WORDS = ["king", "god", "love", "sister", "gold", "jerusalem", "marriage", "elizabeth"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--skipgram", action="store_true", help="skip-gram instead of CBOW")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--save", help="write the vectors here (word2vec format, .bin = binary)")
    args = p.parse_args()

    t0 = time.perf_counter()
    corpus = encode_file(embedded_corpus_path(), min_count=5)
    print(
        f"corpus: {corpus.raw_words:,} words, vocabulary {len(corpus.vocab):,} "
        f"(encoded in {time.perf_counter() - t0:.1f}s)"
    )
    model = Word2Vec(
        dim=100, window=5, min_count=5, sample=1e-3, sg=args.skipgram, epochs=args.epochs, threads=args.threads, seed=1
    )
    t0 = time.perf_counter()
    model.fit(corpus)
    seconds = time.perf_counter() - t0
    print(
        f"{'skip-gram' if args.skipgram else 'CBOW'}-HS, {model.tree!r}: {args.epochs} epochs in "
        f"{seconds:.1f}s ({corpus.raw_words * args.epochs / seconds:,.0f} words/s)"
    )
    corpus.close()

    wv = model.wv
    print("\nnearest neighbours:")
    for w in WORDS:
        if w in wv:
            print(f"  {w:>10}: " + ", ".join(n for n, _ in wv.most_similar(w, topn=6)))
    for a, b, c in [("man", "king", "woman"), ("brother", "sister", "son")]:
        if all(x in wv for x in (a, b, c)):
            best = wv.most_similar([b, c], [a], topn=3)
            print(f"  {a} : {b} :: {c} : " + ", ".join(n for n, _ in best))

    questions = gensim_test_file("questions-words.txt")
    if questions:
        r = wv.evaluate_analogies(questions)
        print(
            f"\nanalogies (questions-words): {100 * r.accuracy:.1f}% of {r.total:,} questions in vocabulary "
            f"({r.skipped:,} skipped)"
        )
        for name in ("wordsim353.tsv", "simlex999.txt"):
            path = gensim_test_file(name)
            if path:
                s = wv.evaluate_similarity(path)
                print(f"{name}: Spearman {s.spearman:.3f} on {s.pairs} pairs")
    else:
        print("\n(install gensim for the analogy and similarity test files)")
    if args.save:
        model.wv.save(args.save)  # word2vec format (Word2Vec.save writes the whole model)
        print(f"saved {args.save}")


if __name__ == "__main__":
    main()

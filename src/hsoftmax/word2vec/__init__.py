"""word2vec (CBOW and skip-gram) with hierarchical softmax over any :class:`hsoftmax.Tree`.

>>> from hsoftmax.word2vec import Word2Vec
>>> model = Word2Vec(dim=100, window=5, min_count=5, epochs=5, sg=False)   # doctest: +SKIP
>>> model.fit("corpus.txt").save("vectors.bin")                          # doctest: +SKIP
>>> model.wv.most_similar("king", topn=5)                                  # doctest: +SKIP

Public names: :class:`Word2Vec` (the trainer), :class:`KeyedVectors` / :func:`load_vectors`
(vectors, ``most_similar``, evaluation, the word2vec text/binary formats), :class:`Vocab`,
:func:`encode_file` / :func:`encode_sentences` (a corpus as token ids on disk),
:func:`evaluate_analogies`, :func:`evaluate_similarity`, :func:`spearman`.
"""

from .corpus import CorpusError, EncodedCorpus, embedded_corpus_path, encode_file, encode_sentences
from .evaluate import (
    AnalogyResult, SimilarityResult, evaluate_analogies, evaluate_similarity, gensim_test_file, spearman,
)
from .io import read_word2vec, write_word2vec
from .keyed_vectors import KeyedVectors, load_vectors
from .train import Word2Vec
from .vocab import Vocab, keep_probabilities

__all__ = [
    "Word2Vec", "KeyedVectors", "load_vectors", "Vocab", "keep_probabilities", "EncodedCorpus",
    "CorpusError", "encode_file", "encode_sentences", "embedded_corpus_path", "evaluate_analogies", "evaluate_similarity",
    "spearman", "gensim_test_file", "AnalogyResult", "SimilarityResult", "read_word2vec", "write_word2vec",
]

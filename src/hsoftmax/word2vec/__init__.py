"""word2vec (CBOW and skip-gram) with hierarchical softmax over any :class:`hsoftmax.Tree`.

>>> import os, tempfile
>>> from hsoftmax.word2vec import Word2Vec, embedded_corpus_path
>>> model = Word2Vec(dim=32, window=5, min_count=5, epochs=1, threads=1, progress=False)
>>> folder = tempfile.mkdtemp()
>>> model.fit(embedded_corpus_path()).wv.save_word2vec_format(os.path.join(folder, "vectors.bin"), binary=True)
>>> model.save(os.path.join(folder, "w2v.model"))   # the whole model: Word2Vec.load, fit(update=True)
>>> [word for word, _ in model.wv.most_similar("king", topn=3)]  # doctest: +SKIP
['beor', 'messenger', 'governor']
>>> len(model.wv.most_similar("king", topn=3)), model.wv.vectors.shape[1]
(3, 32)

Public names: :class:`Word2Vec` (the trainer; ``save``/``load`` of whole models, continued
training with ``fit(corpus, update=True)``), :class:`KeyedVectors` / :func:`load_vectors`
(vectors, ``most_similar``, the word2vec text/binary formats), :func:`encode_file` /
:func:`encode_sentences` (a corpus as token ids on disk: an :class:`EncodedCorpus`, or a
:class:`CorpusError`), :func:`embedded_corpus_path` (the corpus shipped with the package), and the
two evaluations :func:`evaluate_analogies` / :func:`evaluate_similarity`. The pieces they are
built from stay in their modules: :mod:`.vocab` (``Vocab``, ``keep_probabilities``),
:mod:`.evaluate` (``spearman``, ``gensim_test_file``, the result types), :mod:`.io` (the format
readers and writers), :mod:`.kernels` (the numba kernels).
"""

from .corpus import CorpusError, EncodedCorpus, embedded_corpus_path, encode_file, encode_sentences
from .evaluate import evaluate_analogies, evaluate_similarity
from .keyed_vectors import KeyedVectors, load_vectors
from .train import Word2Vec

__all__ = [
    "Word2Vec",
    "KeyedVectors",
    "load_vectors",
    "encode_file",
    "encode_sentences",
    "EncodedCorpus",
    "CorpusError",
    "embedded_corpus_path",
    "evaluate_analogies",
    "evaluate_similarity",
]

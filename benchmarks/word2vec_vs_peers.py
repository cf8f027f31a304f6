"""hsoftmax word2vec vs gensim and fastText, hierarchical softmax, same corpus, same machine.

Every (system, mode, threads) run happens in its own subprocess, so peak memory (VmHWM, taken
right after training, before evaluation) is per run. All systems use the same settings: dim 100,
window 5, min_count 5, sample 1e-3, 3 epochs, learning rate 0.025 (gensim's default), HS with no
negative sampling; fastText runs with no subwords (minn=maxn=0, bucket=0). All vectors are scored
by the same evaluator (hsoftmax.word2vec.evaluate) on gensim's copies of questions-words,
WordSim-353 and SimLex-999.

words/s = corpus tokens x epochs / training seconds (the same count for every system, so ratios
are ratios of training time). gensim runs in both its modes: an iterator of sentences
(LineSentence) and corpus_file (its fastest, no GIL-bound producer). fastText's time includes its
vocabulary pass (it has no separate one); "wall" is the whole run for everyone.

    python benchmarks/word2vec_vs_peers.py                     # builds the corpus if missing
    python benchmarks/word2vec_vs_peers.py --corpus corpus_en.txt --threads 2 --modes cbow
    python benchmarks/word2vec_vs_peers.py --quick             # embedded corpus, CBOW, 1 thread

``--quick`` is the smoke run: the corpus shipped with the package (1.5M tokens, no build), CBOW
only, one thread; ``--corpus``, ``--modes`` and ``--threads`` given as well override its parts.
Results go to ``benchmarks/results/word2vec_vs_peers.json`` (and ``.md``), or to ``--json``.

``--experiments`` picks what runs (default: all five; with ``--quick``, ``peers`` only):

* ``peers``: the speed and quality grid above (every system, mode and thread count).
* ``continue``: continued training with a growing vocabulary on the first ``--slice-tokens``
  tokens of the corpus: A is its first half (by lines), A+B all of it. hsoftmax trains on A, then
  ``fit(A+B, update=True)``; gensim trains on A, then ``build_vocab(A+B, update=True)`` +
  ``train(A+B)`` (its update path; an error it raises is reported as its row); both against a
  run from scratch on A+B. For gensim the row also says how many old words' Huffman codes its
  update changed (their trained node rows then decide for other words); for ours, the grafted
  tree's mean code length against a rebuilt Huffman tree's.
* ``continue-b``: the common case of continued training: train on A (every 100th line held out),
  then continue for one epoch on the new text B only (the slice's second half). The exact
  log-likelihood per CBOW prediction of the held-out A lines (old words only, full window; one
  evaluator, :func:`hsoftmax.word2vec.kernels.word_loglik`, reads gensim's codes and points too)
  after A, right after the vocabulary update and after the epoch on B, and the scores after A and
  after B. gensim's own ``Word2Vec.score`` of the same lines is reported beside it (it skips
  decisions beyond its sigmoid table, right or wrong, so it is not a log-likelihood).
* ``memory``: peak memory (VmHWM) of a whole run, encoding, training and writing the vectors, in
  text and in binary, for hsoftmax (the Python API, and the ``hsoftmax word2vec`` command, which
  starts numba without scipy's BLAS) and gensim corpus_file, on the slice, one process per run.
* ``small``: CBOW on the slice with ``--seeds`` (default 1 2 3) at ``--small-threads`` (default 2)
  threads, hsoftmax vs gensim corpus_file: mean and standard deviation of each score. With more
  than 1 thread, also the rows that test gensim's corpus_file learning rate (with W workers each
  epoch decays only 1/W of the way): gensim corpus_file at 1 thread and gensim in iterable mode
  (word2vec's linear schedule, as ours), and ours with gensim's W-worker rate imitated
  (``hsoftmax-gensim-rate``: the kernels' schedule wrapped in that run's process only).
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import subprocess
import sys
import threading
import time

from common import atomic_path, machine_info, machine_summary, peak_rss_bytes, run_json_child, write_json, write_text

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
SYSTEMS = ["hsoftmax", "gensim-file", "gensim-iter", "fasttext"]
SETTINGS = dict(dim=100, window=5, min_count=5, sample=1e-3, epochs=3, alpha=0.025, seed=1)
FULL = dict(modes=["cbow", "sg"], threads=[1, 2])
QUICK = dict(modes=["cbow"], threads=[1])
EXPERIMENTS = ["peers", "continue", "continue-b", "memory", "small"]
SLICE_PEERS = ["hsoftmax", "gensim-file"]  # the systems of the continue, memory and small experiments


def gensim_data(name: str) -> str:
    from hsoftmax.word2vec.evaluate import gensim_test_file

    path = gensim_test_file(name)
    if path is None:
        raise SystemExit("gensim is needed for the evaluation files: pip install -e '.[bench]'")
    return path


# ------------------------------------------------------------------ one run (in a subprocess)
def train_hsoftmax(corpus: str, sg: bool, threads: int):
    from hsoftmax.word2vec import Word2Vec, encode_file

    enc = encode_file(corpus, SETTINGS["min_count"])
    model = Word2Vec(
        dim=SETTINGS["dim"],
        window=SETTINGS["window"],
        min_count=SETTINGS["min_count"],
        sample=SETTINGS["sample"],
        sg=sg,
        epochs=SETTINGS["epochs"],
        alpha=SETTINGS["alpha"],
        threads=threads,
        seed=SETTINGS["seed"],
        progress=False,
    )
    model.build(enc)
    t0 = time.perf_counter()
    model.train(enc)
    seconds = time.perf_counter() - t0
    enc.close()
    return seconds, list(model.vocab.words), model.syn0


def train_gensim(corpus: str, sg: bool, threads: int, file_mode: bool):
    from gensim.models import Word2Vec
    from gensim.models.word2vec import LineSentence

    model = Word2Vec(
        vector_size=SETTINGS["dim"],
        window=SETTINGS["window"],
        min_count=SETTINGS["min_count"],
        sample=SETTINGS["sample"],
        sg=int(sg),
        hs=1,
        negative=0,
        alpha=SETTINGS["alpha"],
        workers=threads,
        seed=SETTINGS["seed"],
    )
    if file_mode:
        model.build_vocab(corpus_file=corpus)
        t0 = time.perf_counter()
        model.train(
            corpus_file=corpus,
            total_words=model.corpus_total_words,
            total_examples=model.corpus_count,
            epochs=SETTINGS["epochs"],
        )
    else:
        model.build_vocab(LineSentence(corpus))
        t0 = time.perf_counter()
        model.train(LineSentence(corpus), total_examples=model.corpus_count, epochs=SETTINGS["epochs"])
    seconds = time.perf_counter() - t0
    return seconds, list(model.wv.index_to_key), model.wv.vectors


def train_fasttext(corpus: str, sg: bool, threads: int):
    import fasttext
    import numpy as np

    t0 = time.perf_counter()
    model = fasttext.train_unsupervised(
        corpus,
        model="skipgram" if sg else "cbow",
        loss="hs",
        dim=SETTINGS["dim"],
        ws=SETTINGS["window"],
        minCount=SETTINGS["min_count"],
        t=SETTINGS["sample"],
        epoch=SETTINGS["epochs"],
        lr=SETTINGS["alpha"],
        thread=threads,
        minn=0,
        maxn=0,
        bucket=0,
        verbose=0,
    )  # 0.9.3's Python API takes no seed
    seconds = time.perf_counter() - t0
    words = model.get_words()
    return seconds, words, np.stack([model.get_input_vector(i) for i in range(len(words))])


def worker(system: str, mode: str, threads: int, corpus: str) -> dict:
    """Train one system, score its vectors; the result as a JSON-ready dict."""
    t_start = time.perf_counter()
    sg = mode == "sg"
    if system == "hsoftmax":
        seconds, words, vectors = train_hsoftmax(corpus, sg, threads)
    elif system.startswith("gensim"):
        seconds, words, vectors = train_gensim(corpus, sg, threads, system == "gensim-file")
    elif system == "fasttext":
        seconds, words, vectors = train_fasttext(corpus, sg, threads)
    else:
        raise SystemExit(f"unknown system {system}")
    wall = time.perf_counter() - t_start
    mem = peak_rss_bytes() / 2**20  # MiB, before evaluation (which allocates score matrices of its own)
    from hsoftmax.word2vec import evaluate_analogies, evaluate_similarity

    analogy = evaluate_analogies(words, vectors, gensim_data("questions-words.txt"))
    ws = evaluate_similarity(words, vectors, gensim_data("wordsim353.tsv"))
    sl = evaluate_similarity(words, vectors, gensim_data("simlex999.txt"))
    return {
        "system": system,
        "mode": mode,
        "threads": threads,
        "train_seconds": seconds,
        "wall_seconds": wall,
        "peak_mb": mem,
        "vocab": len(words),
        "analogy": analogy.accuracy,
        "analogy_total": analogy.total,
        "wordsim353": ws.spearman,
        "simlex999": sl.spearman,
    }


def scores(words, vectors) -> dict:
    from hsoftmax.word2vec import evaluate_analogies, evaluate_similarity

    analogy = evaluate_analogies(words, vectors, gensim_data("questions-words.txt"))
    return {
        "analogy": analogy.accuracy,
        "analogy_total": analogy.total,
        "wordsim353": evaluate_similarity(words, vectors, gensim_data("wordsim353.tsv")).spearman,
        "simlex999": evaluate_similarity(words, vectors, gensim_data("simlex999.txt")).spearman,
    }


def hsoftmax_model(sg: bool, threads: int):
    from hsoftmax.word2vec import Word2Vec

    keys = ("dim", "window", "min_count", "sample", "epochs", "alpha", "seed")
    return Word2Vec(**{k: SETTINGS[k] for k in keys}, sg=sg, threads=threads, progress=False)


def gensim_model(sg: bool, threads: int):
    from gensim.models import Word2Vec

    return Word2Vec(
        vector_size=SETTINGS["dim"],
        window=SETTINGS["window"],
        min_count=SETTINGS["min_count"],
        sample=SETTINGS["sample"],
        sg=int(sg),
        hs=1,
        negative=0,
        alpha=SETTINGS["alpha"],
        workers=threads,
        seed=SETTINGS["seed"],
    )


def gensim_fit(model, corpus: str, update: bool = False) -> None:
    model.build_vocab(corpus_file=corpus, update=update)
    model.train(
        corpus_file=corpus,
        total_words=model.corpus_total_words,
        total_examples=model.corpus_count,
        epochs=SETTINGS["epochs"],
    )


def continue_worker(system: str, corpus_a: str, corpus_ab: str, threads: int) -> dict:
    """Train on A then continue on A+B, and train on A+B from scratch: the scores of both."""
    out: dict = {"system": system, "threads": threads}
    if system == "hsoftmax":
        scratch = hsoftmax_model(False, threads).fit(corpus_ab)
        out["scratch"] = scores(list(scratch.vocab.words), scratch.syn0)
        del scratch
        model = hsoftmax_model(False, threads).fit(corpus_a)
        old_words, old_tree = len(model.vocab), model.tree
        t0 = time.perf_counter()
        model.fit(corpus_ab, update=True)
        out["update_seconds"] = time.perf_counter() - t0
        from hsoftmax.word2vec.grow import graft

        g = graft(old_tree, model.vocab.counts)
        out.update(
            old_words=old_words,
            new_words=len(model.vocab) - old_words,
            code_length=g.code_length,
            rebuilt_code_length=g.rebuilt_code_length,
            continued=scores(list(model.vocab.words), model.syn0),
        )
        return out
    scratch = gensim_model(False, threads)
    gensim_fit(scratch, corpus_ab)
    out["scratch"] = scores(list(scratch.wv.index_to_key), scratch.wv.vectors)
    del scratch
    model = gensim_model(False, threads)
    gensim_fit(model, corpus_a)
    old = {
        w: (tuple(model.wv.get_vecattr(w, "code")), tuple(model.wv.get_vecattr(w, "point")))
        for w in model.wv.index_to_key
    }
    out["old_words"] = len(old)
    try:
        model.build_vocab(corpus_file=corpus_ab, update=True)
        changed = sum(
            (tuple(model.wv.get_vecattr(w, "code")), tuple(model.wv.get_vecattr(w, "point"))) != cp
            for w, cp in old.items()
        )
        out.update(new_words=len(model.wv) - len(old), old_codes_changed=changed)
        t0 = time.perf_counter()
        model.train(
            corpus_file=corpus_ab,
            total_words=model.corpus_total_words,
            total_examples=model.corpus_count,
            epochs=SETTINGS["epochs"],
        )
        out["update_seconds"] = time.perf_counter() - t0
        out["continued"] = scores(list(model.wv.index_to_key), model.wv.vectors)
    except Exception as e:  # gensim's update path with hs=1 may fail: that is the result
        out["continued"] = {"error": f"{type(e).__name__}: {e}"[:200]}
    return out


def _exact_loglik(words: list[str], syn0, syn1, codes_choices, sentences: list[list[str]], keep: set[str]) -> float:
    """Mean exact log-likelihood per CBOW prediction (full window) of ``sentences``, counting only
    the words in ``keep``, for any binary HS model given each word's path as
    ``codes_choices[w] = (rows, choices)`` (``p(choice 1) = sigmoid(syn1[row] . h)``)."""
    import numpy as np

    from hsoftmax.word2vec import kernels

    index = {w: i for i, w in enumerate(words)}
    ids, offsets = [], [0]
    for sent in sentences:
        ids.extend(index[t] for t in sent if t in keep)
        offsets.append(len(ids))
    lengths = np.array([len(codes_choices[w][0]) for w in range(len(words))], dtype=np.int64)
    start = np.zeros(len(words) + 1, dtype=np.int64)
    np.cumsum(lengths, out=start[1:])
    rows = np.concatenate([np.asarray(codes_choices[w][0], dtype=np.int32) for w in range(len(words))])
    choices = np.concatenate([np.asarray(codes_choices[w][1], dtype=np.int32) for w in range(len(words))])
    paths = kernels.Paths(start, rows, choices, np.full(rows.size, 2, dtype=np.int32))
    chunk = kernels.Chunk(np.array(ids, dtype=np.int32), np.array(offsets, dtype=np.int64))
    model = kernels.Model(np.ascontiguousarray(syn0), np.ascontiguousarray(syn1), False, SETTINGS["window"])
    return float(kernels.word_loglik(chunk, model, paths))


def _hsoftmax_paths(model) -> list:
    from hsoftmax.word2vec import kernels

    p = kernels.flat_paths(model.tree, model.word_classes)
    return [
        (p.row[p.start[w] : p.start[w + 1]], p.choice[p.start[w] : p.start[w + 1]]) for w in range(len(model.vocab))
    ]


def _gensim_paths(model) -> list:
    # gensim trains sigmoid(h . syn1[point]) towards 1 - code: its "child 1" is code 0.
    return [
        (model.wv.get_vecattr(w, "point"), 1 - model.wv.get_vecattr(w, "code").astype("int32"))
        for w in model.wv.index_to_key
    ]


def continue_b_worker(system: str, corpus_a: str, corpus_b: str, heldout: str, threads: int) -> dict:
    """Train on A, then one epoch on B only: held-out A log-likelihood at each stage, and scores."""
    with open(heldout, encoding="utf-8") as f:
        sentences = [line.split() for line in f]
    out: dict = {"system": system, "threads": threads, "heldout_sentences": len(sentences)}
    if system == "hsoftmax":
        from hsoftmax.word2vec import encode_file

        model = hsoftmax_model(False, threads).fit(corpus_a)
        old = set(model.vocab.words)

        def stage() -> float:
            return _exact_loglik(
                list(model.vocab.words), model.syn0, model.syn1, _hsoftmax_paths(model), sentences, old
            )

        out.update(old_words=len(old), after_a=stage(), scores_a=scores(list(model.vocab.words), model.syn0))
        enc = encode_file(corpus_b, model.min_count, vocab=model.vocab)
        try:
            model.epochs = 1
            model.build(enc, update=True)  # the vocabulary update alone: the grown tree, no training yet
            out.update(new_words=len(model.vocab) - len(old), after_update=stage())
            model.train(enc)
        finally:
            enc.close()
        out.update(after_b=stage(), scores_b=scores(list(model.vocab.words), model.syn0))
        return out
    model = gensim_model(False, threads)
    gensim_fit(model, corpus_a)
    old = set(model.wv.index_to_key)

    def gstage() -> dict:
        own = model.score(sentences, total_sentences=len(sentences))
        predictions = sum(sum(t in model.wv.key_to_index for t in s) for s in sentences)
        words = list(model.wv.index_to_key)
        return {
            "exact": _exact_loglik(words, model.wv.vectors, model.syn1, _gensim_paths(model), sentences, old),
            "gensim_score": float(own.sum()) / max(predictions, 1),
        }

    a = gstage()
    out.update(old_words=len(old), after_a=a["exact"], gensim_score_a=a["gensim_score"])
    out["scores_a"] = scores(list(model.wv.index_to_key), model.wv.vectors)
    try:
        model.build_vocab(corpus_file=corpus_b, update=True)
        u = gstage()
        out.update(new_words=len(model.wv) - len(old), after_update=u["exact"], gensim_score_update=u["gensim_score"])
        model.train(
            corpus_file=corpus_b, total_words=model.corpus_total_words, total_examples=model.corpus_count, epochs=1
        )
        b = gstage()
        out.update(after_b=b["exact"], gensim_score_b=b["gensim_score"])
        out["scores_b"] = scores(list(model.wv.index_to_key), model.wv.vectors)
    except Exception as e:  # an error of gensim's update path is its result
        out["error_update"] = f"{type(e).__name__}: {e}"[:200]
    return out


def memory_worker(system: str, fmt: str, corpus: str, threads: int, out_dir: str) -> dict:
    """A whole run (encode, train, write the vectors as ``fmt``); peak memory at the end."""
    t0 = time.perf_counter()
    path = os.path.join(out_dir, f"{system}-{fmt}.{'bin' if fmt == 'binary' else 'txt'}")
    if system == "hsoftmax":
        model = hsoftmax_model(False, threads).fit(corpus)
        model.wv.save_word2vec_format(path, binary=fmt == "binary")
    elif system == "hsoftmax-cli":  # the command, in this process (its VmHWM is the run's)
        from hsoftmax.cli import main as cli_main

        flags = [f"--{k.replace('_', '-')}={SETTINGS[k]}" for k in ("dim", "window", "min_count", "sample", "epochs")]
        flags += [f"--alpha={SETTINGS['alpha']}", f"--seed={SETTINGS['seed']}", f"--threads={threads}", "--no-progress"]
        rc = cli_main(["word2vec", corpus, "-o", path, *flags] + (["--binary"] if fmt == "binary" else []))
        if rc != 0:
            raise SystemExit(f"hsoftmax word2vec exited {rc}")
    else:
        model = gensim_model(False, threads)
        gensim_fit(model, corpus)
        model.wv.save_word2vec_format(path, binary=fmt == "binary")
    size = os.path.getsize(path)
    os.remove(path)
    return {
        "system": system,
        "format": fmt,
        "threads": threads,
        "peak_mb": peak_rss_bytes() / 2**20,
        "wall_seconds": time.perf_counter() - t0,
        "file_mb": size / 2**20,
    }


def gensim_file_rate(before: int, total: int, epochs: int, workers: int) -> int:
    """The schedule position that gives a word at ``before`` (``epoch * N + lo``) the learning rate
    gensim's corpus_file mode gives it with ``workers`` workers. Worker ``k`` reads the ``k``-th
    contiguous ``1/workers`` of the file and its ``get_next_alpha`` counts only its own words
    (``word2vec_corpusfile.pyx``), so position ``lo`` in part ``k`` decays as ``lo - k*N/workers``:
    each epoch goes only a ``1/workers`` share of the way down.

    >>> [gensim_file_rate(b, 300, 3, 2) for b in (0, 49, 50, 99, 100, 150)]
    [0, 49, 0, 49, 100, 100]
    """
    n = total // epochs
    epoch, lo = divmod(before, n)
    part = min(workers - 1, lo * workers // n)
    return epoch * n + lo - part * n // workers


def hsoftmax_gensim_rate(threads: int, corpus: str):
    """Ours, trained with gensim corpus_file's ``threads``-worker learning rate for every word
    (our data order kept): the kernels' :class:`Schedule` is wrapped in this process only, to
    test the explanation of gensim's 2-worker lead (not a feature of the library)."""
    import types

    from hsoftmax.word2vec import kernels, train

    real = kernels.Schedule

    def schedule(alpha, min_alpha, before, total, seed):
        return real(
            alpha, min_alpha, gensim_file_rate(int(before), int(total), SETTINGS["epochs"], threads), total, seed
        )

    patched = types.ModuleType("kernels_gensim_rate")
    patched.__dict__.update(kernels.__dict__, Schedule=schedule)
    train.kernels, saved = patched, train.kernels
    try:
        return hsoftmax_model(False, threads).fit(corpus)
    finally:
        train.kernels = saved


def small_worker(system: str, corpus: str, threads: int, seeds: list[int]) -> dict:
    """CBOW on the slice once per seed (one process: quality only, no memory measured)."""
    from gensim.models.word2vec import LineSentence

    runs = []
    for seed in seeds:
        SETTINGS["seed"] = seed
        if system in ("hsoftmax", "hsoftmax-gensim-rate"):
            if system == "hsoftmax":
                model = hsoftmax_model(False, threads).fit(corpus)
            else:
                model = hsoftmax_gensim_rate(threads, corpus)
            runs.append({"seed": seed, **scores(list(model.vocab.words), model.syn0)})
        else:
            g = gensim_model(False, threads)
            if system == "gensim-file":
                gensim_fit(g, corpus)
            else:  # iterable mode: one global learning rate over all workers' words
                g.build_vocab(LineSentence(corpus))
                g.train(LineSentence(corpus), total_examples=g.corpus_count, epochs=SETTINGS["epochs"])
            runs.append({"seed": seed, **scores(list(g.wv.index_to_key), g.wv.vectors)})
    return {"system": system, "threads": threads, "runs": runs}


def slice_corpus(src: str, tokens: int, dst_dir: str) -> tuple[str, str]:
    """The first ``tokens`` tokens of ``src`` (whole lines) and the first half of those lines."""
    os.makedirs(dst_dir, exist_ok=True)
    ab = os.path.join(dst_dir, f"slice_{tokens}.txt")
    a = os.path.join(dst_dir, f"slice_{tokens}_A.txt")
    if not (os.path.isfile(ab) and os.path.isfile(a)):
        lines, n = [], 0
        with open(src, "rb") as f:
            for line in f:
                lines.append(line)
                n += len(line.split())
                if n >= tokens:
                    break
        with atomic_path(ab) as tmp, open(tmp, "wb") as out:
            out.writelines(lines)
        with atomic_path(a) as tmp, open(tmp, "wb") as out:
            out.writelines(lines[: len(lines) // 2])
    return a, ab


def slice_continue_b(corpus_a: str, corpus_ab: str) -> tuple[str, str, str]:
    """For ``continue-b``: A without every 100th line, those lines (held out), and B (A+B's lines
    after A's)."""
    base = os.path.splitext(corpus_a)[0]
    train, heldout, b = base + "_train.txt", base + "_heldout.txt", base.removesuffix("_A") + "_B.txt"
    if not all(os.path.isfile(x) for x in (train, heldout, b)):
        with open(corpus_a, "rb") as f:
            a_lines = f.readlines()
        with open(corpus_ab, "rb") as f:
            b_lines = f.readlines()[len(a_lines) :]
        for path, lines in (
            (train, [x for i, x in enumerate(a_lines) if i % 100 != 99]),
            (heldout, a_lines[99::100]),
            (b, b_lines),
        ):
            with atomic_path(path) as tmp, open(tmp, "wb") as out:
                out.writelines(lines)
    return train, heldout, b


def mean_sd(values: list[float]) -> tuple[float, float]:
    import statistics

    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def child(args: list[str], timeout: float) -> dict:
    return run_json_child([sys.executable, os.path.abspath(__file__), *args], timeout)


def run_continue(corpus_a: str, corpus_ab: str, threads: int, systems: list[str], timeout: float) -> list[dict]:
    rows = []
    for system in systems:
        r = child(["--worker-continue", system, corpus_a, corpus_ab, str(threads), str(SETTINGS["seed"])], timeout)
        rows.append(r if "error" not in r else {"system": system, "threads": threads, **r})
    return rows


def run_continue_b(corpus_a: str, corpus_ab: str, threads: int, systems: list[str], timeout: float) -> list[dict]:
    train, heldout, b = slice_continue_b(corpus_a, corpus_ab)
    rows = []
    for system in systems:
        r = child(["--worker-continue-b", system, train, b, heldout, str(threads), str(SETTINGS["seed"])], timeout)
        rows.append(r if "error" not in r else {"system": system, "threads": threads, **r})
    return rows


def run_memory(corpus: str, threads: int, systems: list[str], out_dir: str, timeout: float) -> list[dict]:
    rows = []
    systems = [y for x in systems for y in ([x, "hsoftmax-cli"] if x == "hsoftmax" else [x])]
    for system in systems:
        for fmt in ("text", "binary"):
            r = child(["--worker-memory", system, fmt, corpus, str(threads), out_dir, str(SETTINGS["seed"])], timeout)
            rows.append(r if "error" not in r else {"system": system, "format": fmt, "threads": threads, **r})
    return rows


def run_small(corpus: str, threads: int, systems: list[str], seeds: list[int], timeout: float) -> list[dict]:
    """Each system at ``threads``; with ``threads > 1`` also the rows that test why gensim
    corpus_file leads there: with W workers each of its threads decays the learning rate only a
    1/W share of each epoch (its own words over the whole corpus's count). So: gensim corpus_file
    at 1 thread and gensim in iterable mode (both with word2vec's linear schedule, as ours), and
    ours with gensim's W-worker rate imitated (``hsoftmax-gensim-rate``)."""
    runs = [(system, threads) for system in systems]
    if threads > 1 and "hsoftmax" in systems:
        runs.append(("hsoftmax-gensim-rate", threads))
    if threads > 1 and "gensim-file" in systems:
        runs += [("gensim-iter", threads), ("gensim-file", 1)]
    rows = []
    for system, t in runs:
        r = child(["--worker-small", system, corpus, str(t), ",".join(map(str, seeds))], timeout * len(seeds))
        rows.append(r if "error" not in r else {"system": system, "threads": t, **r})
    return rows


def _score_cells(r: dict | None) -> str:
    """Three table cells: analogy, WordSim, SimLex (or why there are none)."""
    if r is None:
        return " | | "
    if "error" in r:
        return f"n/a: {r['error']} | | "
    return f"{100 * r['analogy']:.2f} | {r['wordsim353']:.3f} | {r['simlex999']:.3f}"


def continue_table(rows: list[dict]) -> str:
    lines = [
        "| system | run | analogy % | WS353 | SimLex | words (old + new) | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['system']} | | n/a: {r['error']} | | | | |")
            continue
        words = f"{r.get('old_words', '?')} + {r.get('new_words', '?')}"
        if r["system"] == "hsoftmax":
            note = (
                f"grafted tree: mean code length {r['code_length']:.3f} vs {r['rebuilt_code_length']:.3f} "
                "rebuilt; every old row kept"
            )
        else:
            changed = r.get("old_codes_changed")
            note = (
                ""
                if changed is None
                else f"update rebuilt the tree: {changed} of {r['old_words']} old words' codes changed"
            )
        lines.append(f"| {r['system']} | A+B from scratch | {_score_cells(r.get('scratch'))} | | |")
        lines.append(
            f"| {r['system']} | A, then continued on A+B | {_score_cells(r.get('continued'))} | {words} | {note} |"
        )
    return "\n".join(lines)


def continue_b_table(rows: list[dict]) -> str:
    lines = [
        (
            "| system | held-out A log-lik: after A | right after the update | after 1 epoch on B "
            "| analogy % / WS353 / SimLex after A | after B | words (old + new) |"
        ),
        "|---|---|---|---|---|---|---|",
    ]

    def cell(x: dict | None) -> str:
        if not x:
            return ""
        return f"{100 * x['analogy']:.2f} / {x['wordsim353']:.3f} / {x['simlex999']:.3f}"

    for r in rows:
        if "error" in r:
            lines.append(f"| {r['system']} | n/a: {r['error']} | | | | | |")
            continue
        ll = []
        for key in ("after_a", "after_update", "after_b"):
            v = r.get(key)
            own = r.get("gensim_score_" + key.removeprefix("after_"))
            ll.append("" if v is None else f"{v:.3f}" + ("" if own is None else f" (gensim score {own:.3f})"))
        if "error_update" in r:
            ll[1] = f"n/a: {r['error_update']}"
        words = f"{r.get('old_words', '?')} + {r.get('new_words', '?')}"
        after = f"{cell(r.get('scores_a'))} | {cell(r.get('scores_b'))}"
        lines.append(f"| {r['system']} | {ll[0]} | {ll[1]} | {ll[2]} | {after} | {words} |")
    return "\n".join(lines)


def memory_table(rows: list[dict]) -> str:
    lines = ["| system | output | peak MB (whole run) | wall s | file MB |", "|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['system']} | {r['format']} | n/a: {r['error']} | | |")
        else:
            lines.append(
                f"| {r['system']} | {r['format']} | {r['peak_mb']:.0f} | {r['wall_seconds']:.1f} | {r['file_mb']:.1f} |"
            )
    return "\n".join(lines)


def small_table(rows: list[dict]) -> str:
    lines = ["| system | threads | seeds | analogy % | WS353 | SimLex |", "|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['system']} | {r['threads']} | | n/a: {r['error']} | | |")
            continue
        cells = []
        for key, scale, fmt in (("analogy", 100, ".2f"), ("wordsim353", 1, ".3f"), ("simlex999", 1, ".3f")):
            m, sd = mean_sd([scale * x[key] for x in r["runs"]])
            cells.append(f"{m:{fmt}} ± {sd:{fmt}}")
        seeds = ",".join(str(x["seed"]) for x in r["runs"])
        lines.append(f"| {r['system']} | {r['threads']} | {seeds} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------ the driver
def cpu_probe() -> dict:
    """How much parallelism the machine gives right now: a 2-thread spin vs a 1-thread spin
    (other processes on a shared machine show up here)."""
    import numba

    @numba.njit(nogil=True)
    def spin(n):
        s = 0.0
        for i in range(n):
            s += (i * 0.5) % 3.3
        return s

    spin(10)
    n = 30_000_000
    t = time.perf_counter()
    spin(n)
    one = time.perf_counter() - t
    t = time.perf_counter()
    ts = [threading.Thread(target=spin, args=(n,)) for _ in range(2)]
    for x in ts:
        x.start()
    for x in ts:
        x.join()
    two = time.perf_counter() - t
    return {"parallel_speedup_2threads": round(2 * one / two, 2), "loadavg": os.getloadavg()}


def count_tokens(path: str) -> int:
    n = 0
    with open(path, "rb") as f:
        for line in f:
            n += len(line.split())
    return n


def embedded_corpus() -> str:
    """The package's corpus, decompressed once into the results folder (the peers read plain text)."""
    from hsoftmax.word2vec import embedded_corpus_path

    path = os.path.join(RESULTS, "kjv_austen.txt")
    if not os.path.isfile(path):
        with atomic_path(path) as tmp, lzma.open(embedded_corpus_path(), "rb") as src, open(tmp, "wb") as dst:
            while block := src.read(1 << 20):
                dst.write(block)
    return path


def ensure_corpus(path: str | None, quick: bool) -> str:
    if path:
        if not os.path.isfile(path):
            raise SystemExit(f"corpus not found: {path}")
        return path
    if quick:
        return embedded_corpus()
    path = os.path.join(RESULTS, "corpus_en.txt")
    if not os.path.isfile(path):
        os.makedirs(RESULTS, exist_ok=True)
        print(f"building the combined corpus into {path} (benchmarks/build_corpus.py)", flush=True)
        austen_root = os.path.join(RESULTS, "austen")
        subprocess.run(
            [sys.executable, os.path.join(HERE, "build_corpus.py"), "combined", path, "--austen-root", austen_root]
            + ([] if os.path.isdir(austen_root) else ["--install"]),
            check=True,
        )
    return path


def run_one(system: str, mode: str, threads: int, corpus: str, timeout: float) -> dict:
    """One run in a fresh process (so its peak memory is its own); an error becomes the row."""
    worker_args = ["--worker", system, mode, str(threads), corpus, str(SETTINGS["seed"])]
    r = run_json_child([sys.executable, os.path.abspath(__file__), *worker_args], timeout)
    return r if "error" not in r else {"system": system, "mode": mode, "threads": threads, **r}


def table(results: list[dict], tokens: int) -> str:
    head = (
        "| mode | threads | system | words/s | train s | wall s | peak MB | analogy % | WS353 | SimLex | "
        "hsoftmax speed ratio |"
    )
    lines = [head, "|" + "---|" * 11]
    ours = {(r["mode"], r["threads"]): r for r in results if r["system"] == "hsoftmax" and "error" not in r}
    for r in results:
        if "error" in r:
            lines.append(f"| {r['mode']} | {r['threads']} | {r['system']} | n/a: {r['error']} | | | | | | | |")
            continue
        wps = tokens * SETTINGS["epochs"] / r["train_seconds"]
        mine = ours.get((r["mode"], r["threads"]))
        ratio = (
            "" if mine is None or r["system"] == "hsoftmax" else f"{r['train_seconds'] / mine['train_seconds']:.2f}x"
        )
        lines.append(
            f"| {r['mode']} | {r['threads']} | {r['system']} | {wps:,.0f} | {r['train_seconds']:.1f} | "
            f"{r['wall_seconds']:.1f} | {r['peak_mb']:.0f} | {100 * r['analogy']:.2f} | "
            f"{r['wordsim353']:.3f} | {r['simlex999']:.3f} | {ratio} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        system, mode, threads, corpus, seed = argv[1:6]
        SETTINGS["seed"] = int(seed)
        print(json.dumps(worker(system, mode, int(threads), corpus)))  # the last line: run_json_child's result
        return 0
    if argv[:1] == ["--worker-continue"]:
        system, corpus_a, corpus_ab, threads, seed = argv[1:6]
        SETTINGS["seed"] = int(seed)
        print(json.dumps(continue_worker(system, corpus_a, corpus_ab, int(threads))))
        return 0
    if argv[:1] == ["--worker-continue-b"]:
        system, corpus_a, corpus_b, heldout, threads, seed = argv[1:7]
        SETTINGS["seed"] = int(seed)
        print(json.dumps(continue_b_worker(system, corpus_a, corpus_b, heldout, int(threads))))
        return 0
    if argv[:1] == ["--worker-memory"]:
        system, fmt, corpus, threads, out_dir, seed = argv[1:7]
        SETTINGS["seed"] = int(seed)
        print(json.dumps(memory_worker(system, fmt, corpus, int(threads), out_dir)))
        return 0
    if argv[:1] == ["--worker-small"]:
        system, corpus, threads, seeds = argv[1:5]
        print(json.dumps(small_worker(system, corpus, int(threads), [int(x) for x in seeds.split(",")])))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--quick", action="store_true", help="smoke run: the embedded corpus, CBOW, 1 thread (flags below override)"
    )
    p.add_argument("--corpus", help="corpus file (default: build benchmarks/results/corpus_en.txt)")
    p.add_argument("--modes", nargs="+", choices=["cbow", "sg"], help=f"default {FULL['modes']}")
    p.add_argument("--threads", nargs="+", type=int, help=f"default {FULL['threads']}")
    p.add_argument("--systems", nargs="+", default=SYSTEMS, choices=SYSTEMS)
    p.add_argument("--timeout", type=float, default=1800, help="seconds per run")
    p.add_argument("--seed", type=int, default=1, help="random seed given to every system")
    p.add_argument("--json", default=os.path.join(RESULTS, "word2vec_vs_peers.json"))
    p.add_argument("--no-probe", action="store_true", help="skip the parallelism probe before and after (seconds)")
    p.add_argument("--experiments", nargs="+", choices=EXPERIMENTS, help="what to run (default: all; --quick: peers)")
    p.add_argument(
        "--slice-tokens",
        type=int,
        help="tokens of the corpus for continue/memory/small (default 5,000,000; --quick: the whole corpus)",
    )
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3], help="seeds of the small-corpus rows")
    p.add_argument("--small-threads", type=int, default=2, help="threads of the continue/memory/small runs")
    args = p.parse_args(argv)
    if args.experiments is None:
        args.experiments = ["peers"] if args.quick else EXPERIMENTS
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    SETTINGS["seed"] = args.seed
    corpus = ensure_corpus(args.corpus, args.quick)
    tokens = count_tokens(corpus)
    machine = machine_info()
    probe = None if args.no_probe else cpu_probe()
    print(f"corpus {corpus}: {tokens:,} tokens; {machine_summary(machine)}; probe {probe}", flush=True)
    results: list[dict] = []
    grid = [(m, t) for m in args.modes for t in args.threads] if "peers" in args.experiments else []
    for mode, threads in grid:
        for system in args.systems:
            r = run_one(system, mode, threads, corpus, args.timeout)
            results.append(r)
            if "error" in r:
                print(f"{mode} x{threads} {system}: ERROR {r['error']}", flush=True)
            else:
                print(
                    f"{mode} x{threads} {system}: {tokens * SETTINGS['epochs'] / r['train_seconds']:,.0f} words/s, "
                    f"{r['train_seconds']:.1f}s train, {r['peak_mb']:.0f} MB, analogy {100 * r['analogy']:.2f}%, "
                    f"WS353 {r['wordsim353']:.3f}, SimLex {r['simlex999']:.3f}",
                    flush=True,
                )
    md = table(results, tokens) if grid else ""
    extra: dict = {}
    slice_systems = [x for x in SLICE_PEERS if x in args.systems]
    if set(args.experiments) - {"peers"}:
        slice_tokens = args.slice_tokens or (tokens if args.quick else 5_000_000)
        work = os.path.join(os.path.dirname(os.path.abspath(args.json)), "word2vec_slices")
        corpus_a, corpus_ab = slice_corpus(corpus, slice_tokens, work)
        extra["slice"] = {"tokens": count_tokens(corpus_ab), "tokens_A": count_tokens(corpus_a), "path": corpus_ab}
        head = f"Slice: the first {extra['slice']['tokens']:,} tokens of {os.path.basename(corpus)}"
        md += f"\n\n{head}, A = its first {extra['slice']['tokens_A']:,} tokens; {args.small_threads} threads."
        t = args.small_threads
        if "continue" in args.experiments:
            extra["continue"] = run_continue(corpus_a, corpus_ab, t, slice_systems, args.timeout)
            md += "\n\nContinued training (CBOW):\n\n" + continue_table(extra["continue"])
        if "continue-b" in args.experiments:
            extra["continue_b"] = run_continue_b(corpus_a, corpus_ab, t, slice_systems, args.timeout)
            md += "\n\nContinued training on B only, 1 epoch (CBOW):\n\n" + continue_b_table(extra["continue_b"])
        if "memory" in args.experiments:
            extra["memory"] = run_memory(corpus_ab, t, slice_systems, work, args.timeout)
            md += "\n\nPeak memory of a whole run (CBOW):\n\n" + memory_table(extra["memory"])
        if "small" in args.experiments:
            extra["small"] = run_small(corpus_ab, t, slice_systems, args.seeds, args.timeout)
            md += "\n\nCBOW on the slice, mean ± sd over seeds:\n\n" + small_table(extra["small"])
    print("\n" + md)
    write_json(
        args.json,
        {
            "date": machine["date"],
            "machine": machine,
            "corpus": corpus,
            "tokens": tokens,
            "settings": SETTINGS,
            "cpus": os.cpu_count(),
            "probe": probe,
            "probe_after": None if args.no_probe else cpu_probe(),
            "argv": argv,
            "results": results,
            **extra,
        },
    )
    write_text(
        os.path.splitext(args.json)[0] + ".md", f"Measured {machine['date']} on {machine_summary(machine)}.\n\n{md}\n"
    )
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

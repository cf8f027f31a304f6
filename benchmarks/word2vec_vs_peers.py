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
    args = p.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    SETTINGS["seed"] = args.seed
    corpus = ensure_corpus(args.corpus, args.quick)
    tokens = count_tokens(corpus)
    machine = machine_info()
    probe = None if args.no_probe else cpu_probe()
    print(f"corpus {corpus}: {tokens:,} tokens; {machine_summary(machine)}; probe {probe}", flush=True)
    results = []
    for mode in args.modes:
        for threads in args.threads:
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
    md = table(results, tokens)
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
        },
    )
    write_text(
        os.path.splitext(args.json)[0] + ".md", f"Measured {machine['date']} on {machine_summary(machine)}.\n\n{md}\n"
    )
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

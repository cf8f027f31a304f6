"""Word-level LSTM language model, five output layers: quality per second of training.

One model, identical except for its output layer: an embedding, a one-layer LSTM and

* ``full``: ``nn.Linear`` + ``F.cross_entropy`` (the full softmax);
* ``adaptive``: ``nn.AdaptiveLogSoftmaxWithLoss`` (``div_value=4``; cutoffs at the frequency
  ranks that cover 80% and 95% of the training tokens, Grave et al. 2017's recipe for Zipf data:
  a head of the few thousand words most tokens are, then ever cheaper tails);
* ``hs_huffman``, ``hs_two_level``, ``hs_learned``: :class:`hsoftmax.HierarchicalSoftmax` over a
  Huffman tree of the training counts, a frequency-binned two-level tree, and a tree learned
  from word vectors (:meth:`hsoftmax.Tree.from_embeddings` over CBOW vectors that
  :mod:`hsoftmax.word2vec` trains on the training split, mass-balanced by the counts). The time
  to train those vectors and build that tree is charged to that head's clock.

Data: the combined corpus of ``benchmarks/build_corpus.py`` (13.4M tokens, one paragraph per
line; built from the Debian packages into ``benchmarks/results/corpus_en.txt`` if ``--corpus`` is
not given). Fixed document-level split by line number: line ``i`` is test if
``crc32(str(i)) % 400 == 0``, valid if it is 1, else train (29.7k, 29.6k and 13.9M tokens). Vocabulary: the
training split's words seen at least ``min_count`` (5) times, plus ``<unk>`` (every other word)
and ``</s>`` (the end of each paragraph, which is predicted too), numbered by decreasing count.

Every head trains with Adam on the dense parameters and ``torch.optim.SparseAdam`` on the sparse
ones (the embedding, ``sparse=True``, and the HS node tables, ``sparse=True``: what
:func:`hsoftmax.optim.paired` gives Adam), the same learning rate, truncated BPTT with the state
carried over, and the LSTM's gradient norm clipped. On the CPU the HS layers run their numba
kernels. With ``unigram_init`` (the default) every head's output biases start at the training
unigram distribution (full softmax ``log p(v)``; HS nodes the log-odds of their subtrees'
masses; adaptive softmax ``log p`` of its head words and tail masses, and each tail's own
``log p(v | tail)``), so no head spends its first updates learning word frequencies.

Each head runs in its own fresh process (its peak RSS is its own), one after another. Two
comparisons: **equal time**, each head scored when it has spent the wall-clock budget of
training (forward + backward + optimizer steps, and building the head's tree; evaluation
pauses the clock; one untimed forward + backward first warms up the kernels); and **equal
tokens**, each head scored when it has seen ``equal_tokens`` training tokens (a list; the
largest is the targets' point). A token count, so the point does not depend on the machine's
load: a head too slow to get there in its budget (the full softmax) trains on past its budget
until it does, its equal-time row still taken at the budget.

Perplexities are exact: every head's probabilities are normalized, so the test perplexity is
``exp`` of the mean negative log-probability of every token of the split (the layer's forward
over all of them, no sampling). Validation during training (the curve) uses the first
``curve_valid_tokens`` tokens of the valid split; the tables use all of it.

    python benchmarks/lm.py                      # builds the corpus if missing; about 45 min on 2 cores
    python benchmarks/lm.py --corpus corpus_en.txt --budget 120 --heads full hs_learned
    python benchmarks/lm.py --quick              # the package's embedded corpus, tiny model, seconds

Results: ``benchmarks/results/lm.json`` (or ``--json``), with ``.md`` and ``.png`` (validation
perplexity against training wall-clock time, one curve per head) beside it.
"""

from __future__ import annotations

import os

# Before torch (and its OpenMP runtime) loads: idle OpenMP workers sleep instead of spinning, so
# numba's and torch's thread pools do not starve each other on a shared machine (see layers.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import hashlib
import json
import lzma
import math
import sys
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np

from common import atomic_path, machine_info, machine_summary, peak_rss_bytes, run_json_child, write_json, write_text

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
HEADS = ("full", "adaptive", "hs_huffman", "hs_two_level", "hs_learned")
LABELS = {
    "full": "full softmax",
    "adaptive": "adaptive softmax",
    "hs_huffman": "HS Huffman",
    "hs_two_level": "HS two-level",
    "hs_learned": "HS learned tree",
}
UNK, EOS = "<unk>", "</s>"

# The defaults fit 2 CPU cores: 4 minutes of training per head for the equal-time rows, and the
# slow heads (full softmax, two-level) train on to the 256,000-token point: ~45-55 min in all.
FULL: dict[str, Any] = dict(
    max_tokens=None,  # the whole corpus
    min_count=5,
    emb=128,
    hidden=128,
    batch=16,  # small steps: the full softmax gets ~100 updates in its budget on 2 cores
    bptt=16,
    lr=1e-2,
    # Per-head learning rates that override lr: none. The README's sweep found 3e-2 best for the
    # full softmax at its ~100 budget steps (zero biases); at the 1,000-step equal-tokens horizon
    # with unigram biases every head gets 1e-2, the best of every sweep at >= 1,000 steps.
    head_lr={},
    clip=1.0,
    budget=240.0,  # seconds of training per head
    curve_points=6,
    curve_valid_tokens=3_000,
    # The equal-tokens points: every head, the full softmax included, is scored when it has seen
    # each of these many training tokens, and trains past its budget until it has (its
    # equal-time row is still taken at the budget). A token count, not "what the full softmax
    # saw in its budget", so that the comparison does not depend on how loaded the machine is.
    # The largest one is the targets' point.
    equal_tokens=[256_000],
    # Every head's output biases start at the training unigram distribution (see unigram_init).
    unigram_init=True,
    eval_streams=16,
    w2v_dim=64,
    w2v_epochs=1,
    w2v_window=5,
    threads=2,
    seed=0,
)
QUICK: dict[str, Any] = dict(
    FULL,
    max_tokens=150_000,
    emb=32,
    hidden=32,
    batch=16,
    bptt=16,
    lr=1e-2,
    head_lr={},
    budget=1.5,
    curve_points=3,
    curve_valid_tokens=200,
    equal_tokens=[2_048],
    eval_streams=4,
    w2v_dim=16,
)
TUNABLE = [k for k in FULL if k not in ("max_tokens", "head_lr", "equal_tokens", "unigram_init")]


# ---------------------------------------------------------------------------- data
def corpus_lines(path: str) -> Iterator[str]:
    opener: Any = lzma.open if path.endswith(".xz") else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        yield from f


def split_of(line_number: int) -> str:
    """The fixed document-level split by line number: 1/400 test, 1/400 valid, the rest train
    (29.7k, 29.6k and 13.9M tokens): small enough held-out sets that the full softmax's exact
    evaluation over every token fits the 2-core budget."""
    b = zlib.crc32(str(line_number).encode()) % 400
    return "test" if b == 0 else "valid" if b == 1 else "train"


def read_splits(path: str, max_tokens: int | None) -> dict[str, list[list[str]]]:
    splits: dict[str, list[list[str]]] = {"train": [], "valid": [], "test": []}
    n = 0
    for i, line in enumerate(corpus_lines(path)):
        words = line.split()
        if not words:
            continue
        splits[split_of(i)].append(words)
        n += len(words)
        if max_tokens is not None and n >= max_tokens:
            break
    return splits


def build_vocab(train: list[list[str]], min_count: int) -> tuple[list[str], np.ndarray]:
    """Words with ``count >= min_count`` plus ``<unk>`` and ``</s>``, by decreasing training count
    (ties alphabetically): the order AdaptiveLogSoftmaxWithLoss needs and Huffman likes."""
    counts = Counter(w for words in train for w in words)
    kept = {w: c for w, c in counts.items() if c >= min_count}
    if UNK in kept or EOS in kept:
        raise SystemExit(f"the corpus contains the reserved tokens {UNK} or {EOS}")
    kept[UNK] = sum(c for w, c in counts.items() if c < min_count)
    kept[EOS] = len(train)
    words = sorted(kept, key=lambda w: (-kept[w], w))
    return words, np.array([kept[w] for w in words], dtype=np.int64)


def encode(docs: list[list[str]], index: dict[str, int]) -> np.ndarray:
    """One stream ``</s> doc1 </s> doc2 </s> ...``: every token of the split, each paragraph's
    end included, has a token before it to be predicted from."""
    unk, eos = index[UNK], index[EOS]
    out = [eos]
    for words in docs:
        out.extend(index.get(w, unk) for w in words)
        out.append(eos)
    return np.array(out, dtype=np.int32)


def prepare_data(corpus: str, min_count: int, max_tokens: int | None, cache_dir: str) -> str:
    """Split, count and encode the corpus once; the heads' processes load the ``.npz``. Cached
    by the corpus's path, size and modification time and the settings."""
    st = os.stat(corpus)
    key = f"{os.path.abspath(corpus)}|{st.st_size}|{st.st_mtime_ns}|{min_count}|{max_tokens}|v2"
    path = os.path.join(cache_dir, f"lm_data_{hashlib.sha1(key.encode()).hexdigest()[:12]}.npz")
    if os.path.isfile(path):
        return path
    t0 = time.perf_counter()
    splits = read_splits(corpus, max_tokens)
    if not splits["train"] or not splits["valid"] or not splits["test"]:
        raise SystemExit(
            f"{corpus}: too small for a train/valid/test split ({ {k: len(v) for k, v in splits.items()} })"
        )
    words, counts = build_vocab(splits["train"], min_count)
    index = {w: i for i, w in enumerate(words)}
    arrays = {name: encode(docs, index) for name, docs in splits.items()}
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, words=np.array(words), counts=counts, **arrays)
    sizes = ", ".join(f"{k} {len(v) - 1:,}" for k, v in arrays.items())
    print(f"data: {sizes} tokens, vocabulary {len(words):,} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return path


def load_data(path: str) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def adaptive_cutoffs(counts: np.ndarray, coverage: tuple[float, ...] = (0.80, 0.95)) -> list[int]:
    """The frequency ranks at which the head and first tail cover ``coverage`` of the tokens
    (``counts`` sorted descending), rounded to two significant digits, strictly inside (0, V)."""
    cum = np.cumsum(counts) / counts.sum()
    V = len(counts)
    cuts: list[int] = []
    for c in coverage:
        r = int(np.searchsorted(cum, c)) + 1
        digits = max(0, len(str(r)) - 2)
        r = round(r, -digits)
        r = min(max(r, (cuts[-1] if cuts else 0) + 1), V - 1)
        if not cuts or r > cuts[-1]:
            cuts.append(r)
    return [c for c in cuts if 0 < c < V]


def ensure_corpus(path: str | None, quick: bool) -> str:
    if path:
        if not os.path.isfile(path):
            raise SystemExit(f"corpus not found: {path}")
        return path
    if quick:
        from hsoftmax.word2vec import embedded_corpus_path

        return str(embedded_corpus_path())
    from word2vec_vs_peers import ensure_corpus as build  # builds benchmarks/results/corpus_en.txt

    return build(None, False)


# ---------------------------------------------------------------------------- one head (a child process)
def learned_tree(data: dict[str, np.ndarray], cfg: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """CBOW vectors of the training split (hsoftmax's word2vec, the LM's own vocabulary), then
    ``Tree.from_embeddings`` over them with the training counts."""
    from hsoftmax import Tree
    from hsoftmax.word2vec import EncodedCorpus, Word2Vec
    from hsoftmax.word2vec.vocab import Vocab

    t0 = time.perf_counter()
    words, counts, train = data["words"].tolist(), data["counts"], data["train"]
    ids = train[1:]  # sentences end with their </s>, so </s> gets a vector too
    eos = words.index(EOS)
    offsets = np.concatenate([[0], np.flatnonzero(ids == eos) + 1]).astype(np.int64)
    tmp = tempfile.TemporaryDirectory(prefix="lm_w2v_")
    ids_path = os.path.join(tmp.name, "ids.int32")
    ids.astype(np.int32).tofile(ids_path)
    w2v_counts = np.bincount(ids, minlength=len(words))
    corpus = EncodedCorpus(Vocab(words, w2v_counts), ids_path, offsets, raw_words=len(ids), tmpdir=tmp)
    model = Word2Vec(
        dim=cfg["w2v_dim"],
        window=cfg["w2v_window"],
        min_count=1,
        epochs=cfg["w2v_epochs"],
        threads=cfg["threads"],
        seed=cfg["seed"] + 1,
        progress=False,
    )
    model.build(corpus)
    model.train(corpus)
    corpus.close()
    assert model.syn0 is not None
    w2v_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    tree = Tree.from_embeddings(model.syn0, counts=counts, seed=cfg["seed"])
    tree_s = time.perf_counter() - t1
    info = {
        "word2vec_s": round(w2v_s, 2),
        "from_embeddings_s": round(tree_s, 2),
        "word2vec": f"CBOW dim {cfg['w2v_dim']}, window {cfg['w2v_window']}, {cfg['w2v_epochs']} epoch(s), "
        f"{cfg['threads']} threads, on the training split",
    }
    return tree, info


# ---------------------------------------------------------------------------- unigram initialization
# With ``unigram_init`` every head's output biases start where a model that ignores its input is
# best: at the training unigram distribution, so that the first updates go to context, not to
# learning word frequencies (which a tree shaped by frequency, such as Huffman's, would otherwise
# get for free while a learned tree's longer paths and the full softmax's flat start must learn
# them). The weights keep their usual small random initialization, so each head starts near,
# not at, the unigram model.
def log_unigram(counts: np.ndarray) -> np.ndarray:
    """``log p(v)`` of the training counts (a count of 0 is taken as 1: no ``-inf`` bias)."""
    c = np.maximum(np.asarray(counts, dtype=np.float64), 1.0)
    return np.log(c / c.sum())


def unigram_node_bias(tree: Any, counts: np.ndarray) -> np.ndarray:
    """The HS bias row per node parameter that makes the tree's distribution the unigram one when
    the weights are zero: a binary node's one row scores child 1 against child 0 (``p(child 1) =
    sigmoid(s)``), so its bias is the log-odds ``log m1 - log m0`` of the two subtrees' masses; a
    k-ary node's k rows are a softmax over its children, so their biases are ``log m_i``."""
    V, N = tree.num_classes, tree.num_nodes
    off, ch, arity, po = tree.child_offset, tree.children, tree.arity, tree.param_offset
    mass = np.zeros(V + N)
    mass[:V] = np.exp(log_unigram(counts))
    # Nodes are numbered breadth-first (a parent before its children): sum the masses bottom-up.
    for j in range(N - 1, -1, -1):
        mass[V + j] = mass[ch[off[j] : off[j + 1]]].sum()
    log_mass = np.log(mass)
    bias = np.zeros(tree.num_params)
    binary = np.flatnonzero(arity == 2)
    bias[po[binary]] = log_mass[ch[off[binary] + 1]] - log_mass[ch[off[binary]]]
    wide = np.flatnonzero(arity > 2)
    owner = np.repeat(wide, arity[wide])
    edge = np.concatenate([np.arange(off[j], off[j + 1]) for j in wide]) if wide.size else np.zeros(0, np.int64)
    bias[po[owner] + (edge - off[owner])] = log_mass[ch[edge]]
    return bias


def unigram_adaptive(head: Any, counts: np.ndarray) -> None:
    """``AdaptiveLogSoftmaxWithLoss`` has biases only in its head (``head_bias=True``) and none
    in its tails; for the comparison each tail's output layer gets one too (same weights), and
    the biases are ``log p`` of the head's words and of each tail's total mass, and ``log p(v |
    tail)`` inside each tail: the unigram distribution at zero weights."""
    import torch
    from torch import nn

    lp = log_unigram(counts)
    cut = [0, *head.cutoffs]
    tail_mass = [np.logaddexp.reduce(lp[cut[i] : cut[i + 1]]) for i in range(1, len(cut) - 1)]
    with torch.no_grad():
        head.head.bias.copy_(torch.from_numpy(np.concatenate([lp[: cut[1]], tail_mass])))
        for i, proj in enumerate(head.tail):
            old = proj[1]
            new = nn.Linear(old.in_features, old.out_features, bias=True)
            new.weight.copy_(old.weight)
            new.bias.copy_(torch.from_numpy(lp[cut[i + 1] : cut[i + 2]] - tail_mass[i]))
            proj[1] = new


def make_head(kind: str, data: dict[str, np.ndarray], cfg: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    import torch
    from torch import nn

    from hsoftmax import HierarchicalSoftmax, Tree

    counts = data["counts"]
    V, H = len(counts), cfg["hidden"]
    unigram = bool(cfg["unigram_init"])
    if kind == "full":
        linear = nn.Linear(H, V)
        if unigram:
            with torch.no_grad():
                linear.bias.copy_(torch.from_numpy(log_unigram(counts)))
        return linear, {}
    if kind == "adaptive":
        cutoffs = adaptive_cutoffs(counts)
        cover = [round(float(counts[:c].sum() / counts.sum()), 3) for c in cutoffs]
        asm = nn.AdaptiveLogSoftmaxWithLoss(H, V, cutoffs, div_value=4.0, head_bias=unigram)
        if unigram:
            unigram_adaptive(asm, counts)
        return asm, {"cutoffs": cutoffs, "coverage": cover}
    info: dict[str, Any] = {}
    if kind == "hs_huffman":
        tree = Tree.huffman(counts)
    elif kind == "hs_two_level":
        tree = Tree.two_level(V, counts=counts)
    elif kind == "hs_learned":
        tree, info = learned_tree(data, cfg)
    else:
        raise ValueError(f"unknown head {kind!r}")
    info.update(
        depth=tree.depth,
        expected_code_length=round(tree.expected_code_length(counts), 3),
        huffman_code_length=round(Tree.huffman(counts).expected_code_length(counts), 3),
        num_params=tree.num_params,
    )
    torch.manual_seed(cfg["seed"] + 2)
    hs = HierarchicalSoftmax(H, tree, sparse=True)
    if unigram:
        with torch.no_grad():
            hs.bias.copy_(torch.from_numpy(unigram_node_bias(tree, counts)))
    return hs, info


def learning_rate(cfg: dict[str, Any], kind: str) -> float:
    return float(cfg["head_lr"].get(kind, cfg["lr"]))


def worker(kind: str, data_path: str, cfg: dict[str, Any]) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F
    from torch import nn

    # Imported before the clock starts (loading the compiled kernels takes seconds; not training).
    import hsoftmax.layer
    import hsoftmax.word2vec  # noqa: F401
    from hsoftmax.optim import MultiOptimizer, sparse_parameters

    torch.set_num_threads(cfg["threads"])
    data = load_data(data_path)
    V = len(data["counts"])
    base_rss = peak_rss_bytes()

    t0 = time.perf_counter()
    head, head_info = make_head(kind, data, cfg)
    build_s = time.perf_counter() - t0  # charged to the head's training clock

    torch.manual_seed(cfg["seed"])
    embed = nn.Embedding(V, cfg["emb"], sparse=True)
    nn.init.uniform_(embed.weight, -0.1, 0.1)
    lstm = nn.LSTM(cfg["emb"], cfg["hidden"], batch_first=True)
    model = nn.ModuleDict({"embed": embed, "lstm": lstm, "head": head})

    def loss_of(h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if kind == "full":
            return F.cross_entropy(head(h), y)
        return head(h, y).loss

    def target_log_prob(h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Exact log p(y | h) per row; the full softmax in row blocks (no (N, V) tensor at once)."""
        if kind != "full":
            return head(h, y).output
        out = []
        for a in range(0, len(y), 1024):
            lp = F.log_softmax(head(h[a : a + 1024]), dim=-1)
            out.append(lp.gather(1, y[a : a + 1024, None]).squeeze(1))
        return torch.cat(out)

    sparse = [embed.weight, *sparse_parameters(model)]
    ids = {id(p) for p in sparse}
    dense = [p for p in model.parameters() if id(p) not in ids]
    lr = learning_rate(cfg, kind)
    opt = MultiOptimizer(torch.optim.Adam(dense, lr=lr), torch.optim.SparseAdam(sparse, lr=lr))

    B, T = cfg["batch"], cfg["bptt"]
    train = torch.from_numpy(data["train"].astype(np.int64))
    L = (len(train) - 1) // B
    X, Y = train[: B * L].view(B, L), train[1 : B * L + 1].view(B, L)
    windows = L // T
    if windows < 1:
        raise SystemExit(f"the training split is too small for batch {B} x bptt {T}")

    @torch.no_grad()
    def perplexity(stream: np.ndarray) -> float:
        """exp(mean NLL) over every token of ``stream[1:]``: ``eval_streams`` contiguous pieces
        run side by side, each carrying its LSTM state from its start; padding is left out."""
        x, y = torch.from_numpy(stream[:-1].astype(np.int64)), torch.from_numpy(stream[1:].astype(np.int64))
        pieces = np.array_split(np.arange(len(y)), min(cfg["eval_streams"], len(y)))
        n = max(len(p) for p in pieces)
        Xe = torch.zeros(len(pieces), n, dtype=torch.long)
        Ye = torch.zeros_like(Xe)
        M = torch.zeros(len(pieces), n, dtype=torch.bool)
        for i, p in enumerate(pieces):
            Xe[i, : len(p)], Ye[i, : len(p)], M[i, : len(p)] = x[p], y[p], True
        model.eval()
        state, nll = None, 0.0
        for a in range(0, n, 256):
            h, state = lstm(embed(Xe[:, a : a + 256]), state)
            m = M[:, a : a + 256]
            nll -= float(target_log_prob(h[m], Ye[:, a : a + 256][m]).double().sum())
        model.train()
        return math.exp(nll / len(y))

    def evaluate(curve_only: bool = False) -> dict[str, Any]:
        t = time.perf_counter()
        if curve_only:
            out = {"valid_subset_ppl": perplexity(data["valid"][: cfg["curve_valid_tokens"] + 1])}
        else:
            out = {"valid_ppl": perplexity(data["valid"]), "test_ppl": perplexity(data["test"])}
        out["eval_s"] = round(time.perf_counter() - t, 2)
        return out

    def step(k: int, state: Any) -> tuple[Any, float]:
        w = k % windows
        if w == 0:
            state = None  # a new pass over the data starts from a zero state
        xb, yb = X[:, w * T : (w + 1) * T], Y[:, w * T : (w + 1) * T]
        h, state = lstm(embed(xb), state)
        loss = loss_of(h.reshape(-1, h.shape[-1]), yb.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(lstm.parameters(), cfg["clip"])
        opt.step()
        return (state[0].detach(), state[1].detach()), float(loss)

    # Warm-up (untimed, no update): compiles or loads the numba kernels and torch's lazy paths.
    h, _ = lstm(embed(X[:, :T]))
    loss_of(h.reshape(-1, h.shape[-1]), Y[:, :T].reshape(-1)).backward()
    opt.zero_grad(set_to_none=True)

    tokens_per_step = B * T
    budget = cfg["budget"]
    points = sorted({int(n) for n in cfg["equal_tokens"]})
    next_curve = budget / cfg["curve_points"]
    clock = build_s
    steps, state, loss = 0, None, float("nan")
    curve = [{"train_s": round(clock, 3), "tokens": 0, **evaluate(curve_only=True)}]
    at_points: dict[int, dict[str, Any]] = {}
    at_budget: dict[str, Any] | None = None
    train_losses = []
    # Train until both the budget is spent (the equal-time row) and every equal-tokens point is
    # reached (a slow head trains on past its budget; its equal-time row stays at the budget).
    while at_budget is None or len(at_points) < len(points):
        t = time.perf_counter()
        state, loss = step(steps, state)
        clock += time.perf_counter() - t
        steps += 1
        train_losses.append(loss)
        seen = steps * tokens_per_step
        if not math.isfinite(loss):
            raise SystemExit(f"{kind}: the training loss is {loss} at step {steps}: lower the learning rate")
        reached = [n for n in points if n not in at_points and seen >= n]
        for n in reached:
            at_points[n] = {"point": n, "tokens": seen, "train_s": round(clock, 2), **evaluate()}
            print(f"{kind}: at the {n:,}-token point ({clock:.0f} s) {at_points[n]}", file=sys.stderr, flush=True)
        budget_now = at_budget is None and clock >= budget
        if budget_now:
            at_budget = {
                "tokens": seen,
                "train_s": round(clock, 2),
                "tokens_per_s": round(seen / max(clock - build_s, 1e-9), 1),
                "peak_rss_train_gb": round(peak_rss_bytes() / 2**30, 3),
                **evaluate(),
            }
        if clock >= next_curve or reached or budget_now:
            curve.append({"train_s": round(clock, 3), "tokens": seen, **evaluate(curve_only=True)})
            # Past the budget (a slow head on its way to an equal-tokens point) points are sparser.
            while next_curve <= clock:
                next_curve += budget / cfg["curve_points"] if next_curve < budget else budget
            print(f"{kind}: {curve[-1]}", file=sys.stderr, flush=True)
    assert at_budget is not None
    peak_train = peak_rss_bytes()
    seen = steps * tokens_per_step
    check = normalization_check(kind, head, lstm, embed, X[:2, :T], Y[:2, :T], target_log_prob)
    return {
        "head": kind,
        "label": LABELS[kind],
        "V": V,
        "build_s": round(build_s, 2),
        "head_info": head_info,
        "steps": steps,
        "tokens": seen,
        "train_s": round(clock, 2),
        # Speed over the whole run, tree building excluded (the budget row has its own, at the budget).
        "tokens_per_s": round(seen / max(clock - build_s, 1e-9), 1),
        "tokens_per_s_incl_build": round(seen / max(clock, 1e-9), 1),
        "final_train_loss": round(float(np.mean(train_losses[-20:])), 4) if train_losses else None,
        "unigram_init": bool(cfg["unigram_init"]),
        "budget": at_budget,
        "equal_tokens": [at_points[n] for n in points],
        "curve": curve,
        "normalization": check,
        "params": sum(p.numel() for p in model.parameters()),
        "base_rss_gb": round(base_rss / 2**30, 3),
        "peak_rss_train_gb": round(peak_train / 2**30, 3),
        "peak_rss_gb": round(peak_rss_bytes() / 2**30, 3),
        "torch_threads": torch.get_num_threads(),
        "lr": lr,
    }


def normalization_check(kind, head, lstm, embed, x, y, target_log_prob) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """On a few positions: max |sum_v p(v) - 1| over the full distribution, and max |the
    evaluation's log p(y) - log_prob(h)[y]|. What makes the perplexities comparable."""
    import torch

    with torch.no_grad():
        h, _ = lstm(embed(x))
        h, y = h.reshape(-1, h.shape[-1])[:16], y.reshape(-1)[:16]
        lp = torch.log_softmax(head(h), dim=-1) if kind == "full" else head.log_prob(h)
        sums = lp.double().exp().sum(-1)
        gap = (target_log_prob(h, y) - lp.gather(1, y[:, None]).squeeze(1)).abs().max()
    return {"max_abs_sum_minus_1": float((sums - 1).abs().max()), "max_abs_target_gap": float(gap)}


# ---------------------------------------------------------------------------- driver: tables, plot
def fmt_mb(gb: float) -> str:
    return f"{gb * 1024:,.0f}"


BUDGET_COLUMNS = (
    "head",
    "tokens seen",
    "train s",
    "tokens/s",
    "× full tokens/s",
    "valid ppl",
    "test ppl",
    "test ppl ÷ full",
    "peak RSS MB",
)
POINT_COLUMNS = ("head", "tokens seen", "train s to get there", "valid ppl", "test ppl", "test ppl ÷ full")


def at_point(r: dict[str, Any], n: int) -> dict[str, Any] | None:
    """A head's row at the ``n``-token equal-tokens point (None if it has none)."""
    return next((e for e in r.get("equal_tokens") or [] if e["point"] == n), None)


def table_lines(title: str, columns: tuple[str, ...], rows: list[list[str]]) -> list[str]:
    return [
        f"**{title}**",
        "",
        "| " + " | ".join(columns) + " |",
        "|---|" + "---:|" * (len(columns) - 1),
        *("| " + " | ".join(row) + " |" for row in rows),
        "",
    ]


def tables(results: list[dict[str, Any]], points: list[int]) -> str:
    full = next((r for r in results if r["head"] == "full" and "error" not in r), None)
    pad = ["" for _ in BUDGET_COLUMNS[2:]]
    rows = []
    for r in results:
        if "error" in r:
            rows.append([LABELS.get(r["head"], r["head"]), f"n/a: {r['error']}", *pad])
            continue
        e, speed = r["budget"], r["budget"]["tokens_per_s"]
        rows.append(
            [
                r["label"],
                f"{e['tokens']:,}",
                f"{e['train_s']:.0f}",
                f"{speed:,.0f}",
                f"{speed / full['budget']['tokens_per_s']:.1f}×" if full else "",
                f"{e['valid_ppl']:.1f}",
                f"{e['test_ppl']:.1f}",
                f"{e['test_ppl'] / full['budget']['test_ppl']:.3f}" if full else "",
                fmt_mb(r["peak_rss_gb"]),
            ]
        )
    lines = table_lines("Equal wall-clock budget", BUDGET_COLUMNS, rows)
    for n in points:
        ref = at_point(full, n) if full else None
        rows = []
        for r in results:
            e = None if "error" in r else at_point(r, n)
            if e is None:
                rows.append([LABELS.get(r["head"], r["head"]), "n/a", "", "", "", ""])
                continue
            rows.append(
                [
                    r["label"],
                    f"{e['tokens']:,}",
                    f"{e['train_s']:.0f}",
                    f"{e['valid_ppl']:.1f}",
                    f"{e['test_ppl']:.1f}",
                    f"{e['test_ppl'] / ref['test_ppl']:.3f}" if ref else "",
                ]
            )
        lines += table_lines(f"Equal tokens seen: {n:,} training tokens", POINT_COLUMNS, rows)
    return "\n".join(lines)


def targets(results: list[dict[str, Any]], points: list[int]) -> list[dict[str, Any]]:
    """The issue's four LM targets at the largest equal-tokens point, each with the measured
    numbers and met / missed; the learned-vs-Huffman comparison at the other points too."""
    r = {x["head"]: x for x in results if "error" not in x}
    out: list[dict[str, Any]] = []
    if not {"full", "hs_learned"} <= r.keys() or not points:
        return out
    full, learned, n = r["full"], r["hs_learned"], max(points)
    eq_f, eq_l = at_point(full, n), at_point(learned, n)
    if eq_f and eq_l:
        ratio = eq_l["test_ppl"] / eq_f["test_ppl"]
        out.append(
            {
                "target": f"HS learned test ppl within 10% of full softmax at equal tokens ({n:,})",
                "result": f"{eq_l['test_ppl']:.1f} vs {eq_f['test_ppl']:.1f} ({ratio:.3f}x)",
                "met": ratio <= 1.10,
            }
        )
    bl, bf = learned["budget"]["test_ppl"], full["budget"]["test_ppl"]
    out.append(
        {
            "target": "HS learned better than full softmax at equal wall-clock budget",
            "result": f"test ppl {bl:.1f} vs {bf:.1f}",
            "met": bl < bf,
        }
    )
    speed = learned["budget"]["tokens_per_s"] / full["budget"]["tokens_per_s"]
    out.append({"target": "HS learned >= 5x full softmax's tokens/s", "result": f"{speed:.1f}x", "met": speed >= 5})
    for m in sorted(points, reverse=True):
        e_l, e_h = at_point(learned, m), at_point(r["hs_huffman"], m) if "hs_huffman" in r else None
        if e_l and e_h:
            out.append(
                {
                    "target": ("" if m == n else "(also) ")
                    + f"learned tree beats Huffman's perplexity at equal tokens ({m:,})",
                    "result": f"test ppl {e_l['test_ppl']:.1f} vs {e_h['test_ppl']:.1f}",
                    "met": e_l["test_ppl"] < e_h["test_ppl"],
                }
            )
    return out


def plot(results: list[dict[str, Any]], path: str, title: str, valid_tokens: int, budget: float) -> None:
    """Two panels, the same curves: validation perplexity against training seconds (up to the
    budget: the equal-time view) and against training tokens (every point, the slow heads'
    training past the budget included: the equal-tokens view)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_time, by_tokens) = plt.subplots(1, 2, figsize=(12, 4.8), dpi=110, sharey=True)
    for r in results:
        if "error" in r:
            continue
        curve = r["curve"]
        label = f"{r['label']} ({r['budget']['tokens_per_s']:,.0f} tokens/s)"
        timed = [c for c in curve if c["train_s"] <= budget * 1.02 or c is curve[1]]
        by_time.plot(
            [c["train_s"] for c in timed], [c["valid_subset_ppl"] for c in timed], marker="o", ms=3, label=label
        )
        seen = [c for c in curve if c["tokens"] > 0]
        by_tokens.plot([c["tokens"] for c in seen], [c["valid_subset_ppl"] for c in seen], marker="o", ms=3)
    by_time.set_yscale("log")
    by_time.set_xlabel("training wall-clock seconds (tree building included, evaluation excluded)")
    by_time.set_ylabel(f"validation perplexity (exact; first {valid_tokens:,} valid tokens)")
    by_tokens.set_xscale("log")
    by_tokens.set_xlabel("training tokens seen")
    for ax in (by_time, by_tokens):
        ax.grid(True, which="both", alpha=0.3)
    by_time.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def settings_text(cfg: dict[str, Any], V: int) -> str:
    lrs = ", ".join(f"{k} {v:g}" for k, v in cfg["head_lr"].items())
    lrs = f"{cfg['lr']:g}" + (f" ({lrs})" if lrs else "")
    return (
        f"LSTM LM: embedding {cfg['emb']} (sparse), 1-layer LSTM {cfg['hidden']}, V={V:,}; batch {cfg['batch']} x "
        f"bptt {cfg['bptt']} ({cfg['batch'] * cfg['bptt']:,} tokens/step); Adam + SparseAdam, lr {lrs}; "
        f"LSTM grad-norm clip {cfg['clip']:g}; output biases "
        f"{'at the unigram distribution' if cfg['unigram_init'] else 'zero'} at init; {cfg['threads']} torch "
        f"threads; budget {cfg['budget']:g} s/head; equal-tokens points "
        + ", ".join(f"{n:,}" for n in cfg["equal_tokens"])
    )


def parse_head_lr(items: list[str]) -> dict[str, float]:
    out = {}
    for item in items:
        head, _, value = item.partition("=")
        try:
            lr = float(value)
        except ValueError:
            lr = float("nan")
        if head not in HEADS or not lr > 0:
            raise SystemExit(f"--head-lr takes HEAD=LR with HEAD one of {', '.join(HEADS)} and LR > 0, got {item!r}")
        out[head] = lr
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        kind, data_path, cfg_json = argv[1:4]
        result = worker(kind, data_path, json.loads(cfg_json))
        print(json.dumps(result))  # the last line: run_json_child's result
        return 0
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    p.add_argument("--quick", action="store_true", help="smoke run: embedded corpus (150k tokens), tiny model")
    p.add_argument("--corpus", help="corpus file, .txt or .xz (default: build benchmarks/results/corpus_en.txt)")
    p.add_argument("--max-tokens", type=int, help="read only the corpus's first N tokens")
    p.add_argument("--heads", nargs="+", choices=HEADS, default=list(HEADS))
    p.add_argument(
        "--equal-tokens",
        type=int,
        nargs="+",
        metavar="N",
        help="equal-tokens points: every head is scored when it has seen N training tokens, a slow head training "
        f"on past its budget to get there; the largest is the targets' (default {FULL['equal_tokens']})",
    )
    p.add_argument(
        "--unigram-init",
        action=argparse.BooleanOptionalAction,
        help="start every head's output biases at the training unigram distribution (default on)",
    )
    p.add_argument("--json", default=os.path.join(RESULTS, "lm.json"), help="result file (.md, .png beside it)")
    p.add_argument("--timeout", type=float, help="seconds per head process (default: 5x budget + 1 h)")
    for key in TUNABLE:
        p.add_argument(f"--{key.replace('_', '-')}", type=type(FULL[key]), help=f"default {FULL[key]}")
    p.add_argument(
        "--head-lr",
        nargs="*",
        metavar="HEAD=LR",
        help=f"per-head learning rates over --lr (default {FULL['head_lr']}; none: the same lr for every head)",
    )
    args = p.parse_args(argv)
    cfg = dict(QUICK if args.quick else FULL)
    for key in [*TUNABLE, "max_tokens", "equal_tokens", "unigram_init"]:
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    if args.head_lr is not None:
        cfg["head_lr"] = parse_head_lr(args.head_lr)
    if cfg["budget"] <= 0 or cfg["lr"] <= 0 or cfg["batch"] < 1 or cfg["bptt"] < 1 or cfg["curve_points"] < 1:
        raise SystemExit("--budget and --lr must be > 0; --batch, --bptt and --curve-points >= 1")
    if not cfg["equal_tokens"] or min(cfg["equal_tokens"]) < 1:
        raise SystemExit(f"--equal-tokens takes token counts >= 1, got {cfg['equal_tokens']}")
    points = sorted(set(cfg["equal_tokens"]))
    cfg["equal_tokens"] = points
    run_t0 = time.perf_counter()
    out_dir = os.path.dirname(os.path.abspath(args.json))
    os.makedirs(out_dir, exist_ok=True)
    corpus = ensure_corpus(args.corpus, args.quick)
    data_path = prepare_data(corpus, cfg["min_count"], cfg["max_tokens"], out_dir)
    data = load_data(data_path)
    V = len(data["counts"])
    sizes = {k: int(len(data[k]) - 1) for k in ("train", "valid", "test")}
    machine = machine_info(torch_threads=cfg["threads"])
    print(f"corpus {corpus}: {sizes}, V={V:,}; {machine_summary(machine)}; load {machine['loadavg']}", flush=True)
    print(settings_text(cfg, V), flush=True)
    del data

    heads = [h for h in HEADS if h in args.heads]
    timeout = args.timeout or 5 * cfg["budget"] + 3600
    results = []
    for kind in heads:
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", kind, data_path, json.dumps(cfg)]
        t = time.perf_counter()
        # The smoke run keeps every head in this process: five fresh interpreters importing torch
        # and numba cost more than its few steps (its peak RSS is then the process's so far).
        r = worker(kind, data_path, json.loads(json.dumps(cfg))) if args.quick else run_json_child(cmd, timeout)
        r.setdefault("head", kind)
        r["wall_s"] = round(time.perf_counter() - t, 1)
        results.append(r)
        if "error" in r:
            print(f"{kind}: ERROR {r['error']}", flush=True)
            continue
        b = r["budget"]
        print(
            f"{LABELS[kind]}: {b['tokens_per_s']:,.0f} tokens/s, {b['tokens']:,} tokens in {b['train_s']:.0f} s, "
            f"valid {b['valid_ppl']:.1f}, test {b['test_ppl']:.1f}, peak {fmt_mb(r['peak_rss_gb'])} MB",
            flush=True,
        )
    machine["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    md = tables(results, points)
    goals = targets(results, points)
    goal_lines = [f"- {g['target']}: {g['result']} — {'met' if g['met'] else 'MISSED'}" for g in goals]
    header = (
        f"Measured {machine['date']} on {machine_summary(machine)}; load average {machine['loadavg']} before, "
        f"{machine['loadavg_after']} after.\n\n{settings_text(cfg, V)}. Tokens: {sizes}; "
        f"wall clock of the whole run {(time.perf_counter() - run_t0) / 60:.1f} min."
    )
    text = header + "\n\n" + md + "\n" + "\n".join(goal_lines) + "\n"
    print("\n" + text)
    write_json(
        args.json,
        {
            "date": machine["date"],
            "machine": machine,
            "corpus": corpus,
            "split": "line i: test if crc32(str(i)) % 400 == 0, valid if 1, else train",
            "tokens": sizes,
            "V": V,
            "settings": cfg,
            "equal_tokens": points,
            "run_wall_s": round(time.perf_counter() - run_t0, 1),
            "argv": argv,
            "results": results,
            "targets": goals,
        },
    )
    base = os.path.splitext(args.json)[0]
    write_text(base + ".md", text)
    try:
        plot(
            results,
            base + ".png",
            f"word-level LSTM LM, V={V:,}, {cfg['budget']:g} s per head; {machine['date']}",
            min(cfg["curve_valid_tokens"], sizes["valid"]),
            cfg["budget"],
        )
        print(f"wrote {args.json}, {base}.md, {base}.png")
    except ImportError:
        print(f"wrote {args.json}, {base}.md (install matplotlib, in the bench extra, for the plot)")
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())

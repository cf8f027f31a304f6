"""HS vs full softmax as the output layer of the same model, on two real tasks.

1. sklearn's bundled handwritten digits (10 classes): a small MLP.
2. Next-word prediction on the embedded public-domain corpus (thousands of classes): a
   two-word-context MLP language model.

For each task and head it prints held-out accuracy (and perplexity for the LM) and training
examples/s, all measured in this run. Run: ``python examples/classifiers.py [--quick]``.
"""

from __future__ import annotations

import argparse
import lzma
import math
import time
from collections import Counter

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hsoftmax import HierarchicalSoftmax, Tree
from hsoftmax.word2vec import embedded_corpus_path


class FullSoftmax(nn.Module):
    """The baseline head, with the same interface as the HS head."""

    def __init__(self, d: int, num_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(d, num_classes)

    def forward(self, h, y):
        return None, F.cross_entropy(self.linear(h), y)

    def log_prob(self, h):
        return F.log_softmax(self.linear(h), dim=-1)

    def predict(self, h):
        return self.linear(h).argmax(-1)


def train(body: nn.Module, head: nn.Module, x, y, epochs: int, batch: int, lr: float) -> float:
    """Adam on body+head; returns training examples/s."""
    opt = torch.optim.Adam([*body.parameters(), *head.parameters()], lr=lr)
    g = torch.Generator().manual_seed(0)
    seen, start = 0, time.perf_counter()
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=g)
        for i in range(0, len(y), batch):
            idx = perm[i : i + batch]
            opt.zero_grad(set_to_none=True)
            head(body(x[idx]), y[idx])[1].backward()
            opt.step()
            seen += len(idx)
    return seen / (time.perf_counter() - start)


@torch.no_grad()
def evaluate(body, head, x, y) -> tuple[float, float]:
    """(accuracy, perplexity) on held-out data; both heads report exact normalized log-probs."""
    h = body(x)
    acc = (head.predict(h) == y).float().mean().item()
    if isinstance(head, HierarchicalSoftmax):
        nll = -head(h, y).output.mean().item()  # O(depth) per example, no (B, V) tensor
    else:
        nll = F.cross_entropy(head.linear(h), y).item()
    return acc, math.exp(nll)


def digits_task(quick: bool) -> None:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data / 16.0, dtype=torch.float32)
    y = torch.tensor(data.target)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    tr, te = perm[:1400], perm[1400:]
    print(f"\n== digits: {len(tr)} train / {len(te)} test images, 64 pixels, 10 classes ==")
    rows = []
    for name in ("full softmax", "HS (balanced tree)"):
        torch.manual_seed(0)
        body = nn.Sequential(nn.Linear(64, 128), nn.ReLU())
        head = FullSoftmax(128, 10) if name == "full softmax" else HierarchicalSoftmax(128, Tree.balanced(10))
        speed = train(body, head, x[tr], y[tr], epochs=10 if quick else 30, batch=64, lr=3e-3)
        acc, _ = evaluate(body, head, x[te], y[te])
        rows.append((name, acc, speed))
    _print_rows(rows, perplexity=False)


def load_corpus_tokens(max_tokens: int) -> list[str]:
    """Tokens of the package's embedded corpus (one paragraph per line, lowercased, tokenized),
    with an end-of-line token so the model sees sentence boundaries."""
    tokens: list[str] = []
    with lzma.open(embedded_corpus_path(), "rt", encoding="utf-8") as f:
        for line in f:
            tokens.extend(line.split())
            tokens.append("</s>")
            if len(tokens) >= max_tokens:
                break
    return tokens[:max_tokens]


def language_model_task(quick: bool) -> None:
    tokens = load_corpus_tokens(250_000 if quick else 1_500_000)
    counts = Counter(tokens)
    vocab = [w for w, c in counts.most_common() if c >= 3]
    index = {w: i for i, w in enumerate(vocab)}
    unk = len(vocab)
    ids = torch.tensor([index.get(t, unk) for t in tokens])
    V = unk + 1
    freq = np.bincount(ids.numpy(), minlength=V).astype(float)
    ctx = torch.stack([ids[:-2], ids[1:-1]], dim=1)
    tgt = ids[2:]
    n_test = 20_000
    xtr, ytr, xte, yte = ctx[:-n_test], tgt[:-n_test], ctx[-n_test:], tgt[-n_test:]
    print(
        f"\n== next-word prediction: {len(ytr):,} train / {n_test:,} test positions, "
        f"{V:,} classes (words seen >= 3 times + <unk>) =="
    )
    d = 128
    rows = []
    heads = {
        "full softmax": lambda: FullSoftmax(d, V),
        "HS (Huffman tree)": lambda: HierarchicalSoftmax(d, Tree.huffman(freq + 1)),
        "HS (two-level, freq. binned)": lambda: HierarchicalSoftmax(d, Tree.two_level(V, counts=freq + 1)),
    }
    for name, make_head in heads.items():
        torch.manual_seed(0)
        body = nn.Sequential(nn.Embedding(V, 64), nn.Flatten(), nn.Linear(128, d), nn.Tanh())
        head = make_head()
        speed = train(body, head, xtr, ytr, epochs=1, batch=256, lr=2e-3)
        acc, ppl = evaluate(body, head, xte, yte)
        rows.append((name, acc, speed, ppl))
    _print_rows(rows, perplexity=True)


def _print_rows(rows, perplexity: bool) -> None:
    base = rows[0][2]
    head = (
        f"{'head':32s} {'accuracy':>9s} "
        + (f"{'perplexity':>11s} " if perplexity else "")
        + f"{'train ex/s':>11s} {'vs full':>8s}"
    )
    print(head)
    for r in rows:
        line = (
            f"{r[0]:32s} {r[1]:9.3f} " + (f"{r[3]:11.1f} " if perplexity else "") + f"{r[2]:11,.0f} {r[2] / base:7.2f}x"
        )
        print(line)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller runs (about 30 s)")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    digits_task(args.quick)
    language_model_task(args.quick)


if __name__ == "__main__":
    main()

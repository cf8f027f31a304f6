"""The benchmarks run: their shared helpers (benchmarks/common.py) do what they say, and each
benchmark's ``--quick`` smoke run, shrunk further by flags, writes the rows it should.

Everything goes to pytest's temporary directory, never to benchmarks/results. The smoke runs
are subprocesses, as a user runs them (the scripts import ``common`` from their own folder).
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import lzma
import subprocess
import sys
import time
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))
import common  # noqa: E402  (benchmarks/ is not a package: its folder goes on the path first)

LAYER_METHODS = ("full", "adaptive", "huffman", "balanced", "two_level", "huffman_fused", "two_level_fused")


def run_script(name: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    r = subprocess.run(
        [sys.executable, str(BENCH / name), *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return r


@pytest.fixture(autouse=True)
def results_folder_untouched():
    """No test here writes to the repository's benchmarks/results."""
    folder = BENCH / "results"

    def listing():
        return sorted((p.name, p.stat().st_mtime_ns) for p in folder.iterdir()) if folder.is_dir() else []

    before = listing()
    yield
    assert listing() == before


# ---------------------------------------------------------------------------- common.py
PEAK_CHILD = f"""
import json, sys
sys.path.insert(0, {str(BENCH)!r})
import numpy as np
from common import peak_rss_bytes
before = peak_rss_bytes()
block = np.ones(64 * 2**20 // 8)  # 64 MiB, written, so resident
after = peak_rss_bytes()
del block
print(json.dumps({{"before": before, "after": after, "later": peak_rss_bytes()}}))
"""


def test_peak_rss_is_the_high_water_mark_of_a_fresh_process():
    # In a fresh child: this test process's own peak may already be above anything it allocates.
    r = common.run_json_child([sys.executable, "-c", PEAK_CHILD], timeout=60)
    assert "error" not in r, r
    assert r["before"] > 10 * 2**20  # an interpreter with numpy is well over 10 MiB
    assert r["after"] - r["before"] >= 48 * 2**20  # the block shows up
    # A peak, not the current size: after the block is freed it still counts (to within the
    # kernel's batched RSS counters, which lag by some pages).
    assert r["later"] - r["before"] >= 48 * 2**20


def test_run_json_child_returns_the_last_json_line_or_the_error():
    ok = common.run_json_child([sys.executable, "-c", "print('chatter'); print('{\"a\": 1}')"], timeout=60)
    assert ok == {"a": 1}
    failed = common.run_json_child([sys.executable, "-c", "import sys; sys.exit('no luck here')"], timeout=60)
    assert failed == {"error": "no luck here"}
    silent = common.run_json_child([sys.executable, "-c", "print('not json')"], timeout=60)
    assert "no JSON" in silent["error"]
    slow = common.run_json_child([sys.executable, "-c", "import time; time.sleep(30)"], timeout=0.5)
    assert slow["error"].startswith("timeout")


def test_timeit_is_a_median_within_budget_and_cap():
    calls: list[int] = []

    def fn(i):
        calls.append(i)
        time.sleep(0.002 if i != 2 else 0.05)  # one slow outlier

    sec, n = common.timeit(fn, budget_s=10.0, max_iters=7, warmup=2)
    assert n == 7 and calls == list(range(9))  # 2 warm-up calls, then 7 timed, indices counting on
    assert 0.001 < sec < 0.02  # the outlier does not move the median
    sec, n = common.timeit(lambda i: time.sleep(0.01), budget_s=0.0, warmup=0)
    assert n == 1 and sec >= 0.009  # a budget already spent still times one call


def test_atomic_writes_replace_whole_or_leave_the_old_file(tmp_path):
    path = tmp_path / "sub" / "r.json"
    common.write_json(path, {"x": [1, 2]})
    assert json.loads(path.read_text()) == {"x": [1, 2]}

    def write_half_then_fail():
        with common.atomic_path(path) as tmp:
            Path(tmp).write_text("half")
            raise RuntimeError("midway")

    with pytest.raises(RuntimeError, match="midway"):
        write_half_then_fail()
    assert json.loads(path.read_text()) == {"x": [1, 2]}
    assert sorted(p.name for p in path.parent.iterdir()) == ["r.json"]  # no temporary left behind


def test_machine_info_names_the_machine_and_versions():
    info = common.machine_info(device="cpu")
    assert info["cores"] >= 1 and 1 <= info["cores_usable"] <= info["cores"]
    assert {"numpy", "hsoftmax"} <= set(info["versions"]) and info["device"] == "cpu"
    assert info["cpu"] and info["date"].endswith("+00:00")
    json.dumps(info)  # JSON-ready
    line = common.machine_summary(info)
    assert f"{info['cores']} CPU cores" in line and f"numpy {info['versions']['numpy']}" in line


# ---------------------------------------------------------------------------- the benchmarks
def test_layers_quick_smoke_run(tmp_path):
    out = tmp_path / "layers.json"
    run_script(
        "layers.py",
        "--quick",
        "--V",
        "2000",
        "--d",
        "16",
        "--batch",
        "64",
        "--budget",
        "0.05",
        "--no-memory",
        "--out",
        str(out),
    )
    res = json.loads(out.read_text())
    assert res["machine"]["device"] == "cpu" and res["machine"]["versions"]["torch"]
    train = {r["method"]: r for r in res["train"]}
    assert sorted(train) == sorted(LAYER_METHODS)
    for r in train.values():
        assert (r["V"], r["d"], r["batch"]) == (2000, 16, 64)  # the flags override --quick's grid
        assert r["examples_per_s"] > 0 and r["iters"] >= 1
    assert train["huffman"]["x_full"] > 0 and train["two_level_fused"]["x_adaptive"] > 0
    infer = {r["method"]: r for r in res["inference"]}
    assert sorted(infer) == sorted(m for m in LAYER_METHODS if not m.endswith("_fused"))
    for r in infer.values():
        assert all(r[op + "_s"] > 0 for op in ("target_log_prob", "log_prob", "predict", "top5"))
    assert "| 2,000 | 16 | 64 |" in out.with_suffix(".md").read_text()


def test_layers_memory_child_reports_peak_rss():
    cmd = [sys.executable, str(BENCH / "layers.py"), "--child-memory", "huffman", "2000", "16", "64"]
    mem = common.run_json_child(cmd, timeout=300)
    assert "error" not in mem, mem
    assert 0.05 < mem["base_rss_gb"] <= mem["peak_rss_gb"] < 4  # torch imported; a tiny layer


def tiny_corpus(path: Path, tokens: int) -> Path:
    """The first ``tokens`` words of the package's embedded corpus (real English, so some of the
    evaluation files' words are in the vocabulary)."""
    from hsoftmax.word2vec import embedded_corpus_path

    n = 0
    with lzma.open(embedded_corpus_path(), "rt", encoding="utf-8") as src, open(path, "w") as dst:
        for line in src:
            dst.write(line)
            n += len(line.split())
            if n >= tokens:
                break
    return path


def test_word2vec_quick_smoke_run(tmp_path):
    pytest.importorskip("gensim")  # the evaluation files come with gensim (in the dev extra)
    corpus = tiny_corpus(tmp_path / "tiny.txt", 20_000)
    out = tmp_path / "w2v.json"
    systems = ["hsoftmax", "fasttext"]  # fastText is not in the dev extra: its row then says why
    run_script(
        "word2vec_vs_peers.py",
        "--quick",
        "--corpus",
        str(corpus),
        "--systems",
        *systems,
        "--json",
        str(out),
        "--no-probe",
    )
    res = json.loads(out.read_text())
    assert res["tokens"] == sum(len(line.split()) for line in corpus.read_text().splitlines())
    rows = {r["system"]: r for r in res["results"]}
    assert sorted(rows) == sorted(systems)
    ours = rows["hsoftmax"]
    assert "error" not in ours, ours
    assert (ours["mode"], ours["threads"]) == ("cbow", 1)  # --quick's grid
    assert ours["train_seconds"] > 0 and ours["vocab"] > 100 and ours["peak_mb"] > 50
    assert ours["analogy_total"] > 0 and 0 <= ours["analogy"] <= 1
    if importlib.util.find_spec("fasttext") is None:
        assert "fasttext" in rows["fasttext"]["error"]
    elif "error" in rows["fasttext"]:
        # fastText 0.9.3's HS diverges on some tiny corpora ("Encountered NaN"); the row must then
        # carry fastText's own message, and the run still completes for the other systems.
        assert "NaN" in rows["fasttext"]["error"], rows["fasttext"]
    assert "| cbow | 1 | hsoftmax |" in out.with_suffix(".md").read_text()


def test_word2vec_continue_memory_and_small_corpus_quick_run(tmp_path):
    """The issue-14 experiments at smoke size: continued training (ours and gensim's update path),
    whole-run peak memory in both output formats, seeds on the slice; every row is filled in."""
    pytest.importorskip("gensim")
    corpus = tiny_corpus(tmp_path / "tiny.txt", 20_000)
    out = tmp_path / "w2v.json"
    run_script(
        "word2vec_vs_peers.py",
        "--quick",
        "--corpus",
        str(corpus),
        "--systems",
        "hsoftmax",
        "gensim-file",
        "--experiments",
        "continue",
        "continue-b",
        "memory",
        "small",
        "--seeds",
        "1",
        "2",
        "--small-threads",
        "1",
        "--json",
        str(out),
        "--no-probe",
    )
    res = json.loads(out.read_text())
    assert res["results"] == [] and res["slice"]["tokens"] == res["tokens"] > 2 * res["slice"]["tokens_A"] > 0
    cont = {r["system"]: r for r in res["continue"]}
    ours = cont["hsoftmax"]
    assert ours["new_words"] > 0 and ours["code_length"] >= ours["rebuilt_code_length"] > 0
    for key in ("scratch", "continued"):
        assert 0 <= ours[key]["analogy"] <= 1 and ours[key]["analogy_total"] > 0
    peer = cont["gensim-file"]
    assert "scratch" in peer and ("error" in peer["continued"] or peer["old_codes_changed"] >= 0)
    for r in res["continue_b"]:  # held-out A log-likelihood after A, after the update, after B
        assert r["old_words"] > 0 and "error_update" not in r, r
        assert all(-30 < r[k] < 0 for k in ("after_a", "after_update", "after_b")), r
        assert 0 <= r["scores_b"]["analogy"] <= 1
    assert {r["system"] for r in res["continue_b"]} == {"hsoftmax", "gensim-file"}
    mem = {(r["system"], r["format"]): r for r in res["memory"]}
    systems = ("hsoftmax", "hsoftmax-cli", "gensim-file")
    assert sorted(mem) == sorted((s, f) for s in systems for f in ("text", "binary"))
    assert all(r["peak_mb"] > 50 and r["file_mb"] > 0 for r in mem.values())
    assert mem["hsoftmax", "text"]["file_mb"] > mem["hsoftmax", "binary"]["file_mb"]
    small = {r["system"]: r for r in res["small"]}
    assert [x["seed"] for x in small["hsoftmax"]["runs"]] == [1, 2] and len(small["gensim-file"]["runs"]) == 2
    md = out.with_suffix(".md").read_text()
    assert "A, then continued on A+B" in md and "± " in md and "| hsoftmax | binary |" in md
    assert "Continued training on B only" in md


def test_multilabel_quick_smoke_run(tmp_path):
    """benchmarks/multilabel.py --quick: generated data, every system (peers skipped with a note
    when not installed), the metrics in range and the comparison to napkinXC when it ran."""
    pytest.importorskip("sklearn")
    out = tmp_path / "multilabel.json"
    # --shortcuts: ours_linear's held-out selection also tries the k-means tree with the m most
    # frequent labels under the root, for each m with 8 m <= labels (4 here; 5 is skipped).
    r = run_script(
        "multilabel.py",
        "--quick",
        "--epochs",
        "2",
        "--fasttext-epochs",
        "2",
        "--shortcuts",
        "4",
        "5",
        "--max-leaves",  # below the 36 labels: the deep and leaf-cluster trees both compete
        "8",
        "--out",
        str(out),
    )
    res = json.loads(out.read_text())
    (ds,) = res["datasets"]
    assert ds["dataset"] == "synthetic" and ds["labels"] == 36 and ds["test"] == 300
    rows = {row["system"]: row for row in ds["rows"]}
    assert {"torch_ova", "ours_learned", "ours_facets", "ours_linear", "ours_linear_facets"} <= set(rows)
    for row in rows.values():
        # hits only accumulate down the ranking (P@k itself need not fall: a near-chance model can
        # hit more at ranks 4-5 than at 1-3)
        assert 0 <= row["P@1"] <= 3 * row["P@3"] + 1e-9 <= 5 * row["P@5"] + 2e-9 and row["P@1"] <= 1
        assert 0 <= row["P@5"] <= 1 and 0 <= row["nDCG@5"] <= 1
        assert row["train_s"] > 0 and row["predict_s"] > 0
    assert rows["ours_facets"]["P@1"] > 0.3  # far above chance (1/36): the tree model learns
    assert rows["ours_linear"]["P@1"] > 0.5  # the linear PLT over the TF-IDF learns too
    tried = set(rows["ours_linear"]["validation_P@1"])
    assert rows["ours_linear"]["epochs"] in (5, 10) and len(tried) == 4, tried
    assert "k-means arity 4, 4 shortcuts, 5 epochs" in tried  # 8 * 4 <= 36 labels
    assert not any("5 shortcuts" in t for t in tried)  # 8 * 5 > 36: skipped by the rule
    for peer, module in (("napkinxc_plt", "napkinxc"), ("fasttext_hs", "fasttext")):
        if importlib.util.find_spec(module) is None:
            assert any(s.startswith(peer) for s in ds["skipped"]) and "not installed" in r.stdout
        else:
            assert peer in rows or any(s.startswith(peer) for s in ds["skipped"])
    if "napkinxc_plt" in rows:
        assert "vs_napkinxc" in rows["ours_learned"]


def test_scale_quick_smoke_run(tmp_path):
    # Unsharded and sharded (2 gloo processes) at a tiny V; the sharded ranks' bytes per step
    # are what the layer's docstring says travels: B floats forward, B * d backward.
    out = tmp_path / "scale.json"
    B, d = 64, 8
    run_script("scale.py", "--quick", "--V", "3000", "--dim", str(d), "--batch", str(B), "--out", str(out))
    res = json.loads(out.read_text())
    rows = {r["mode"]: r for r in res["rows"]}
    assert sorted(rows) == ["sharded", "unsharded"]
    for row in rows.values():
        assert "error" not in row, row
        assert row["V"] == 3000 and row["examples_per_s"] > 0 and row["steps_timed"] >= 1
    sharded = rows["sharded"]
    assert sharded["ranks"] == 2 and sharded["bytes_per_step"] == [4 * (B + B * d)] * 2
    assert sharded["megatron_bytes_per_step"] == 4 * (3 * B + B * d)
    # Each rank holds its subtrees' rows and the replicated top's: together the whole table
    # plus one more copy of the top, neither rank all of it.
    top = sharded["replicated_rows"] * (d + 1) * 4
    assert sum(sharded["table_bytes"]) == rows["unsharded"]["table_bytes"] + top
    assert max(sharded["table_bytes"]) < rows["unsharded"]["table_bytes"]
    assert "| 3,000 | sharded |" in out.with_suffix(".md").read_text()


# ---------------------------------------------------------------------------- lm.py
LM_HEADS = ("full", "adaptive", "hs_huffman", "hs_two_level", "hs_learned")


def test_lm_data_split_vocabulary_and_cutoffs(tmp_path):
    import numpy as np

    import lm

    corpus = tiny_corpus(tmp_path / "tiny.txt", 30_000)
    lines = [line.split() for line in corpus.read_text().splitlines()]
    data = lm.load_data(lm.prepare_data(str(corpus), 3, None, str(tmp_path)))
    words, counts = data["words"].tolist(), data["counts"]
    assert (np.diff(counts) <= 0).all()  # by decreasing count
    eos, unk = words.index(lm.EOS), words.index(lm.UNK)
    # Every line lands in exactly one split, in order, each paragraph closed by </s>.
    by_split = {"train": [], "valid": [], "test": []}
    for i, ws in enumerate(lines):
        if ws:
            by_split[lm.split_of(i)].append(ws)
    assert all(by_split.values())  # 30k tokens are enough for a few held-out lines
    for name, docs in by_split.items():
        stream = data[name]
        assert stream[0] == eos and (stream == eos).sum() == len(docs) + 1
        assert len(stream) == 1 + sum(len(ws) + 1 for ws in docs)
    # Training counts >= min_count are kept; everything else is <unk>.
    train_words = [w for ws in by_split["train"] for w in ws]
    assert counts[words.index("the")] == train_words.count("the")
    rare = next(w for w in train_words if train_words.count(w) < 3)
    assert rare not in words and counts[unk] > 0
    assert counts[eos] == len(by_split["train"])
    # Adaptive cutoffs: increasing, inside (0, V), at the 80% / 95% coverage ranks.
    cut = lm.adaptive_cutoffs(counts)
    assert 0 < cut[0] < cut[-1] < len(words)
    zipf = np.sort(np.random.default_rng(0).zipf(1.3, 200_000))[::-1]
    c = lm.adaptive_cutoffs(zipf)
    assert len(c) == 2 and zipf[: c[0]].sum() / zipf.sum() >= 0.78 and zipf[: c[1]].sum() / zipf.sum() >= 0.93


def test_lm_quick_smoke_run(tmp_path):
    out = tmp_path / "lm.json"
    run_script(
        "lm.py", "--quick", "--json", str(out), "--budget", "0.6", "--curve-points", "2", "--equal-tokens", "768"
    )
    res = json.loads(out.read_text())
    rows = {r["head"]: r for r in res["results"]}
    assert sorted(rows) == sorted(LM_HEADS)
    assert res["settings"]["budget"] == 0.6 and res["machine"]["versions"]["torch"]
    (point,) = res["equal_tokens"]
    for r in rows.values():
        assert "error" not in r, r
        assert r["tokens"] > 0 and r["tokens_per_s"] > 0 and r["peak_rss_gb"] >= r["base_rss_gb"] > 0.05
        # Equal time: the budget row is taken when the budget is spent, whatever came after.
        assert r["budget"]["train_s"] >= 0.6 and r["budget"]["tokens"] <= r["tokens"]
        # Equal tokens: every head, the full softmax included, is scored at the first step that
        # reaches the point, trained past its budget if it was not there yet.
        (eq,) = r["equal_tokens"]
        assert eq["point"] == point and point <= eq["tokens"] < point + 16 * 16 and eq["tokens"] <= r["tokens"]
        for row in (r["budget"], eq):
            assert 1 < row["valid_ppl"] < 1e6 and 1 < row["test_ppl"] < 1e6
        # Exact, normalized probabilities: what makes the perplexities comparable.
        assert r["normalization"]["max_abs_sum_minus_1"] < 1e-4
        assert r["normalization"]["max_abs_target_gap"] < 1e-4
        times = [c["train_s"] for c in r["curve"]]
        assert len(times) >= 2 and times == sorted(times) and r["curve"][0]["tokens"] == 0
    learned = rows["hs_learned"]["head_info"]
    assert learned["word2vec_s"] > 0 and rows["hs_learned"]["build_s"] >= learned["word2vec_s"]
    assert rows["hs_learned"]["curve"][0]["train_s"] == pytest.approx(rows["hs_learned"]["build_s"], abs=0.01)
    cut = rows["adaptive"]["head_info"]["cutoffs"]
    assert cut == sorted(cut) and cut[0] > 0 and cut[-1] < res["V"]
    assert {t["target"].split()[0] for t in res["targets"]} >= {"HS"}  # the targets are scored
    md = out.with_suffix(".md").read_text()
    assert "**Equal wall-clock budget**" in md and f"**Equal tokens seen: {point:,} training" in md
    assert "| HS learned tree |" in md
    assert out.with_suffix(".png").is_file() == (importlib.util.find_spec("matplotlib") is not None)


# ---------------------------------------------------------------------------- taxonomy.py
def test_taxonomy_task_and_wordnet_tree_from_the_committed_extract():
    import taxonomy
    from hsoftmax import Tree, metrics

    synsets = taxonomy.read_wordnet(taxonomy.EXTRACT)
    task = taxonomy.build_task(synsets, min_examples=2)
    assert len(synsets) == 539 and task.info["labels"] == len(task.labels) > 50
    assert len(task.test_y) == task.info["test"] > 0 and set(task.test_y) <= set(task.train_y)
    tree = Tree.from_paths(task.paths, labels=task.labels)
    names = tree.node_names
    assert names[tree.children[tree.child_offset[0]] - tree.num_classes] == "entity.00001740"
    dog = task.labels.index("02084071")  # dog.n.01: a label, and an ancestor of other labels
    hound = task.labels.index("02087551")  # hound.n.01: a label below dog, itself above other labels
    assert names[tree.parent[dog]] == "dog.02084071"  # a label that is an inner node hangs from its own node,
    assert names[tree.parent[hound]] == "hound.02087551"
    chain = [names[n] for n in tree.path(hound)[0]]  # the internal nodes from the root down to hound's
    hypernym = synsets[synsets["02087551"].hypernym]
    assert chain[-2:] == [taxonomy.synset_name(hypernym), "hound.02087551"] and "dog.02084071" in chain
    below_dog = len(chain) - 1 - chain.index("dog.02084071")
    assert metrics.tree_distance(tree, [dog], [hound]).tolist() == [below_dog + 2]  # up to dog's node, down
    plain = next(i for i, p in enumerate(task.paths) if synset_offset(p[-1]) != task.labels[i])
    assert (
        synset_offset(names[tree.parent[plain]]) == synsets[task.labels[plain]].hypernym
    )  # a leaf label: under its hypernym


def test_taxonomy_split_files_are_what_each_system_process_reads(tmp_path):
    import numpy as np

    import taxonomy

    task = taxonomy.build_task(taxonomy.read_wordnet(taxonomy.EXTRACT), min_examples=2)
    trees, _ = taxonomy.make_trees(task)
    taxonomy.write_split(tmp_path, task, trees)
    back, back_trees = taxonomy.read_split(tmp_path)
    assert (
        back.labels == task.labels and back.train_tokens == task.train_tokens and back.test_tokens == task.test_tokens
    )
    assert np.array_equal(back.train_y, task.train_y) and np.array_equal(back.test_y, task.test_y)
    assert back_trees == trees and all(t.labels == tuple(task.labels) for t in trees.values())
    assert (tmp_path / "warmup.txt").read_text().splitlines() == (tmp_path / "train.txt").read_text().splitlines()[:500]


def synset_offset(node_name: str) -> str:
    return node_name.rpartition(".")[2]


def test_taxonomy_quick_smoke_run(tmp_path):
    out = tmp_path / "taxonomy.json"
    systems = ["fasttext-hs", "supervised-huffman", "supervised-wordnet", "torch-softmax", "torch-hs-wordnet"]
    run_script("taxonomy.py", "--quick", "--systems", *systems, "--out", str(out))
    res = json.loads(out.read_text())
    assert res["quick"] and res["machine"]["threads"] == 2 and res["settings"]["epochs"] == 2
    assert res["task"]["labels"] > 50 and res["task"]["test"] > 0
    assert set(res["trees"]) == {"huffman", "wordnet", "learned"}
    rows = {r["system"]: r for r in res["results"]}
    assert list(rows) == systems
    expect_error = {
        "fasttext-hs": "not installed" if importlib.util.find_spec("fasttext") is None else None,
        "supervised-huffman": None if importlib.util.find_spec("hsoftmax.supervised") else "not available",
    }
    expect_error["supervised-wordnet"] = expect_error["supervised-huffman"]
    depth = res["trees"]["wordnet"]["depth"]
    for name, r in rows.items():
        if expect_error.get(name):
            assert expect_error[name] in r["error"], r
            continue
        assert "error" not in r, r
        assert 0 <= r["p_at_5"] <= r["r_at_5"] <= 1 and 0 <= r["p_at_1"] <= 1 and r["train_s"] > 0
        acc = r["accuracy_at_depth"]
        assert len(acc) == depth and all(a >= b for a, b in itertools.pairwise(acc))  # never rises with depth
        assert acc[-1] == pytest.approx(r["p_at_1"])  # the last depth is the class itself
    md = out.with_suffix(".md").read_text()
    assert "| torch-hs-wordnet |" in md and "Quick run" in md


def test_lm_unigram_init_starts_every_head_at_the_unigram_distribution():
    """With the weights zeroed, each head's biases alone give exactly log p(v) of the counts:
    binary HS nodes (log-odds of the subtree masses), k-ary nodes, the full softmax and the
    adaptive softmax (head, tail masses and each tail's own distribution)."""
    import numpy as np
    import torch

    import lm
    from hsoftmax import HierarchicalSoftmax, Tree

    rng = np.random.default_rng(0)
    counts = np.sort(rng.zipf(1.3, 400).clip(1, 10**6))[::-1].astype(np.int64)
    counts[-1] = 0  # a class never seen: a finite bias, counted as 1
    V, H = len(counts), 32
    want = torch.from_numpy(lm.log_unigram(counts))
    assert torch.isfinite(want).all() and torch.allclose(want.exp().sum(), torch.tensor(1.0, dtype=torch.float64))
    h = torch.randn(6, H)
    trees = [
        Tree.huffman(counts),
        Tree.two_level(V, counts=counts),
        Tree.huffman(counts, arity=3),
        Tree.from_embeddings(rng.normal(size=(V, 4)), arity=3, counts=counts),
    ]
    for tree in trees:
        hs = HierarchicalSoftmax(H, tree)
        with torch.no_grad():
            hs.weight.zero_()
            hs.bias.copy_(torch.from_numpy(lm.unigram_node_bias(tree, counts)))
            assert (hs.log_prob(h).double() - want).abs().max() < 1e-5
    for kind in ("full", "adaptive", "hs_huffman"):
        head, _ = lm.make_head(kind, {"counts": counts}, dict(lm.FULL, hidden=H))
        with torch.no_grad():
            for name, p in head.named_parameters():
                if name.endswith("weight"):
                    p.zero_()
            got = torch.log_softmax(head(h), -1) if kind == "full" else head.log_prob(h)
            assert (got.double() - want).abs().max() < 1e-5, kind
    # Off: the heads as torch and hsoftmax build them (HS biases zero, no adaptive biases).
    off, _ = lm.make_head("hs_huffman", {"counts": counts}, dict(lm.FULL, hidden=H, unigram_init=False))
    assert (off.bias == 0).all()
    off, _ = lm.make_head("adaptive", {"counts": counts}, dict(lm.FULL, hidden=H, unigram_init=False))
    assert not [name for name, _ in off.named_parameters() if name.endswith("bias")]


def test_word2vec_small_corpus_gensim_rate_rows(tmp_path, monkeypatch):
    """The ``small`` experiment's 2-thread rows: ours with gensim corpus_file's W-worker rate runs
    through the position map (each part of the file restarts at its epoch's rate, reaching only a
    1/W share of the way down) and leaves the library's kernels untouched afterwards; gensim's
    iterable mode gives a scored row."""
    pytest.importorskip("gensim")
    import word2vec_vs_peers as w
    from hsoftmax.word2vec import kernels, train

    n, epochs = 1000, 3
    assert [w.gensim_file_rate(b, n * epochs, epochs, 1) for b in range(0, 3000, 7)] == list(range(0, 3000, 7))
    assert [w.gensim_file_rate(b, n * epochs, epochs, 2) for b in (0, 499, 500, 999, 1000, 1500, 2999)] == [
        0,
        499,
        0,
        499,
        1000,
        1000,
        2499,
    ]
    corpus = tiny_corpus(tmp_path / "tiny.txt", 40_000)  # 3 chunks of the trainer: both halves are met
    seen: list[tuple[int, int]] = []
    real_rate = w.gensim_file_rate

    def spy(before, total, epochs, workers):
        seen.append((before, real_rate(before, total, epochs, workers)))
        return seen[-1][1]

    monkeypatch.setattr(w, "gensim_file_rate", spy)
    model = w.hsoftmax_gensim_rate(2, str(corpus))
    assert train.kernels is kernels and model.epochs_done == w.SETTINGS["epochs"]
    assert any(mapped < before for before, mapped in seen)  # second-half chunks got an earlier rate
    r = subprocess.run(
        [sys.executable, str(BENCH / "word2vec_vs_peers.py"), "--worker-small", "gensim-iter", str(corpus), "2", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    row = json.loads(r.stdout.strip().splitlines()[-1])
    assert row["system"] == "gensim-iter" and row["threads"] == 2 and 0 <= row["runs"][0]["analogy"] <= 1


def test_multilabel_linear_candidates_follow_the_label_count():
    """ours_linear's held-out candidates: deep, leaf-cluster and shortcut trees where the labels
    outnumber a leaf cluster; only the flat leaf-cluster tree (napkinXC's) where they do not."""
    import argparse

    import multilabel

    args = argparse.Namespace(linear_arity=4, max_leaves=100, shortcuts=[16, 32])

    def names(num_labels: int) -> list[str]:
        split = multilabel.Split(None, None, [], [], [], [], num_labels)
        return list(multilabel.linear_candidates(split, args))

    assert names(45) == ["k-means arity 4, leaves <= 100"]  # WordNet: one flat node of 45
    assert names(100) == ["k-means arity 4, leaves <= 100"]
    assert names(200) == ["k-means arity 4", "k-means arity 4, leaves <= 100", "k-means arity 4, 16 shortcuts"]
    assert names(581) == [  # debtags
        "k-means arity 4",
        "k-means arity 4, leaves <= 100",
        "k-means arity 4, 16 shortcuts",
        "k-means arity 4, 32 shortcuts",
    ]


def test_multilabel_over_seeds_summary():
    """--seeds: ours minus napkinXC summarized over the splits (mean, standard error, splits ahead)."""
    import multilabel

    def split(seed: int, d1: float, d5: float) -> dict:
        vs = {"P@1_diff": d1, "P@5_diff": d5, "train_time_ratio": 1.0 + seed, "predict_time_ratio": 0.1}
        rows = [{"system": "napkinxc_plt"}, {"system": "ours_linear", "vs_napkinxc": vs}]
        return {"dataset": "debtags", "seed": seed, "rows": rows}

    (row,) = multilabel.over_seeds([split(0, 0.002, -0.001), split(1, -0.001, 0.001), split(2, 0.005, 0.003)])
    assert row["dataset"] == "debtags" and row["system"] == "ours_linear" and row["seeds"] == [0, 1, 2]
    assert row["P@1_diff"]["mean"] == pytest.approx(0.002) and row["P@1_diff"]["ahead"] == 2
    assert row["P@1_diff"]["behind"] == 1 and row["P@1_diff"]["se"] == pytest.approx(0.003 / 3**0.5, abs=1e-5)
    assert row["P@5_diff"]["mean"] == pytest.approx(0.001) and row["train_time_ratio"] == {"min": 1.0, "max": 3.0}


def test_multilabel_quick_run_over_two_seeds(tmp_path):
    """The --seeds loop end to end: one data set entry per seed, and the summary when napkinXC ran."""
    pytest.importorskip("sklearn")
    out = tmp_path / "multilabel.json"
    systems = ["napkinxc_plt", "ours_linear_facets"]
    r = run_script("multilabel.py", "--quick", "--systems", *systems, "--seeds", "0", "1", "--out", str(out))
    res = json.loads(out.read_text())
    assert [d["seed"] for d in res["datasets"]] == [0, 1]
    has_peer = importlib.util.find_spec("napkinxc") is not None
    assert len(res["over_seeds"]) == (1 if has_peer else 0) and "over the splits" in r.stdout
    if has_peer:
        (row,) = res["over_seeds"]
        assert row["system"] == "ours_linear_facets" and row["seeds"] == [0, 1]

"""benchmarks/tree_scale.py's smoke run: every builder measured in its own child process, the
rows it should write, into pytest's temporary directory (never benchmarks/results)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
BUILDERS = {"huffman", "balanced", "two_level", "from_embeddings", "from_embeddings_counts"}


def test_quick_run_writes_a_row_per_builder(tmp_path):
    out = tmp_path / "tree_scale.json"
    # --quick is V = 100k; a smaller V and dimension keep the smoke run to a few seconds.
    cmd = [sys.executable, str(BENCH / "tree_scale.py"), "--quick", "--V", "20000", "--dim", "8", "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    res = json.loads(out.read_text())
    rows = {row["builder"]: row for row in res["rows"]}
    assert set(rows) == BUILDERS
    for row in rows.values():
        assert "error" not in row, row
        assert row["V"] == 20000 and row["build_s"] > 0 and row["lazy"] is True
        assert row["base_rss_gb"] <= row["peak_rss_gb"] < 2
    # Code lengths under the Zipf counts: Huffman is optimal, the mass-balanced learned tree
    # comes near it, the size-balanced trees do not.
    ecl = {b: rows[b]["expected_code_length_zipf"] for b in BUILDERS}
    assert ecl["huffman"] <= ecl["from_embeddings_counts"] <= ecl["huffman"] + 1 < ecl["balanced"]
    assert rows["from_embeddings"]["depth"] == rows["balanced"]["depth"] == 15
    assert res["machine"]["versions"]["numpy"]
    table = out.with_suffix(".md").read_text()
    assert table.count("| from_embeddings") == 2 and "20,000" in table

"""The README's code runs as written, and the docstring examples hold."""

from __future__ import annotations

import doctest
import re
from pathlib import Path

import pytest

import hsoftmax.layer
import hsoftmax.tree

ROOT = Path(__file__).resolve().parents[1]


def readme_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    blocks = readme_blocks()
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)  # the quickstart writes a file
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)
    assert (tmp_path / "taxonomy.npz").exists()


@pytest.mark.parametrize("module", [hsoftmax.tree, hsoftmax.layer], ids=lambda m: m.__name__)
def test_docstring_examples(module, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0

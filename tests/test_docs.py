"""The README's code runs as written, and every module's docstring examples hold."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import re
from pathlib import Path

import pytest

import hsoftmax

ROOT = Path(__file__).resolve().parents[1]
DOCTEST_FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
# The package held 82 examples (``>>>`` lines) in 13 modules when this test began running all of
# them; a drop far below that means discovery broke or examples were deleted wholesale.
MIN_EXAMPLES = 60


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


def package_modules() -> list[str]:
    """Every module of the installed package, subpackages included, found by walking it (so a
    new module's examples run without anyone adding it here)."""
    names = [hsoftmax.__name__]
    names += [m.name for m in pkgutil.walk_packages(hsoftmax.__path__, prefix=hsoftmax.__name__ + ".")]
    return sorted(names)


MODULES = package_modules()


def test_discovery_finds_the_package_layout():
    # The modules every layout of this package has; if walk_packages stopped descending into
    # subpackages, these would go missing and their examples would silently stop running.
    for name in ("hsoftmax", "hsoftmax.tree", "hsoftmax.layer", "hsoftmax.word2vec", "hsoftmax.kernels"):
        assert name in MODULES
    assert any(m.startswith("hsoftmax.word2vec.") for m in MODULES)


def module_doctests(name: str) -> list[doctest.DocTest]:
    # Optional dependencies are imported lazily inside functions, so every module imports here.
    module = importlib.import_module(name)
    return doctest.DocTestFinder(exclude_empty=True).find(module, name)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that save files write them here
    runner = doctest.DocTestRunner(optionflags=DOCTEST_FLAGS)
    for test in module_doctests(name):
        runner.run(test)  # a failure prints the example, expected and got (shown by pytest)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed (output above)"


def test_the_package_has_examples_to_run():
    per_module = {name: sum(len(t.examples) for t in module_doctests(name)) for name in MODULES}
    assert sum(per_module.values()) >= MIN_EXAMPLES, per_module
    # The two modules a user reads first keep theirs.
    assert per_module["hsoftmax.tree"] > 0 and per_module["hsoftmax.layer"] > 0, per_module

# Set-up commands: `make demo` (the main job), `make test` (the whole suite) and `make lint`
# (formatting, lint rules and types, all configured in pyproject.toml). Each creates .venv if
# missing and installs what it needs. torch is pinned to the local CPU wheel first so the
# editable install never pulls a multi-GB CUDA build.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv demo test lint format bench clean fuzz

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py

test: $(STAMP)
	$(PY) -m pytest -q

# The fuzz suite at length: many more generated cases (new ones each run), kill -9 at random
# moments then --resume, and a full / read-only file system on a small tmpfs (skipped with a
# message where mount is not allowed). FUZZ_EXAMPLES and FUZZ_KILLS size it; -s prints the counts.
FUZZ_EXAMPLES ?= 500
FUZZ_KILLS ?= 8
fuzz: $(STAMP)
	HSOFTMAX_FUZZ_LONG=1 HSOFTMAX_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) HSOFTMAX_FUZZ_KILLS=$(FUZZ_KILLS) \
		$(PY) -m pytest -q -s -rs tests/test_fuzz.py

# Checks only, never rewrites: what CI runs. All three run even when one fails, so one run
# shows every problem; the target fails if any did.
lint: $(STAMP)
	@status=0; \
	$(VENV)/bin/ruff format --check . || status=1; \
	$(VENV)/bin/ruff check . || status=1; \
	$(VENV)/bin/mypy || status=1; \
	exit $$status

# Rewrites: the formatter and ruff's safe fixes.
format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: $(STAMP)
	$(PY) -m pip install -q -e '.[dev,bench]'
	$(PY) benchmarks/layers.py
	$(PY) benchmarks/word2vec_vs_peers.py
	$(PY) benchmarks/multilabel.py
	$(PY) benchmarks/scale.py
	$(PY) benchmarks/lm.py
	$(PY) benchmarks/taxonomy.py
	$(PY) benchmarks/keras_layers.py
	$(PY) benchmarks/tree_scale.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info

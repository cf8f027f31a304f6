# Two set-up commands: `make demo` (the main job) and `make test` (the whole suite).
# Each creates .venv if missing and installs what it needs. torch is pinned to the local
# CPU wheel first so the editable install never pulls a multi-GB CUDA build.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv demo test bench clean

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

bench: $(STAMP)
	$(PY) -m pip install -q -e '.[dev,bench]'
	$(PY) benchmarks/layers.py
	$(PY) benchmarks/word2vec_vs_peers.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info

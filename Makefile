# Two entry points: `make demo` (set up + run the whole pipeline on a tiny model) and `make test`.
PY ?= python3.11
VENV := .venv
export HF_HUB_OFFLINE := 1
export TORCH_EXTENSIONS_DIR ?= $(HOME)/.cache/vita/torch_extensions
export DS_ACCELERATOR := cpu

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q torch==2.14.1 torchaudio==2.11.0
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/vita-train demo --out demo_out

# Lint first (ruff: pyflakes, pycodestyle, bugbear; mypy --strict on vita_api and the operator; config in
# pyproject.toml), then the suite.
test: setup lint
	$(VENV)/bin/python -m pytest -q tests

# The unit tier in under a minute: no subprocess, DeepSpeed or API-server tests (a test that starts a process
# without the `subprocess` mark fails here), two workers.
test-fast: setup
	VITA_TEST_NO_SUBPROCESS=1 OMP_NUM_THREADS=1 $(VENV)/bin/python -m pytest -q -n 2 \
	  -m "not slow and not apiserver and not subprocess" tests

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

.PHONY: setup demo test test-fast lint

# Every derived file (CRDs, plain manifests, the dashboard and demo copies) from its one source; the suite runs
# `hack/generate.py --check` and fails naming any file that differs.
generate: setup
	$(VENV)/bin/python hack/generate.py

.PHONY: generate

# Two entry points: `make demo` (set up + run the whole pipeline on a tiny model) and `make test`.
PY ?= python3.11
VENV := .venv
export HF_HUB_OFFLINE := 1
export TORCH_EXTENSIONS_DIR ?= $(HOME)/.cache/vita/torch_extensions
export DS_ACCELERATOR := cpu

# uv installs exactly the set pinned in uv.lock (--locked stops if pyproject.toml and the lock disagree: run
# `make lock`). uv itself is pinned and lives in its own venv outside the checkout.
UV_VERSION := 0.13.9
UV := $(HOME)/.cache/vita/uv-$(UV_VERSION)/bin/uv
export UV_PYTHON := $(PY)

$(UV):
	$(PY) -m venv $(HOME)/.cache/vita/uv-$(UV_VERSION)
	$(HOME)/.cache/vita/uv-$(UV_VERSION)/bin/pip install -q uv==$(UV_VERSION)

$(VENV)/.installed: pyproject.toml uv.lock | $(UV)
	$(UV) sync --locked --extra test
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/vita-train demo --out demo_out

# Lint first (ruff: pyflakes, pycodestyle, bugbear; mypy --strict on vita_api and the operator; config in
# pyproject.toml), then the suite: three workers, one test module each at a time (the real-cluster tiers mostly wait
# on their control planes, and a module shares one cluster), so the 2-core machine stays busy; the Go builds of a
# fresh machine run under a lock while the other workers go on. The tier timings print at the end.
test: setup lint
	$(VENV)/bin/python -m pytest -q -n 3 --dist loadfile tests

# The unit tier in under a minute: no subprocess, DeepSpeed or API-server tests (a test that starts a process
# without the `subprocess` mark fails here), two workers.
test-fast: setup
	VITA_TEST_NO_SUBPROCESS=1 OMP_NUM_THREADS=1 $(VENV)/bin/python -m pytest -q -n 2 \
	  -m "not slow and not apiserver and not subprocess" tests

# After editing dependencies in pyproject.toml: re-resolve the lock (versions already locked stay unless the new
# ranges exclude them; `$(UV) lock --upgrade-package NAME` moves one).
lock: $(UV)
	$(UV) lock

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

.PHONY: setup demo test test-fast lint lock

# Every derived file (CRDs, plain manifests, the dashboard and demo copies) from its one source; the suite runs
# `hack/generate.py --check` and fails naming any file that differs.
generate: setup
	$(VENV)/bin/python hack/generate.py

.PHONY: generate

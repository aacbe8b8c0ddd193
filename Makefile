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

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

.PHONY: setup demo test lint

# Regenerate the CRD from the run spec model (tests fail when the checked-in copies drift).
crd: setup
	$(VENV)/bin/vita-operator-crd > manifests/crd/vitatrainingruns.yaml
	cp manifests/crd/vitatrainingruns.yaml helm/vita-operator/crds/vitatrainingruns.yaml

.PHONY: crd

# Plain manifests for clusters without Helm, rendered from the chart (a test fails when they drift).
manifests: setup
	$(VENV)/bin/python hack/render_manifests.py \
	  $$($(VENV)/bin/python -c 'from tests.k8s_tools import tool; print(tool("helm"))') > manifests/operator.yaml

.PHONY: manifests

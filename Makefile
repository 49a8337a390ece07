# Two entry points for a fresh machine: `make serve` (build the demo index and serve it) and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DEMO_CORPUS := data/demo/scifact-demo
DEMO_INDEX  := indexes/demo
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install install-dev demo-index serve test test-slow bench lint wheel-smoke

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch==2.13.0 is pinned in pyproject.toml: pip takes the CPU build, never a multi-GB CUDA one.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -e ".[dev]"
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

$(DEMO_INDEX)/manifest.json: $(VENV)/.installed
	$(BIN)/trident index build --corpus $(DEMO_CORPUS) --out $(DEMO_INDEX)

demo-index: $(DEMO_INDEX)/manifest.json

serve: $(DEMO_INDEX)/manifest.json
	$(BIN)/trident serve --index $(DEMO_INDEX) --host $(HOST) --port $(PORT)

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest

test-slow: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -m slow

# Gates: ruff on the repository; mypy (core, indexers) and the import-layer contract on the
# installed layout (.ci/gates.py). Runs them all, fails if any failed.
lint: $(VENV)/.installed-dev
	@rc=0; $(BIN)/ruff check . || rc=1; $(BIN)/python .ci/gates.py || rc=1; exit $$rc

# Build the wheel, install it into a fresh venv (not editable) and smoke-test it from outside the checkout.
wheel-smoke: $(VENV)/.installed-dev
	PYTHON=$(PYTHON) BIN=$(BIN) .ci/wheel_smoke.sh

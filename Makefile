# Everything is installed by this file from PyPI, from nothing but python3 (>= 3.11).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test soak lint tools bench clean

# promtool (Debian package `prometheus`) checks the deploy files and a real /metrics scrape.
tools:
	@command -v promtool >/dev/null 2>&1 || { \
	  echo "installing promtool (Debian package prometheus)"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/tierstream demo

lint: $(STAMP)
	$(BIN)/ruff check segmentation streams agents tests
	$(BIN)/mypy

test: $(STAMP) tools lint
	$(BIN)/pytest -q

# 80% of one worker's measured maximum for SOAK_SECONDS (default 600): memory, lag, dead-letters.
soak: $(STAMP)
	$(BIN)/pytest -q -s -m soak tests/test_soak.py

bench: $(STAMP)
	$(BIN)/tierstream bench --out bench.json

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

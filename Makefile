# One task runner for developers and CI: `make demo`, `make test`, `make lint`, `make bench`.
SHELL := /bin/bash
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
STAMP := .diam/.setup-done
DATA ?= data/ml-100k

.PHONY: setup deps stack test test-unit test-integration lint bench bench-quick demo clean stack-down

# --- set-up (idempotent; re-runs when pyproject.toml changes) ------------------------------
$(STAMP): pyproject.toml
	@mkdir -p .diam
	@command -v redis-server >/dev/null || { echo "installing redis-server (Debian)"; \
	  (apt-get install -y -q redis-server || (apt-get update -q && apt-get install -y -q redis-server)) >/dev/null; }
	$(PIP) install -q -e '.[dev]'
	$(PIP) install -q --no-deps recbole==1.2.1
	@touch $@

setup: $(STAMP)
	diam stack fetch

stack: setup
	diam stack up

stack-down:
	diam stack down

# --- tests ------------------------------------------------------------------------------------
test: stack
	$(PYTHON) -m pytest -q

test-unit: setup
	$(PYTHON) -m pytest -q tests/unit streams online_model snapshotter serving_cache diam

test-integration: stack
	$(PYTHON) -m pytest -q tests/integration

lint: setup
	ruff check .
	mypy streams online_model snapshotter serving_cache diam

# --- benchmarks (JSON to stdout and bench/results/) -------------------------------------------
bench: stack
	$(PYTHON) bench/model_quality.py
	$(PYTHON) bench/prequential.py
	$(PYTHON) bench/stream.py
	$(PYTHON) bench/serve.py
	$(PYTHON) bench/loop.py

bench-quick: stack
	$(PYTHON) bench/model_quality.py --quick
	$(PYTHON) bench/prequential.py --quick
	$(PYTHON) bench/stream.py --quick
	$(PYTHON) bench/serve.py --quick
	$(PYTHON) bench/loop.py --quick

# --- the main job end to end on the local stack -----------------------------------------------
demo: stack
	bash diam/resources/demo.sh

clean:
	-diam stack down
	rm -rf .diam/kafka .diam/redis build *.egg-info

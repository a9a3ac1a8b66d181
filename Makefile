# zeroseg — the two commands of the README, and a few more.
#   make run    install, then run the main job on the embedded synthetic benchmark
#   make test   install, then run the default test suite (what CI runs)
# Both create .venv on first use and reinstall when pyproject.toml/setup.py/constraints.txt change.

SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.zeroseg-installed
PYTEST_WORKERS ?= 2
RUN_DIR ?= runs/main

export HF_HUB_OFFLINE := 1
export RAY_AUTH_MODE := disabled
export RAY_USAGE_STATS_ENABLED := 0
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install browser run test test-slow test-all bench lint clean

install: $(STAMP)

# torch/torchvision stay on the CPU wheel: every install goes through constraints.txt.
$(STAMP): pyproject.toml setup.py constraints.txt Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]' 2>&1 \
		| { grep -v "^WARNING: Location" || true; }
	# Test-only reference: the original panopticapi pq_compute (its metadata pins numpy<2, which
	# it does not need), so tests compare our PQ against it.
	$(BIN)/python -m pip install -q --no-deps panopticapi-lite==0.2.0 2>&1 \
		| { grep -v "^WARNING: Location" || true; }
	$(BIN)/python -c "import torch, zeroseg.platform.cli; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $(STAMP)

# Debian's Chromium for the dashboard's browser test (skipped, with its reason, without it).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo "sudo -n" ); \
		echo "installing Debian's chromium for the dashboard browser test"; \
		{ $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium; } \
			>/dev/null 2>&1 || echo "chromium not installed: the dashboard browser test will be skipped"; }

run: install
	$(BIN)/zeroseg demo --out $(RUN_DIR)

test: install browser
	$(BIN)/python -m pytest -m "not slow" -n $(PYTEST_WORKERS) --dist loadfile --durations=30

test-slow: install
	$(BIN)/python -m pytest -m slow

test-all: install browser
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile

bench: install
	$(BIN)/python benches/bench_synth.py --sizes small medium
	$(BIN)/python benches/bench_eval.py
	$(BIN)/python benches/bench_train.py
	$(BIN)/python benches/bench_feature_cache.py --size small
	$(BIN)/python benches/bench_generator.py
	$(BIN)/python benches/bench_sweep.py
	$(BIN)/python benches/bench_dashboard.py

lint: install
	$(BIN)/ruff check platform methods dashboards tests benches

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache runs .zeroseg

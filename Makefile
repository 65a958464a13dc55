# mifa-factory: `make help` lists the targets.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
FACTORY := $(VENV)/bin/factory
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER = 0
export RAY_USAGE_STATS_ENABLED = 0

.PHONY: help setup test lint bench demo clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-8s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	test -d $(VENV) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# The CPU wheel first, so nothing pulls a multi-GB CUDA build of torch.
	$(PIP) install -q torch==2.13.0
	# insightface needs opencv-python, which writes the same cv2/ folder as opencv-python-headless
	# (our choice before): a venv from then drops both, so the install below leaves exactly one cv2.
	if $(PIP) show -q opencv-python-headless 2>/dev/null; then $(PIP) uninstall -y -q opencv-python-headless opencv-python; fi
	$(PIP) install -q -e '.[all,dev]'
	touch $@

setup: $(VENV)/.installed ## create .venv and install everything (CPU torch 2.13.0 first)

test: setup lint ## lint, then run the test suite
	$(VENV)/bin/pytest -q tests

lint: setup ## ruff (check and format), and the import-layer contracts
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

bench: setup ## run the benchmarks and rewrite BENCHMARKS.md
	$(PY) -m bench.run_all

demo: setup ## build the small offline demo dataset (recipes/demo.toml) and report on it
	$(FACTORY) build recipes/demo.toml
	$(FACTORY) status runs/demo
	$(FACTORY) eval runs/demo

clean: ## remove demo runs and caches
	rm -rf runs .pytest_cache .ruff_cache

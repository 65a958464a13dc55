# mifa-factory: `make help` lists the targets.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
FACTORY := $(VENV)/bin/factory
# pytest-xdist workers for `make test` / `make test-fast`: one per core of the 2-core machine the
# suite is timed on (tests one by one on two workers: 921 s; modules as groups on three: 1,011 s;
# today's groups on three: 788 s against 709 s on two, and a local Ray start timed out under the load).
TEST_WORKERS ?= 2
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER = 0
export RAY_USAGE_STATS_ENABLED = 0

.PHONY: help setup test test-fast test-gpu test-deps lint bench demo clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

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

# Root installs system packages itself; anyone else through sudo.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

test: setup lint test-deps ## lint, then the whole suite (what CI runs), printing the 25 slowest tests
	$(VENV)/bin/pytest -q -n $(TEST_WORKERS) --dist loadgroup --durations=25 tests

test-fast: setup ## the fast tier: no Ray, no factory child process, no S3 server, no browser
	$(VENV)/bin/pytest -q -n $(TEST_WORKERS) --dist loadgroup --durations=25 -m "not slow" tests

test-gpu: setup ## the CUDA smoke test (tests/gpu, marker gpu): skipped, with the reason, without a CUDA device
	$(VENV)/bin/pytest -q -rs -m gpu tests/gpu

test-deps: ## system packages the tests need: Debian's headless Chromium (the report test)
	command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
		($(SUDO) apt-get update -q && \
		 $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium)

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

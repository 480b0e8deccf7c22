# groqpolicy — every target sets up what it needs from nothing (venv, packages, opa, nats-server).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: help run test test-fast lint tools bench bench-ci clean venv

help:
	@echo "make run       set up everything and start the whole system on embedded defaults"
	@echo "make test      set up everything and run the full test suite (slow end-to-end tests included)"
	@echo "make lint      ruff, mypy and the layer contracts on product code"
	@echo "make bench     run the benchmark suite (full)"
	@echo "make bench-ci  run the benchmark suite in its short mode and print the table"
	@echo "make tools     provide opa (pinned) and nats-server"
	@echo "make clean     remove the venv, tools and local state"

$(STAMP): pyproject.toml setup.py bridge/opawasm/native/hostfast.c
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

tools: $(STAMP)
	$(PY) -m controlplane.infra.toolchain ensure

run: tools
	$(VENV)/bin/groqpolicy up

test: tools
	$(PY) -m controlplane.dashboard.browser ensure
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check controlplane bridge
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

test-fast: tools
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

bench: tools
	$(PY) -m pytest benchmarks --benchmark-only --benchmark-columns=median,mean,min,max,rounds -p no:cacheprovider

bench-ci: tools
	GROQPOLICY_BENCH_SHORT=1 $(PY) -m pytest benchmarks -q --benchmark-only --benchmark-min-rounds=200 --benchmark-max-time=0.2 --benchmark-warmup=on --benchmark-columns=median,mean,min,max,rounds -p no:cacheprovider

clean:
	rm -rf $(VENV) .tools .state bundles/out

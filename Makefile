# infgate: the README's two commands (`make demo`, `make test`) plus helpers.
# Every target installs what it needs from the project's own files first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# CPU machines pin the CPU wheel of torch; GPU users: make install TORCH_CONSTRAINT=constraints-cuda.txt
TORCH_CONSTRAINT ?= constraints-cpu.txt
STAMP := $(VENV)/.installed-$(notdir $(TORCH_CONSTRAINT))

export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 90
export MLFLOW_ENABLE_ASYNC_LOGGING := false
export GX_ANALYTICS_ENABLED := false

.PHONY: install demo test test-fast lint format bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip setuptools wheel

$(STAMP): $(PY) pyproject.toml constraints.txt $(TORCH_CONSTRAINT)
	$(PIP) install --quiet -c constraints.txt -c $(TORCH_CONSTRAINT) -e '.[dev,bench]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/infgate demo

# mypy and lint-imports read the installed layout (infgate = pipeline/, infgate.flows = flows/,
# infgate.plugins = plugins/) from a symlink tree that .ci/linktree.py rebuilds each run.
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) .ci/linktree.py build/lint
	$(VENV)/bin/mypy
	PYTHONPATH=build/lint $(VENV)/bin/lint-imports

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Locally the tests run in file order (-p no:randomly); CI (.ci/run) shuffles them with a
# printed seed: replay one with `make test PYTEST_ARGS="-p randomly --randomly-seed=<seed>"`.
# PostgreSQL tests use INFGATE_TEST_PG_URL when set, else a throwaway server they start.
TEST_ORDER ?= $(if $(findstring randomly,$(PYTEST_ARGS)),,-p no:randomly)
test: lint
	$(VENV)/bin/python -m pytest -q $(TEST_ORDER) $(PYTEST_ARGS)

test-fast: install
	$(VENV)/bin/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

# Each benchmark prints a table and writes benchmarks/results/*.json (see benchmarks/RESULTS.md).
bench: install
	$(PY) benchmarks/bench_exact.py
	$(PY) benchmarks/bench_backends.py
	$(PY) benchmarks/bench_label_errors.py
	$(PY) benchmarks/bench_count_posterior.py
	$(PY) benchmarks/bench_count_interval.py
	$(PY) benchmarks/bench_mismatch.py
	$(PY) benchmarks/bench_flow.py
	$(PY) benchmarks/bench_queue.py
	$(PY) benchmarks/bench_model_zoo.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info

# adsrt: `make demo` runs the demo on the bundled default model, `make test` runs the test suite (what CI
# runs), `make check` is the fast edit loop (lint + the tests not marked slow, under 3 minutes on 2 cores).
# All create .venv on first use and install adsrt with the tested versions (constraints.txt).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS ?= dev,export,gpu
# Triton kernels run in its CPU interpreter where no NVIDIA GPU is visible.
TRITON_INTERPRET ?= $(shell nvidia-smi -L >/dev/null 2>&1 && echo 0 || echo 1)
PYTEST_ARGS ?=

.PHONY: demo test check gpu-check lint wheel clean-venv

$(BIN)/.adsrt-installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[$(EXTRAS)]"
	touch $@

test: $(BIN)/.adsrt-installed
	TRITON_INTERPRET=$(TRITON_INTERPRET) $(BIN)/python -m pytest $(PYTEST_ARGS)

check: lint
	TRITON_INTERPRET=$(TRITON_INTERPRET) $(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

demo: $(BIN)/.adsrt-installed
	$(BIN)/adsrt demo

# The one-call check for a lent NVIDIA GPU (minutes; a log and CSV rows in benchmarks/results/gpu_check/).
# Without a GPU it says so and exits 2; `$(BIN)/python benchmarks/gpu_check.py --dry-run` runs its logic on the CPU.
gpu-check: $(BIN)/.adsrt-installed
	$(BIN)/python benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

lint: $(BIN)/.adsrt-installed
	$(BIN)/ruff check sdk kernels export train tests benchmarks docs

wheel: $(BIN)/.adsrt-installed
	$(BIN)/python -m build --wheel --outdir dist .

clean-venv:
	rm -rf $(VENV)

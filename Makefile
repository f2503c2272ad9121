# Set-up and everyday commands. `make test` and `make demo` install what they need first.
PYTHON ?= python3
VENV ?= .venv
# torch goes in first, pinned to the CPU-friendly 2.13.0 by default; on a GPU machine override it, e.g.
#   make install TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: install test demo bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

test: install
	$(BIN)/python -m pytest

demo: install
	$(BIN)/iqa-adapter demo --out demo-output

bench: install
	$(BIN)/python benchmarks/bench_unet_overhead.py

clean:
	rm -rf $(VENV) demo-output .pytest_cache

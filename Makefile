# Set-up and everyday commands. `make test` and `make demo` install what they need first.
PYTHON ?= python3
VENV ?= .venv
# torch goes in first, pinned to the CPU-friendly 2.13.0 by default; on a GPU machine override it, e.g.
#   make install TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: install browser test demo bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

# Chromium and its driver for the browser tests (tests/test_app_browser.py), and a PostgreSQL server for the study
# on PostgreSQL (tests/test_study_postgres.py), from apt where we are root; elsewhere (no apt-get, not root, no
# network) a note, and those tests skip with their reason.
CHROMIUM_BIN ?= /usr/bin/chromium
CHROMEDRIVER_BIN ?= /usr/bin/chromedriver

browser:
	@if [ -x $(CHROMIUM_BIN) ] && [ -x $(CHROMEDRIVER_BIN) ] && ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver postgresql; } \
			|| echo "could not install chromium, chromium-driver and postgresql: their tests will skip"; \
	else echo "no chromium, chromedriver or postgresql, and no apt-get as root to install them: their tests will skip"; fi

test: install browser
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest

demo: install
	$(BIN)/iqa-adapter demo --out demo-output --threads 2

bench: install
	$(BIN)/python benchmarks/bench_unet_overhead.py

clean:
	rm -rf $(VENV) $(PYIQA_VENV) demo-output .pytest_cache

# The pyiqa backend against the real pyiqa, and FID's Inception through torch-fidelity, in an environment of its own (about 7 GB): pyiqa needs torchvision,
# and no torchvision loads beside the default CPU torch 2.13.0. torch 2.14.1 + torchvision 0.29.1 (CUDA builds,
# which run on the CPU too) load together; on aarch64 torch 2.9.1 + torchvision 0.24.1 (untested with pyiqa).
# Both pairs are pinned again in every later install, so that pip never swaps torch. Not part of `make test`.
PYIQA_VENV ?= .venv-pyiqa
PYIQA_TORCH_SPEC ?= $(if $(filter aarch64 arm64,$(shell uname -m)),torch==2.9.1 torchvision==0.24.1,torch==2.14.1 torchvision==0.29.1)
PYIQA_SPEC ?= pyiqa==0.1.16

.PHONY: test-pyiqa

test-pyiqa: $(PYIQA_VENV)/.installed
	$(PYIQA_VENV)/bin/python -m pytest tests/test_pyiqa_integration.py tests/test_fidelity.py -k "pyiqa or inception"

$(PYIQA_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(PYIQA_VENV)
	echo '*' > $(PYIQA_VENV)/.gitignore
	$(PYIQA_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(PYIQA_VENV)/bin/python -m pip install --quiet $(PYIQA_TORCH_SPEC)
	$(PYIQA_VENV)/bin/python -m pip install --quiet $(PYIQA_SPEC) $(PYIQA_TORCH_SPEC)
	$(PYIQA_VENV)/bin/python -m pip install --quiet -e ".[test,fid]" $(PYIQA_TORCH_SPEC)
	$(PYIQA_VENV)/bin/python -c "import torch, torchvision, pyiqa; print('pyiqa', pyiqa.__version__, 'torch', torch.__version__, 'torchvision', torchvision.__version__)"
	touch $@

# The peers of benchmarks/bench_metrics.py (scikit-video, pypiqe, OpenCV) in an environment of their own: none of
# them is a dependency of this package. Not part of `make test`.
BENCH_VENV ?= .venv-bench

.PHONY: bench-env

bench-env: $(BENCH_VENV)/.installed

$(BENCH_VENV)/.installed:
	$(PYTHON) -m venv $(BENCH_VENV)
	echo '*' > $(BENCH_VENV)/.gitignore
	$(BENCH_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install --quiet scikit-video==1.1.11 pypiqe==1.2 opencv-python-headless scipy pillow
	touch $@

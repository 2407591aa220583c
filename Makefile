# Quick start:  make demo   (the embedded default model, trained on generated scenes, on the example image)
#               make test   (the full CPU test suite)
# Each target creates .venv and installs what it needs on first use (the serving extra included).
# TORCH_SPEC picks the torch build: a CPU wheel by default; e.g. `make test TORCH_SPEC=torch` on a CUDA machine.
# make gpu-check [QUICK=1]: the GPU machine's check (its own python3, no venv, nothing downloaded); see the README.

VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=
# The CUDA preprocessing library is only worth building where a GPU driver is visible (override with 0/1).
HOVLE_BUILD_CUDA ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo 1 || echo 0)
export HOVLE_BUILD_CUDA

.PHONY: setup demo test lint bench clean gpu-check serve

# csrc/ is a prerequisite so that `make setup` rebuilds the native extensions after a source change
# (pip install -e re-runs build_ext, which rebuilds what is out of date; HOVLE_BUILD_CUDA=0 skips nvcc).
$(VENV)/.installed: pyproject.toml setup.py $(wildcard csrc/*)
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel pybind11
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q "triton>=3.0" || echo "triton not installable here: Triton kernels and their tests are skipped"
	$(PY) -m pip install -q --no-build-isolation -e ".[test,serve]"
	$(PY) -c "import kernels.preprocess as p; print('image preprocessing:', p.describe())"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(PY) -m engine demo

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

serve: setup
	$(PY) -m engine serve

gpu-check:
	python3 benchmarks/gpu_check.py $(if $(QUICK),--quick,)

lint: setup
	$(VENV)/bin/ruff check engine kernels tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info

# Quick start:  make demo   (the embedded default model, trained on generated scenes, on the example image)
#               make test   (the full CPU test suite)
# Each target creates .venv and installs what it needs on first use (the serving extra included), every package at
# the version pinned in constraints.txt (`make lock` rewrites it from pyproject.toml's ranges; `make test-latest`
# runs the suite on the newest versions those ranges allow, in .venv-latest, to find upstream drift on purpose).
# TORCH_SPEC picks the torch build: the CPU wheel by default; e.g. `make test TORCH_SPEC=torch` on a CUDA machine.
# make gpu-check [QUICK=1] [REHEARSE=1] [FAMILY=xcomposer]: the GPU machine's check (its own python3, no venv, nothing downloaded);
# REHEARSE=1 runs the same script on the CPU at tiny shapes (see the README).

SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
UV_VERSION := 0.13.9
CONSTRAINTS := constraints.txt
PYTEST_ARGS ?=
# Where this machine keeps local wheels (the CPU build of torch); uv reads only what it is told.
FIND_LINKS ?= $(wildcard /opt/wheels)
# The CUDA preprocessing library is only worth building where a GPU driver is visible (override with 0/1).
HOVLE_BUILD_CUDA ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo 1 || echo 0)
export HOVLE_BUILD_CUDA

UV = $(1)/bin/uv pip install -q --python $(1)/bin/python $(if $(FIND_LINKS),--find-links $(FIND_LINKS))
EXTRAS := .[test,serve,triton]

.PHONY: setup demo test test-latest lock lint format bench clean gpu-check serve

# venv $(1) with uv, torch, the build tools and the engine (editable, native extensions built) and its extras;
# $(2): extra uv arguments (the constraints, or --upgrade for the newest versions).
define make_venv
	python3 -m venv $(1)
	$(1)/bin/python -m pip install -q --disable-pip-version-check "uv==$(UV_VERSION)"
	$(call UV,$(1)) $(2) "$(TORCH_SPEC)" setuptools wheel pybind11
	$(call UV,$(1)) $(2) --no-build-isolation -e "$(EXTRAS)"
	$(1)/bin/python -c "import hovle.kernels.preprocess as p; print('image preprocessing:', p.describe())"
endef

# csrc/ is a prerequisite so that `make setup` rebuilds the native extensions after a source change
# (an editable install re-runs build_ext, which rebuilds what is out of date; HOVLE_BUILD_CUDA=0 skips nvcc).
$(VENV)/.installed: pyproject.toml setup.py $(CONSTRAINTS) $(wildcard csrc/*)
	$(call make_venv,$(VENV),-c $(CONSTRAINTS))
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(PY) -m hovle demo

test: setup
	$(PY) -m pytest -q -n auto --dist loadgroup $(PYTEST_ARGS)

# The suite on the newest versions pyproject.toml allows (torch stays TORCH_SPEC): drift found on purpose.
test-latest:
	rm -rf .venv-latest
	$(call make_venv,.venv-latest,--upgrade)
	.venv-latest/bin/python -m pip list --format=freeze 2>/dev/null | grep -iE "^(transformers|kernels|torch|triton|fastapi|numpy)=="
	.venv-latest/bin/python -m pytest -q -n auto --dist loadgroup $(PYTEST_ARGS)

# Rewrites constraints.txt: every package the install above needs (pyproject.toml's dependencies, extras and build
# requirements, and TORCH_SPEC's dependencies), resolved at the newest versions allowed today. torch itself is
# pinned by TORCH_SPEC, not here, so that another build of it can be picked.
lock:
	python3 -m venv .venv-lock
	.venv-lock/bin/python -m pip install -q --disable-pip-version-check "uv==$(UV_VERSION)"
	python3 -c "import tomllib; print('\\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['build-system']['requires']))" \
	    | .venv-lock/bin/uv pip compile -q pyproject.toml - --extra test --extra serve --extra triton \
	    $(if $(FIND_LINKS),--find-links $(FIND_LINKS)) --constraint <(echo "$(TORCH_SPEC)") \
	    --no-emit-package torch --no-header --no-annotate -o $(CONSTRAINTS).new
	{ echo "# Pinned versions of everything \`make setup\` installs (torch: TORCH_SPEC in the Makefile)."; \
	  echo "# Written by \`make lock\` from pyproject.toml's ranges; do not edit by hand."; \
	  cat $(CONSTRAINTS).new; } > $(CONSTRAINTS)
	rm -rf $(CONSTRAINTS).new .venv-lock

serve: setup
	$(PY) -m hovle serve

gpu-check:
	python3 benchmarks/gpu_check.py $(if $(QUICK),--quick,) $(if $(REHEARSE),--rehearse,) $(if $(FAMILY),--family $(FAMILY),)

lint: setup
	$(VENV)/bin/ruff check hovle tests benchmarks tools setup.py
	$(VENV)/bin/ruff format --check hovle tests benchmarks tools setup.py

format: setup
	$(VENV)/bin/ruff format hovle tests benchmarks tools setup.py

clean:
	rm -rf $(VENV) .venv-latest .venv-lock build *.egg-info

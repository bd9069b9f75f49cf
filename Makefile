# `make help` lists the targets. The first use of any target creates .venv and installs the locked
# dependencies (requirements.lock, made from pyproject.toml by `make lock`).
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
RUN := PATH="$(BIN):$$PATH"

.DEFAULT_GOAL := help
.PHONY: help setup repro test test-backends test-parallel test-real ui lint lock clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

# --compile-bytecode: each stage and test is a fresh Python process; without .pyc files (none are written where
# PYTHONDONTWRITEBYTECODE is set) every process compiles TensorFlow again on import (20 s instead of 6 s).
$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python -r requirements.lock
	$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps -e .
	touch $@

setup: $(STAMP)  ## create .venv with ferflow and its locked dependencies

repro: $(STAMP)  ## set up, then run the whole pipeline (dvc repro) on the default synthetic data
	$(RUN) dvc repro

test: $(STAMP)  ## set up, then run the test suite
	$(RUN) pytest -n 2 --dist loadfile

# PyTorch's CPU build: from a local folder of wheels where there is one (this project's CI machines keep it in
# /opt/wheels), else from PyTorch's CPU index. PyPI's own Linux wheel is the CUDA build of several GB.
TORCH := torch==2.13.0+cpu
TORCH_WHEELS ?= /opt/wheels
TORCH_SOURCE := $(if $(wildcard $(TORCH_WHEELS)/torch-*.whl),--find-links $(TORCH_WHEELS),--index-url https://download.pytorch.org/whl/cpu --extra-index-url https://pypi.org/simple --index-strategy unsafe-best-match)

$(VENV)/.torch: $(STAMP)
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python $(TORCH_SOURCE) "$(TORCH)"
	touch $@

test-backends: $(VENV)/.torch  ## set up (adds PyTorch's CPU build), then run the DAG under tensorflow, jax and torch
	$(RUN) pytest -m backends -p no:xdist

test-parallel: $(STAMP)  ## set up, then run a swept grid of DVC experiments two at a time into one MLflow store
	$(RUN) pytest -m parallel -p no:xdist

test-real: $(STAMP)  ## set up, then run the DAG on the real FER-2013 files in ../shared/data (skipped if absent)
	$(RUN) pytest -m real_data -p no:xdist

ui: $(STAMP)  ## MLflow UI on the project's store, at http://127.0.0.1:5000
	$(RUN) mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db

lint: $(STAMP)  ## ruff
	$(RUN) ruff check src tests benchmarks

lock: $(STAMP)  ## re-resolve requirements.lock from pyproject.toml
	$(BIN)/uv pip compile pyproject.toml --extra dev --python-version 3.11 -o requirements.lock

clean:  ## remove the virtual environment
	rm -rf $(VENV)

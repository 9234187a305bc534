"""Query-likelihood reranking: the generator's base LM (with a LoRA adapter trained by
`python -m finetune.ql_reranker`) scores each candidate passage by how likely it makes the
question, log P(question | passage), averaged over the question's tokens (UPR, Sachan et al.
2022, "Improving Passage Retrieval with Zero-Shot Question Generation"; the query likelihood
model of classic IR, with a neural LM).

    from pipeline import load_config
    from rerank.query_likelihood import QueryLikelihoodReranker
    reranker = QueryLikelihoodReranker.from_config(load_config("smollm2"))   # nothing loaded yet
    top = reranker.postprocess_nodes(retrieved_nodes, query_str="What is a B-tree?")

Why it can beat a cross-encoder here: a cross-encoder must learn relevance from the ~1k training
questions, starting from an encoder never trained to compare a question with a passage; the LM
was pretrained to predict text, so "which passage makes this question likely" is its own task,
and the adapter only adapts it to the domain's question style. On the seed data (val, open-book)
the adapter alone orders the fine-tuned dense top 20 at MRR@10 0.765 where the cross-encoders
reach ~0.70 (README, "What each part fine-tuned FOR retrieval earns").

The question is the continuation, so every candidate is scored on the same tokens: the mean and
the sum of the log-probabilities order the candidates alike, and exp(mean) is the geometric mean
probability of the question's tokens, in (0, 1]: the `rerank_score` the agent loop grades. The
continuation is the question as training wrote it (`ql_example`): the same prompt, the same
completion format, and the end-of-sequence token that TRL appends to every completion.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Optional

from llama_index.core.bridge.pydantic import Field, PrivateAttr

from pipeline.models import check_model_source
from rerank.cross_encoder import PairScoringReranker

if TYPE_CHECKING:
    import numpy as np

    from pipeline.config import Config

QL_ADAPTER_KIND = "ql-reranker-adapter"  # the `kind` of its train_report.json (finetune.ql_reranker)
QL_INSTRUCTION = "Read the passage and write the question that it answers.\n\nPassage: {passage}"


def is_ql_adapter(folder: str) -> bool:
    """Whether a LoRA adapter folder was trained by finetune.ql_reranker (its train report says so)."""
    import json
    from pathlib import Path

    try:
        return json.loads((Path(folder) / "train_report.json").read_text(encoding="utf-8")).get("kind") == QL_ADAPTER_KIND
    except (OSError, ValueError):
        return False


def ql_messages(passage: str) -> list[Any]:
    """The prompt of a query-likelihood pair: the passage, and the request for its question."""
    from llama_index.core.base.llms.types import ChatMessage, MessageRole

    return [ChatMessage(role=MessageRole.USER, content=QL_INSTRUCTION.format(passage=passage.strip()))]


def ql_example(question: str, passage: str, tokenizer: Any = None) -> dict[str, str]:
    """A TRL prompt/completion row: the passage's prompt -> the question. Training and scoring
    both build their text here."""
    from pipeline.generate import prompt_completion

    return prompt_completion(ql_messages(passage), question, tokenizer)


class QueryLikelihoodReranker(PairScoringReranker):
    """Rerank retrieved nodes by log P(question | passage) under the generator's base LM with a
    query-likelihood LoRA adapter (`model`); keep the best `top_n`. The LM loads on first use, the
    adapter merged into its weights."""

    model: str = Field(description="LoRA adapter folder of the base LM (python -m finetune.ql_reranker writes it).")
    base_model: str = Field(description="The causal LM the adapter was trained on (generator.model).")
    torch_dtype: str = Field(default="auto", description="Weights dtype at inference (generator.torch_dtype).")
    convert_dir: Optional[str] = Field(default=None, description="Where a bundled GGUF base LM is converted (generator.convert_dir).")
    trust_remote_code: bool = Field(default=False, description="generator.trust_remote_code.")
    cpu_threads: Optional[int] = Field(default=None, description="generator.cpu_threads.")

    _tokenizer: Any = PrivateAttr(default=None)
    _overhead: int = PrivateAttr(default=0)

    @classmethod
    def class_name(cls) -> str:
        return "QueryLikelihoodReranker"

    @classmethod
    def from_config(cls, config: "Config", **overrides: Any) -> "QueryLikelihoodReranker":
        """A reranker with the `rerank` and `generator` sections' settings (nothing is loaded yet);
        both the adapter and the base LM must pass the `security` section's checks."""
        gen = config.generator
        settings: dict[str, Any] = {
            "model": check_model_source(config, config.rerank.model, "rerank.model"),
            "base_model": check_model_source(config, gen.model, "generator.model"),
            "top_n": config.rerank.top_n,
            "batch_size": config.rerank.batch_size,
            "max_length": config.rerank.max_length,
            "retrieval_weight": config.rerank.retrieval_weight,
            "device": gen.device,
            "torch_dtype": gen.torch_dtype,
            "convert_dir": gen.convert_dir,
            "trust_remote_code": gen.trust_remote_code,
            "cpu_threads": gen.cpu_threads,
            "allow_pickle_weights": config.security.allow_pickle_weights,
        }
        settings.update(overrides)
        return cls(**settings)

    @staticmethod
    def probability(logit: float) -> float:
        # the logit is a mean log-probability (<= 0): exp gives the geometric mean token probability
        return math.exp(min(logit, 0.0))

    def load(self) -> Any:
        """Load the base LM with the adapter merged now (otherwise on first use); thread-safe, once."""
        if self._model is None:
            with self._lock:
                if self._model is None:
                    from pipeline.models import apply_cpu_threads, attach_adapter, load_causal_lm

                    apply_cpu_threads(self.cpu_threads, self.device)
                    model, tokenizer = load_causal_lm(
                        self.base_model, device=self.device, torch_dtype=self.torch_dtype, trust_remote_code=self.trust_remote_code,
                        allow_pickle=self.allow_pickle_weights, convert_dir=self.convert_dir,
                    )
                    self._tokenizer = tokenizer
                    # the prompt's tokens around an empty passage: what a passage's budget leaves out
                    self._overhead = len(tokenizer(ql_example("", "", tokenizer)["prompt"]).input_ids)
                    self._model = attach_adapter(model, self.model, merge=True, allow_pickle=self.allow_pickle_weights)
        return self._model

    def _token_ids(self, question: str, passage: str, passage_budget: int) -> tuple[list[int], int]:
        """(prompt + question + end-of-sequence token ids, where the question starts). A passage
        longer than `passage_budget` tokens is cut to its first tokens."""
        from pipeline.models import continuation_ids

        tokenizer = self._tokenizer
        passage_ids = tokenizer(passage, add_special_tokens=False).input_ids
        if len(passage_ids) > passage_budget:
            passage = tokenizer.decode(passage_ids[:passage_budget])
        row = ql_example(question, passage, tokenizer)
        return continuation_ids(tokenizer, row["prompt"], row["completion"])

    def _score_uncached(self, question: str, passages: list[str]) -> "np.ndarray":
        from pipeline.models import mean_continuation_logprobs

        model = self.load()
        tokenizer = self._tokenizer
        # what max_length leaves a passage beside the prompt and the question (+ its end tokens)
        budget = max(self.max_length - self._overhead - len(tokenizer(question, add_special_tokens=False).input_ids) - 2, 8)
        encoded = [self._token_ids(question, p, budget) for p in passages]
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        return mean_continuation_logprobs(model, encoded, pad_id=pad, batch_size=self.batch_size)

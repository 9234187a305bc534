"""A pointwise reranker made of the generator's base LM and a LoRA adapter: it reads a (question,
passage) pair and answers yes or no; the score of the pair is logit(yes) - logit(no) at the first
answer token (monoT5 / RankLLaMA style, with a 135M instruct model instead of a 3B-7B one).

    from rerank.lm_pointwise import LMPointwiseReranker
    scorer = LMPointwiseReranker(config, "runs/smollm2/adapters/lm-reranker")   # python -m finetune.lm_reranker
    scorer.score_pairs("What is a B-tree?", ["A B-tree is ...", "Python lists ..."])  # array of scores

The prompt (`pointwise_messages`) is shared by training and scoring, so the adapter is asked exactly
what it was trained on. One forward pass per batch of pairs (no generation): the cost is the
prefill of `generator.batch_size` prompts of ~150 tokens each. `python -m rerank.evaluate
--reranker lm=DIR` compares it with the cross-encoders and reports its milliseconds per query.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional, Sequence

from pipeline.generate import format_passages, prompt_completion, render_prompt

if TYPE_CHECKING:
    import numpy as np

    from pipeline.config import Config

RELEVANCE_SYSTEM = "You judge whether a passage from a technical knowledge base answers a question."
RELEVANCE_ASK = "Does the passage answer the question? Answer yes or no."
LABELS = ("yes", "no")


def pointwise_messages(question: str, passage: str, *, max_passage_chars: Optional[int] = None) -> list[Any]:
    """The chat messages of one (question, passage) judgement."""
    from llama_index.core.base.llms.types import ChatMessage, MessageRole

    # fenced as the generator's passages are: a passage cannot smuggle instructions out of its block
    return [
        ChatMessage(role=MessageRole.SYSTEM, content=RELEVANCE_SYSTEM),
        ChatMessage(role=MessageRole.USER, content=f"Question: {question.strip()}\n\nPassage:\n{format_passages([passage], max_passage_chars)}\n\n{RELEVANCE_ASK}"),
    ]


def pointwise_example(question: str, passage: str, relevant: bool, tokenizer: Any = None, *, max_passage_chars: Optional[int] = None) -> dict[str, str]:
    """A TRL prompt/completion row: the scoring prompt -> "yes" (relevant) or "no"."""
    return prompt_completion(pointwise_messages(question, passage, max_passage_chars=max_passage_chars), LABELS[0] if relevant else LABELS[1], tokenizer)


def label_token_ids(tokenizer: Any) -> tuple[int, int]:
    """The first token of the "yes" and of the "no" completion, as training tokenized them: the
    token after the prompt in tokenizer(prompt + completion)."""
    ids = []
    for relevant in (True, False):
        row = pointwise_example("q?", "p.", relevant, tokenizer)
        prompt = tokenizer(row["prompt"]).input_ids
        full = tokenizer(row["prompt"] + row["completion"]).input_ids
        if len(full) <= len(prompt) or full[: len(prompt)] != prompt:
            raise ValueError(f"the tokenizer merges the answer {row['completion']!r} into the prompt's last token; the pointwise reranker needs a tokenizer that keeps them apart")
        ids.append(full[len(prompt)])
    if ids[0] == ids[1]:
        raise ValueError("the answers yes and no start with the same token; the pointwise reranker cannot tell them apart")
    return ids[0], ids[1]


class LMPointwiseReranker:
    """(question, passages) -> logit(yes) - logit(no) of the base LM with a pointwise LoRA adapter.
    The model loads on first use, with the adapter merged (one matrix product per layer)."""

    def __init__(self, config: "Config", adapter: str, *, batch_size: Optional[int] = None, max_passage_chars: Optional[int] = None):
        self.config = config
        self.adapter = adapter
        self.batch_size = batch_size or config.generator.batch_size
        self.max_passage_chars = max_passage_chars or config.generator.max_passage_chars
        self._model: Any = None
        self._tokenizer: Any = None
        self._label_ids: tuple[int, int] = (0, 0)

    def load(self) -> None:
        if self._model is not None:
            return
        from pipeline.models import apply_cpu_threads, attach_adapter, check_model_source, load_causal_lm

        gen = self.config.generator
        apply_cpu_threads(gen.cpu_threads, gen.device)
        model, tokenizer = load_causal_lm(
            check_model_source(self.config, gen.model, "generator.model"),
            device=gen.device,
            torch_dtype=gen.torch_dtype,
            trust_remote_code=gen.trust_remote_code,
            allow_pickle=self.config.security.allow_pickle_weights,
            convert_dir=gen.convert_dir,
        )
        self._model = attach_adapter(model, self.adapter, merge=True, allow_pickle=self.config.security.allow_pickle_weights)
        self._tokenizer = tokenizer  # pads on the left: every prompt's last token is at position -1
        self._label_ids = label_token_ids(tokenizer)

    def score_pairs(self, question: str, passages: Sequence[str]) -> "np.ndarray":
        import numpy as np
        import torch

        if not passages:
            return np.zeros(0, dtype=np.float32)
        self.load()
        tokenizer, model = self._tokenizer, self._model
        prompts = [render_prompt(pointwise_messages(question, p, max_passage_chars=self.max_passage_chars), tokenizer) for p in passages]
        yes, no = self._label_ids
        scores: list[float] = []
        with torch.inference_mode():
            for start in range(0, len(prompts), self.batch_size):
                batch = tokenizer(prompts[start : start + self.batch_size], return_tensors="pt", padding=True).to(model.device)
                # left padding: positions count real tokens only, as generate() computes them
                positions = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
                logits = model(**batch, position_ids=positions).logits[:, -1, :].float()
                scores += (logits[:, yes] - logits[:, no]).tolist()
        return np.asarray(scores, dtype=np.float32)

"""How much of an answer its passages hold: the lexical support of an answer by its sources.

    from pipeline.support import lexical_support, SUPPORTED
    score, best = lexical_support(answer, passages)   # ROUGE-L precision against the best passage, its index
    score >= SUPPORTED                                 # at least half the answer's words, in order, from one passage

The share of an answer's words that appear, in order, in one passage: the longest common
subsequence of the answer's tokens and the passage's, over the answer's length (ROUGE-L precision,
rouge_score's tokenizer, no stemmer, as eval.metrics scores answers), maximised over the passages.
An answer copied from a passage scores 1; one in the model's own words scores near its share of
common words. `lcs_length` is the one LCS of the project (eval.metrics' ROUGE-L uses it).

The model-based check, `LikelihoodSupport`: how much the passages raise the generator's base LM's
probability of the answer, mean log P(answer | question, passages) - mean log P(answer | question)
in nats per token (pointwise mutual information of the answer and the passages, the generator's own
prompts with and without passages, citation marks removed). An answer the passages state scores
well above 0; the model's own text, which it would have written without them, scores near 0. Two
forward passes per answer and no generation: an evaluation measure (`eval.grounding`), not a
per-answer step of the engine.

    from pipeline.support import LikelihoodSupport
    pmi = LikelihoodSupport.from_config(config).score(questions, answers, passages_per_answer)
"""

from __future__ import annotations

import functools
import re
import threading
from typing import TYPE_CHECKING, Any, Optional, Sequence

if TYPE_CHECKING:
    from pipeline.config import Config

SUPPORTED = 0.5  # at least half of the answer made of one source's words
MODEL_SUPPORTED = 0.0  # the passages make the answer more likely than the question alone does
_CITATION_MARK = re.compile(r"\s*\[\d+\]")


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token lists, bit-parallel (Hyyro 2004):
    about len(a) * len(b) / 64 machine-word steps. rouge_score fills a pure-Python table instead,
    which takes minutes for a pair of 20,000-word texts."""
    masks: dict[str, int] = {}
    for i, token in enumerate(b):
        masks[token] = masks.get(token, 0) | (1 << i)
    full = (1 << len(b)) - 1
    v = full
    for token in a:
        u = v & masks.get(token, 0)
        v = (v + u) | (v - u)
    return len(b) - bin(v & full).count("1")


@functools.lru_cache(maxsize=1)
def _tokenizer() -> Any:
    from rouge_score import tokenizers

    return tokenizers.DefaultTokenizer(use_stemmer=False)


def tokens(text: str) -> list[str]:
    """rouge_score's tokens: lowercased words and numbers, punctuation dropped."""
    return _tokenizer().tokenize(text or "")


def quote_threshold(config: "Config") -> float:
    """The support under which `generator.on_unsupported: quote` replaces an answer by its best
    passage: `generator.quote_below`, else the support threshold itself."""
    gen = config.generator
    return gen.quote_below if gen.quote_below is not None else gen.support_threshold


def lexical_support(answer: str, passages: Sequence[str]) -> tuple[float, Optional[int]]:
    """(ROUGE-L precision of `answer` against its best passage, that passage's index); (0.0, None)
    for an empty answer or no passage."""
    answer_tokens = tokens(answer)
    if not answer_tokens or not passages:
        return 0.0, None
    scores = [lcs_length(tokens(p), answer_tokens) / len(answer_tokens) for p in passages]
    best = max(range(len(scores)), key=scores.__getitem__)
    return scores[best], best


class LikelihoodSupport:
    """Model-based support of answers by their passages (module docstring): the generator's base
    LM, without adapter, loads on first use."""

    def __init__(self, model: str, *, device: str = "auto", torch_dtype: str = "auto", convert_dir: Optional[str] = None, trust_remote_code: bool = False, cpu_threads: Optional[int] = None, allow_pickle: bool = False, max_passage_chars: Optional[int] = None, batch_size: int = 4) -> None:
        self.model_name = model
        self.settings = {"device": device, "torch_dtype": torch_dtype, "convert_dir": convert_dir, "trust_remote_code": trust_remote_code, "allow_pickle": allow_pickle}
        self.cpu_threads = cpu_threads
        self.max_passage_chars = max_passage_chars
        self.batch_size = batch_size
        self._loaded: Optional[tuple[Any, Any]] = None
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, config: "Config") -> "LikelihoodSupport":
        """The `generator` section's base LM and prompt settings; the model must pass the `security` checks."""
        from pipeline.models import check_model_source

        gen = config.generator
        return cls(
            check_model_source(config, gen.model, "generator.model"), device=gen.device, torch_dtype=gen.torch_dtype, convert_dir=gen.convert_dir,
            trust_remote_code=gen.trust_remote_code, cpu_threads=gen.cpu_threads, allow_pickle=config.security.allow_pickle_weights,
            max_passage_chars=gen.max_passage_chars,
        )

    def load(self) -> tuple[Any, Any]:
        """(model, tokenizer), loaded once (thread-safe)."""
        if self._loaded is None:
            with self._lock:
                if self._loaded is None:
                    from pipeline.models import apply_cpu_threads, load_causal_lm

                    apply_cpu_threads(self.cpu_threads, self.settings["device"])
                    self._loaded = load_causal_lm(self.model_name, **self.settings)
        return self._loaded

    def score(self, questions: Sequence[str], answers: Sequence[str], passages: Sequence[Sequence[str]], *, progress: Optional[str] = None) -> list[float]:
        """Per answer, its PMI with its passages (nats per token); 0.0 for an empty answer or no passage."""
        if not len(questions) == len(answers) == len(passages):
            raise ValueError(f"questions, answers and passages differ in length ({len(questions)}, {len(answers)}, {len(passages)}): one of each per answer")
        from pipeline.generate import training_example
        from pipeline.models import continuation_ids, mean_continuation_logprobs

        todo = [i for i, (a, p) in enumerate(zip(answers, passages)) if tokens(a) and p]
        if not todo:
            return [0.0] * len(answers)
        model, tokenizer = self.load()
        encoded = []
        for i in todo:
            answer = _CITATION_MARK.sub("", answers[i]).strip()
            for shown in (list(passages[i]), None):
                row = training_example(questions[i], answer, shown, tokenizer, max_passage_chars=self.max_passage_chars)
                encoded.append(continuation_ids(tokenizer, row["prompt"], row["completion"]))
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        logprobs = mean_continuation_logprobs(model, encoded, pad_id=pad, batch_size=self.batch_size, progress=progress)
        result = [0.0] * len(answers)
        for k, i in enumerate(todo):
            result[i] = float(logprobs[2 * k] - logprobs[2 * k + 1])
        return result

"""`QueryRewriter`: a LlamaIndex query transform that rewrites FOR retrieval.

    from rewrite import QueryRewriter
    rewriter = QueryRewriter(llm, mode="hyde")           # llm: a LlamaIndex LLM, or a zero-arg loader
    bundle = rewriter.run("What is a B-tree?")           # QueryBundle for the retrievers
    bundle.query_str                                     # the ORIGINAL question, always
    bundle.custom_embedding_strs                         # hypothetical passage(s) / phrasings
    bundle.rewrite                                       # the Rewrite record (mode, texts, method, seconds)

Modes:
- `none`: nothing to add; the retrievers see the question alone.
- `hyde`: the LM writes the answer part of the knowledge-base passage that would answer the
  question; the hypothetical passage is that answer in the knowledge base's own format
  (`Question: ...\\nAnswer: ...`), so it is embedded like the stored passages.
- `multi`: up to n alternative phrasings.
- `decompose`: up to n sub-questions, each retrieved on its own by the engine. The LM's lines are
  kept when they parse into at least two sub-questions that stay on the question's own terms;
  otherwise a clause splitter cuts the question at its conjunctions ("Compare X and Y and explain
  Z" -> "Compare X and Y", "Explain Z"). The record says which method produced them.

The hybrid retriever embeds the original question plus the hypothetical texts and searches BM25
with their terms; the reranker and the generator only ever see the original question. Rewrites are
cached per (model, mode, question), bounded.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Sequence, Union

from llama_index.core.indices.query.query_transform.base import BaseQueryTransform
from llama_index.core.prompts.mixin import PromptDictType
from llama_index.core.schema import QueryBundle

from pipeline.index import qa_text
from pipeline.models import load_llm
from rewrite.prompts import parse_lines, rewrite_messages

if TYPE_CHECKING:
    from pipeline.config import Config

MODES = ("none", "hyde", "multi", "decompose", "keywords")  # keywords: no LM, the agent's retries only


@dataclass(frozen=True)
class Rewrite:
    """What the rewriter made of one question."""

    mode: str
    question: str
    texts: tuple[str, ...] = ()  # hyde: passages; multi: phrasings; decompose: sub-questions
    method: str = "none"  # none | llm | clauses | fallback
    raw: str = ""  # the LM's text, for the trace
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "texts": list(self.texts), "method": self.method, "raw": self.raw, "seconds": round(self.seconds, 4)}


@dataclass
class RewrittenQuery(QueryBundle):
    """A QueryBundle that also carries the Rewrite it came from."""

    rewrite: Optional[Rewrite] = field(default=None)


# ------------------------------------------------------------------------------------------------
# clause splitting for decomposition
# ------------------------------------------------------------------------------------------------

_ASKING_WORDS = (
    "compare|contrast|explain|describe|define|list|give|state|name|discuss|outline|show|summarize|"
    "what|how|why|when|where|which|who|is|are|does|do|can|should"
)
_CLAUSE_BREAK = re.compile(rf"\s*(?:[,;]\s*(?:and\s+)?(?:then\s+|also\s+)?|\s+(?:and|also|then)\s+(?:also\s+|then\s+)?)(?=(?:{_ASKING_WORDS})\b)", re.IGNORECASE)
_QUESTION_WORDS = frozenset("what how why when where which who is are does do can should".split())
_STOPWORDS = frozenset("a an the of and or to in on for with is are was were be what how why when where which who does do can should explain describe compare define between difference vs versus their its it this that".split())


def _content_words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9][a-z0-9+#-]*", text.lower()) if w not in _STOPWORDS and len(w) > 1}


def keywords(question: str) -> str:
    """The question's content words in their order, once each: a keyword search string."""
    seen: list[str] = []
    for word in re.findall(r"[a-z0-9][a-z0-9+#-]*", question.lower()):
        if word not in _STOPWORDS and len(word) > 1 and word not in seen:
            seen.append(word)
    return " ".join(seen)


def split_clauses(question: str, limit: int) -> list[str]:
    """Cut a multi-part question at '?' and at conjunctions followed by an asking word."""
    parts: list[str] = []
    for sentence in re.split(r"(?<=\?)\s+", question.strip()):
        parts.extend(p for p in _CLAUSE_BREAK.split(sentence) if p and p.strip())
    cleaned = []
    for part in parts:
        part = part.strip(" ,;")
        if len(_content_words(part)) == 0:
            continue
        part = part[0].upper() + part[1:]
        if not part.endswith(("?", ".")):
            part += "?" if part.split()[0].lower() in _QUESTION_WORDS else "."
        cleaned.append(part)
    return cleaned[:limit] if len(cleaned) >= 2 else []


# ------------------------------------------------------------------------------------------------
# the transform
# ------------------------------------------------------------------------------------------------

LLMSource = Union[Any, Callable[[], Any]]



def resolve_llm(source: Any) -> Any:
    """An LLM, or a zero-argument factory of one (called once, on first use: models load lazily)."""
    return source() if callable(source) and not hasattr(source, "chat") else source

class QueryRewriter(BaseQueryTransform):
    """Rewrite a question for retrieval with a (LoRA) language model; see the module docstring.

    The constructor only stores settings: a zero-argument callable passed as `llm` is called on
    the first rewrite that needs a model, so `mode="none"` never loads one.
    """

    def __init__(
        self,
        llm: Optional[LLMSource] = None,
        *,
        mode: str = "hyde",
        n_queries: int = 3,
        max_new_tokens: int = 64,
        model_id: str = "",
        cache_size: int = 4096,
        passage_format: Optional[Callable[[str, str], str]] = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"QueryRewriter: mode {mode!r} is not one of {', '.join(MODES)}; set rewrite.mode")
        if n_queries < 1:
            raise ValueError(f"QueryRewriter: n_queries must be >= 1; got {n_queries}")
        if llm is None and mode != "none":
            raise ValueError(f"QueryRewriter: mode {mode!r} needs an llm (a LlamaIndex LLM or a loader); pass llm=... or use mode='none'")
        self._llm_source = llm
        self._llm: Any = None
        self.mode = mode
        self.n_queries = n_queries
        self.max_new_tokens = max_new_tokens
        self.model_id = model_id or getattr(llm, "model_ref", "") or type(llm).__name__
        self._cache: "OrderedDict[tuple[str, str, int, str], Rewrite]" = OrderedDict()
        self._cache_size = cache_size
        # (question, hypothetical answer) -> passage in the knowledge base's own format; the
        # default is the QA node text of pipeline.index, an answers-only corpus passes its own
        self._passage_format = passage_format

    # PromptMixin: prompts are fixed in rewrite.prompts (one place for inference and training)
    def _get_prompts(self) -> PromptDictType:
        return {}

    def _update_prompts(self, prompts_dict: PromptDictType) -> None:
        return None

    @property
    def llm(self) -> Any:
        if self._llm is None:
            self._llm = resolve_llm(self._llm_source)
        return self._llm

    # ---- public -----------------------------------------------------------------------------

    def rewrite(self, question: str, mode: Optional[str] = None) -> Rewrite:
        """One question -> Rewrite (cached)."""
        return self.rewrite_many([question], mode)[0]

    def rewrite_many(self, questions: Sequence[str], mode: Optional[str] = None, *, show_progress: bool = False) -> list[Rewrite]:
        """Many questions at once: uncached ones go through the LM in one batched pass."""
        mode = mode or self.mode
        if mode not in MODES:
            raise ValueError(f"QueryRewriter: mode {mode!r} is not one of {', '.join(MODES)}")
        for question in questions:
            if not isinstance(question, str) or not question.strip():
                raise ValueError(f"QueryRewriter: the question must be a non-empty string; got {question!r}")
        results: dict[int, Rewrite] = {}
        todo: list[int] = []
        for i, question in enumerate(questions):
            cached = self._cache.get(self._key(mode, question))
            if cached is not None:
                self._cache.move_to_end(self._key(mode, question))
                results[i] = cached
            elif mode == "none":
                results[i] = Rewrite(mode="none", question=question)
            elif mode == "keywords":  # CRAG's retry: the question's content words alone, no LM
                words = keywords(question)
                results[i] = Rewrite("keywords", question, (words,) if words else (), "rules" if words else "fallback")
            else:
                todo.append(i)
        if todo:
            started = time.perf_counter()
            raw_texts = self._generate([rewrite_messages(mode, questions[i], self.n_queries) for i in todo], show_progress)
            seconds = (time.perf_counter() - started) / len(todo)
            for i, raw in zip(todo, raw_texts):
                made = self._interpret(mode, questions[i], raw, seconds)
                results[i] = made
                self._remember(self._key(mode, questions[i]), made)
        return [results[i] for i in range(len(questions))]

    # ---- LlamaIndex BaseQueryTransform ---------------------------------------------------------

    def _run(self, query_bundle: QueryBundle, metadata: Dict) -> QueryBundle:
        made = self.rewrite(query_bundle.query_str, metadata.get("mode"))
        texts = list(made.texts) if made.mode in ("hyde", "multi") else []
        return RewrittenQuery(
            query_str=query_bundle.query_str,
            custom_embedding_strs=[query_bundle.query_str, *texts] if texts else None,
            rewrite=made,
        )

    # ---- internals --------------------------------------------------------------------------------

    def _key(self, mode: str, question: str) -> tuple[str, str, int, str]:
        return (self.model_id, mode, self.n_queries, question)

    def _remember(self, key: tuple[str, str, int, str], value: Rewrite) -> None:
        self._cache[key] = value
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    def _generate(self, conversations: list, show_progress: bool) -> list[str]:
        llm = self.llm
        if hasattr(llm, "generate_batch") and hasattr(llm, "render"):
            prompts = [llm.render(messages) for messages in conversations]
            return llm.generate_batch(prompts, max_new_tokens=self.max_new_tokens, temperature=0.0, show_progress=show_progress)
        return [llm.chat(messages, max_new_tokens=self.max_new_tokens).message.content or "" for messages in conversations]

    def _interpret(self, mode: str, question: str, raw: str, seconds: float) -> Rewrite:
        from pipeline.generate import clean_answer

        text = clean_answer(raw)
        if mode == "hyde":
            answer = " ".join(text.split())
            if not answer:
                return Rewrite(mode, question, (), "fallback", raw, seconds)
            if self._passage_format is None:
                self._passage_format = qa_text
            return Rewrite(mode, question, (self._passage_format(question.strip(), answer),), "llm", raw, seconds)
        if mode == "multi":
            phrasings = parse_lines(text, original=question, limit=self.n_queries)
            return Rewrite(mode, question, tuple(phrasings), "llm" if phrasings else "fallback", raw, seconds)
        # decompose: trust the LM only when its sub-questions stay on the question's own terms
        own_terms = _content_words(question)
        lines = [line for line in parse_lines(text, original=question, limit=self.n_queries) if _content_words(line) & own_terms]
        if len(lines) >= 2:
            return Rewrite(mode, question, tuple(lines), "llm", raw, seconds)
        clauses = split_clauses(question, self.n_queries)
        if clauses:
            return Rewrite(mode, question, tuple(clauses), "clauses", raw, seconds)
        return Rewrite(mode, question, (), "fallback", raw, seconds)

def rewrite_texts(config: Config, questions: Sequence[str], *, adapter: str | None = "config", mode: str | None = None, show_progress: bool = True) -> list[list[str]]:
    """What full's first-round rewriter writes for each question (rewrite.mode, none meaning hyde as
    in the engine's rewriter; `adapter` "config": rewrite.adapter, None: the base LM), batched.
    A HyDE passage is the hypothetical answer alone: the open-book corpus holds answers alone, so
    this is the corpus's own format, as the engine writes "Question: ...\nAnswer: ..." for its
    question-answer nodes."""
    mode = mode or (config.rewrite.mode if config.rewrite.mode != "none" else "hyde")
    llm = load_llm(config, adapter=config.rewrite.adapter if adapter == "config" else adapter, verbose=show_progress)
    rewriter = QueryRewriter(llm, mode=mode, n_queries=config.rewrite.n_queries, max_new_tokens=config.rewrite.max_new_tokens, passage_format=lambda question, answer: answer)
    return [list(made.texts) for made in rewriter.rewrite_many(list(questions), show_progress=show_progress)]

"""`build_query_engine(config, system=NAME)`: every named system as a LlamaIndex query engine.

    from pipeline import build_query_engine, load_config
    engine = build_query_engine(load_config("tiny"), system="full")
    response = engine.query("What is a B-tree?")      # Response: text, source_nodes, metadata
    await engine.aquery("What is a B-tree?")           # the same, without blocking the event loop
    build_query_engine(config, "full", streaming=True).query(q).response_gen  # token deltas

Every system runs the same LlamaIndex Workflow (`RagftWorkflow`); a system only switches its
steps' parts on or off (pipeline/systems.py):

    StartEvent -> [route] -> RoundEvent -> rewrite, retrieve, rerank -> RankedEvent -> grade
        grade: best rerank score >= agent.grade_threshold (with agent.calibration: the calibrated
               P(answerable) of pipeline.grade >= the calibration's threshold)
               -> AnswerEvent -> generate -> StopEvent
               weak and rounds left -> RoundEvent with the next agent.retry_modes mode, which
                   looks past the passages earlier rounds graded (a retry grades other passages)
               weak after agent.max_rounds -> AnswerEvent with the best round's passages, marked
                   `low_confidence` in the metadata (agent.on_weak=answer, the default), or a grounded
                   refusal (agent.on_weak=not_found): no sources, a text naming what was searched,
                   and the best round's passages in metadata `not_used`

With `rewrite.mode: condense` the first round's rewrite is the condenser (rewrite/condense.py): a
message that reads as one clean question is searched as typed, with no LM call; a long, wrapped
or joined one is rewritten by the trained condenser (rewrite.condense_adapter) into its standalone
search question(s), and the generator reads that rewrite instead of the message. Under the other
modes a question with several asks ("Compare X and Y and explain Z") is routed to `decompose` in
its first round. Either way, several search questions are each retrieved and reranked on their
own, and the generator's passages are taken from their lists in turn (each list's best first), so
every ask is covered.

`Response.metadata` holds: `system`; `support` (a generated answer with retrieval: its lexical
support by its passages, pipeline.support, and what generator.on_unsupported did: flagged, or
quoted the best-supported passage instead); `search_question` (what the generator answered: the
condensed question, else the question); `rewrites` (one per round); `rounds` (each round's mode,
retrieved ids with retrieval scores, reranked ids with scores before and after reranking, grade
decision, and with a calibration its features); `not_found`; `not_used` (a refusal's closest
passages); `low_confidence`; `timings` (seconds per stage: rewrite, retrieve, rerank, generate, total).
Components (index, retrievers, reranker, LMs, rewriter) are built lazily, once, by a `Components`
object that engines of different systems share.

Bad questions: an empty or whitespace-only question, or one that is not text, raises
`QuestionError` before anything loads. A very long one (a pasted document) is answered as far as it
can be without unbounded work: retrieval reads its first `retrieve.max_query_chars` characters (with
a warning), the reranker truncates pairs to `rerank.max_length` tokens, and a language model
(rewriter or generator) refuses a prompt that with its new tokens exceeds the model's context window
with `PromptTooLongError`, naming both numbers, before generating; `nn_answer`, which uses no
language model, still answers. Questions in any language or script are searched and answered as is.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generator, Optional, Sequence

from llama_index.core.base.base_query_engine import BaseQueryEngine
from llama_index.core.base.response.schema import RESPONSE_TYPE, Response, StreamingResponse
from llama_index.core.callbacks import CallbackManager
from llama_index.core.schema import NodeWithScore, QueryBundle
from llama_index.core.workflow import Event, StartEvent, StopEvent, Workflow, step

from pipeline.config import Config, ConfigError
from pipeline.errors import UserFacingError
from pipeline.grade import GradeCalibration, grade_features
from pipeline.index import finetuned_embedder_config, open_index
from pipeline.models import load_llm
from pipeline.systems import SystemSpec, get_system, uses_finetuned_embedder

if TYPE_CHECKING:
    from rerank import PairScoringReranker
    from rewrite import Condensed, Condenser, QueryRewriter

NOT_FOUND_ANSWER = "I could not find this in the knowledge base, so I cannot answer it from there."


def refusal_text(searched: str = "") -> str:
    """The grounded refusal: that the knowledge base has no answer, and what was searched."""
    return f"{NOT_FOUND_ANSWER} Searched for: \"{searched}\"." if searched else NOT_FOUND_ANSWER


class QuestionError(UserFacingError, ValueError):
    """The question cannot be asked (empty, only whitespace, or not text)."""


class ArtifactMissingError(UserFacingError, FileNotFoundError):
    """A trained part a system needs has not been built yet; the message gives the command."""


# ------------------------------------------------------------------------------------------------
# components, shared between systems
# ------------------------------------------------------------------------------------------------


LLM_KINDS = ("base", "plain", "raft", "rewriter", "condenser")


class Components:
    """Lazily built, shared parts of every system. Thread-safe: the UI asks from several threads.

    `kb`: an open knowledge base to use instead of opening `index.dir`. `llms`: LlamaIndex LLMs to
    use instead of loading the configured ones, by kind ('base', 'plain', 'raft', 'rewriter',
    'condenser': the trained condenser, rewrite.condense_adapter): a
    model already in memory, a hosted client, or a recording double in tests."""

    def __init__(self, config: Config, *, kb: Any = None, llms: Optional[dict[str, Any]] = None) -> None:
        unknown = sorted(set(llms or {}) - set(LLM_KINDS))
        if unknown:
            raise ConfigError(f"Components(llms=...): unknown kind(s) {', '.join(map(repr, unknown))}; use {', '.join(LLM_KINDS)}")
        self.config = config
        self._kb = kb
        self._cache: dict[Any, Any] = {("llm", kind): llm for kind, llm in (llms or {}).items()}
        self._lock = threading.RLock()
        self._bank: Any = None  # pipeline.models.AdapterBank: the base LM shared by every adapter

    def _once(self, key: Any, build):
        with self._lock:
            if key not in self._cache:
                self._cache[key] = build()
            return self._cache[key]

    @property
    def kb(self) -> Any:
        if self._kb is None:
            with self._lock:
                if self._kb is None:
                    self._kb = open_index(self.config)
        return self._kb

    def kb_for(self, finetuned: bool) -> Any:
        """The base embedder's knowledge base, or (finetuned) the one at index.finetuned_dir,
        embedded with the fine-tuned embedder: the same nodes, other vectors."""
        if not finetuned:
            return self.kb

        def build():
            return open_index(finetuned_embedder_config(self.config))

        return self._once("kb-finetuned", build)

    def grade_calibration(self) -> Optional[GradeCalibration]:
        """The agent's fitted grade (agent.calibration), loaded once; None: grade by the raw score."""
        path = self.config.agent.calibration
        return None if not path else self._once("grade-calibration", lambda: GradeCalibration.load(path))

    def retriever(self, mode: str, top_k: int, *, finetuned: bool = False) -> Any:
        from pipeline.retrieve import build_retriever

        return self._once(("retriever", mode, top_k, finetuned), lambda: build_retriever(self.config, mode=mode, top_k=top_k, kb=self.kb_for(finetuned)))

    def reranker(self) -> "PairScoringReranker":
        def build():
            from rerank import build_reranker

            if self.config.rerank.kind == "query-likelihood":
                self._require(self.config.rerank.model, f"python -m finetune.ql_reranker --config {self.config.profile}", "the query-likelihood reranker adapter")
            else:
                self._require(self.config.rerank.model, f"python -m finetune.reranker --config {self.config.profile}", "the cross-encoder reranker")
            return build_reranker(self.config)

        return self._once("reranker", build)

    def _adapter_source(self, kind: str) -> tuple[Optional[str], str]:
        """(configured folder, the command that builds it) of an adapter kind."""
        sources = {
            "plain": (self.config.finetune.generator.output, "python -m finetune.generator --mode plain"),
            "raft": (self.config.finetune.raft.output, "python -m finetune.generator --mode raft"),
            "rewriter": (self.config.rewrite.adapter, "python -m finetune.rewriter"),
            "condenser": (self.config.rewrite.condense_adapter, "python -m finetune.condenser"),
        }
        if kind not in sources:
            raise ValueError(f"unknown generator kind {kind!r}")
        return sources[kind]

    def adapter_path(self, kind: str) -> Optional[str]:
        if kind == "base":
            return None
        path, command = self._adapter_source(kind)
        if path is None:
            return None
        self._require(path, f"{command} --config {self.config.profile}", f"the {kind} adapter")
        return path

    def llm(self, kind: str) -> Any:
        """The base LM ('base') or the base LM with the 'plain', 'raft', 'rewriter' or 'condenser' adapter."""

        def build():
            # the copy bias belongs to the generator trained on retrieval: the other kinds write rewrites or no-passage answers
            llm = load_llm(self.config, adapter=self.adapter_path(kind), verbose=False, copy_bias=self.config.generator.copy_bias if kind == "raft" else None)
            if hasattr(llm, "share_base") and not self.config.generator.merge_adapter:
                # one base model in memory; each kind is a PEFT adapter switched on per call (the
                # adapters on disk load with the base model, before its weights are prepacked)
                self._bank = llm.share_base(self._bank, preload=self._built_adapters())
            return llm

        return self._once(("llm", kind), build)

    def rewriter(self, with_adapter: bool) -> "QueryRewriter":
        def build():
            from rewrite import MODES, QueryRewriter

            kind = "rewriter" if with_adapter and self.config.rewrite.adapter else "base"
            cfg = self.config.rewrite
            return QueryRewriter(
                lambda: self.llm(kind),
                # its default mode only; each call names its own (`none`, `condense`: the retries' modes)
                mode=cfg.mode if cfg.mode in MODES and cfg.mode != "none" else "hyde",
                n_queries=cfg.n_queries,
                max_new_tokens=cfg.max_new_tokens,
                model_id=f"{self.config.generator.model}+{kind}",
            )

        return self._once(("rewriter", with_adapter), build)

    def condenser(self, with_adapter: bool) -> "Condenser":
        """The condense step: the trained condenser (rewrite.condense_adapter) when `with_adapter`
        and set, else the base LM with the same prompt (zero-shot). Loads no model until a message
        passes the gate."""

        def build():
            from rewrite import Condenser

            kind = "condenser" if with_adapter and self.config.rewrite.condense_adapter else "base"
            return Condenser(lambda: self.llm(kind), max_new_tokens=self.config.rewrite.max_new_tokens, max_questions=self.config.rewrite.n_queries)

        return self._once(("condenser", with_adapter), build)

    def condense(self, with_adapter: bool, questions: Sequence[str], *, show_progress: bool = False) -> list["Condensed"]:
        """The condenser's result for each single question (no history), memoized per question so
        that a batched pass ahead of the rounds (query_batch) is read by each round."""
        memo = self._once(("condensed", with_adapter), dict)
        todo = list(dict.fromkeys(q for q in questions if q not in memo))
        if todo:
            for question, made in zip(todo, self.condenser(with_adapter).condense_many([(q, []) for q in todo], show_progress=show_progress)):
                with self._lock:
                    if len(memo) >= 4096:  # bounded: a long-running UI process
                        memo.pop(next(iter(memo)))
                    memo[question] = made
        return [memo[q] for q in questions]

    def remember_condensed(self, with_adapter: bool, made: "Condensed") -> None:
        """A rewrite made elsewhere (the chat's condense step): the engine's condense step then
        searches its question(s) as they are, with no second LM call."""
        from rewrite import Condensed

        memo = self._once(("condensed", with_adapter), dict)
        with self._lock:
            memo[made.question] = Condensed(made.question, made.questions, False, "condensed by the chat", "chat")

    def _built_adapters(self) -> list[str]:
        """The adapters of every kind that exist on disk now."""
        paths = [self._adapter_source(kind)[0] for kind in ("plain", "raft", "rewriter", "condenser")]
        return [p for p in paths if p and (Path(p) / "adapter_config.json").is_file()]

    @staticmethod
    def _require(path: str, command: str, what: str) -> None:
        local = Path(path)
        looks_local = path.startswith((".", "/", "~")) or path.count("/") != 1
        if looks_local and not local.exists():
            raise ArtifactMissingError(f"{what} is not built: {path} does not exist. Build it with `{command}` (or run `python -m eval.compare`, which builds what is missing)")


# ------------------------------------------------------------------------------------------------
# per-query state and workflow events
# ------------------------------------------------------------------------------------------------


@dataclass
class QueryState:
    question: str
    spec: SystemSpec
    generate: bool = True
    round: int = 0
    rounds: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    best_nodes: list[NodeWithScore] = field(default_factory=list)
    best_score: float = float("-inf")
    route: str = ""  # why the first round used its rewrite mode
    search_question: str = ""  # the condenser's standalone rewrite, which the generator reads instead of the question
    low_confidence: bool = False  # every round graded weak; answered from the best one (agent.on_weak)
    not_used: list[dict[str, Any]] = field(default_factory=list)  # a refusal's closest passages, not used
    graded_ids: set[str] = field(default_factory=set)  # passages an earlier round graded: a retry looks past them
    started: float = field(default_factory=time.perf_counter)

    @property
    def asked(self) -> str:
        """What the generator answers: the condensed question when there is one, else the question."""
        return self.search_question or self.question

    def timed(self, stage: str, seconds: float) -> None:
        self.timings[stage] = self.timings.get(stage, 0.0) + seconds


class RoundEvent(Event):
    state: Any
    mode: str


class RankedEvent(Event):
    state: Any
    nodes: list


class AnswerEvent(Event):
    state: Any
    nodes: list
    grounded: bool = True


def _node_summary(hit: NodeWithScore, keys: Sequence[str]) -> dict[str, Any]:
    meta = hit.node.metadata
    row = {"id": hit.node.node_id, "score": None if hit.score is None else round(float(hit.score), 6)}
    row.update({k: meta.get(k) for k in keys if k in meta})
    return row


def _interleave(lists: Sequence[Sequence[NodeWithScore]], limit: int) -> list[NodeWithScore]:
    """Round-robin over several ranked lists, dropping repeated ids, so each list's best come first."""
    seen: set[str] = set()
    merged: list[NodeWithScore] = []
    for rank in range(max((len(x) for x in lists), default=0)):
        for hits in lists:
            if rank < len(hits) and hits[rank].node.node_id not in seen:
                seen.add(hits[rank].node.node_id)
                merged.append(hits[rank])
    return merged[:limit]


_CITATION = re.compile(r"\s*\[(\d+)\]")


def keep_valid_citations(answer: str, n_passages: int) -> str:
    """Drop citations [n] that point at no passage actually given to the generator."""
    return _CITATION.sub(lambda m: m.group(0) if 1 <= int(m.group(1)) <= n_passages else "", answer)


class RagftWorkflow(Workflow):
    """rewrite -> retrieve -> rerank -> grade (-> retry) -> generate; see the module docstring."""

    def __init__(self, spec: SystemSpec, components: Components, **kwargs: Any) -> None:
        super().__init__(timeout=kwargs.pop("timeout", None), **kwargs)
        self.spec = spec
        self.components = components
        self.config = components.config

    # ---- helpers ---------------------------------------------------------------------------------

    def _context_k(self) -> int:
        return self.spec.top_k or (self.config.rerank.top_n if self.spec.rerank else self.config.generator.context_top_k)

    def _retrieve_mode(self) -> str:
        return self.config.retrieve.mode if self.spec.retrieve == "config" else str(self.spec.retrieve)

    def _first_mode(self, question: str) -> tuple[str, str]:
        if not self.spec.rewrite:
            return "none", "rewriting off"
        from rewrite import split_clauses

        if self.config.rewrite.mode == "condense":
            return "condense", "rewrite.mode"
        if split_clauses(question, self.config.rewrite.n_queries):
            return "decompose", "multi-part question"
        return self.config.rewrite.mode, "rewrite.mode"

    def _round(self, state: QueryState, mode: str) -> list[NodeWithScore]:
        """One rewrite + retrieve + rerank round, recorded in the state."""
        spec, config = self.spec, self.config
        record: dict[str, Any] = {"round": state.round, "mode": mode}
        started = time.perf_counter()
        rewrite = None
        searches: list[str] = []  # several: each retrieved and reranked on its own
        if mode == "condense":
            made = self.components.condense(spec.rewriter_adapter, [state.question])[0]
            record["rewrite"] = {"mode": "condense", "texts": list(made.questions), **made.as_dict()}
            if made.changed:
                searches = list(made.questions)
                state.search_question = " ".join(made.questions)
        elif mode != "none":
            # a retry after a condensed first round rewrites the standalone question, not the raw message
            rewrite = self.components.rewriter(spec.rewriter_adapter).rewrite(state.asked, mode)
            record["rewrite"] = rewrite.as_dict()
            if rewrite.mode in ("decompose", "keywords") and rewrite.texts:
                searches = list(rewrite.texts)  # each searched on its own (keywords: instead of the question)
        state.timed("rewrite", time.perf_counter() - started)

        started = time.perf_counter()
        candidates = max(config.rerank.candidates, self._context_k()) if spec.rerank else self._context_k()
        # a retry grades other passages than the rounds before it (their best are kept in state.best_nodes):
        # a rewrite close to the question would otherwise find, and grade, the same passages again
        exclude = set(state.graded_ids)
        retriever = self.components.retriever(self._retrieve_mode(), candidates + len(exclude), finetuned=uses_finetuned_embedder(config, spec))
        if searches:
            lists = [retriever.retrieve(text) for text in searches]
        else:
            texts = list(rewrite.texts) if rewrite is not None else []
            bundle = QueryBundle(query_str=state.asked, custom_embedding_strs=[state.asked, *texts] if texts else None)
            lists = [retriever.retrieve(bundle)]
            searches = [state.asked]
        if exclude:
            lists = [[h for h in hits if h.node.node_id not in exclude][:candidates] for hits in lists]
            record["excluded"] = len(exclude)
        state.timed("retrieve", time.perf_counter() - started)
        record["retrieved"] = [_node_summary(h, ("dense_rank", "dense_score", "bm25_rank", "bm25_score", "fusion_score")) for h in _interleave(lists, candidates * len(lists))]

        if spec.rerank and any(lists):
            started = time.perf_counter()
            lists = [self.components.reranker().postprocess_nodes(hits, query_str=text) if hits else hits for hits, text in zip(lists, searches)]
            state.timed("rerank", time.perf_counter() - started)
            record["reranked"] = [_node_summary(h, ("retrieval_rank", "retrieval_score", "rerank_score", "rerank_rank", "rerank_combined")) for h in _interleave(lists, candidates * len(lists))]
        hits = _interleave(lists, self._context_k())
        state.graded_ids.update(h.node.node_id for h in hits)
        state.rounds.append(record)
        return hits

    # ---- steps -------------------------------------------------------------------------------------

    @step
    async def start(self, ev: StartEvent) -> RoundEvent | AnswerEvent:
        state = QueryState(question=ev.get("question"), spec=self.spec, generate=bool(ev.get("generate", True)))
        if self.spec.retrieve is None:
            return AnswerEvent(state=state, nodes=[])
        mode, state.route = self._first_mode(state.question)
        return RoundEvent(state=state, mode=mode)

    @step
    async def retrieve(self, ev: RoundEvent) -> RankedEvent:
        state = ev.state
        state.round += 1
        nodes = await asyncio.to_thread(self._round, state, ev.mode)
        return RankedEvent(state=state, nodes=nodes)

    @step
    async def grade(self, ev: RankedEvent) -> RoundEvent | AnswerEvent:
        state, nodes = ev.state, ev.nodes
        record = state.rounds[-1]
        scores = [n.node.metadata.get("rerank_score") for n in nodes if n.node.metadata.get("rerank_score") is not None]
        if not self.spec.agent:
            record["grade"] = {"decision": "accept", "reason": "no agent loop"}
            return AnswerEvent(state=state, nodes=nodes)
        if not scores:
            record["grade"] = {"decision": "accept", "reason": "no rerank score to grade" if nodes else "nothing retrieved"}
            return AnswerEvent(state=state, nodes=nodes, grounded=bool(nodes))
        best, threshold = max(scores), self.config.agent.grade_threshold
        calibration = self.components.grade_calibration()
        if calibration is not None:  # the calibrated probability that these passages answer the question
            features = grade_features(nodes)
            best, threshold = calibration.probability(features), calibration.threshold
            record["features"] = {k: round(v, 6) for k, v in features.items()}
        if best > state.best_score:
            state.best_score, state.best_nodes = best, nodes
        if best >= threshold:
            record["grade"] = {"decision": "accept", "best": round(best, 6), "threshold": threshold}
            return AnswerEvent(state=state, nodes=nodes)
        # a retry is another rewrite; a system without the rewriter has nothing else to try
        if self.spec.rewrite and state.round < self.config.agent.max_rounds and self.config.agent.retry_modes:
            modes = self.config.agent.retry_modes
            next_mode = modes[(state.round - 1) % len(modes)]
            record["grade"] = {"decision": "retry", "best": round(best, 6), "threshold": threshold, "next_mode": next_mode}
            return RoundEvent(state=state, mode=next_mode)
        if self.config.agent.on_weak == "answer":
            # a bare refusal scores 0 against every reference: answer from the best round's
            # passages instead, flagged so that a caller can show or filter the low confidence
            state.low_confidence = True
            record["grade"] = {"decision": "low_confidence", "best": round(best, 6), "threshold": threshold, "best_score": round(state.best_score, 6)}
            return AnswerEvent(state=state, nodes=state.best_nodes)
        record["grade"] = {"decision": "not_found", "best": round(best, 6), "threshold": threshold}
        # the closest passages are shown as not used: the user sees what the knowledge base holds near the question
        state.not_used = [_node_summary(n, ("rerank_score", "retrieval_score")) | {"text": passage_text(n)[:300]} for n in state.best_nodes]
        return AnswerEvent(state=state, nodes=[], grounded=False)

    @step
    async def generate(self, ev: AnswerEvent) -> StopEvent:
        state = ev.state
        result = {"state": state, "nodes": ev.nodes, "grounded": ev.grounded, "answer": None}
        if state.generate:
            started = time.perf_counter()
            result["answer"] = await asyncio.to_thread(self._answer, state.asked, ev.nodes, ev.grounded)
            state.timed("generate", time.perf_counter() - started)
        return StopEvent(result=result)

    def _answer(self, question: str, nodes: list[NodeWithScore], grounded: bool) -> str:
        fixed = fixed_answer(self.spec, nodes, grounded, searched=question)
        if fixed is not None:
            return fixed
        from pipeline.generate import answer_messages, clean_answer

        llm = self.components.llm(self.spec.generator)
        passages = [passage_text(n) for n in nodes] or None
        messages = answer_messages(question, passages, max_passage_chars=self.config.generator.max_passage_chars)
        text = clean_answer(llm.chat(messages).message.content or "")
        return keep_valid_citations(text, len(nodes))


def clean_stream(deltas, n_passages: int, hold: int = 16) -> Generator[str, None, None]:
    """Stream the text that the sync path would return (`clean_answer`, valid citations only):
    the last `hold` characters wait until more text shows they are not the start of a new
    'Question:' turn or of a citation to drop; generation stops at such a turn."""
    from pipeline.generate import clean_answer

    text, emitted = "", 0
    for delta in deltas:
        text += delta
        answer = clean_answer(text)
        if answer != text.strip():  # clean_answer cut a run-on turn: the answer is complete
            break
        cleaned = keep_valid_citations(answer, n_passages)
        safe = len(cleaned) - hold
        if safe > emitted:
            yield cleaned[emitted:safe]
            emitted = safe
    final = keep_valid_citations(clean_answer(text), n_passages)
    if len(final) > emitted:
        yield final[emitted:]


def passage_text(hit: NodeWithScore) -> str:
    return hit.node.get_content()


def fixed_answer(spec: SystemSpec, nodes: list[NodeWithScore], grounded: bool, *, searched: str = "") -> Optional[str]:
    """Answers that need no LM: a not-found refusal (naming what was `searched`), or nn_answer's
    retrieved answer."""
    if not grounded or (spec.retrieve is not None and not nodes):
        return refusal_text(searched)
    if spec.generator is None:
        meta = nodes[0].node.metadata
        return meta.get("answer") or nodes[0].node.get_content()
    return None


def quoted_passage(hit: NodeWithScore, number: int, max_chars: int = 400) -> str:
    """A passage given instead of an unsupported answer, marked as a quote: a pair's answer, or the
    start of a document chunk."""
    text = str(hit.node.metadata.get("answer") or hit.node.get_content()).strip()
    text = " ".join(text.split())
    if len(text) > max_chars:
        text = text[:max_chars].rsplit(" ", 1)[0] + " …"
    return f'From the knowledge base [{number}]: "{text}"'


def check_support(config: Config, spec: SystemSpec, answer: Optional[str], nodes: Sequence[NodeWithScore], *, stream: bool = False) -> tuple[Optional[str], Optional[dict[str, Any]]]:
    """(the answer to give, its support record) for a generated answer read from `nodes`
    (generator.support_threshold, on_unsupported, quote_below; pipeline.support). None: nothing to
    check (no retrieval, no generator, a fixed answer)."""
    from pipeline.support import lexical_support, quote_threshold

    if answer is None or spec.retrieve is None or spec.generator is None or not nodes or answer.startswith(NOT_FOUND_ANSWER):
        return answer, None
    score, best = lexical_support(answer, [passage_text(n) for n in nodes])
    supported = score >= config.generator.support_threshold
    policy = config.generator.on_unsupported if spec.full_family else "keep"
    action = "none"
    if not supported and policy == "quote" and score < quote_threshold(config) and best is not None and not stream:
        answer, action = quoted_passage(nodes[best], best + 1), "quoted"
    elif not supported and policy in ("flag", "quote"):
        action = "flagged"
    record = {"score": round(score, 4), "passage": None if best is None else best + 1, "supported": supported, "threshold": config.generator.support_threshold, "action": action}
    return answer, record


# ------------------------------------------------------------------------------------------------
# the query engine
# ------------------------------------------------------------------------------------------------


def _run_coroutine(factory):
    """Run `await factory()` from sync code, also when the caller already has an event loop
    running (Jupyter, some web servers): then it runs on a fresh loop in a worker thread.
    (A workflow's `run()` schedules a task at once, so it must be called inside the loop.)"""

    async def main():
        return await factory()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(main())
    box: dict[str, Any] = {}

    def target():
        try:
            box["value"] = asyncio.run(main())
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


class RagftQueryEngine(BaseQueryEngine):
    """A named system as a LlamaIndex query engine (sync, async, streaming, batched)."""

    def __init__(self, spec: SystemSpec, components: Components, *, streaming: bool = False, callback_manager: Optional[CallbackManager] = None) -> None:
        super().__init__(callback_manager=callback_manager)
        self.spec = spec
        self.components = components
        self.config = components.config
        self.streaming = streaming

    def _get_prompt_modules(self) -> dict:
        return {}

    # ---- validation ------------------------------------------------------------------------------

    @staticmethod
    def _question(query_bundle: Any) -> str:
        question = query_bundle.query_str if isinstance(query_bundle, QueryBundle) else query_bundle
        if not isinstance(question, str):
            raise QuestionError(f"the question must be text (a str or a QueryBundle); got {type(question).__name__}")
        if not question.strip():
            raise QuestionError("the question is empty; ask a question with some text in it")
        return question.strip()

    def query(self, str_or_query_bundle: Any) -> RESPONSE_TYPE:
        self._question(str_or_query_bundle)  # before LlamaIndex's events, which fail on non-text with a pydantic dump
        return super().query(str_or_query_bundle)

    async def aquery(self, str_or_query_bundle: Any) -> RESPONSE_TYPE:
        self._question(str_or_query_bundle)
        return await super().aquery(str_or_query_bundle)

    def _workflow(self) -> RagftWorkflow:
        # a fresh workflow per run: runs never share state, so threads may query concurrently
        return RagftWorkflow(self.spec, self.components)

    # ---- queries ---------------------------------------------------------------------------------------

    def _query(self, query_bundle: QueryBundle) -> RESPONSE_TYPE:
        question = self._question(query_bundle)
        result = _run_coroutine(lambda: self._workflow().run(question=question, generate=not self.streaming))
        return self._streaming_response(result) if self.streaming else self._response(result)

    async def _aquery(self, query_bundle: QueryBundle) -> RESPONSE_TYPE:
        question = self._question(query_bundle)
        result = await self._workflow().run(question=question, generate=not self.streaming)
        return self._streaming_response(result) if self.streaming else self._response(result)

    def retrieve_only(self, question: str) -> dict[str, Any]:
        """Run every step but generation: the passages and the trace (evaluation, the UI)."""
        return _run_coroutine(lambda: self._workflow().run(question=self._question(QueryBundle(question)), generate=False))

    def _rewrite_ahead(self, questions: Sequence[str], *, show_progress: bool) -> dict[str, float]:
        """First-round rewrites of every question in one batched LM pass per mode (the rewriter
        caches them, so each question's round reads its own): ~6x the tokens/s of one question at
        a time at batch 16. Retry rounds depend on the first round's grade and stay per question.
        Returns each rewritten question's share of its pass, in seconds."""
        if self.spec.retrieve is None or not self.spec.rewrite:
            return {}
        workflow = self._workflow()
        by_mode: dict[str, list[str]] = {}
        for question in questions:
            if not isinstance(question, str) or not question.strip():
                continue  # retrieve_only refuses it with the fix
            question = question.strip()  # as retrieve_only asks it
            mode = workflow._first_mode(question)[0]
            if mode != "none":
                by_mode.setdefault(mode, []).append(question)
        shares: dict[str, float] = {}
        if "condense" in by_mode:
            for question, made in zip(by_mode["condense"], self.components.condense(self.spec.rewriter_adapter, by_mode.pop("condense"), show_progress=show_progress)):
                shares[question] = made.seconds
        for mode, batch in by_mode.items():
            for made in self.components.rewriter(self.spec.rewriter_adapter).rewrite_many(batch, mode, show_progress=show_progress):
                shares[made.question] = made.seconds
        return shares

    def query_batch(self, questions: Sequence[str], *, show_progress: bool = True) -> list[Response]:
        """Evaluation path: retrieval per question, then ONE batched generation pass."""
        from tqdm.auto import tqdm

        from pipeline.generate import answer_batch

        shares = self._rewrite_ahead(questions, show_progress=show_progress)
        results = [self.retrieve_only(q) for q in tqdm(questions, desc=f"{self.spec.name}: retrieve", disable=not show_progress or self.spec.retrieve is None)]
        for result in results:  # the first round read its rewrite from the batched pass: charge its share
            state = result["state"]
            share = shares.get(state.question, 0.0)
            state.timed("rewrite", share)
            state.started -= share  # the question's work began with its rewrite: total stays >= its stages
        answers: list[Optional[str]] = [fixed_answer(self.spec, r["nodes"], r["grounded"], searched=r["state"].asked) for r in results]
        todo = [i for i, a in enumerate(answers) if a is None]
        if todo:
            started = time.perf_counter()
            llm = self.components.llm(self.spec.generator)
            contexts = [[passage_text(n) for n in results[i]["nodes"]] or None for i in todo]
            generated = answer_batch(llm, [results[i]["state"].asked for i in todo], contexts, max_passage_chars=self.config.generator.max_passage_chars, show_progress=show_progress)
            per_question = (time.perf_counter() - started) / len(todo)
            costs = list(getattr(llm, "last_costs", None) or [])
            if len(costs) != len(todo):  # an LLM without per-prompt costs: an even share of the pass
                costs = [per_question] * len(todo)
            for i, text, cost in zip(todo, generated, costs):
                answers[i] = keep_valid_citations(text, len(results[i]["nodes"]))
                results[i]["state"].timed("generate", cost)
        responses = []
        for result, answer in zip(results, answers):
            result["answer"] = answer
            responses.append(self._response(result))
        return responses

    # ---- responses -------------------------------------------------------------------------------------

    def _metadata(self, result: dict[str, Any]) -> dict[str, Any]:
        state: QueryState = result["state"]
        timings = {stage: round(seconds, 6) for stage, seconds in state.timings.items()}
        timings["total"] = round(time.perf_counter() - state.started, 6)
        return {
            "system": self.spec.name,
            "route": state.route,
            "search_question": state.asked,
            "rewrites": [r["rewrite"] for r in state.rounds if "rewrite" in r],
            "rounds": state.rounds,
            "not_found": not result["grounded"],
            "not_used": state.not_used,
            "low_confidence": state.low_confidence,
            "timings": timings,
        }

    def _response(self, result: dict[str, Any]) -> Response:
        answer, support = check_support(self.config, self.spec, result["answer"], result["nodes"])
        metadata = self._metadata(result)
        if support is not None:
            metadata["support"] = support
        return Response(response=answer, source_nodes=list(result["nodes"]), metadata=metadata)

    def _streaming_response(self, result: dict[str, Any]) -> StreamingResponse:
        state: QueryState = result["state"]
        nodes = list(result["nodes"])
        fixed = fixed_answer(self.spec, nodes, result["grounded"], searched=state.asked)
        metadata = self._metadata(result)

        def deltas() -> Generator[str, None, None]:
            if fixed is not None:
                yield fixed
                return
            from pipeline.generate import answer_messages

            started = time.perf_counter()
            llm = self.components.llm(self.spec.generator)
            passages = [passage_text(n) for n in nodes] or None
            messages = answer_messages(state.asked, passages, max_passage_chars=self.config.generator.max_passage_chars)
            parts: list[str] = []
            for part in clean_stream((chunk.delta or "" for chunk in llm.stream_chat(messages)), len(nodes)):
                parts.append(part)
                yield part
            metadata["timings"]["generate"] = round(time.perf_counter() - started, 6)
            _, support = check_support(self.config, self.spec, "".join(parts), nodes, stream=True)  # shown, so only flagged
            if support is not None:
                metadata["support"] = support

        return StreamingResponse(response_gen=deltas(), source_nodes=nodes, metadata=metadata)


def build_query_engine(config: Config, system: str = "full", *, components: Optional[Components] = None, streaming: bool = False) -> RagftQueryEngine:
    """The query engine of a named system (pipeline.systems). Cheap: models load on first query.
    Pass the same `components` to engines of several systems to share their models and stores."""
    if not isinstance(config, Config):
        raise ConfigError(f"build_query_engine needs a Config from pipeline.load_config; got {type(config).__name__}")
    spec = get_system(system, config)
    if components is not None and components.config is not config and components.config != config:
        raise ConfigError("the shared components were built for another config; build one Components per config")
    return RagftQueryEngine(spec, components or Components(config), streaming=streaming)

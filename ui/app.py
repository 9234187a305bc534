"""ragft chat: ask any named system and see why it answered.

    streamlit run ui/app.py                                   # the default profile (smollm2), http://127.0.0.1:8501
    streamlit run ui/app.py -- --config cpu                    # a profile name or a YAML file
    streamlit run ui/app.py -- --config tiny --set generator.max_new_tokens=32 --set ui.upload_max_mb=5
    RAGFT_CONFIG=cpu RAGFT_SET="retrieve.top_k=10" streamlit run ui/app.py   # the same through the environment
    streamlit run ui/app.py -- --help                          # the flags, shown in the page

The page: one conversation per browser session (its memory lives in st.session_state, never shared
between sessions), asked through pipeline.chat's chat engine, so a follow-up ("and why is it
balanced?") is condensed into a standalone question before retrieval; each answer's trace shows
what was searched ("searched as: ..."), and "New conversation" empties the memory and the page.
In the sidebar the system picker (every name of pipeline.systems),
the profile in use, the knowledge base and an upload box (.md, .txt, .pdf up to
`ui.upload_max_mb`) that adds documents through the index's own idempotent ingestion and
single-writer lock, in a background thread. Each answer streams as it is generated, citations
[n] point at the numbered sources below it (passage text, origin, retrieval rank and score,
rerank score and rank; a toggle shows every candidate before reranking), then what was searched, the rewrite, the
agent's rounds (grade, retry) and the wall time per stage, and thumbs up/down feedback that is
appended to `ui.feedback_file` (JSONL).

Safety: the server listens on 127.0.0.1 with XSRF protection (.streamlit/config.toml); retrieved
and generated text is rendered as text (ui/render.py escapes it; `unsafe_allow_html` is never
used), so a passage holding `<script>` shows those characters and runs nothing.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

# `streamlit run ui/app.py` puts ui/ on sys.path, not the repository root
_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

import streamlit as st  # noqa: E402

from pipeline.config import ConfigError, describe_config  # noqa: E402
from pipeline.errors import UserFacingError  # noqa: E402
from pipeline.index import KnowledgeBaseError, read_manifest  # noqa: E402
from pipeline.models import ModelLoadError, ModelNotFoundError  # noqa: E402
from pipeline.systems import SYSTEM_NAMES, SYSTEMS, get_system  # noqa: E402
from ui import render  # noqa: E402
from ui.backend import (  # noqa: E402
    IngestionRunner,
    UploadRefused,
    append_jsonl,
    build_parser,
    check_upload,
    missing_parts,
    resolve_settings,
    utc_now,
)

logger = logging.getLogger("ragft.ui")
CANDIDATES_HELP = "The retriever's candidate list before reranking, in its order, with each candidate's rerank rank and score (empty when the reranker dropped it)."


# ------------------------------------------------------------------------------------------------
# resources shared by every session of this process (models load once)
# ------------------------------------------------------------------------------------------------


@st.cache_resource(show_spinner=False)
def get_components(profile: str | None, overrides: tuple[str, ...]):
    from pipeline import Components, load_config

    return Components(load_config(profile, overrides))


def conversation_memory(config):
    """This browser session's conversation memory (pipeline.chat.ChatMemory, chat.memory_tokens
    tokens), created on its first use. It lives in st.session_state only: never in a cached
    resource or a module global, so no two sessions ever share a conversation."""
    if "chat_memory" not in st.session_state:
        from pipeline.chat import new_memory

        st.session_state.chat_memory = new_memory(config)
    return st.session_state.chat_memory


def chat_engine(system: str, components):
    """A chat engine of `system` on this session's memory: cheap to build (models are the shared
    Components'), so switching systems keeps the conversation."""
    from pipeline import build_chat_engine

    return build_chat_engine(components.config, system, components=components, memory=conversation_memory(components.config))


def new_conversation() -> None:
    """Forget this session's conversation: the memory the chat engine reads and the page's turns."""
    memory = st.session_state.get("chat_memory")
    if memory is not None:
        memory.reset()
    st.session_state.turns = []


@st.cache_resource(show_spinner=False)
def get_runner(profile: str | None, overrides: tuple[str, ...]) -> IngestionRunner:
    from pipeline import load_config

    return IngestionRunner(load_config(profile, overrides))


def known_errors() -> tuple[type[BaseException], ...]:
    """Errors whose message already says what is wrong and how to fix it: shown as they are."""
    from pipeline.engine import ArtifactMissingError

    return (UserFacingError, ArtifactMissingError, KnowledgeBaseError, ModelNotFoundError, ModelLoadError, ConfigError, ValueError)


# ------------------------------------------------------------------------------------------------
# one answer
# ------------------------------------------------------------------------------------------------


def node_label(components, node_id: str) -> str:
    """A candidate's origin for the candidate table (the question of a QA pair, or file › heading)."""
    try:
        meta = components.kb.nodes[node_id].metadata
    except Exception:  # removed by a later ingestion, or no index: the id is all we know
        return node_id
    if meta.get("question"):
        return str(meta["question"])
    return render.source_label(meta, node_id)


def progress_text(system: str, config=None, condensing: bool = False) -> str:
    """What the system is doing before its answer starts streaming ('Rewriting, retrieving…'),
    as it runs under `config` (no reranking where rerank.enabled is off); `condensing`: the
    message is a follow-up, rewritten first into a standalone question."""
    spec = get_system(system, config)
    steps = [name for name, on in (("condensing the follow-up", condensing), ("rewriting", spec.rewrite), ("retrieving", spec.retrieve is not None), ("reranking", spec.rerank)) if on]
    return ", ".join(steps).capitalize() + "…" if steps else "Generating…"


def ask(question: str, system: str, components, turn_id: int, answer_box) -> dict[str, Any]:
    """Run one conversation turn (condense a follow-up, then query), streaming the answer into
    `answer_box`; returns the turn to keep. A turn that fails leaves the conversation's memory as
    it was (pipeline.chat writes a turn only once its answer has streamed)."""
    turn: dict[str, Any] = {"id": turn_id, "question": question, "system": system, "answer": "", "sources": [], "metadata": {}, "candidates": [], "error": None}
    started = time.perf_counter()
    try:
        chat = chat_engine(system, components)
        condensing, _why = chat.gate(question)
        # the spinner lives in the answer's own slot, so the page keeps the same element layout
        # as when this turn is re-drawn from the history (expanders then stay open on reruns)
        with answer_box, st.spinner(progress_text(system, components.config, condensing)):
            response = chat.stream_chat(question)
        text = ""
        for delta in response.response_gen:
            text += delta
            answer_box.markdown(render.answer_markdown(text, cursor=True))
        turn["answer"] = text
        metadata = dict(response.metadata or {})
        turn["metadata"] = metadata
        turn["not_found"] = bool(metadata.get("not_found"))
        turn["sources"] = render.source_rows(response.source_nodes)
        turn["candidates"] = render.candidate_tables(metadata.get("rounds", []), lambda node_id: node_label(components, node_id))
    except known_errors() as exc:
        turn["error"] = str(exc)
    except Exception as exc:  # never a traceback in the page; the server log has it
        logger.exception("query failed: %r on %s", question, system)
        turn["error"] = f"{exc.__class__.__name__}: {exc} (the traceback is in the server log)"
    turn["wall"] = time.perf_counter() - started
    return turn


def show_answer(turn: dict[str, Any], answer_box) -> None:
    if turn["error"]:
        answer_box.error(turn["error"], icon=":material/error:")
        return
    answer_box.markdown(render.answer_markdown(turn["answer"]) if turn["answer"].strip() else "_(the model returned an empty answer)_")


def show_details(turn: dict[str, Any], feedback_file: str, profile: str) -> None:
    """Everything under an answer: caption, sources, trace, feedback."""
    if turn["error"]:
        return
    metadata = turn["metadata"]
    timings = metadata.get("timings", {})
    cited = render.citation_caption(turn["answer"], [row["text"] for row in turn["sources"]])
    st.caption(render.escape_markdown(render.join_nonempty([f"system {turn['system']}", cited, render.timing_text(timings, turn.get("wall"))])))
    if metadata.get("condensed"):  # a follow-up: say at once how it was read (the trace always says it)
        st.caption(render.escape_markdown(render.searched_as(metadata)))
    unsupported = render.support_text(metadata)
    if unsupported:
        st.warning(render.escape_markdown(unsupported), icon=":material/fact_check:")
    weak = render.low_confidence_text(metadata)
    if weak:
        st.warning(render.escape_markdown(weak), icon=":material/help:")
    if turn.get("not_found"):
        st.info("No passage of the knowledge base was good enough, so the system declined to answer from it.", icon=":material/search_off:")
        closest = render.not_used_rows(metadata)
        if closest:
            with st.expander(f"Closest passages, not used ({len(closest)})", key=f"not-used-{turn['id']}"):
                for row in closest:
                    with st.container(border=True):
                        st.caption(render.escape_markdown(f"{row['id']} · query-likelihood {render.fmt_score(row['score'])}"))
                        st.text(row["text"])  # literal text, never rendered

    sources = turn["sources"]
    if sources or turn["candidates"]:
        with st.expander(f"Sources ({len(sources)})", key=f"sources-{turn['id']}"):
            if not sources:
                st.caption("No passage was given to the generator.")
            for row in sources:
                with st.container(border=True):
                    st.markdown(render.source_header(row))
                    st.text(row["text"])  # literal text: retrieved HTML or markdown is never rendered
            if turn["candidates"] and st.toggle("Show candidates before reranking", key=f"candidates-{turn['id']}", help=CANDIDATES_HELP):
                for table in turn["candidates"]:
                    st.caption(render.escape_markdown(f"Round {table['round']} · rewrite {table['mode']} · {len(table['rows'])} candidates" + ("" if table["reranked"] else " · not reranked")))
                    # the node id stays in the data (feedback, tests) but takes no width on screen
                    st.dataframe(table["rows"], hide_index=True, width="stretch", column_config={"id": None, "source": st.column_config.TextColumn("source", width="medium")})

    rounds = render.round_lines(metadata)
    blocks = render.rewrite_blocks(metadata)
    searched = render.searched_as(metadata)
    if rounds or blocks or timings or searched:
        with st.expander("Trace: rewrite, rounds, timings", key=f"trace-{turn['id']}"):
            if searched:
                st.caption(render.escape_markdown(searched))
            if metadata.get("route"):
                st.caption(render.escape_markdown(f"first round's rewrite mode chosen by: {metadata['route']}"))
            for line in rounds:
                st.markdown("- " + render.escape_markdown(line))
            for block in blocks:
                st.markdown(f"**{render.escape_markdown(block['title'])}** (round {block['round']}, {render.escape_markdown(str(block['method']))})")
                st.text("\n".join(f"{i}. {t}" for i, t in enumerate(block["texts"], start=1)) if len(block["texts"]) > 1 else "".join(block["texts"]) or "(empty)")
            if timings:
                rows = [{"stage": stage, "seconds": round(float(timings[stage]), 4)} for stage in (*render.STAGES, "total") if stage in timings]
                if turn.get("wall") is not None:
                    rows.append({"stage": "wall (page)", "seconds": round(turn["wall"], 4)})
                st.dataframe(rows, hide_index=True)

    st.feedback("thumbs", key=f"feedback-{turn['id']}", on_change=save_feedback, args=(turn["id"], feedback_file, profile))


def save_feedback(turn_id: int, feedback_file: str, profile: str) -> None:
    rating = st.session_state.get(f"feedback-{turn_id}")
    turn = next((t for t in st.session_state.get("turns", []) if t["id"] == turn_id), None)
    if rating is None or turn is None:  # a vote taken back: the log keeps the earlier row
        return
    try:
        append_jsonl(feedback_file, render.feedback_record(turn, rating, profile=profile, timestamp=utc_now()))
        st.toast(f"Feedback saved to {feedback_file}", icon=":material/check_circle:")
    except OSError as exc:
        st.toast(f"Could not save feedback to {feedback_file}: {exc}", icon=":material/error:")


# ------------------------------------------------------------------------------------------------
# sidebar
# ------------------------------------------------------------------------------------------------


def sidebar(settings, components, runner) -> str:
    config = components.config
    st.sidebar.title("ragft chat")
    origin = {"default": "default profile", "--config": "from --config", "RAGFT_CONFIG": "from RAGFT_CONFIG"}[settings.origin]
    st.sidebar.markdown(f"Profile **{render.escape_markdown(config.profile)}** ({origin})")
    if settings.overrides:
        st.sidebar.caption("Overrides: " + render.escape_markdown(" ".join(settings.overrides)))

    default = config.ui.default_system if config.ui.default_system in SYSTEMS else "full"
    if config.ui.default_system not in SYSTEMS:
        st.sidebar.warning(f"ui.default_system={config.ui.default_system!r} is not a system; using full. Choose one of: {', '.join(SYSTEM_NAMES)}")
    system = st.sidebar.selectbox("System", SYSTEM_NAMES, index=SYSTEM_NAMES.index(default), key="system", help="Every named system of pipeline.systems; see the README's systems table.")
    spec = get_system(system, config)  # as it runs under the profile: what it needs to be built
    st.sidebar.caption(render.escape_markdown(spec.description))
    problems = missing_parts(components, spec)
    if problems:
        st.sidebar.error(f"**{system} cannot answer yet:**\n\n" + "\n".join(f"- {p}" for p in problems), icon=":material/build:")

    st.sidebar.divider()
    st.sidebar.subheader("Knowledge base")
    try:
        manifest = read_manifest(config.index.dir)
    except KnowledgeBaseError as exc:
        manifest = None
        st.sidebar.error(str(exc))
    if manifest:
        counts = manifest.get("counts", {})
        updated = str(manifest.get("updated", "?")).replace("T", " ")[:16]
        st.sidebar.caption(f"{counts.get('nodes', '?')} passages from {counts.get('documents', '?')} documents · updated {updated} UTC")
    uploads = sorted(p.name for p in Path(config.ui.uploads_dir).glob("*") if p.is_file() and not p.name.startswith("."))
    if uploads:
        with st.sidebar.expander(f"Uploaded documents ({len(uploads)})"):
            st.text("\n".join(uploads))

    with st.sidebar:
        upload_box(config, runner)
        ingestion_status(runner)
        st.divider()
        if st.button("New conversation", key="new-conversation", width="stretch", help="Forget this conversation: a follow-up after this is read on its own."):
            new_conversation()
            st.rerun()
        st.caption(f"Feedback: {render.escape_markdown(config.ui.feedback_file)}")
    return system


def upload_box(config, runner: IngestionRunner) -> None:
    max_mb = config.ui.upload_max_mb
    files = st.file_uploader(
        f"Add documents (.md, .txt, .pdf; up to {max_mb} MB)",
        accept_multiple_files=True,
        key="uploads",
        max_upload_size=max_mb,
        help="Ingested into the knowledge base in the background (idempotent: an unchanged file adds nothing). Questions are answered from the current index meanwhile.",
    )
    handled: set[str] = st.session_state.setdefault("handled_uploads", set())
    new = [f for f in files or [] if f.file_id not in handled]
    if not new:
        return
    handled.update(f.file_id for f in new)
    notes: list[tuple[str, str]] = []
    accepted: list[tuple[str, bytes]] = []
    for f in new:
        try:
            data = f.getvalue()
            check_upload(f.name, f.size, max_mb, data=data)
            accepted.append((f.name, data))
        except UploadRefused as exc:
            notes.append(("error", f"Refused {exc}"))
    if accepted:
        try:
            runner.submit(accepted)
        except UploadRefused as exc:
            notes.append(("error", f"Refused: {exc}"))
    st.session_state.upload_notes = notes


def ingestion_status(runner: IngestionRunner) -> None:
    for level, message in st.session_state.get("upload_notes", []):
        getattr(st, level)(message)
    status = runner.status()

    # while an ingestion runs, this part of the sidebar polls the runner every second; when it
    # finishes the whole page reruns once (fresh counts, polling stops)
    @st.fragment(run_every=1.0 if status.running else None)
    def panel() -> None:
        now = runner.status()
        if now.running:
            st.info(f"Ingesting {', '.join(now.files)}… (questions are still answered from the current index)", icon=":material/hourglass_top:")
        elif now.state == "done":
            st.success(now.message, icon=":material/library_add_check:")
        elif now.state == "failed":
            st.error(now.message)
        for warning in now.warnings:
            st.warning(warning)
        if status.running and not now.running:
            st.rerun()

    panel()


# ------------------------------------------------------------------------------------------------
# the page
# ------------------------------------------------------------------------------------------------


def main() -> None:
    st.set_page_config(page_title="ragft chat", page_icon=":material/forum:", layout="centered")
    argv = sys.argv[1:] if Path(sys.argv[0]).name == "app.py" else []  # under pytest, argv is pytest's
    try:
        settings = resolve_settings(argv)
        if settings.show_help or settings.show_help_config:
            st.code(build_parser().format_help() if settings.show_help else describe_config(), language=None)
            st.stop()
        components = get_components(settings.profile, settings.overrides)
        runner = get_runner(settings.profile, settings.overrides)
    except ConfigError as exc:
        st.error(f"Configuration error: {exc}")
        st.stop()

    config = components.config
    system = sidebar(settings, components, runner)
    turns: list[dict[str, Any]] = st.session_state.setdefault("turns", [])
    question = st.chat_input("Ask a question", key="question")  # pinned to the bottom wherever it is called

    intro = st.empty()  # one slot either way: the turns below keep their places between reruns
    if not turns and not (question and question.strip()):
        with intro.container():
            st.markdown("#### Ask a technical question")
            st.caption("Answers cite their sources as [n] (an answer without marks shows the passages it shares most words with, as \"supported by\"); open **Sources** under an answer to see each passage, its retrieval and rerank scores, and the candidates before reranking.")
    for turn in turns:
        with st.chat_message("user"):
            st.markdown(render.escape_markdown(turn["question"]))
        with st.chat_message("assistant"):
            show_answer(turn, st.empty())
            show_details(turn, config.ui.feedback_file, config.profile)

    if question is not None and not question.strip():  # a blank submission: say so rather than ignore it
        st.warning("The question is empty; type a question with some text in it.", icon=":material/edit_note:")
    if question and question.strip():
        turn_id = st.session_state.get("next_turn", 0)
        st.session_state.next_turn = turn_id + 1
        with st.chat_message("user"):
            st.markdown(render.escape_markdown(question))
        with st.chat_message("assistant"):
            box = st.empty()
            turn = ask(question.strip(), system, components, turn_id, box)
            turns.append(turn)
            show_answer(turn, box)
            show_details(turn, config.ui.feedback_file, config.profile)


main()

"""Pure formatting helpers of the chat app: no Streamlit, no models, so every rule is unit-tested.

    from ui.render import answer_markdown, source_rows, candidate_tables, round_lines, timing_text
    st.markdown(answer_markdown(response_text))          # escaped text, citations [n] as code chips
    rows = source_rows(response.source_nodes)             # what the sources expander shows

Retrieved and generated text is data: it may hold HTML, `<script>` or markdown that would change
the page. Everything that goes into `st.markdown` passes through `escape_markdown`, which
backslash-escapes every ASCII punctuation character (CommonMark allows it for all of them), so
`<script>` is shown as the characters `<script>`, `**` stays two asterisks and Streamlit's own
extensions (`:red[...]`, `$...$` math, `:material/icon:`) never trigger. The app never passes
`unsafe_allow_html`.
"""

from __future__ import annotations

import math
import re
from typing import Any, Iterable, Mapping, Optional, Sequence

_PUNCTUATION = set("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
_CITATION = re.compile(r"\[(\d{1,3})\]")

STAGES = ("condense", "rewrite", "retrieve", "rerank", "generate")
REWRITE_TITLES = {"hyde": "Hypothetical passage", "multi": "Phrasings", "decompose": "Sub-questions"}


# ------------------------------------------------------------------------------------------------
# text
# ------------------------------------------------------------------------------------------------


def escape_markdown(text: str) -> str:
    """`text` as markdown that renders to exactly these characters (line breaks kept)."""
    escaped = "".join("\\" + ch if ch in _PUNCTUATION else ch for ch in str(text))
    # a single newline is a soft break in markdown: two trailing spaces keep the author's lines
    return escaped.replace("\r\n", "\n").replace("\n", "  \n")


def answer_markdown(answer: str, *, cursor: bool = False) -> str:
    """The answer as safe markdown, each citation [n] shown as an inline code chip `[n]`."""
    parts, last = [], 0
    for match in _CITATION.finditer(answer):
        parts.append(escape_markdown(answer[last : match.start()]))
        parts.append(f"`[{match.group(1)}]`")  # digits only: nothing inside the code span to escape
        last = match.end()
    parts.append(escape_markdown(answer[last:]))
    text = "".join(parts)
    return text + " ▌" if cursor else text


def citations(answer: str) -> list[int]:
    """The distinct passage numbers an answer cites, in order of first use."""
    seen: list[int] = []
    for match in _CITATION.finditer(answer):
        n = int(match.group(1))
        if n not in seen:
            seen.append(n)
    return seen


_WORD = re.compile(r"[a-z0-9]+")
# words that say nothing about where an answer came from
_STOPWORDS = frozenset(
    "a an the and or but of to in on at by for with from as is are was were be been being it its this that these those "
    "which who what when where how why can could may might will would shall should do does did not no so than then there "
    "their they them he she we you i question answer".split()
)


def _content_words(text: str) -> set[str]:
    return {w for w in _WORD.findall(str(text).lower()) if w not in _STOPWORDS and len(w) > 1}


def supporting_sources(answer: str, passages: Sequence[str], *, min_overlap: float = 0.3, at_most: int = 2) -> list[int]:
    """For an answer that cites nothing: the numbers (1-based, best first) of the passages that
    hold at least `min_overlap` of its content words, at most `at_most` of them.

    The leave-one-out generator is trained on reference answers, which carry no [n] marks, so it
    writes none; the page still points at the passages an answer rests on, by word overlap, and
    says that this is how they were found. An answer with [n] marks keeps its own citations."""
    words = _content_words(answer)
    if not words or citations(answer):
        return []
    shares = [(len(words & _content_words(p)) / len(words), n) for n, p in enumerate(passages, start=1)]
    ranked = sorted((x for x in shares if x[0] >= min_overlap), key=lambda x: (-x[0], x[1]))
    return [n for _, n in ranked[:at_most]]


def citation_caption(answer: str, passages: Sequence[str]) -> str:
    """'cites [1], [3]' for the answer's own marks, else 'supported by [2] (word overlap)', else ''."""
    cited = citations(answer)
    if cited:
        return "cites " + ", ".join(f"[{n}]" for n in cited)
    supported = supporting_sources(answer, passages)
    if supported:
        return "supported by " + ", ".join(f"[{n}]" for n in supported) + " (word overlap; the answer has no [n] marks)"
    return ""


def fmt_score(value: Any, digits: int = 3) -> str:
    """A score for people: 3 decimals (or 3 significant digits for tiny fusion scores); '–' if none."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    value = float(value)
    if value != 0 and abs(value) < 0.01:
        return f"{value:.{digits}g}"
    return f"{value:.{digits}f}"


def fmt_seconds(seconds: Optional[float]) -> str:
    if seconds is None:
        return "–"
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


# ------------------------------------------------------------------------------------------------
# sources
# ------------------------------------------------------------------------------------------------


def source_label(metadata: Mapping[str, Any], node_id: str = "") -> str:
    """Where a passage comes from: 'file.md › Heading' for document chunks, 'QA qa-…' for pairs."""
    if metadata.get("kind") == "document" or ("file_name" in metadata and "question" not in metadata):
        name = metadata.get("file_name") or metadata.get("source") or node_id
        heading = metadata.get("heading")
        return f"{name} › {heading}" if heading else str(name)
    qa_id = metadata.get("id") or node_id
    return f"QA {qa_id}"


def source_rows(source_nodes: Sequence[Any]) -> list[dict[str, Any]]:
    """One plain dict per passage given to the generator, numbered as the answer cites them [n].

    Retrieval rank and score are the retriever's (before reranking: `retrieval_rank` /
    `retrieval_score` the reranker recorded); systems without a reranker have their list position
    and score there, and no rerank values."""
    rows = []
    for n, hit in enumerate(source_nodes, start=1):
        node = hit.node
        meta = dict(node.metadata)
        reranked = "rerank_score" in meta
        rows.append(
            {
                "n": n,
                "id": node.node_id,
                "kind": meta.get("kind") or ("document" if "file_name" in meta else "qa"),
                "label": source_label(meta, node.node_id),
                "question": meta.get("question"),
                "source": meta.get("source"),
                "file_name": meta.get("file_name"),
                "heading": meta.get("heading"),
                "text": node.get_content(),
                "retriever": meta.get("retriever"),
                "retrieval_rank": meta.get("retrieval_rank") if reranked else n,
                "retrieval_score": meta.get("retrieval_score") if reranked else hit.score,
                "rerank_score": meta.get("rerank_score"),
                "rerank_rank": meta.get("rerank_rank"),
                "dense_rank": meta.get("dense_rank"),
                "bm25_rank": meta.get("bm25_rank"),
            }
        )
    return rows


def source_header(row: Mapping[str, Any]) -> str:
    """One markdown line above a passage: number, origin, ranks and scores (origin escaped)."""
    parts = [f"retrieval rank {row['retrieval_rank']} · score {fmt_score(row['retrieval_score'], 4)}"]
    if row.get("rerank_score") is not None:
        parts.append(f"rerank score {fmt_score(row['rerank_score'])} · rank {row.get('rerank_rank')}")
    ranks = [f"{name} #{row[key]}" for name, key in (("dense", "dense_rank"), ("BM25", "bm25_rank")) if row.get(key) is not None]
    if ranks:
        parts.append(", ".join(ranks))
    return f"`[{row['n']}]` **{escape_markdown(row['label'])}**  \n" + escape_markdown(" · ".join(parts))


def candidate_tables(rounds: Sequence[Mapping[str, Any]], label_of=None) -> list[dict[str, Any]]:
    """Per retrieval round, the candidate list BEFORE reranking (what the retriever returned, in
    its order) with each candidate's fate after reranking: its rerank rank and score, or '–'.

    `label_of(node_id) -> str` names a candidate (the app looks the node up in the index)."""
    tables = []
    for record in rounds:
        if "retrieved" not in record:
            continue
        after = {row["id"]: row for row in record.get("reranked", [])}
        rows = []
        for position, cand in enumerate(record["retrieved"], start=1):
            kept = after.get(cand["id"], {})
            rows.append(
                {
                    "rank": position,
                    "source": label_of(cand["id"]) if label_of else cand["id"],
                    "retrieval score": _round(cand.get("score")),
                    "dense #": cand.get("dense_rank"),
                    "BM25 #": cand.get("bm25_rank"),
                    "rerank #": kept.get("rerank_rank"),
                    "rerank score": _round(kept.get("rerank_score")),
                    "id": cand["id"],
                }
            )
        tables.append({"round": record.get("round"), "mode": record.get("mode"), "reranked": "reranked" in record, "rows": rows})
    return tables


def _round(value: Any, digits: int = 4) -> Optional[float]:
    return None if value is None else round(float(value), digits)


# ------------------------------------------------------------------------------------------------
# trace: rewrite, agent rounds, timings
# ------------------------------------------------------------------------------------------------


def round_grade(record: Mapping[str, Any]) -> Optional[Mapping[str, Any]]:
    """A round's grade with the calibrated grade's features beside it: the engine keeps them on
    the round record (`features`), which tells a probability from a raw rerank score."""
    grade = record.get("grade")
    return {**grade, "features": record["features"]} if grade and record.get("features") else grade


def grade_text(grade: Optional[Mapping[str, Any]]) -> str:
    if not grade:
        return ""
    decision = grade.get("decision")
    if "best" not in grade:
        return f"{decision} ({grade.get('reason', '')})" if grade.get("reason") else str(decision)
    best, threshold = fmt_score(grade["best"]), fmt_score(grade.get("threshold"))
    if "features" in grade:  # a calibrated grade (agent.calibration): a probability, not a raw score
        best = f"P(answerable) {best}"
    if decision == "accept":
        return f"accepted: best rerank score {best} ≥ threshold {threshold}" if "features" not in grade else f"accepted: {best} ≥ threshold {threshold}"
    if decision == "retry":
        return f"weak: best {best} < {threshold} → retry with {grade.get('next_mode')}"
    if decision == "not_found":
        return f"weak: best {best} < {threshold} after the last round → not found"
    if decision == "low_confidence":
        return f"weak: best {best} < {threshold} after the last round → answered from the best round (low confidence)"
    return f"{decision}: best {best}, threshold {threshold}"


def low_confidence_text(metadata: Mapping[str, Any]) -> str:
    """A warning for an answer every round graded weak (agent.on_weak: answer), else ""."""
    if not metadata.get("low_confidence"):
        return ""
    grade = next((round_grade(r) for r in reversed(metadata.get("rounds") or []) if r.get("grade")), None) or {}
    if "features" in grade:
        why = f"P(answerable) {fmt_score(grade.get('best'))} < {fmt_score(grade.get('threshold'))}"
    else:
        why = f"best rerank score {fmt_score(grade.get('best'))} < {fmt_score(grade.get('threshold'))}"
    return f"The knowledge base may not hold the answer ({why}): this answer comes from the closest passages; check them."


def not_used_rows(metadata: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A refusal's closest passages (engine metadata `not_used`), for display as not used."""
    return [{"id": str(row.get("id", "")), "score": row.get("rerank_score"), "text": str(row.get("text", ""))} for row in metadata.get("not_used") or []]


def support_text(metadata: Mapping[str, Any]) -> str:
    """A warning for an answer that its passages do not support (pipeline.support), else ""."""
    support = metadata.get("support") or {}
    if not support or support.get("supported", True):
        return ""
    share = f"{100 * float(support.get('score', 0.0)):.0f}%"
    if support.get("action") == "quoted":
        return f"The model's answer was not supported by the passages (only {share} of it in passage [{support.get('passage')}]): the passage is quoted instead."
    return f"Check this answer: only {share} of its words come, in order, from one passage (best: [{support.get('passage')}]); the rest is the model's own text."


def round_lines(metadata: Mapping[str, Any]) -> list[str]:
    """One compact line per retrieval round: mode, candidates, reranked, grade decision."""
    lines = []
    for record in metadata.get("rounds", []):
        parts = [f"Round {record.get('round')}", f"rewrite {record.get('mode')}"]
        rewrite = record.get("rewrite")
        if rewrite and rewrite.get("method") not in (None, "llm"):
            parts[-1] += f" ({rewrite['method']})"
        parts.append(f"{len(record.get('retrieved', []))} candidates")
        if "reranked" in record:
            scores = [r.get("rerank_score") for r in record["reranked"] if r.get("rerank_score") is not None]
            parts.append(f"reranked, best {fmt_score(max(scores)) if scores else '–'}")
        grade = grade_text(round_grade(record))
        if grade:
            parts.append(grade)
        lines.append(" · ".join(parts))
    return lines


def rewrite_blocks(metadata: Mapping[str, Any]) -> list[dict[str, Any]]:
    """What each round's rewrite produced: title, mode, method and texts (raw text, not markdown)."""
    blocks = []
    for record in metadata.get("rounds", []):
        rewrite = record.get("rewrite")
        if not rewrite:
            continue
        blocks.append(
            {
                "round": record.get("round"),
                "title": REWRITE_TITLES.get(rewrite.get("mode"), str(rewrite.get("mode"))),
                "mode": rewrite.get("mode"),
                "method": rewrite.get("method"),
                "texts": [str(t) for t in rewrite.get("texts", [])],
            }
        )
    return blocks


def searched_as(metadata: Mapping[str, Any]) -> str:
    """'searched as: <standalone question>' and how it came about (plain text, to be escaped):
    condensed from the conversation by the model, or the message as typed and why."""
    question = " | ".join(line for line in str(metadata.get("standalone_question") or "").splitlines() if line.strip())  # a compound message: one search per ask
    if not question:
        return ""
    condense = metadata.get("condense") or {}
    reason = condense.get("reason", "")
    if metadata.get("condensed"):
        how = "the previous question + this message (the model's rewrite was unusable)" if condense.get("method") == "fallback" else "rewritten by the condenser"
        return f"searched as: {question} ({how}; {reason})" if reason else f"searched as: {question} ({how})"
    return f"searched as: {question} (the message as typed; {reason})" if reason else f"searched as: {question} (the message as typed)"


def timing_text(timings: Mapping[str, float], wall: Optional[float] = None) -> str:
    """'condense 90 ms · rewrite 120 ms · retrieve 45 ms · … · total 1.23 s' (stages that ran, in
    pipeline order; condense only when the model condensed the message: the gate alone costs 0)."""
    parts = [f"{stage} {fmt_seconds(timings[stage])}" for stage in STAGES if stage in timings and not (stage == "condense" and not timings[stage])]
    total = wall if wall is not None else timings.get("total")
    if total is not None:
        parts.append(f"total {fmt_seconds(total)}")
    return " · ".join(parts)


# ------------------------------------------------------------------------------------------------
# feedback
# ------------------------------------------------------------------------------------------------


def feedback_record(turn: Mapping[str, Any], rating: int, *, profile: str, timestamp: str) -> dict[str, Any]:
    """The JSONL row of one thumbs up (rating 1) / down (0) on an answer."""
    if rating not in (0, 1):
        raise ValueError(f"feedback rating must be 0 (thumbs down) or 1 (thumbs up); got {rating!r}")
    return {
        "time": timestamp,
        "rating": "up" if rating == 1 else "down",
        "question": turn["question"],
        "searched_as": (turn.get("metadata") or {}).get("standalone_question", turn["question"]),
        "answer": turn.get("answer", ""),
        "system": turn["system"],
        "profile": profile,
        "not_found": bool(turn.get("not_found")),
        "sources": [
            {k: row.get(k) for k in ("n", "id", "label", "source", "retrieval_rank", "retrieval_score", "rerank_score", "rerank_rank")}
            for row in turn.get("sources", [])
        ],
    }


def join_nonempty(parts: Iterable[str], sep: str = " · ") -> str:
    return sep.join(p for p in parts if p)

"""finetune.doc2query: question parsing, the consistency filter, the resumable builder (a scripted
LM and the micro LM), the reranker's `synthetic` option, the CLI."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from finetune.doc2query import (
    DOC2QUERY_ASK,
    DOC2QUERY_SYSTEM,
    SyntheticQuestion,
    build_doc2query,
    copies_passage,
    doc2query_messages,
    filter_synthetic_queries,
    load_synthetic_pairs,
    main,
    parse_question,
)
from finetune.synthetic import ChunkLog, builder_digest, report_path
from pipeline.config import load_config
from pipeline.data import DataError, load_split

# --------------------------------------------------------------------------------------------
# pure parts
# --------------------------------------------------------------------------------------------


def test_parse_question_takes_the_first_question_without_labels():
    assert parse_question("1. Question: What is a binary heap? It keeps the minimum.") == "What is a binary heap?"
    assert parse_question('Sure! Here is one: "How does   TCP retransmit lost segments?"\nmore') == "How does TCP retransmit lost segments?"
    assert parse_question("A user asks: What is Python 3.12 good for? Then...") == "What is Python 3.12 good for?"
    assert parse_question("Which index suits range scans?\nQuestion: another one?") == "Which index suits range scans?"
    assert parse_question("The passage explains heaps.\nWhy are heaps complete trees?") == "Why are heaps complete trees?"
    assert parse_question("A statement, not a question.") == "" and parse_question("") == "" and parse_question("   \n ") == ""


def test_copies_passage_is_a_run_of_the_passages_words():
    passage = "A binary heap keeps the smallest key at the root. Insertion is O(log n)."
    assert copies_passage("a binary heap keeps the smallest key at the root", passage)
    assert copies_passage("Insertion is O(log n)?", passage)
    assert not copies_passage("Which heap keeps the smallest key at the root?", passage)
    assert not copies_passage("", passage)


def test_prompt_has_the_passage_cut_to_max_chars():
    messages = doc2query_messages("word " * 100, max_chars=20)
    assert messages[0].content == DOC2QUERY_SYSTEM
    assert messages[1].content == "Passage: " + ("word " * 4).strip() + " ...\n\n" + DOC2QUERY_ASK
    with pytest.raises(ValueError, match="non-empty"):
        doc2query_messages("  ")


PASSAGES = {
    "p1": "A binary heap keeps the smallest key at the root.",
    "p2": "TCP retransmits segments that are not acknowledged in time.",
    "p3": "A B-tree stays balanced by splitting full nodes.",
}


def test_filter_keeps_retrieved_questions_with_their_rank_and_says_why_others_go():
    candidates = [
        ("p1", "Which structure keeps the smallest key at the root?"),  # kept: rank 2
        ("p1", "   "),  # empty
        ("p1", "A binary heap keeps the smallest key at the root"),  # copies its passage
        ("p2", "which  STRUCTURE keeps the smallest key at the root"),  # same words as the first kept
        ("p2", "Why are unacknowledged segments sent again?"),  # p2 is 4th: beyond top_k=3
        ("p3", "How does a B-tree stay balanced?"),  # already in the knowledge base
        ("p3", "What happens to a full node in a B-tree?"),  # kept: rank 1
        ("p3", "ok?"),  # too short to be a question
    ]
    ranked = [["p2", "p1", "p3"], [], ["p1"], ["p1", "p2"], ["p3", "p1", "p4", "p2"], ["p3"], ["p3", "p2"], ["p3"]]
    before = (copy.deepcopy(candidates), copy.deepcopy(ranked))
    result = filter_synthetic_queries(candidates, ranked, 3, passages=PASSAGES, existing=["How does a B-tree stay balanced?"])
    assert result.kept == [
        SyntheticQuestion("p1", "Which structure keeps the smallest key at the root?", 2),
        SyntheticQuestion("p3", "What happens to a full node in a B-tree?", 1),
    ]
    assert result.dropped == {"empty": 2, "copies_passage": 1, "duplicate": 2, "not_retrieved": 1}
    assert (candidates, ranked) == before  # inputs untouched


def test_a_duplicate_counts_only_against_a_kept_question():
    question = "Which structure keeps the smallest key at the root?"
    result = filter_synthetic_queries([("p1", question), ("p1", question + "  "), ("p2", question)], [["p2"], ["p1"], ["p2"]], 1)
    # the first is not retrieved, so the second (same words) may be kept; the third then duplicates it
    assert result.kept == [SyntheticQuestion("p1", question, 1)]
    assert result.dropped == {"empty": 0, "copies_passage": 0, "duplicate": 1, "not_retrieved": 1}


def test_filter_rejects_mismatched_inputs_and_a_bad_top_k():
    with pytest.raises(ValueError, match="2 candidates but 1 ranked lists"):
        filter_synthetic_queries([("p1", "What is it about?"), ("p2", "What else is there?")], [["p1"]], 3)
    with pytest.raises(ValueError, match="top_k must be an integer >= 1; got 0"):
        filter_synthetic_queries([], [], 0)


def test_chunk_log_drops_a_torn_last_line_and_other_settings(tmp_path):
    output = tmp_path / "out.jsonl"
    log = ChunkLog(output, "aaaa")
    log.append([{"key": "p1", "kept": []}, {"key": "p2", "kept": [1]}])
    with open(log.path, "a", encoding="utf-8") as handle:
        handle.write('{"key": "p3", "ke')  # a killed run
    assert list(log.load()) == ["p1", "p2"]
    log.append([{"key": "p3", "kept": []}])
    assert list(ChunkLog(output, "aaaa").load()) == ["p1", "p2", "p3"]
    assert ChunkLog(output, "bbbb").load() == {} and not log.path.exists()  # other settings: started over


# --------------------------------------------------------------------------------------------
# the builder
# --------------------------------------------------------------------------------------------


class ScriptedLM:
    """Stands in for LocalCausalLM: per passage, sample 0 asks about the passage's first words,
    sample 1 is empty, sample 2 repeats sample 0. Counts the prompts it generated for; raises on
    the call number `fail_on` (an interrupted run)."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.calls, self.prompts, self.fail_on = 0, 0, fail_on
        self.temperatures = []

    def render(self, messages):
        return messages[-1].content.removeprefix("Passage: ").removesuffix("\n\n" + DOC2QUERY_ASK)

    def generate_batch(self, prompts, *, max_new_tokens=None, temperature=None, show_progress=True):
        self.calls += 1
        if self.fail_on == self.calls:
            raise KeyboardInterrupt
        self.prompts += len(prompts)
        self.temperatures.append(temperature)
        out = []
        for i, passage in enumerate(prompts):
            words = passage.split()[:6]
            out.append(["Question: what about " + " ".join(words) + "? and more", "", "what about " + " ".join(words) + "?"][i % 3])
        return out


@pytest.fixture()
def small_kb(small_data_dir, hash_embedding_cls, tmp_path):
    """The project's knowledge base over the 40 small train pairs, hash-embedded (no model loads)."""
    from pipeline.index import KnowledgeBase, qa_nodes

    config = _config(small_data_dir, tmp_path)
    kb = KnowledgeBase.from_nodes(config, qa_nodes(load_split(small_data_dir, "train"), split="train"), embed_model=hash_embedding_cls())
    yield kb
    kb.close()


def _config(data_dir, run_dir, *extra):
    return load_config("tiny", [f"run_dir={run_dir}", f"data.dir={data_dir}", "finetune.doc2query.chunk_size=10", *extra])


def test_builder_writes_the_kept_questions_with_passage_and_rank(small_data_dir, small_kb, tmp_path):
    from finetune.reranker import passage_text
    from llama_index.core.schema import QueryBundle
    from pipeline.retrieve import build_retriever

    config = _config(small_data_dir, tmp_path)
    lm = ScriptedLM()
    report = build_doc2query(config, kb=small_kb, llm=lm, show_progress=False, log=lambda *_: None)
    output = Path(config.finetune.doc2query.output)
    rows = [json.loads(line) for line in output.read_text().splitlines()]

    assert lm.prompts == 40 * 3 and set(lm.temperatures) == {0.7}  # 3 sampled questions per passage
    assert report["passages"] == 40 and report["generated"] == 120
    # sample 1 is empty; sample 2 duplicates sample 0 when that was kept, else it is not retrieved either
    kept = report["kept"]
    assert report["dropped"] == {"empty": 40, "copies_passage": 0, "duplicate": kept, "not_retrieved": 2 * (40 - kept)}
    assert kept == len(rows) >= 30  # questions on a passage's own words mostly find it
    assert report["passages_with_a_kept_question"] == kept  # one distinct question per passage
    retriever = build_retriever(config, mode=config.retrieve.mode, top_k=3, kb=small_kb)
    for row in rows:
        assert set(row) == {"question", "answer", "source_id", "rank"}
        node = small_kb.nodes[row["source_id"]]
        assert row["answer"] == passage_text(node) == node.metadata["answer"]
        assert row["question"] == parse_question("what about " + " ".join(row["answer"].split()[:6]) + "?")  # sample 0, its label cut
        ranked = [h.node.node_id for h in retriever.retrieve(QueryBundle(row["question"]))]
        assert 1 <= row["rank"] <= 3 and ranked.index(row["source_id"]) + 1 == row["rank"]
    assert sum(report["kept_by_rank"].values()) == len(rows)
    written = json.loads(report_path(output).read_text())
    assert written["kept"] == len(rows)
    # what eval.build compares to reuse the file: the digest its work file is keyed by, and the limit
    assert (written["digest"], written["limit"]) == (builder_digest(config, "doc2query", config.finetune.doc2query), None)
    # where the splits were prepared from is not what is read; the filter's depth is
    moved = _config(small_data_dir, tmp_path, "data.input=elsewhere/raw.jsonl")
    deeper = _config(small_data_dir, tmp_path, "finetune.doc2query.top_k=4")
    assert builder_digest(moved, "doc2query", moved.finetune.doc2query) == written["digest"] != builder_digest(deeper, "doc2query", deeper.finetune.doc2query)
    assert not list(output.parent.glob(".*.partial"))  # the work file is gone once complete
    # what finetune.reranker.synthetic reads
    assert load_synthetic_pairs(output, "finetune.reranker.synthetic") == [{"question": r["question"], "answer": r["answer"]} for r in rows]


def test_an_interrupted_run_continues_after_its_last_chunk(small_data_dir, small_kb, tmp_path):
    straight = _config(small_data_dir, tmp_path / "a")
    build_doc2query(straight, kb=small_kb, llm=ScriptedLM(), show_progress=False, log=lambda *_: None)

    config = _config(small_data_dir, tmp_path / "b")
    output = Path(config.finetune.doc2query.output)
    with pytest.raises(KeyboardInterrupt):
        build_doc2query(config, kb=small_kb, llm=ScriptedLM(fail_on=3), show_progress=False, log=lambda *_: None)
    assert not output.exists()  # written only when complete
    (work,) = output.parent.glob(".*.partial")
    assert len(work.read_text().splitlines()) == 20  # two chunks of 10 passages finished
    lm = ScriptedLM()
    report = build_doc2query(config, kb=small_kb, llm=lm, show_progress=False, log=lambda *_: None)
    assert lm.prompts == 20 * 3 and report["resumed_passages"] == 20
    assert output.read_text() == Path(straight.finetune.doc2query.output).read_text()


def test_smoke_with_the_micro_lm(tiny_lm_dir, small_data_dir, small_kb, tmp_path):
    """The real path: load_llm's base model sampling through generate_batch, then the filter."""
    config = _config(small_data_dir, tmp_path, f"generator.model={tiny_lm_dir}", "finetune.doc2query.max_new_tokens=12", "finetune.doc2query.questions=2", "finetune.doc2query.limit=8")
    lines = []
    report = build_doc2query(config, kb=small_kb, show_progress=False, log=lines.append)
    rows = [json.loads(line) for line in Path(config.finetune.doc2query.output).read_text().splitlines()]
    first_eight = list(small_kb.nodes)[:8]
    assert report["passages"] == 8 and report["generated"] == 16
    assert report["kept"] + sum(report["dropped"].values()) == 16 and report["kept"] == len(rows)
    assert all(r["source_id"] in first_eight and 1 <= r["rank"] <= 3 and r["question"].strip() for r in rows)
    assert lines[-1].startswith("doc2query: kept ")
    # a limited run keeps its work file for the run over every passage
    assert len(list(Path(config.finetune.doc2query.output).parent.glob(".*.partial"))) == 1


# --------------------------------------------------------------------------------------------
# the reranker option and the command line
# --------------------------------------------------------------------------------------------


def test_reranker_mines_negatives_for_the_synthetic_pairs_too(small_data_dir, small_kb, tmp_path, monkeypatch):
    """finetune.reranker.synthetic: the pairs follow the (limited) train questions into mining and
    example building; their own passage is never one of their negatives."""
    import finetune.reranker as reranker

    synthetic = tmp_path / "syn.jsonl"
    train = load_split(small_data_dir, "train")
    pairs = [{"question": f"what about {r['answer'][:30]}?", "answer": r["answer"]} for r in train[10:13]]
    synthetic.write_text("".join(json.dumps({**p, "source_id": "x", "rank": 1}) + "\n" for p in pairs))
    config = _config(small_data_dir, tmp_path, "finetune.reranker.limit=4", f"finetune.reranker.synthetic={synthetic}")
    seen = {}

    def stop_after(records, hard, num_random, seed):
        seen.update(records=list(records), hard=list(hard))
        raise KeyboardInterrupt  # enough: training itself is the reranker tests' business

    monkeypatch.setattr(reranker, "open_knowledge_base", lambda config: small_kb)
    monkeypatch.setattr(reranker, "build_examples", stop_after)
    with pytest.raises(KeyboardInterrupt):
        reranker.run(config, show_progress=False, log=lambda *_: None)
    assert seen["records"] == [*train[:4], *pairs]
    assert all(len(h) == 2 for h in seen["hard"])  # tiny profile: 2 hard negatives each
    assert all(p["answer"] not in h for p, h in zip(pairs, seen["hard"][4:]))


def test_embedder_trains_on_the_synthetic_pairs_too(small_data_dir, small_kb, tmp_path, monkeypatch):
    """finetune.embedder.synthetic: the pairs follow the (limited) train questions into mining and
    the triplets; their own passage is never their hard negative."""
    import finetune.embedder as embedder

    synthetic = tmp_path / "syn.jsonl"
    train = load_split(small_data_dir, "train")
    pairs = [{"question": f"what about {r['answer'][:30]}?", "answer": r["answer"]} for r in train[10:13]]
    synthetic.write_text("".join(json.dumps({**p, "source_id": "x", "rank": 1}) + "\n" for p in pairs))
    config = _config(small_data_dir, tmp_path, "finetune.embedder.limit=4", "finetune.embedder.hard_negatives=1", f"finetune.embedder.synthetic={synthetic}")
    seen = {}

    def stop_after(records, hard, num_negatives, seed):
        seen.update(records=list(records), hard=list(hard))
        raise KeyboardInterrupt  # enough: training itself is test_embedder's business

    monkeypatch.setattr(embedder, "open_knowledge_base", lambda config: small_kb)
    monkeypatch.setattr(embedder, "triplet_rows", stop_after)
    with pytest.raises(KeyboardInterrupt):
        embedder.run(config, show_progress=False, log=lambda *_: None)
    assert seen["records"] == [*train[:4], *pairs]
    assert all(len(h) == 1 for h in seen["hard"])
    assert all(p["answer"] not in h for p, h in zip(pairs, seen["hard"][4:]))


def test_embedder_names_a_missing_synthetic_file(small_data_dir, tmp_path, capsys):
    from finetune.embedder import main as embedder_main

    code = embedder_main(["--config", "tiny", "--set", f"run_dir={tmp_path}", "--set", f"data.dir={small_data_dir}", "--set", f"finetune.embedder.synthetic={tmp_path}/none.jsonl"])
    err = capsys.readouterr().err
    assert code == 2 and "finetune.embedder.synthetic=" in err and "none.jsonl: no such file" in err and "python -m finetune.doc2query" in err


def test_reranker_names_a_missing_synthetic_file(small_data_dir, tmp_path, capsys):
    from finetune.reranker import main as reranker_main

    code = reranker_main(["--config", "tiny", "--set", f"run_dir={tmp_path}", "--set", f"data.dir={small_data_dir}", "--set", f"finetune.reranker.synthetic={tmp_path}/none.jsonl"])
    err = capsys.readouterr().err
    assert code == 2 and "none.jsonl: no such file" in err and "python -m finetune.doc2query" in err


def test_bad_synthetic_row_names_file_and_line(tmp_path):
    path = tmp_path / "syn.jsonl"
    path.write_text('{"question": "What is it?", "answer": "A thing."}\n{"question": "", "answer": "x"}\n')
    with pytest.raises(DataError, match=r"syn.jsonl:2: field 'question' is empty; rebuild it with python -m finetune.doc2query"):
        load_synthetic_pairs(path, "finetune.reranker.synthetic")


def test_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for flag in ("--config", "--set", "--help-config", "--output", "--limit", "--no-resume", "--no-progress"):
        assert flag in text
    assert "consistency filter" in text


def test_cli_reports_a_missing_knowledge_base(small_data_dir, tmp_path, capsys):
    assert main(["--config", "tiny", "--set", f"run_dir={tmp_path}", "--set", f"data.dir={small_data_dir}", "--no-progress"]) == 2
    assert "python -m pipeline.index" in capsys.readouterr().err


def test_cli_refuses_a_bad_limit(tmp_path, capsys):
    assert main(["--config", "tiny", "--set", f"run_dir={tmp_path}", "--limit", "0"]) == 2
    assert "finetune.doc2query.limit must be > 0; got 0" in capsys.readouterr().err

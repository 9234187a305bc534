"""finetune.judged_rewrites: the choice of a rewrite by the gold passage's rank, the answers-only
corpus, the builder (a scripted LM and the micro LM), the rewriter's `targets` option, the CLI."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from finetune.judged_rewrites import (
    JudgedRewrite,
    answer_corpus,
    build_judged_rewrites,
    judged_targets,
    main,
    rank_of,
    select_judged_rewrites,
)
from finetune.synthetic import report_path
from pipeline.config import load_config
from pipeline.data import DataError, load_split

Q = "What keeps a B-tree balanced?"

# --------------------------------------------------------------------------------------------
# the choice (pure)
# --------------------------------------------------------------------------------------------


def test_rank_of_is_one_based_and_none_when_missing():
    assert rank_of("g", ["x", "g"]) == 2 and rank_of("g", ["g"]) == 1 and rank_of("g", ["x"]) is None and rank_of("g", []) is None


def test_the_best_of_several_samples_is_chosen():
    samples = ["splits nodes", "full nodes are split in two", "keys move to the parent"]
    ranked = [["x", "y", "g"], ["g", "x"], ["x", "g"]]
    before = (list(samples), copy.deepcopy(ranked))
    chosen = select_judged_rewrites(Q, "g", samples, ranked, ["x", "y", "z", "g"])
    assert chosen == JudgedRewrite(Q, "full nodes are split in two", 1, 4, "g", 1)
    assert chosen.as_row() == {"question": Q, "rewrite": "full nodes are split in two", "gold_rank": 1, "question_alone_rank": 4, "rewrite_alone_rank": None, "gold_id": "g", "sample": 1}
    assert (samples, ranked) == before  # inputs untouched


def test_a_question_no_sample_beats_is_dropped():
    # the question alone ranks the gold 2nd; the samples 2nd (a tie below rank 1), 5th, never
    assert select_judged_rewrites(Q, "g", ["a b c", "d e f", "g h i"], [["x", "g"], ["1", "2", "3", "4", "g"], ["x"]], ["x", "g"]) is None
    # a gold passage no sample finds
    assert select_judged_rewrites(Q, "g", ["a b c"], [["x", "y"]], ["x", "y", "g"]) is None


def test_a_tie_at_rank_one_is_kept_and_a_miss_alone_is_beaten_by_any_rank():
    assert select_judged_rewrites(Q, "g", ["a b c"], [["g", "x"]], ["g"]) == JudgedRewrite(Q, "a b c", 1, 1, "g", 0)
    assert select_judged_rewrites(Q, "g", ["a b c"], [["x", "y", "g"]], ["x", "y"]) == JudgedRewrite(Q, "a b c", 3, None, "g", 0)


def test_ties_between_samples_go_to_the_earliest():
    samples = ["second best", "first of the best", "also best", "first of the best"]
    ranked = [["x", "g"], ["g"], ["g"], ["g"]]
    choices = {select_judged_rewrites(Q, "g", samples, ranked, ["x", "y", "g"]) for _ in range(3)}
    assert choices == {JudgedRewrite(Q, "first of the best", 1, 3, "g", 1)}


def test_ties_go_to_the_sample_that_finds_the_gold_passage_on_its_own():
    samples = ["off topic but harmless", "splits full nodes", "moves keys up", "also off topic"]
    ranked = [["g"], ["g"], ["x", "g"], ["g"]]  # three tie at rank 1 with the question's vector
    own = [["x", "y"], ["x", "y", "g"], ["g"], ["x", "y", "z", "g"]]  # alone: never, 3rd, 1st (not tied), 4th
    before = copy.deepcopy(own)
    chosen = select_judged_rewrites(Q, "g", samples, ranked, ["g"], own)
    assert chosen == JudgedRewrite(Q, "splits full nodes", 1, 1, "g", 1, 3)
    assert own == before
    # equal on both: the earliest; no sample finds it on its own: the earliest of the best
    assert select_judged_rewrites(Q, "g", ["a b", "c d"], [["g"], ["g"]], ["g"], [["x", "g"], ["y", "g"]]).sample == 0
    assert select_judged_rewrites(Q, "g", ["a b", "c d"], [["x", "g"], ["g"]], ["x", "y", "g"], [["x"], ["y"]]) == JudgedRewrite(Q, "c d", 1, 3, "g", 1, None)


def test_empty_samples_are_ignored_even_with_a_ranking():
    samples = ["", "   \n", "a real   rewrite"]
    chosen = select_judged_rewrites(Q, "g", samples, [["g"], ["g"], ["x", "g"]], ["x", "y", "g"])
    assert chosen == JudgedRewrite(Q, "a real rewrite", 2, 3, "g", 2)  # whitespace collapsed
    assert select_judged_rewrites(Q, "g", ["", " "], [["g"], ["g"]], ["x", "g"]) is None
    assert select_judged_rewrites(Q, "g", [], [], ["g"]) is None


def test_mismatched_samples_and_rankings_are_an_error():
    with pytest.raises(ValueError, match="2 samples but 1 ranked lists; pass one list per sample"):
        select_judged_rewrites(Q, "g", ["a", "b"], [["g"]], ["g"])
    with pytest.raises(ValueError, match="2 samples but 2 ranked lists and 1 sample-alone lists"):
        select_judged_rewrites(Q, "g", ["a", "b"], [["g"], ["g"]], ["g"], [["g"]])


def test_answer_corpus_has_one_passage_per_distinct_answer():
    from llama_index.core.schema import MetadataMode

    from pipeline.index import qa_node_id

    records = [{"question": "q1?", "answer": "A one."}, {"question": "q2?", "answer": "B two."}, {"question": "q3?", "answer": "A one."}]
    nodes, gold = answer_corpus(records)
    assert [n.node_id for n in nodes] == [qa_node_id("q1?", "A one."), qa_node_id("q2?", "B two.")]
    assert gold == [nodes[0].node_id, nodes[1].node_id, nodes[0].node_id]  # a repeated answer: the same passage
    assert [n.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes] == ["A one.", "B two."]  # the answer alone


# --------------------------------------------------------------------------------------------
# the builder
# --------------------------------------------------------------------------------------------


class ScriptedLM:
    """Stands in for LocalCausalLM. For the questions in `answers` (question -> gold answer) the
    samples are: an empty one, the gold answer itself, junk; for the others empty ones only."""

    def __init__(self, answers, samples):
        self.answers, self.samples, self.prompts = answers, samples, 0

    def render(self, messages):
        return messages[-1].content.removeprefix("Question: ")

    def generate_batch(self, prompts, *, max_new_tokens=None, temperature=None, show_progress=True):
        assert temperature == 0.7 and max_new_tokens == 6
        self.prompts += len(prompts)
        out = []
        for i, question in enumerate(prompts):
            scripted = ["", self.answers[question], "zebra quantum marmalade"] if question in self.answers else [""] * self.samples
            out.append(scripted[i % self.samples])
        return out


def _config(data_dir, run_dir, *extra):
    return load_config("tiny", [f"run_dir={run_dir}", f"data.dir={data_dir}", "rewrite.max_new_tokens=6", "finetune.judged_rewrites.samples=3", "finetune.judged_rewrites.chunk_size=16", *extra])


def test_builder_keeps_the_sample_that_finds_the_gold_passage(small_data_dir, hash_embedding_cls, tmp_path):
    train = load_split(small_data_dir, "train")
    scripted = {r["question"]: r["answer"] for r in train[::2]}  # every other question gets its gold answer as a sample
    config = _config(small_data_dir, tmp_path)
    lm = ScriptedLM(scripted, 3)
    report = build_judged_rewrites(config, llm=lm, embed_model=hash_embedding_cls(), show_progress=False, log=lambda *_: None)
    output = Path(config.finetune.judged_rewrites.output)
    rows = [json.loads(line) for line in output.read_text().splitlines()]

    assert lm.prompts == 40 * 3
    nodes, gold = answer_corpus(train)
    assert report["questions"] == 40 and report["corpus_size"] == len(nodes)
    by_question = {r["question"]: r for r in rows}
    assert set(by_question) == set(scripted)  # questions with only empty samples are dropped
    for i, record in enumerate(train):
        if record["question"] not in scripted:
            continue
        row = by_question[record["question"]]
        # the gold answer is the best sample: it finds its own passage first
        assert (row["rewrite"], row["sample"], row["gold_rank"], row["rewrite_alone_rank"], row["gold_id"]) == (" ".join(record["answer"].split()), 1, 1, 1, gold[i])
        assert row["question_alone_rank"] is None or row["question_alone_rank"] >= 1
    assert report["kept"] == len(rows) == 20
    assert report["kept_strictly_better"] + report["kept_tied_at_rank_1"] == 20 and report["kept_rewrite_alone_finds_gold"] == 20
    assert report["dropped_gold_never_found"] == 20 and report["empty_samples"] == 20 * 1 + 20 * 3
    assert report["mrr@20_with_chosen"] >= report["mrr@20_question_alone"]
    assert list(by_question) == [r["question"] for r in train if r["question"] in scripted]  # train order
    assert json.loads(report_path(output).read_text())["kept"] == 20
    assert not list(output.parent.glob(".*.partial"))


def test_rewriter_trains_on_the_judged_rewrites(small_data_dir, hash_embedding_cls, tiny_lm_dir, tmp_path):
    from transformers import AutoTokenizer

    from finetune.rewriter import rewriter_rows

    train = load_split(small_data_dir, "train")
    config = _config(small_data_dir, tmp_path)
    build_judged_rewrites(config, llm=ScriptedLM({r["question"]: r["answer"] for r in train[:5]}, 3), embed_model=hash_embedding_cls(), show_progress=False, log=lambda *_: None)
    targets = _config(small_data_dir, tmp_path, f"finetune.rewriter.targets={config.finetune.judged_rewrites.output}")
    rows, val = rewriter_rows(targets, AutoTokenizer.from_pretrained(tiny_lm_dir))
    assert len(rows) == 5 and len(val) == 10  # questions without a judged rewrite are left out; val unchanged
    assert [r["completion"] for r in rows] == [" " + " ".join(r["answer"].split()) for r in train[:5]]
    assert f"Question: {train[0]['question']}" in rows[0]["prompt"]
    plain, _ = rewriter_rows(config, AutoTokenizer.from_pretrained(tiny_lm_dir))
    assert len(plain) == 40  # without targets: every train question -> its own answer


def test_smoke_with_the_micro_lm(tiny_lm_dir, small_data_dir, hash_embedding_cls, tmp_path):
    """The real path: the base micro LM samples through generate_batch; judged over the corpus."""
    from pipeline.models import load_llm

    config = _config(small_data_dir, tmp_path, f"generator.model={tiny_lm_dir}", "finetune.judged_rewrites.samples=2", "finetune.judged_rewrites.limit=6")
    lm, seen = load_llm(config, adapter=None, verbose=False), []

    class Spy:  # the real LM, counting what it is asked to sample
        render = staticmethod(lm.render)

        def generate_batch(self, prompts, **kwargs):
            seen.append((len(prompts), kwargs["temperature"], kwargs["max_new_tokens"]))
            return lm.generate_batch(prompts, **kwargs)

    report = build_judged_rewrites(config, llm=Spy(), embed_model=hash_embedding_cls(), show_progress=False, log=lambda *_: None)
    assert seen == [(12, 0.7, 6)]  # 6 questions x 2 samples, one batched pass at the sampling temperature
    rows = [json.loads(line) for line in Path(config.finetune.judged_rewrites.output).read_text().splitlines()]
    assert report["questions"] == 6 and report["kept"] == len(rows) <= 6
    assert report["kept"] + report["dropped_no_sample_as_good"] + report["dropped_gold_never_found"] == 6
    questions = [r["question"] for r in load_split(small_data_dir, "train")[:6]]
    for row in rows:  # whatever the micro LM wrote, what was kept obeys the rule
        assert row["question"] in questions and row["rewrite"].strip()
        alone = row["question_alone_rank"]
        assert alone is None or row["gold_rank"] < alone or row["gold_rank"] == alone == 1


# --------------------------------------------------------------------------------------------
# the targets file and the command line
# --------------------------------------------------------------------------------------------


RECORDS = [{"question": "q1?", "answer": "a1"}, {"question": "q2?", "answer": "a2"}, {"question": "q3?", "answer": "a3"}]


def test_judged_targets_replace_answers_in_train_order(tmp_path):
    path = tmp_path / "judged.jsonl"
    path.write_text(json.dumps({"question": "q3?", "rewrite": "r3", "gold_rank": 1}) + "\n\n" + json.dumps({"question": "q1?", "rewrite": "r1"}) + "\n")
    before = copy.deepcopy(RECORDS)
    assert judged_targets(path, RECORDS) == [{"question": "q1?", "answer": "r1"}, {"question": "q3?", "answer": "r3"}]
    assert RECORDS == before


def test_judged_targets_errors_name_the_file_and_the_fix(tmp_path):
    with pytest.raises(DataError, match=r"finetune.rewriter.targets=.*none.jsonl: no such file; build it with python -m finetune.judged_rewrites"):
        judged_targets(tmp_path / "none.jsonl", RECORDS)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q1?", "rewrite": "r1"}\n{"question": "q2?"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: a judged rewrite needs non-empty 'question' and 'rewrite'"):
        judged_targets(bad, RECORDS)
    other = tmp_path / "other.jsonl"
    other.write_text('{"question": "elsewhere?", "rewrite": "r"}\n')
    with pytest.raises(DataError, match=r"1 of its 1 questions are not in the train split \(first: 'elsewhere\?'\)"):
        judged_targets(other, RECORDS)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match="no judged rewrites in it"):
        judged_targets(empty, RECORDS)


def test_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for flag in ("--config", "--set", "--help-config", "--output", "--limit", "--no-resume", "--no-progress"):
        assert flag in text
    assert "select_judged_rewrites" in text


def test_cli_reports_missing_data(tmp_path, capsys):
    assert main(["--config", "tiny", "--set", f"run_dir={tmp_path}", "--set", f"data.dir={tmp_path}/nowhere", "--no-progress"]) == 2
    assert "python -m pipeline.prepare" in capsys.readouterr().err


def test_cli_refuses_a_zero_temperature(tmp_path, capsys):
    assert main(["--config", "tiny", "--set", f"run_dir={tmp_path}", "--set", "finetune.judged_rewrites.temperature=0"]) == 2
    assert "finetune.judged_rewrites.temperature must be > 0; got 0.0" in capsys.readouterr().err

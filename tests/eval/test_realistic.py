"""The realistic-query benchmark (eval/realistic): case builders, query variants, the metrics on
fixed rankings, the hand-written cases against the seed data, and the CLI on the tiny profile."""

from __future__ import annotations

import json
import random
import re
import shutil

import pytest

from eval.realistic import benchmark
from rewrite import cases
from eval.realistic.benchmark import QueryVariant, case_metrics, query_texts, register_variant, merge_rankings, summarize_groups, target_ranks
from rewrite.cases import Case, build_cases, generate_cases, inject_typos, load_hand_cases, resolve_cases, same_topic_pairs, with_pronoun
from pipeline.data import DataError

QUESTIONS = [
    "What is a Bloom Filter?",
    "How does a Bloom Filter handle false positives?",
    "What is TCP slow start?",
    "Explain the Raft consensus algorithm.",
    "How does Raft elect a leader?",
    "What is the role of etcd in Kubernetes?",
    "Describe the function of a Kubernetes Node.",
    "Describe the role of security testing in the SDLC.",
    "What is security automation?",
    "Explain the concept of recursion.",
    "What is a hash table?",
    "Compare paging and segmentation.",
]


def _row(**fields) -> str:
    return json.dumps(fields) + "\n"


def _hand_file(path, split, questions):
    """Three hand-written cases (one per family) on `questions` of `split`."""
    path.mkdir(parents=True, exist_ok=True)
    (path / f"{split}.jsonl").write_text(
        _row(id=f"{split}-fu-1", family="follow-up", split=split, kind="pronoun", history=[{"role": "user", "content": f"hey, {questions[0].lower()}"}, {"role": "assistant", "content": "Short answer here."}], message="and why does it matter", targets=[questions[0]])
        + _row(id=f"{split}-vb-1", family="verbose", split=split, message=f"hi!! so at work my boss asked me this and I blanked lol. {questions[1]} thx", targets=[questions[1]])
        + _row(id=f"{split}-cp-1", family="compound", split=split, message=f"{questions[2]} also {questions[3].lower()}", targets=[questions[2], questions[3]]),
        encoding="utf-8",
    )
    return path


def _questions(data_dir, split):
    return [json.loads(line)["question"] for line in (data_dir / f"{split}.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]


# --------------------------------------------------------------------------------------------
# builders
# --------------------------------------------------------------------------------------------


def test_dev_cases_come_from_val_and_test_cases_from_test(demo_dir, tmp_path):
    for split in ("val", "test"):
        questions = _questions(demo_dir, split)
        hand = _hand_file(tmp_path / "hand", split, questions)
        built = build_cases(demo_dir, split, hand_dir=hand, per_family=20)
        assert {c.split for c in built} == {split}
        assert all(t in questions for c in built for t in c.targets)
        assert all(r.startswith(f"{split}-") for c in built for r in c.relevant)
        assert all(questions[int(r.split("-")[1])] == t for c in built for r, t in zip(c.relevant, c.targets))
        by_family = {f: [c for c in built if c.family == f] for f in cases.FAMILIES}
        assert len(by_family["clean"]) == len(questions) and all(c.message == c.targets[0] for c in by_family["clean"])
        assert {c.source for c in built} == {"hand", "generated"}
        assert sum(c.source == "hand" for c in built) == 3 and all(by_family[f] for f in cases.FAMILIES)
        assert len({c.id for c in built}) == len(built)


def test_each_mode_reads_only_its_own_split(demo_dir, tmp_path):
    """train mode builds from train alone (val/test absent from the folder); dev mode reads val alone."""
    only_train = tmp_path / "only-train"
    only_train.mkdir()
    shutil.copy(demo_dir / "train.jsonl", only_train / "train.jsonl")
    train = build_cases(only_train, "train", per_family=30)
    train_questions = set(_questions(demo_dir, "train"))
    assert train and {c.split for c in train} == {"train"} and {c.source for c in train} == {"generated"}
    assert all(t in train_questions for c in train for t in c.targets) and {c.family for c in train} == set(cases.FAMILIES)
    with pytest.raises(DataError, match="val.jsonl: missing"):
        build_cases(only_train, "val", hand_dir=None)
    only_val = tmp_path / "only-val"
    only_val.mkdir()
    shutil.copy(demo_dir / "val.jsonl", only_val / "val.jsonl")
    assert {c.split for c in build_cases(only_val, "val", hand_dir=None, per_family=5)} == {"val"}


def test_same_topic_pairs_share_a_salient_noun_phrase():
    pairs = {(QUESTIONS[a], QUESTIONS[b]): phrase for a, b, phrase in same_topic_pairs(QUESTIONS)}
    assert pairs[(QUESTIONS[0], QUESTIONS[1])] == ("bloom", "filter")
    assert pairs[(QUESTIONS[3], QUESTIONS[4])] == ("raft",)  # a name: capitalised in both
    assert pairs[(QUESTIONS[5], QUESTIONS[6])] == ("kubernetes",)
    # "security" is too generic to make two questions one topic; unrelated questions never pair
    assert (QUESTIONS[7], QUESTIONS[8]) not in pairs and len(pairs) == 3


def test_pronoun_templates_read_as_a_follow_up():
    assert with_pronoun("How does a Bloom Filter handle false positives?", ("bloom", "filter")) == "How does it handle false positives?"
    assert with_pronoun("What is the role of etcd in Kubernetes?", ("etcd",)) == "What is its role in Kubernetes?"
    assert with_pronoun("Describe the function of a Kubernetes Node.", ("kubernetes",)) is None  # part of "Kubernetes Node"
    assert with_pronoun("What is the purpose of a business impact analysis (BIA)?", ("impact",)) is None
    assert with_pronoun("What is a hash table?", ("bloom",)) is None
    assert with_pronoun("Explain the Read Committed isolation level (RC).", ("read", "committed", "isolation", "level")) == "Explain it."


def test_generated_families_follow_their_templates(demo_dir):
    questions = _questions(demo_dir, "train")
    made = generate_cases(questions, "train", seed=7, per_family=40)
    assert made == generate_cases(questions, "train", seed=7, per_family=40), "deterministic in the seed"
    assert made != generate_cases(questions, "train", seed=8, per_family=40)
    follow = [c for c in made if c.family == "follow-up"]
    kinds = {c.kind for c in follow}
    assert {"pair-pronoun", "intro-pronoun", "topic-shift"} <= kinds and len(follow) <= 40
    for case in follow:
        assert case.history and case.history[-1]["role"] == "user" and case.conversation[-1] == {"role": "user", "content": case.message}
        if case.kind.endswith("pronoun"):
            assert re.search(r"\b(it|its)\b", case.message), case.message
        else:  # a topic shift: the history shares no content word with the target
            shared = set(cases.words(cases.topic(case.history[0]["content"]))) & set(cases.words(cases.topic(case.targets[0]))) - cases.STOPWORDS
            assert not shared, (case.history, case.targets)
    shifts = sum(c.kind == "topic-shift" for c in follow)
    assert 0 < shifts <= round(len(follow) * 0.3)
    verbose = [c for c in made if c.family == "verbose"]
    assert len(verbose) == 40 and all(len(c.message) > len(c.targets[0]) + 20 for c in verbose)
    for case in verbose:
        if case.kind == "wrapper":  # no typos: the question is there, maybe lower-cased
            assert cases.strip_end(case.targets[0]).lower()[1:] in case.message.lower(), case.message
    compound = [c for c in made if c.family == "compound"]
    assert len(compound) == 40 and {c.kind for c in compound} == {"same-topic", "unrelated"}
    for case in compound:
        a, b = case.targets
        assert a != b and a in questions and b in questions
        assert cases.strip_end(a).lower()[1:] in case.message.lower() and cases.strip_end(b).lower()[1:] in case.message.lower()
    assert len({c.targets for c in compound}) == len(compound)


def test_typo_injector_is_deterministic():
    text = "Explain the difference between optimistic and pessimistic locking in databases"
    assert inject_typos(text, 0.5, random.Random(1)) == inject_typos(text, 0.5, random.Random(1))
    assert inject_typos(text, 0.5, random.Random(1)) != inject_typos(text, 0.5, random.Random(2))
    assert inject_typos(text, 0.0, random.Random(1)) == text
    every = inject_typos(text, 1.0, random.Random(3))
    long_words, typed = re.findall(r"[A-Za-z]{4,}", text), every.split()
    assert len(typed) == len(text.split()) and all(t[0] == w[0] for t, w in zip(typed, text.split()))
    assert sum(t != w for t, w in zip(typed, text.split())) >= len(long_words) - 2  # a swap of equal letters changes nothing
    with pytest.raises(ValueError, match="rate"):
        inject_typos(text, 1.5, random.Random(0))


def test_hand_cases_are_checked_and_resolved(tmp_path):
    good = _hand_file(tmp_path / "ok", "val", QUESTIONS)
    loaded = load_hand_cases(good / "val.jsonl", "val")
    assert [c.family for c in loaded] == ["follow-up", "verbose", "compound"] and all(c.source == "hand" for c in loaded)
    resolved = resolve_cases(loaded, QUESTIONS, "val")
    assert resolved[2].relevant == ("val-2", "val-3") and resolved[0].history[1]["role"] == "assistant"
    bad = {
        "family": _row(id="x", family="chitchat", split="val", message="hi", targets=[QUESTIONS[0]]),
        "distinct target": _row(id="x", family="compound", split="val", message="a and a", targets=[QUESTIONS[0], QUESTIONS[0]]),
        "split 'test' in the val file": _row(id="x", family="verbose", split="test", message="hi", targets=[QUESTIONS[0]]),
        "needs the earlier turns": _row(id="x", family="follow-up", split="val", message="and it?", targets=[QUESTIONS[0]]),
        "only follow-ups": _row(id="x", family="verbose", split="val", message="hm", targets=[QUESTIONS[0]], history=[{"role": "user", "content": "x"}]),
        "unknown keys": _row(id="x", family="verbose", split="val", message="hm", targets=[QUESTIONS[0]], answer="no answers here"),
        "repeated": _row(id="x", family="verbose", split="val", message="a", targets=[QUESTIONS[0]]) + _row(id="x", family="verbose", split="val", message="b", targets=[QUESTIONS[1]]),
    }
    for problem, text in bad.items():
        path = tmp_path / "bad.jsonl"
        path.write_text(text, encoding="utf-8")
        with pytest.raises(DataError, match=re.escape(problem)):
            load_hand_cases(path, "val")
    typo = Case(id="v1", family="verbose", split="val", source="hand", message="m", targets=("What is a Blom Filter?",))
    with pytest.raises(DataError, match=r"not a question of the val split; the closest: \['What is a Bloom Filter\?'"):
        resolve_cases([typo], QUESTIONS, "val")


def test_every_hand_written_case_resolves_to_a_seed_question_of_its_split(seed_dir):
    splits = seed_dir / "splits"
    answers = [json.loads(line)["answer"] for s in ("train", "val", "test") for line in (splits / f"{s}.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    for split in ("val", "test"):
        hand = resolve_cases(load_hand_cases(benchmark.DATA_DIR / f"{split}.jsonl", split), _questions(splits, split), split)
        for family in ("follow-up", "verbose", "compound"):
            assert sum(c.family == family for c in hand) >= 25, (split, family)
        follow = [c for c in hand if c.family == "follow-up"]
        assert sum(c.kind == "topic-shift" for c in follow) >= 3 and sum(c.kind != "topic-shift" for c in follow) >= 20
        assert len({c.message for c in hand}) == len(hand), "no message twice"
        texts = [t["content"] for c in hand for t in c.history] + [c.message for c in hand]
        # never the seed answers: no turn holds a 50-character run of any answer
        assert not [a for a in answers if len(a) >= 50 and any(a[:50] in t or a[-50:] in t for t in texts)]


# --------------------------------------------------------------------------------------------
# query variants and metrics
# --------------------------------------------------------------------------------------------


def _case(family, targets, message="msg", history=(), source="hand", id_="c"):
    return Case(id=id_, family=family, split="val", source=source, message=message, targets=tuple(targets), history=tuple(history), relevant=tuple(f"val-{i}" for i in range(len(targets))))


def test_query_variants():
    follow = _case("follow-up", ["What is a B-tree?"], "and why do databases use it", [{"role": "user", "content": "what's a b-tree"}, {"role": "assistant", "content": "A balanced tree ..."}])
    assert query_texts(follow, "typed") == ["and why do databases use it"]
    assert query_texts(follow, "concat") == ["what's a b-tree and why do databases use it"]  # assistant turns left out
    assert query_texts(follow, "oracle") == ["What is a B-tree?"]
    compound = _case("compound", ["Q1?", "Q2?"], "Q1 and Q2")
    assert query_texts(compound, "oracle") == ["Q1?", "Q2?"] and query_texts(compound, "typed") == ["Q1 and Q2"]
    with pytest.raises(ValueError, match="does not apply to compound"):
        query_texts(compound, "concat")
    with pytest.raises(ValueError, match="unknown query variant 'hyde'"):
        query_texts(compound, "hyde")
    try:  # a rewriter is one entry
        register_variant(QueryVariant("upper", lambda c: [c.message.upper()], ("compound",), "shouting"))
        assert query_texts(compound, "upper") == ["Q1 AND Q2"]
    finally:
        benchmark.VARIANTS.pop("upper", None)


def test_metrics_on_fixed_rankings():
    # one list: target a at 1, b at 4
    assert target_ranks([["a", "x", "y", "b"]], ["a", "b"]) == [1, 4]
    assert case_metrics([1, 4]) == {"mrr@10": (1 + 0.25) / 2, "recall@1": 0.5, "both@3": 0.0, "both@5": 1.0}
    # several lists are merged round-robin as the engine merges them: a, y, b, ...
    assert target_ranks([["a", "b"], ["y", "b", "a"]], ["a", "b"]) == [1, 3]
    assert merge_rankings([["a", "b", "c"], ["b", "d"]]) == ["a", "b", "d", "c"]
    assert case_metrics([1, 2])["both@3"] == 1.0 and case_metrics([3, 3])["both@3"] == 1.0 and case_metrics([1, 4])["both@3"] == 0.0
    assert case_metrics([2, None]) == {"mrr@10": 0.25, "recall@1": 0.0, "both@3": 0.0, "both@5": 0.0}
    assert case_metrics([11]) == {"mrr@10": 0.0, "recall@1": 0.0}  # beyond 10 counts nothing; one target: no both@k
    assert target_ranks([["x"]], ["a"]) == [None]

    group = [_case("compound", ["q1", "q2"], id_="c1"), _case("compound", ["q3", "q4"], id_="c2", source="generated")]
    ranks = {"c1": {"typed": [1, 4], "oracle": [1, 1]}, "c2": {"typed": [2, 3], "oracle": [1, 2]}}
    table = summarize_groups(group, ranks, ["typed", "oracle"], samples=50)
    row = table["compound"]["all"]
    assert row["n"] == 2 and set(table["compound"]) == {"all", "hand", "generated"}
    assert row["variants"]["typed"]["both@3"] == 0.5 and row["variants"]["typed"]["both@5"] == 1.0 and row["variants"]["oracle"]["both@3"] == 1.0
    assert row["ratios"]["typed"]["both@3"] == 0.5
    assert row["variants"]["typed"]["recall@1"] == pytest.approx(0.25) and row["ratios"]["typed"]["recall@1"] == pytest.approx(0.25 / 0.75)
    low, high = row["variants"]["typed"]["ci95"]["both@3"]
    assert 0.0 <= low <= 0.5 <= high <= 1.0


# --------------------------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------------------------


def test_cli_on_the_tiny_profile(demo_dir, tmp_path, tiny_cross_encoder_dir, capsys, monkeypatch):
    """`eval.retrieval --queries realistic` through full's stack (the tiny profile's hybrid + a tiny
    cross-encoder): every family beside its oracle, JSON and Markdown, the run recorded."""
    from eval.retrieval import main, to_markdown

    monkeypatch.setattr(cases, "GENERATED_PER_FAMILY", 8)
    hand = _hand_file(tmp_path / "hand", "val", _questions(demo_dir, "val"))
    sets = [f"run_dir={tmp_path}", f"rerank.model={tiny_cross_encoder_dir}", "rerank.kind=cross-encoder", "rerank.enabled=true", "index.finetuned_embedder=false", "rewrite.mode=none", "retrieve.mode=hybrid"]
    args = ["--data", str(demo_dir), "--queries", "realistic", "--split", "val", "--cases", str(hand), "--quiet", *(x for s in sets for x in ("--set", s))]
    out = tmp_path / "res" / "retrieval-val.json"
    assert main([*args, "--format", "json", "--out", str(out)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert json.loads(out.read_text()) == result and (out.parent / "retrieval-val.ragft_config.yaml").is_file()
    assert (result["queries"], result["split"], result["stack"]["runs"]) == ("realistic", "val", "hybrid+rerank")
    assert result["run"]["command"].startswith("python -m eval.retrieval --data") and "seconds" in result["run"]
    assert result["counts"]["follow-up"]["hand"] == 1 and result["counts"]["compound"]["generated"] == 8
    families = result["families"]
    assert list(families) == ["clean", "follow-up", "verbose", "compound"]
    assert set(families["follow-up"]) == {"all", "hand", "generated"} and list(families["clean"]) == ["all"]
    assert set(families["follow-up"]["all"]["variants"]) == {"typed", "concat", "oracle"} and set(families["verbose"]["all"]["variants"]) == {"typed", "oracle"}
    compound = families["compound"]["all"]
    assert {"both@3", "both@5"} <= set(compound["variants"]["typed"]) and set(compound["ratios"]) == {"typed"}
    for family in ("follow-up", "verbose", "compound"):
        oracle = families[family]["all"]["variants"]["oracle"]
        assert 0.0 <= oracle["ci95"]["mrr@10"][0] <= oracle["mrr@10"] <= oracle["ci95"]["mrr@10"][1] <= 1.0
    # the clean family is the seed questions: its figures equal the oracle of the clean retrieval
    clean_case = next(c for c in result["cases"] if c["family"] == "clean")
    assert set(clean_case["ranks"]) == {"typed"} and len(result["cases"]) == sum(sum(v.values()) for v in result["counts"].values())
    table = to_markdown(result)
    assert "| compound | all |" in table and "both@3 / oracle" in table and "| follow-up | hand | 1 | concat |" in table
    from eval.realistic.__main__ import main as render_main

    readme = tmp_path / "res" / "README.md"
    assert render_main([str(out), "--out", str(readme)]) == 0
    text = readme.read_text(encoding="utf-8")
    assert result["run"]["command"] in text and result["run"]["git_revision"] in text and "| compound | all |" in text

    assert main([*args, "--protocol", "closed-book"]) == 2
    assert "needs --protocol open-book" in capsys.readouterr().err
    assert main([*args, "--retrievers", "bm25"]) == 2
    assert "drop --tune and --retrievers" in capsys.readouterr().err


def test_rewriters_are_run_once_per_case_behind_the_gate_and_reported_beside_the_oracle(demo_dir, tmp_path, tiny_cross_encoder_dir, capsys, monkeypatch):
    """--rewriters: each rewriter (here a scripted LM behind the real Condenser) rewrites every
    case in one batched pass, the gate keeping clean questions from the LM; its rows sit beside
    the oracle, the clean family gets its paired change against `typed`, and its cost is reported."""
    from llama_index.core.base.llms.types import CompletionResponse, LLMMetadata
    from llama_index.core.llms.custom import CustomLLM

    from eval.realistic.__main__ import main as realistic_main
    from eval.retrieval import main, to_markdown
    from rewrite.condense import Condenser, needs_condensing

    class Echo(CustomLLM):
        """Writes back the last message, upper-cased: a rewrite that is easy to recognise."""

        calls: list = []

        @property
        def metadata(self) -> LLMMetadata:
            return LLMMetadata()

        def complete(self, prompt, formatted=False, **kwargs):
            self.calls.append(prompt)
            return CompletionResponse(text=prompt.split("Last message:")[-1].split("\n")[0].strip().upper())

        def stream_complete(self, prompt, formatted=False, **kwargs):
            raise NotImplementedError

    echo = Echo()
    monkeypatch.setattr(cases, "GENERATED_PER_FAMILY", 6)
    monkeypatch.setattr(benchmark, "rewriter_condenser", lambda config, name: Condenser(echo))
    hand = _hand_file(tmp_path / "hand", "val", _questions(demo_dir, "val"))
    sets = [f"run_dir={tmp_path}", f"rerank.model={tiny_cross_encoder_dir}", "rerank.kind=cross-encoder", "rerank.enabled=true", "index.finetuned_embedder=false", "rewrite.mode=none", "retrieve.mode=hybrid"]
    args = ["--data", str(demo_dir), "--queries", "realistic", "--split", "val", "--cases", str(hand), "--quiet", "--rewriters", "condense-base", *(x for s in sets for x in ("--set", s))]
    assert main([*args, "--format", "json"]) == 0
    result = json.loads(capsys.readouterr().out)
    cost = result["rewriters"]["condense-base"]
    assert cost["cases"] == len(result["cases"]) and cost["lm_calls"] == len(echo.calls) > 0
    assert set(cost["rewrites"]) == {c["id"] for c in result["cases"]}
    assert any(text.isupper() for texts in cost["rewrites"].values() for text in texts)  # the LM's rewrites are searched
    for family in ("clean", "follow-up", "verbose", "compound"):
        assert "condense-base" in result["families"][family]["all"]["variants"]
    assert "condense-base" in result["families"]["verbose"]["all"]["ratios"]
    delta = result["families"]["clean"]["all"]["deltas_vs_typed"]["condense-base"]
    assert delta["ci95_low"] <= delta["diff"] <= delta["ci95_high"]
    questions = _questions(demo_dir, "val")
    gated_out = [q for q in questions if not needs_condensing(q, [])[0]]
    assert all(cost["rewrites"][c["id"]] == [q] for c, q in zip([c for c in result["cases"] if c["family"] == "clean"], questions) if q in gated_out)
    assert "`condense-base`:" in to_markdown(result) and "clean, `condense-base` - typed, MRR@10" in to_markdown(result)
    # the front page's block: one row per family, the rewriter's share of the oracle computed from the run
    run = tmp_path / "run.json"
    run.write_text(json.dumps(result))
    page = tmp_path / "README.md"
    page.write_text("intro\n<!-- results:realistic-headline:start -->\nold\n<!-- results:realistic-headline:end -->\nrest\n")
    assert realistic_main([str(run), "--out", str(tmp_path / "results.md"), "--readme-block", str(page), "--rewriter", "condense-base"]) == 0
    block = page.read_text()
    assert block.startswith("intro\n") and block.endswith("rest\n") and "old" not in block
    verbose = result["families"]["verbose"]["all"]
    row = next(line for line in block.splitlines() if line.startswith("| verbose |"))
    assert row.endswith(f"| {verbose['ratios']['condense-base']['mrr@10']:.2f} |") and f"{verbose['variants']['oracle']['mrr@10']:.3f}" in row
    assert next(line for line in block.splitlines() if line.startswith("| compound |")).split(" | ")[2] == "both@3"
    assert "## Retrieval, split val" in (tmp_path / "results.md").read_text()
    assert main([*args[:-len(sets) * 2], "--rewriters", "condense-nope"]) == 2
    assert "unknown ['condense-nope']" in capsys.readouterr().err

"""Every named system as a query engine on a tiny system built once per session.

The system: the micro tiny LM (finetune.tiny), LoRA adapters attached to it (freshly initialised:
training is tested in tests/finetune), a random-weight cross-encoder, and the real MiniLM index
of the demo knowledge base. The models are irrelevant to the engine's logic; the retrieval is real.
"""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from pipeline import SYSTEM_NAMES, Components, build_query_engine
from pipeline.engine import NOT_FOUND_ANSWER, ArtifactMissingError, clean_stream, keep_valid_citations
from pipeline.systems import ABLATIONS, FULL, SYSTEMS, get_system


@pytest.fixture(scope="session")
def components(tiny_config):
    return Components(tiny_config)


def engine(config, system, components, **kwargs):
    return build_query_engine(config, system, components=components, **kwargs)


# ------------------------------------------------------------------ the systems table


def test_every_ablation_differs_from_full_in_exactly_one_part():
    full = FULL.components()
    for ablation in ABLATIONS:
        changed = {k for k, v in ablation.components().items() if full[k] != v}
        assert len(changed) == 1, f"{ablation.name} changes {changed}"
    assert len({tuple(sorted(a.components().items())) for a in ABLATIONS}) == len(ABLATIONS)


def test_baselines_match_the_design_table():
    assert (get_system("vanilla").retrieve, get_system("vanilla").generator) == (None, "base")
    assert (get_system("rag_vanilla").retrieve, get_system("rag_vanilla").generator) == ("dense", "base")
    assert (get_system("finetuned").retrieve, get_system("finetuned").generator) == (None, "plain")
    assert (get_system("rag_finetuned").retrieve, get_system("rag_finetuned").generator) == ("dense", "plain")
    assert (get_system("nn_answer").top_k, get_system("nn_answer").generator) == (1, None)
    assert (FULL.rewrite, FULL.retrieve, FULL.rerank, FULL.generator, FULL.agent) == (True, "config", True, "raft", True)


def test_unknown_system_lists_the_names():
    with pytest.raises(ValueError, match="unknown system 'fulll'; choose one of: vanilla, rag_vanilla"):
        get_system("fulll")


# ------------------------------------------------------------------ every system answers


@pytest.mark.parametrize("system", SYSTEM_NAMES)
def test_every_named_system_builds_and_answers(tiny_config, components, system):
    response = engine(tiny_config, system, components).query("How does a hash table handle collisions?")
    spec = SYSTEMS[system]
    meta = response.metadata
    assert isinstance(response.response, str)  # a micro LM may well answer with nothing
    assert meta["system"] == system
    timings = meta["timings"]
    assert timings["total"] >= sum(v for k, v in timings.items() if k != "total") - 1e-6
    if spec.retrieve is None:
        assert response.source_nodes == [] and meta["rounds"] == []
        assert "generate" in timings
        return
    assert "retrieve" in timings and meta["rounds"][0]["retrieved"]
    # full and its ablations read rerank.top_n passages, reranked or not; the baselines context_top_k
    kept = get_system(system, tiny_config).top_k or (tiny_config.rerank.top_n if spec.rerank else tiny_config.generator.context_top_k)
    assert kept == (tiny_config.rerank.top_n if system.startswith("full") else spec.top_k or tiny_config.generator.context_top_k)
    assert 1 <= len(response.source_nodes) <= kept
    assert ("rerank" in timings) == spec.rerank
    if spec.rerank:
        reranked = meta["rounds"][-1]["reranked"]
        assert [n.node.node_id for n in response.source_nodes] == [r["id"] for r in reranked[:kept]]
        assert all(r["rerank_score"] is not None and r["retrieval_rank"] >= 1 for r in reranked)
    if spec.rewrite:
        assert meta["rewrites"] and meta["rewrites"][0]["mode"] in ("hyde", "decompose")
    else:
        assert meta["rewrites"] == []
    if spec.generator is None:
        assert response.response == response.source_nodes[0].node.metadata["answer"]


def test_components_are_built_once_and_shared(tiny_config, components):
    engine(tiny_config, "full", components).query("What is a B-tree?")
    engine(tiny_config, "full-no-agent", components).query("What is a B-tree?")
    assert components.reranker() is components.reranker()
    assert components.llm("raft") is components.llm("raft")
    assert components.llm("raft") is not components.llm("plain")
    assert components.llm("raft").adapter == tiny_config.finetune.raft.output
    assert components.llm("base").adapter is None


def test_ablation_components_are_what_the_table_says(tiny_config, components):
    dense = engine(tiny_config, "full-dense", components).query("What is a B-tree?")
    hybrid = engine(tiny_config, "full", components).query("What is a B-tree?")
    assert "fusion_score" not in dense.metadata["rounds"][0]["retrieved"][0]
    if tiny_config.retrieve.mode == "hybrid":
        assert "fusion_score" in hybrid.metadata["rounds"][0]["retrieved"][0]


# ------------------------------------------------------------------ decomposition and the agent loop


def test_multi_part_question_is_decomposed_and_covers_both_parts(tiny_config, components, demo_dir):
    from pipeline.data import load_split
    from pipeline.index import qa_node_id

    train = {r["question"]: r for r in load_split(demo_dir, "train")}
    tcp_udp = train["Compare TCP and UDP."]
    handshake = train["Explain the TCP three-way handshake."]
    wanted = {qa_node_id(r["question"], r["answer"]) for r in (tcp_udp, handshake)}

    response = engine(tiny_config, "full", components).query("Compare TCP and UDP and explain the three-way handshake")
    first = response.metadata["rounds"][0]
    assert response.metadata["route"] == "multi-part question"
    assert first["mode"] == "decompose"
    assert first["rewrite"]["texts"] == ["Compare TCP and UDP.", "Explain the three-way handshake."]
    retrieved = {row["id"] for row in first["retrieved"]}
    assert wanted <= retrieved, "the candidates of the decomposed question must cover both parts"


def test_weak_retrieval_retries_up_to_max_rounds_then_says_not_found(tiny_config):
    config = dataclasses.replace(tiny_config, agent=dataclasses.replace(tiny_config.agent, grade_threshold=1.0, max_rounds=3, on_weak="not_found"))
    response = build_query_engine(config, "full").query("What is the airspeed velocity of an unladen swallow?")
    rounds = response.metadata["rounds"]
    assert [r["grade"]["decision"] for r in rounds] == ["retry", "retry", "not_found"]
    assert [r["mode"] for r in rounds] == ["hyde", "multi", "decompose"]
    assert response.response == f'{NOT_FOUND_ANSWER} Searched for: "What is the airspeed velocity of an unladen swallow?".'
    assert response.source_nodes == [] and response.metadata["not_found"] is True
    # the closest passages are shown as not used: the best-graded round's, with their scores and text
    best = max(rounds, key=lambda r: max(h["rerank_score"] for h in r["reranked"]))
    assert [p["id"] for p in response.metadata["not_used"]] == [h["id"] for h in best["reranked"]][: config.rerank.top_n]
    assert all(p["text"] for p in response.metadata["not_used"])


def test_without_the_rewriter_a_weak_round_is_not_retried(tiny_config):
    config = dataclasses.replace(tiny_config, agent=dataclasses.replace(tiny_config.agent, grade_threshold=1.0, on_weak="not_found"))
    response = build_query_engine(config, "full-no-rewrite").query("What is a B-tree?")
    assert [r["grade"]["decision"] for r in response.metadata["rounds"]] == ["not_found"]
    assert response.response.startswith(NOT_FOUND_ANSWER) and response.metadata["rewrites"] == []


def test_weak_rounds_answer_from_the_best_round_marked_low_confidence_by_default(tiny_config):
    assert tiny_config.agent.on_weak == "answer"
    config = dataclasses.replace(tiny_config, agent=dataclasses.replace(tiny_config.agent, grade_threshold=1.0, max_rounds=2, retry_modes=["multi"]))
    response = build_query_engine(config, "full").query("What is a B-tree?")
    rounds = response.metadata["rounds"]
    assert [r["grade"]["decision"] for r in rounds] == ["retry", "low_confidence"]
    assert response.metadata["low_confidence"] is True and response.metadata["not_found"] is False
    assert not response.response.startswith(NOT_FOUND_ANSWER) and response.metadata["not_used"] == []
    best = max(rounds, key=lambda r: max(h["score"] for h in r["reranked"]))
    assert [n.node.node_id for n in response.source_nodes] == [h["id"] for h in best["reranked"]][: len(response.source_nodes)]
    assert len(response.source_nodes) == config.rerank.top_n


def test_without_the_agent_a_weak_round_is_accepted(tiny_config):
    config = dataclasses.replace(tiny_config, agent=dataclasses.replace(tiny_config.agent, grade_threshold=1.0))
    response = build_query_engine(config, "full-no-agent").query("What is a B-tree?")
    assert len(response.metadata["rounds"]) == 1 and response.metadata["rounds"][0]["grade"]["decision"] == "accept"
    assert response.source_nodes


# ------------------------------------------------------------------ sync, async, streaming, batch


@pytest.mark.parametrize("system", ["vanilla", "rag_vanilla", "full"])
def test_async_streaming_and_batch_equal_sync_for_greedy_decoding(tiny_config, components, system):
    question = "What is virtual memory?"
    sync = engine(tiny_config, system, components).query(question)
    asynchronous = asyncio.run(engine(tiny_config, system, components).aquery(question))
    streamed = engine(tiny_config, system, components, streaming=True).query(question)
    text = "".join(streamed.response_gen)
    batched = engine(tiny_config, system, components).query_batch([question, "What is a B-tree?"], show_progress=False)[0]
    assert asynchronous.response == sync.response
    assert text == sync.response
    assert batched.response == sync.response
    ids = [n.node.node_id for n in sync.source_nodes]
    assert [n.node.node_id for n in asynchronous.source_nodes] == ids
    assert [n.node.node_id for n in streamed.source_nodes] == ids
    assert [n.node.node_id for n in batched.source_nodes] == ids


@pytest.mark.parametrize("question", ["", "   "])
def test_empty_question_is_refused(tiny_config, components, question):
    with pytest.raises(ValueError, match="the question is empty"):
        engine(tiny_config, "rag_vanilla", components).query(question)


def test_missing_artifact_names_the_command(tiny_config, tmp_path):
    config = dataclasses.replace(tiny_config, rerank=dataclasses.replace(tiny_config.rerank, model=str(tmp_path / "no-reranker")))
    with pytest.raises(ArtifactMissingError, match="python -m finetune.reranker --config tiny"):
        build_query_engine(config, "full").query("What is a B-tree?")


def test_full_reranks_with_the_query_likelihood_reranker_when_the_config_names_it(tiny_config, tmp_path):
    """rerank.kind=query-likelihood: `full` reorders its candidates by log P(question | passage)
    under the base LM with the adapter at rerank.model (here the tiny system's rewriter adapter:
    any LoRA adapter of the base LM scores), and grades the geometric mean token probability."""
    from rerank.query_likelihood import QueryLikelihoodReranker

    config = dataclasses.replace(tiny_config, rerank=dataclasses.replace(tiny_config.rerank, kind="query-likelihood", model=tiny_config.rewrite.adapter, max_length=200))
    components = Components(config)
    response = build_query_engine(config, "full", components=components).query("What is a B-tree?")
    assert isinstance(components.reranker(), QueryLikelihoodReranker)
    reranked = response.metadata["rounds"][0]["reranked"]
    assert len(reranked) == config.rerank.top_n and all(0 < h["rerank_score"] <= 1 for h in reranked)
    assert [n.node.node_id for n in response.source_nodes] == [h["id"] for h in reranked][: len(response.source_nodes)]
    missing = dataclasses.replace(config, rerank=dataclasses.replace(config.rerank, model=str(tmp_path / "no-adapter")))
    with pytest.raises(ArtifactMissingError, match="python -m finetune.ql_reranker --config tiny"):
        build_query_engine(missing, "full").query("What is a B-tree?")


# ------------------------------------------------------------------ citations and streaming clean-up


def test_citations_to_passages_never_given_are_dropped():
    assert keep_valid_citations("A heap [1] is a tree [3][7].", 3) == "A heap [1] is a tree [3]."


def test_clean_stream_matches_the_sync_clean_up():
    from pipeline.generate import clean_answer

    raw = "A B-tree keeps keys sorted [2] in wide nodes [9].\nQuestion: What is next?\nAnswer: more"
    pieces = [raw[i : i + 3] for i in range(0, len(raw), 3)]
    assert "".join(clean_stream(iter(pieces), 2)) == keep_valid_citations(clean_answer(raw), 2)


def test_query_batch_writes_the_first_round_rewrites_in_one_batched_pass(tiny_config, monkeypatch):
    """full's first-round rewrites of a batch go through the LM together (per mode), and each
    question's round reads its own from the rewriter's cache: the same rewrite as a query alone."""
    from rewrite import QueryRewriter

    config = dataclasses.replace(tiny_config, rewrite=dataclasses.replace(tiny_config.rewrite, mode="hyde"), agent=dataclasses.replace(tiny_config.agent, max_rounds=1))
    calls = []
    real = QueryRewriter._generate
    monkeypatch.setattr(QueryRewriter, "_generate", lambda self, conversations, show: calls.append(len(conversations)) or real(self, conversations, show))
    questions = ["What is a B-tree?", "  How does a hash table handle collisions?  ", "What is virtual memory?"]
    batched = build_query_engine(config, "full", components=Components(config)).query_batch(questions, show_progress=False)
    assert calls == [3]  # one pass for the three hyde rewrites, none per question afterwards
    alone = build_query_engine(config, "full", components=Components(config))
    for question, response in zip(questions, batched):
        first = response.metadata["rounds"][0]
        assert first["mode"] == "hyde" and first["rewrite"]["texts"] == alone.query(question).metadata["rounds"][0]["rewrite"]["texts"]
        assert response.metadata["timings"]["rewrite"] >= first["rewrite"]["seconds"] - 1e-4 and first["rewrite"]["seconds"] > 0  # its share of the batched pass (the trace rounds to 4 digits)


# ------------------------------------------------------------------ rewrite.mode condense


def test_condense_mode_searches_a_clean_question_as_typed_and_each_ask_of_a_joined_one_on_its_own(tiny_config, demo_dir):
    """Under rewrite.mode condense a clean question costs no LM call; a joined one is rewritten
    (here by a scripted LM) into one question per ask, each retrieved and reranked on its own, the
    passages taken from both lists, and the generator reads the rewrite."""
    from llama_index.core.base.llms.types import CompletionResponse, LLMMetadata
    from llama_index.core.llms.custom import CustomLLM

    from pipeline.data import load_split
    from pipeline.index import qa_node_id

    class Scripted(CustomLLM):
        calls: list = []

        @property
        def metadata(self) -> LLMMetadata:
            return LLMMetadata()

        def complete(self, prompt, formatted=False, **kwargs):
            self.calls.append(prompt)
            return CompletionResponse(text="Compare TCP and UDP.\nExplain the TCP three-way handshake.")

        def stream_complete(self, prompt, formatted=False, **kwargs):
            raise NotImplementedError

    config = dataclasses.replace(
        tiny_config,
        rewrite=dataclasses.replace(tiny_config.rewrite, mode="condense", condense_adapter=None),
        agent=dataclasses.replace(tiny_config.agent, max_rounds=1),
    )
    scripted = Scripted()
    full = build_query_engine(config, "full", components=Components(config, llms={"base": scripted}))

    clean = full.query("What is a B-tree?")
    first = clean.metadata["rounds"][0]
    assert scripted.calls == [] and first["mode"] == "condense" and first["rewrite"]["method"] == "as-is"
    assert clean.metadata["search_question"] == "What is a B-tree?"

    train = {r["question"]: r for r in load_split(demo_dir, "train")}
    wanted = {qa_node_id(q, train[q]["answer"]) for q in ("Compare TCP and UDP.", "Explain the TCP three-way handshake.")}
    joined = full.query("hey, two things for my networking exam: tcp vs udp, and what's the three-way handshake")
    first = joined.metadata["rounds"][0]
    assert len(scripted.calls) == 1 and first["rewrite"]["texts"] == ["Compare TCP and UDP.", "Explain the TCP three-way handshake."]
    assert wanted <= {row["id"] for row in first["retrieved"]}, "the candidates must cover both asks"
    # the passages alternate between the two reranked lists (each list's best first)
    reranked = first["reranked"]
    assert [n.node.node_id for n in joined.source_nodes] == [row["id"] for row in reranked][: len(joined.source_nodes)]
    assert joined.metadata["search_question"] == "Compare TCP and UDP. Explain the TCP three-way handshake."


def test_an_answer_its_passages_do_not_support_is_flagged_or_replaced_by_a_quote(tiny_config):
    """pipeline.engine.check_support on fixed texts: the support is recorded for any system with
    retrieval; full flags or quotes an unsupported answer (generator.on_unsupported), a baseline
    keeps it."""
    from llama_index.core.schema import NodeWithScore, TextNode

    from pipeline.engine import check_support

    nodes = [
        NodeWithScore(node=TextNode(id_="a", text="Question: What does ARP do?\nAnswer: ARP maps an IP address to a MAC address.", metadata={"answer": "ARP maps an IP address to a MAC address."}), score=1.0),
        NodeWithScore(node=TextNode(id_="b", text="A MAC address is a hardware identifier."), score=0.5),
    ]
    full, rag = get_system("full", tiny_config), get_system("rag_vanilla", tiny_config)
    answer, record = check_support(tiny_config, full, "ARP maps an IP address to a MAC address [1].", nodes)
    assert record["supported"] and record["passage"] == 1 and record["action"] == "none" and answer.startswith("ARP maps")
    invented = "A deadlock is a sequence of events that prevents a process from continuing forever."
    answer, record = check_support(tiny_config, full, invented, nodes)
    assert not record["supported"] and record["action"] == "flagged" and answer == invented  # the default: flag
    quoting = dataclasses.replace(tiny_config, generator=dataclasses.replace(tiny_config.generator, on_unsupported="quote"))
    answer, record = check_support(quoting, full, invented, nodes)
    assert record["action"] == "quoted" and answer.startswith("From the knowledge base [") and '"' in answer
    assert check_support(quoting, full, invented, nodes, stream=True)[1]["action"] == "flagged"  # a streamed answer is already shown
    # quote_below: only an answer under it is quoted; one between it and the threshold is flagged
    partly = "ARP maps an IP address, says the wise old owl, to a MAC address on most days of the week."
    score = check_support(tiny_config, full, partly, nodes)[1]["score"]
    assert 0.3 < score < 0.5
    quote_low = dataclasses.replace(quoting, generator=dataclasses.replace(quoting.generator, quote_below=0.3))
    answer, record = check_support(quote_low, full, partly, nodes)
    assert answer == partly and record["action"] == "flagged" and not record["supported"]
    assert check_support(quote_low, full, invented, nodes)[1]["action"] == "quoted"
    assert check_support(quoting, rag, invented, nodes)[1]["action"] == "none"  # baselines are measured as they answer
    assert check_support(tiny_config, full, NOT_FOUND_ANSWER, nodes) == (NOT_FOUND_ANSWER, None)
    assert check_support(tiny_config, get_system("vanilla", tiny_config), invented, [])[1] is None


# ------------------------------------------------------------------ the calibrated grade (agent.calibration)


def _calibrated(tiny_config, tmp_path, *, intercept, on_weak="not_found", max_rounds=1):
    from pipeline.grade import GradeCalibration

    path = tmp_path / "grade.json"
    GradeCalibration(intercept=intercept, coef={"ql": 0.0, "dense": 0.0}, threshold=0.5).save(path)
    return dataclasses.replace(tiny_config, agent=dataclasses.replace(tiny_config.agent, calibration=str(path), max_rounds=max_rounds, on_weak=on_weak, grade_threshold=0.0))


def test_a_calibrated_grade_above_its_threshold_answers(tiny_config, tmp_path):
    config = _calibrated(tiny_config, tmp_path, intercept=3.0)  # P = sigmoid(3) = 0.953
    response = build_query_engine(config, "full").query("What is a B-tree?")
    grade = response.metadata["rounds"][0]["grade"]
    assert grade["decision"] == "accept" and grade["best"] == pytest.approx(0.952574, abs=1e-6) and grade["threshold"] == 0.5
    assert set(response.metadata["rounds"][0]["features"]) == {"ql", "dense"}
    assert not response.metadata["not_found"] and response.source_nodes


def test_a_calibrated_grade_below_its_threshold_refuses_and_names_the_search(tiny_config, tmp_path):
    config = _calibrated(tiny_config, tmp_path, intercept=-3.0)
    response = build_query_engine(config, "full").query("What is a B-tree?")
    grade = response.metadata["rounds"][0]["grade"]
    assert grade["decision"] == "not_found" and grade["best"] == pytest.approx(0.047426, abs=1e-6)
    assert response.response == f'{NOT_FOUND_ANSWER} Searched for: "What is a B-tree?".'
    assert response.source_nodes == [] and len(response.metadata["not_used"]) == config.rerank.top_n
    assert "support" not in response.metadata  # a refusal is not checked for support


def test_a_calibrated_weak_round_retries_with_a_rewrite_that_changes_the_search(tiny_config, tmp_path):
    config = _calibrated(tiny_config, tmp_path, intercept=-3.0, max_rounds=2)
    config = dataclasses.replace(config, agent=dataclasses.replace(config.agent, retry_modes=["multi"]))
    response = build_query_engine(config, "full").query("What is a B-tree?")
    rounds = response.metadata["rounds"]
    assert [r["grade"]["decision"] for r in rounds] == ["retry", "not_found"]
    assert rounds[1]["mode"] == "multi" and rounds[1]["rewrite"]["texts"]
    first_graded = {h["id"] for h in rounds[0]["reranked"][: config.rerank.top_n]}
    assert rounds[1]["excluded"] == config.rerank.top_n
    assert not first_graded & {h["id"] for h in rounds[1]["retrieved"]}, "a retry grades other passages"
    assert len(rounds[1]["retrieved"]) == len(rounds[0]["retrieved"])


def test_a_missing_calibration_file_is_an_error_that_says_how_to_fit_one(tiny_config, tmp_path):
    from pipeline.grade import GradeError

    config = dataclasses.replace(tiny_config, agent=dataclasses.replace(tiny_config.agent, calibration=str(tmp_path / "missing.json")))
    with pytest.raises(GradeError, match="python -m eval.answerability --split dev --fit"):
        build_query_engine(config, "full").query("What is a B-tree?")


def test_a_keywords_retry_searches_the_content_words_alone_with_no_lm(tiny_config, tmp_path):
    from rewrite.rewriter import keywords

    assert keywords("What is the difference between a B-tree and a B+ tree?") == "b-tree b+ tree"  # "difference" is a question word here
    config = _calibrated(tiny_config, tmp_path, intercept=-3.0, max_rounds=2)
    config = dataclasses.replace(config, agent=dataclasses.replace(config.agent, retry_modes=["keywords"]))
    response = build_query_engine(config, "full").query("How does a B-tree stay balanced?")
    retry = response.metadata["rounds"][1]
    assert retry["mode"] == "keywords" and retry["rewrite"]["texts"] == ["b-tree stay balanced"] and retry["rewrite"]["method"] == "rules"
    assert retry["rewrite"]["raw"] == "" and retry["excluded"] == config.rerank.top_n

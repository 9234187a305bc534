"""finetune.embedder: triplet rows, a short real MiniLM training step, errors, and the saved folder
being usable as `index.embed_model`."""

from __future__ import annotations

import pytest

from finetune.embedder import main, triplet_rows
from pipeline.config import load_config
from pipeline.data import load_split


def test_triplet_rows_fill_missing_negatives_with_other_answers(demo_dir):
    records = load_split(demo_dir, "train")[:8]
    hard = [[records[(i + 1) % 8]["answer"]] if i % 2 else [] for i in range(8)]
    rows = triplet_rows(records, hard, 2, seed=0)
    assert list(rows) == ["anchor", "positive", "negative_1", "negative_2"]
    assert rows["anchor"] == [r["question"] for r in records] and rows["positive"] == [r["answer"] for r in records]
    for i in range(8):
        negatives = [rows["negative_1"][i], rows["negative_2"][i]]
        assert records[i]["answer"] not in negatives and len(set(negatives)) == 2
        if hard[i]:
            assert negatives[0] == hard[i][0]  # the mined one comes first
    assert list(triplet_rows(records, hard, 0, seed=0)) == ["anchor", "positive"]


def test_missing_knowledge_base_is_a_clear_error(tmp_path, capsys, demo_dir):
    assert main(["--config", "tiny", "--set", f"run_dir={tmp_path}", "--set", f"data.dir={demo_dir}", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "knowledge base" in err and "python -m pipeline.index" in err


@pytest.mark.realweights
def test_short_real_training_moves_the_weights_and_saves_a_usable_embedder(demo_dir, tmp_path):
    import torch

    from finetune.embedder import train_embedder
    from pipeline.encoders import load_embedder, load_sentence_transformer

    records = load_split(demo_dir, "train")[:24]
    config = load_config("tiny", [f"run_dir={tmp_path}", "finetune.embedder.batch_size=8", "finetune.embedder.learning_rate=1.0e-4"])
    rows = triplet_rows(records, [[] for _ in records], 1, seed=0)
    model = load_sentence_transformer(config.finetune.embedder.base_model, device="cpu")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    questions, answers = [r["question"] for r in records], [r["answer"] for r in records]

    def contrastive_loss() -> float:
        # the objective itself on all 24 pairs: each question against every answer, own answer = target
        scores = model.similarity(model.encode(questions, convert_to_tensor=True), model.encode(answers, convert_to_tensor=True)) * 20.0
        return float(torch.nn.functional.cross_entropy(scores, torch.arange(len(records))))

    loss_before = contrastive_loss()
    history = train_embedder(model, rows, config, work_dir=tmp_path / "work", show_progress=False)
    assert any("loss" in e for e in history)
    assert any(not torch.equal(p.detach(), before[n]) for n, p in model.named_parameters())
    assert contrastive_loss() < loss_before
    out = tmp_path / "embedder"
    model.save(str(out))
    embed = load_embedder(load_config("tiny", [f"index.embed_model={out}"]))
    assert len(embed.get_query_embedding(questions[0])) == 384


def test_index_built_with_another_embedder_refuses_the_finetuned_one(tmp_path):
    """Using the fine-tuned embedder is an explicit re-indexing step: an index whose manifest names
    another embedder fails with a message naming both and --rebuild."""
    from pipeline.index import KnowledgeBaseError, check_embedder

    config = load_config("tiny", [f"index.embed_model={tmp_path / 'embedder'}"])
    with pytest.raises(KnowledgeBaseError, match="--rebuild") as info:
        check_embedder({"embed_model": "sentence-transformers/all-MiniLM-L6-v2"}, config, tmp_path / "index")
    assert "all-MiniLM-L6-v2" in str(info.value) and str(tmp_path / "embedder") in str(info.value)


@pytest.mark.realweights
def test_eval_build_trains_the_embedder_indexes_with_it_and_full_searches_that_index(tiny_config, tmp_path):
    """index.finetuned_embedder: the build plan trains the embedder (hard negatives from the base
    index), ingests the same nodes with it into index.finetuned_dir, and `full`'s retrieval reads
    that index while a baseline keeps the base one; a second plan reuses both."""
    from eval.build import BuildPlan, execute_plan, plan_builds
    from pipeline.engine import Components, build_query_engine

    config = load_config(
        "tiny",
        [
            f"run_dir={tmp_path}",
            f"data.dir={tiny_config.data.dir}",
            f"index.dir={tiny_config.index.dir}",  # the session's base index, read only
            f"generator.model={tiny_config.generator.model}",
            f"rerank.model={tiny_config.rerank.model}",
            "index.finetuned_embedder=true",
            "finetune.embedder.limit=64",
            "finetune.embedder.eval_limit=16",
            "finetune.raft.context=oracle",
            "retrieve.mode=dense",
            "rewrite.mode=none",
        ],
    )
    wanted = ("embedder", "index-finetuned")
    plan = plan_builds(config, ["full"])
    steps = [s for s in plan.steps if s.artifact in ("index", *wanted)]  # the base index: reused, its identity recorded upstream
    assert [(s.artifact, s.action) for s in steps] == [("index", "reuse"), ("embedder", "build"), ("index-finetuned", "build")]
    execute_plan(BuildPlan(steps), config, log=lambda *_: None, show_progress=False)
    assert {s.artifact: s.action for s in plan_builds(config, ["full"]).steps if s.artifact in wanted} == {"embedder": "reuse", "index-finetuned": "reuse"}

    components = Components(config)
    finetuned, base = components.kb_for(True), components.kb_for(False)
    assert finetuned is not base and sorted(finetuned.nodes) == sorted(base.nodes)  # same nodes, other vectors
    question = "What is a B-tree?"
    k = config.rerank.candidates
    ft_ids = [h.node.node_id for h in components.retriever("dense", k, finetuned=True).retrieve(question)]
    base_ids = [h.node.node_id for h in components.retriever("dense", k).retrieve(question)]
    ft_scores = [h.score for h in components.retriever("dense", k, finetuned=True).retrieve(question)]
    base_scores = [h.score for h in components.retriever("dense", k).retrieve(question)]
    assert ft_scores != base_scores  # other vectors
    # what the engines search before reranking: full the fine-tuned index, full-base-embedder the base one
    for system, expected in (("full", ft_ids), ("full-base-embedder", base_ids)):
        engine = build_query_engine(config, system, components=components)
        state = engine.retrieve_only(question)["state"]
        assert [row["id"] for row in state.rounds[0]["retrieved"]] == expected, system

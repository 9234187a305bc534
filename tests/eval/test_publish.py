"""eval.publish's generated README blocks: the headline results table and the systems table.

The README's blocks must equal what the generators render from the committed results and the
shipped default profile, so the front page cannot drift from the code. (The publishing of a whole
eval.compare run is tested in tests/eval/test_compare.py, where its fixture lives.)"""

from __future__ import annotations

import json

import pytest

from eval.publish import (
    HEADLINE_SYSTEMS,
    SYSTEMS_BLOCK,
    PublishError,
    block_body,
    headline_table,
    main as publish_main,
    readme_link,
    systems_table,
    update_readme,
)
from pipeline.config import load_config
from pipeline.systems import SYSTEM_NAMES

HEADLINE_BLOCK = ("<!-- results:seed-headline:start -->", "<!-- results:seed-headline:end -->")


def _metrics(systems=("vanilla", "full")) -> dict:
    row = lambda r: {"rougeL": r, "bleu4": r / 2, "ci95": {"rougeL": [r - 0.01, r + 0.01], "bleu4": [r / 2 - 0.01, r / 2 + 0.01]}, "latency": {"p50_s": 0.5}}  # noqa: E731
    return {"profile": "demo-profile", "data": {"split": "test", "dir": "data/x", "n": 9}, "systems": {name: row(0.1 + i / 10) for i, name in enumerate(systems)}}


def test_the_readme_systems_block_is_what_the_shipped_profile_runs(repo_root):
    readme = (repo_root / "README.md").read_text(encoding="utf-8")
    assert block_body(readme, *SYSTEMS_BLOCK) == systems_table(load_config()), (
        "README.md's systems table differs from pipeline/systems.py under the default profile: "
        "regenerate it with python -m eval.publish --readme-only --out results/seed"
    )


def test_the_readme_headline_block_is_the_committed_seed_metrics(repo_root):
    readme_path = repo_root / "README.md"
    out = repo_root / "results" / "seed"
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    body = block_body(readme_path.read_text(encoding="utf-8"), *HEADLINE_BLOCK)
    assert body == headline_table(metrics, readme_link(out, readme_path)), (
        "README.md's headline table differs from results/seed/metrics.json: "
        "regenerate it with python -m eval.publish --readme-only --out results/seed"
    )
    assert "[results/seed/](results/seed/)" in body
    for name in HEADLINE_SYSTEMS:
        assert f"| `{name}` | {metrics['systems'][name]['rougeL']:.4f} [" in body


def test_systems_table_resolves_full_from_the_profile():
    table = systems_table(load_config())
    rows = {line.split(" | ")[0].strip("| `").split("`")[0]: line for line in table.splitlines() if line.startswith("| `")}
    assert list(rows) == list(SYSTEM_NAMES)
    full = rows["full"]
    # the default profile: the trained condenser behind its gate, dense over the fine-tuned embedder,
    # the query-likelihood reranker, the oracle RAFT generator with its copy bias and quote policy, the calibrated grade that refuses
    assert "`condense`, trained" in full and "dense top-20, fine-tuned embedder" in full
    assert "`condense`, base LM" in rows["full-base-rewriter"] and "(= `full` here)" not in rows["full-base-rewriter"]
    assert rows["full-no-rewrite"].split(" | ")[1] == "-"
    assert "query-likelihood LoRA, w 0.3 -> top 3" in full and "LoRA RAFT (oracle), copy bias 3, quotes < 0.3" in full and full.endswith("| calibrated grade: refuses below it |")
    assert "(= `full` here)" in rows["full-dense"] and "(= `full` here)" not in rows["full-no-rerank"]
    assert "| - | dense top-5 | - | base LM | - |" in rows["rag_vanilla"]  # baselines answer as they generate
    assert "base LM, quotes < 0.3" in rows["full-base-generator"]
    assert "none: the top passage's answer" in rows["nn_answer"] and "dense top-1" in rows["nn_answer"]

    other = systems_table(load_config("smollm2", [
        "rewrite.mode=hyde", "rewrite.adapter=runs/smollm2/adapters/rewriter", "retrieve.mode=hybrid",
        "rerank.kind=cross-encoder", "agent.grade_threshold=0.5", "agent.calibration=null", "agent.max_rounds=2", "index.finetuned_embedder=false",
    ]))
    rows = {line.split(" | ")[0].strip("| `").split("`")[0]: line for line in other.splitlines() if line.startswith("| `")}
    assert "`hyde`, LoRA rewriter" in rows["full"] and "hybrid top-20 |" in rows["full"] and "cross-encoder, w 0.3" in rows["full"]
    assert "retries below 0.5 (multi), 2 rounds at most, then not_found" in rows["full"]
    assert "`hyde`, base LM" in rows["full-base-rewriter"] and "(= `full` here)" not in rows["full-base-rewriter"]
    assert "(= `full` here)" in rows["full-base-embedder"] and "(= `full` here)" not in rows["full-dense"]
    refusing = systems_table(load_config("smollm2", ["agent.on_weak=not_found", "agent.max_rounds=2"]))
    assert "calibrated grade: 1 multi retry, then refuses below it" in refusing


def test_readme_only_fills_the_headline_and_systems_blocks_and_leaves_the_rest(tmp_path):
    out = tmp_path / "results" / "demo"
    out.mkdir(parents=True)
    (out / "metrics.json").write_text(json.dumps(_metrics()))
    readme = tmp_path / "README.md"
    readme.write_text(
        "# p\n\nintro\n<!-- results:demo-headline:start -->\nstale\n<!-- results:demo-headline:end -->\n"
        f"middle\n{SYSTEMS_BLOCK[0]}\nold systems\n{SYSTEMS_BLOCK[1]}\nend\n"
    )
    assert publish_main(["--readme-only", "--out", str(out), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "stale" not in text and "old systems" not in text
    assert text.startswith("# p\n\nintro\n<!-- results:demo-headline:start -->\n") and "\nmiddle\n" in text and text.endswith(f"{SYSTEMS_BLOCK[1]}\nend\n")
    assert "| `full` | 0.2000 [0.1900, 0.2100] | 0.1000 [0.0900, 0.1100] | 0.500 |" in text
    assert "[results/demo/](results/demo/)" in text  # the folder, relative to the README
    assert "| `rag_vanilla` |" not in block_body(text, "<!-- results:demo-headline:start -->", "<!-- results:demo-headline:end -->")  # a system the run lacks is left out
    assert block_body(text, *SYSTEMS_BLOCK) == systems_table(load_config())
    # regenerating changes nothing
    assert update_readme(text, out, _metrics(), link="results/demo") == text


def test_a_readme_without_a_results_block_is_refused_with_the_lines_to_add(tmp_path):
    with pytest.raises(PublishError, match=r"no block <!-- results:seed-headline:start -->"):
        update_readme("# nothing to fill\n", tmp_path / "seed", _metrics(), link="results/seed")
    out = tmp_path / "seed"
    out.mkdir()
    (out / "metrics.json").write_text(json.dumps(_metrics()))
    readme = tmp_path / "README.md"
    readme.write_text("# nothing to fill\n")
    assert publish_main(["--readme-only", "--out", str(out), "--readme", str(readme)]) == 2
    assert readme.read_text() == "# nothing to fill\n"

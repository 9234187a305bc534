"""eval.bench_speed (python -m eval.bench speed): the JSON's keys and ratios, the flags, clear errors, and each measuring section
on tiny models (a hashed embedder, the random-weight cross-encoder: the numbers are not the point
here, the measurement path is). SmolLM2 and the full run are not exercised."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from eval import bench, bench_speed
from eval.bench_speed import measure
from eval.bench_speed import (
    FIGURES,
    SAMPLES,
    BenchError,
    Parts,
    backend_configs,
    build_kb,
    candidate_lists,
    compare_timings,
    copy_reranker,
    figures,
    generation_rows,
    main,
    measure_ingest,
    measure_latency,
    measure_one_query,
    measure_quality,
    measure_rerank,
    measure_retrieve_rerank,
    plain_generate,
    quickest,
    readme_text,
    reranker_sources,
    targets_table,
)
from pipeline.config import load_config
from pipeline.data import load_split


def _detail(int8_texts=300.0, torch_texts=100.0, int8_pairs=50.0, torch_pairs=200.0):
    """Canned section details with every key the reports read."""
    return {
        "ingest": {"texts": 4, "batch": 64, "int8_texts_per_s": int8_texts, "torch_texts_per_s": torch_texts, "speedup": int8_texts / torch_texts, "cos_mean": 0.99, "cos_min": 0.98, "torch_token_order_texts_per_s": 1.2 * torch_texts},
        "rerank": {"pairs": 8, "batch": 32, "queries": 2, "max_length": 256, "int8_pairs_per_s": int8_pairs, "torch_pairs_per_s": torch_pairs, "speedup": int8_pairs / torch_pairs, "model": "fake", "torch_token_order_pairs_per_s": 1.25 * torch_pairs},
        "retrieve_rerank": {"queries": 2, "candidates": 20, "retriever": "hybrid", "embed_backend": "onnx-int8", "rerank_backend": "torch", "p50_ms": 41.234, "p90_ms": 50.0, "retrieve_p50_ms": 11.0, "rerank_p50_ms": 30.0},
        "generate": {
            "model": "m", "prompts": 4, "prompt_tokens_mean": 300.0, "context_top_k": 5, "batch_size": 16, "max_new_tokens": 8, "repetition_penalty": 1.1,
            "project": {"seconds": 2.0, "tokens": 210, "tokens_per_s": 105.0, "dtype": "bfloat16"},
            "baseline": {"seconds": 7.0, "tokens": 210, "tokens_per_s": 30.0, "dtype": "float32"},
            "identical": 3, "identical_share": 0.75,
            "first_token": {"prompts": 2, "p50_ms": 412.34, "max_ms": 500.0},
        },
        "quality": {"protocol": "open-book", "questions": 3, "corpus": 9, "candidates": 20, "mrr@10": {"torch": {"hybrid": 0.7, "hybrid+rerank": 0.8}, "onnx-int8": {"hybrid": 0.69, "hybrid+rerank": 0.77}}, "mrr10_delta": -0.03, "delta_ci95": [-0.06, 0.0], "delta_p_value": 0.1},
    }


def test_figures_are_the_measured_values_and_their_ratios():
    out = figures(_detail())
    assert list(out) == list(FIGURES)
    assert (out["ingest_per_s"], out["ingest_per_s_baseline"], out["ingest_speedup"]) == (300.0, 100.0, 3.0)
    assert (out["rerank_pairs_per_s"], out["rerank_pairs_per_s_baseline"], out["rerank_speedup"]) == (50.0, 200.0, 0.25)
    assert (out["generate_tok_s"], out["generate_tok_s_baseline"], out["generate_speedup"]) == (105.0, 30.0, 3.5)
    assert out["generate_identical"] == 0.75 and out["mrr10_delta"] == -0.03
    assert out["retrieve_rerank_p50_ms"] == 41.23 and out["retrieve_rerank_backend"] == "torch"
    assert out["first_token_p50_ms"] == 412.3
    assert (out["ingest_backend"], out["rerank_backend"], out["mrr10_delta_bf16"]) == ("onnx-int8", "onnx-int8", None)  # no bf16 figures: int8's


def test_the_headline_is_the_faster_of_int8_and_bf16_and_bf16s_quality_is_reported():
    detail = _detail(int8_texts=300.0, int8_pairs=50.0)
    detail["ingest"].update(bf16_texts_per_s=400.0, bf16_cos_mean=0.9999, bf16_cos_min=0.999)
    detail["rerank"].update(bf16_pairs_per_s=40.0, bf16_logit_corr=0.9999)
    detail["quality"].update(mrr10_delta_bf16=0.001, delta_bf16_ci95=[-0.01, 0.01])
    detail["quality"]["mrr@10"]["torch-bf16"] = {"hybrid": 0.7, "hybrid+rerank": 0.801}
    out = figures(detail)
    assert (out["ingest_per_s"], out["ingest_backend"], out["ingest_speedup"]) == (400.0, "torch-bf16", 4.0)
    assert (out["rerank_pairs_per_s"], out["rerank_backend"]) == (50.0, "onnx-int8")  # int8 is the faster cross-encoder here
    assert out["mrr10_delta"] == -0.03 and out["mrr10_delta_bf16"] == 0.001
    text = bench_speed.to_markdown({
        "mode": "quick", "git_revision": "abc", "wall_s": 1.0, "machine": {"cpus": 2, "cpu": "x", "torch_threads": 2, "load_avg_1m_start": 1.0},
        "samples": {"passages": 4, "rounds": 2, "candidates": 20}, "seconds": {}, "detail": {**detail, "compare": None}, **out,
    })
    assert "400.0 (torch-bf16)" in text and "50.0 (onnx-int8)" in text and "bf16: 0.8010, delta +0.0010" in text and "bf16 400 (cos 0.99990)" in text


def test_with_a_torch_int8_headline_each_backend_line_keeps_its_own_delta():
    detail = _detail(int8_pairs=50.0)
    detail["rerank"].update(int8_torch_pairs_per_s=70.0, int8_torch_logit_corr=0.99)
    detail["quality"].update(mrr10_delta_int8_torch=0.004, delta_int8_torch_ci95=[-0.01, 0.02])
    detail["quality"]["mrr@10"]["torch-int8"] = {"hybrid": 0.7, "hybrid+rerank": 0.804}
    out = figures(detail)
    assert (out["rerank_backend"], out["mrr10_delta"], out["mrr10_delta_backend"]) == ("torch-int8", 0.004, "torch-int8")
    text = bench_speed.to_markdown({
        "mode": "quick", "git_revision": "abc", "wall_s": 1.0, "machine": {"cpus": 2, "cpu": "x", "torch_threads": 2, "load_avg_1m_start": 1.0},
        "samples": {"passages": 4, "rounds": 2, "candidates": 20}, "seconds": {}, "detail": {**detail, "compare": None}, **out,
    })
    # onnx-int8's value beside its own delta and interval, torch-int8's beside its own
    assert "0.7700 onnx-int8: delta -0.0300 (95% CI [-0.0600, +0.0000])" in text
    assert "torch-int8: 0.8040, delta +0.0040 (95% CI [-0.0100, +0.0200])" in text and "(the headline delta is torch-int8's)" in text


def test_quickest_are_the_short_names_of_the_lowest_p50s_the_first_on_a_tie():
    assert quickest({"onnx-int8": 4.0, "torch-int8": 2.5, "torch": 9.0}) == ["int8_torch", "int8"]
    assert quickest({"onnx-int8": 3.0, "torch-int8": 3.0, "torch": 1.0}, n=3) == ["torch", "int8", "int8_torch"]
    assert quickest({"torch-bf16": 2.0}) == ["bf16"]


def test_first_token_latency_waits_for_the_first_words_and_drains_each_stream():
    import time
    from types import SimpleNamespace

    from eval.bench_speed import first_token_latency

    drained = []

    class _StreamingLLM:
        def stream_complete(self, prompt, formatted=False, max_new_tokens=None):
            assert formatted and max_new_tokens == 16

            def gen():
                yield SimpleNamespace(delta="")  # a first empty chunk is not the first word
                time.sleep(0.05)
                yield SimpleNamespace(delta="Threads")
                yield SimpleNamespace(delta=" share")
                drained.append(prompt)

            return gen()

    result = first_token_latency(_StreamingLLM(), ["p1", "p2", "p3"])
    assert result["prompts"] == 3 and 50 <= result["p50_ms"] < 1000 and result["max_ms"] >= result["p50_ms"]
    assert drained == ["p1", "p2", "p3"]


def _write_splits(folder: Path, demo_dir: Path, n: dict[str, int]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split, count in n.items():
        rows = load_split(demo_dir, split)[:count]
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return folder


class _FakeKB:
    closed = False

    def close(self):
        self.closed = True


def test_cli_prints_one_json_object_with_every_key(monkeypatch, tmp_path, demo_dir, capsys):
    data = _write_splits(tmp_path / "data", demo_dir, {"train": 30, "val": 12, "test": 5})
    detail, calls, kbs = _detail(), {"kb": []}, []

    def fake_kb(parts, backend, train):
        calls["kb"].append(backend)
        kbs.append(_FakeKB())
        return kbs[-1]

    def fake_generate(parts, kb, embed_backend, questions, *, new_tokens, log, references):
        print("a library printing to stdout")  # must not reach the JSON on stdout
        calls["generate"] = (len(questions), new_tokens)
        calls["references"] = len(references)
        return detail["generate"]

    # the pairs' p50s, tried once each and then the quickest pair again: onnx-int8 + torch-int8 is quickest
    pair_ms = {("int8_torch", "int8"): 60.0, ("int8_torch", "int8_torch"): 58.0, ("int8", "int8"): 52.0, ("int8", "int8_torch"): 49.0}

    def fake_latency(parts, kb, embed_backend, rerank_backend, questions):
        calls.setdefault("latency", []).append((embed_backend, rerank_backend, len(questions), kb))
        return {**detail["retrieve_rerank"], "p50_ms": pair_ms[embed_backend, rerank_backend]}

    monkeypatch.setattr(measure, "load_parts", lambda *a, **k: Parts(configs={"torch": None, "int8": None}, embedders={}, cross_encoders={}, reranker="fake"))
    monkeypatch.setattr(measure, "measure_ingest", lambda parts, train, *, passages, rounds: calls.setdefault("ingest", (len(train[:passages]), rounds)) and detail["ingest"])
    monkeypatch.setattr(measure, "build_kb", fake_kb)
    # one query, each stage alone: torch-int8 then onnx-int8 embed a question quickest, onnx-int8 then torch-int8 score its list quickest
    one_query = {"queries": 12, "embed_p50_ms": {"onnx-int8": 4.0, "torch-int8": 2.5, "torch-bf16": 6.0, "torch": 9.0}, "rerank_p50_ms": {"onnx-int8": 40.0, "torch-int8": 41.0, "torch-bf16": 70.0, "torch": 120.0}}
    monkeypatch.setattr(measure, "measure_one_query", lambda parts, lists: dict(one_query))
    monkeypatch.setattr(measure, "candidate_lists", lambda config, kb, questions: [(q, []) for q in questions])
    monkeypatch.setattr(measure, "measure_rerank", lambda parts, lists, *, rounds: detail["rerank"])
    monkeypatch.setattr(measure, "measure_retrieve_rerank", fake_latency)
    monkeypatch.setattr(measure, "measure_generate", fake_generate)
    monkeypatch.setattr(measure, "measure_quality", lambda parts, data, picked, *, log: calls.setdefault("quality", list(picked)) and detail["quality"])
    out, readme = tmp_path / "res" / "speed.json", tmp_path / "res" / "README.md"
    argv = ["--quick", "--data", str(data), "--format", "json", "--out", str(out), "--readme", str(readme), "--set", "run_dir=" + str(tmp_path / "run")]

    assert main(argv) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)  # the whole of stdout is one JSON object
    assert "a library printing to stdout" in captured.err
    assert all(key in result for key in FIGURES)
    assert result["ingest_speedup"] == round(result["ingest_per_s"] / result["ingest_per_s_baseline"], 3) == 3.0
    assert result["rerank_speedup"] == 0.25 and result["generate_speedup"] == 3.5
    # the faster backend on batches embeds the shared index (int8); the two quickest embedders x the
    # two quickest cross-encoders are tried, each embedder over an index it embedded (closed after,
    # the shared one at the end), and the quickest pair is timed again for the figure
    assert calls["kb"] == ["int8", "int8_torch"]
    assert [c[:3] for c in calls["latency"]] == [("int8_torch", "int8", 12), ("int8_torch", "int8_torch", 12), ("int8", "int8", 12), ("int8", "int8_torch", 12), ("int8", "int8_torch", 12)]
    assert [kbs.index(c[3]) for c in calls["latency"]] == [1, 1, 0, 0, 0]
    assert result["detail"]["one_query"]["pair_p50_ms"] == {"torch-int8 + onnx-int8": 60.0, "torch-int8 + torch-int8": 58.0, "onnx-int8 + onnx-int8": 52.0, "onnx-int8 + torch-int8": 49.0}
    assert result["retrieve_rerank_p50_ms"] == 49.0 and all(kb.closed for kb in kbs)
    assert calls["ingest"] == (30, SAMPLES["quick"]["rounds"]) and calls["generate"] == (12, 48) and calls["references"] == 12
    assert sorted(calls["quality"]) == list(range(12))  # every val question: 270 asked, 12 there
    assert result["samples"]["passages"] == 30 and result["samples"]["questions"] == 12 and result["samples"]["new_tokens"] == 48
    assert set(result["seconds"]) == {"setup", "ingest", "index", "rerank", "retrieve_rerank", "generate", "quality"}
    assert result["detail"]["compare"] is None and result["mode"] == "quick"
    assert result["machine"]["cpus"] == os.cpu_count() and result["machine"]["torch_threads"] >= 1
    assert isinstance(result["git_revision"], str) and len(result["git_revision"]) >= 7
    assert result["command"].startswith("python -m eval.bench speed --quick --data ")
    assert json.loads(out.read_text()) == result

    text = readme.read_text()
    assert result["command"] in text and result["git_revision"] in text and f"wall time {result['wall_s']:.0f} s" in text
    assert "| ingest: embedder passages/s | 300.0 (onnx-int8) | 100.0 (torch fp32) | 3.00x |" in text
    assert '"mrr10_delta": -0.03' in text
    assert "embed the question onnx-int8 4.0 ms, torch-int8 2.5 ms, torch-bf16 6.0 ms, torch 9.0 ms; score its 20 candidates onnx-int8 40.0 ms" in text
    assert "retrieve + rerank p50 torch-int8 + onnx-int8 60.0 ms, torch-int8 + torch-int8 58.0 ms, onnx-int8 + onnx-int8 52.0 ms, onnx-int8 + torch-int8 49.0 ms" in text
    # torch fp32 fed token-ordered batches: 120 texts/s, 250 pairs/s; the speed-ups over it
    assert "ingest 120 texts/s, rerank 250 pairs/s; the speed-ups over it, int8's own: ingest 2.50x, rerank 0.20x" in text

    # --from-json renders the same README again without measuring anything
    monkeypatch.setattr(measure, "load_parts", lambda *a, **k: pytest.fail("--from-json must not measure"))
    again = tmp_path / "again.md"
    assert main(["--from-json", str(out), "--readme", str(again), "--format", "md"]) == 0
    assert again.read_text() == text and "| rerank: cross-encoder pairs/s | 50.0 (onnx-int8) | 200.0 (torch fp32) | 0.25x |" in capsys.readouterr().out
    assert main(["--from-json", str(data / "train.jsonl")]) == 2
    assert "--from-json" in capsys.readouterr().err

    # --readme-block fills the project README's block from the same result, and only that block
    project = tmp_path / "PROJECT.md"
    project.write_text("# p\n\nbefore\n<!-- results:bench-speed:start -->\nstale 1.68x\n<!-- results:bench-speed:end -->\nafter\n")
    assert main(["--from-json", str(out), "--readme-block", str(project)]) == 0
    filled = project.read_text()
    assert "stale" not in filled and filled.startswith("# p\n\nbefore\n") and filled.endswith("<!-- results:bench-speed:end -->\nafter\n")
    assert f"From `{out}`" in filled and "| rerank: cross-encoder pairs/s | 50.0 (onnx-int8) | 200.0 (torch fp32) | 0.25x |" in filled
    project.write_text("# no block\n")
    capsys.readouterr()
    assert main(["--from-json", str(out), "--readme-block", str(project)]) == 2
    assert "results:bench-speed:start" in capsys.readouterr().err and project.read_text() == "# no block\n"


def test_help_lists_every_flag(capsys):
    with pytest.raises(SystemExit) as info:
        bench.main(["speed", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    flags = ("--config", "--set", "--help-config", "--quick", "--data", "--reranker", "--passages", "--queries", "--prompts", "--new-tokens", "--questions", "--rounds", "--no-compare", "--time-install", "--format", "--out", "--readme", "--readme-block", "--from-json", "--targets", "--targets-block")
    assert [flag for flag in flags if flag not in out] == []
    assert "python -m eval.bench speed --quick" in out  # the docstring's commands are the epilog


def test_bad_inputs_name_the_flag_and_the_fix(tmp_path, demo_dir, monkeypatch, capsys):
    assert main(["--quick", "--data", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "--data" in err and "nowhere" in err and "train.jsonl" in err and "Fix:" in err

    data = _write_splits(tmp_path / "data", demo_dir, {"train": 3, "val": 3, "test": 3})
    assert main(["--quick", "--data", str(data), "--rounds", "0"]) == 2
    assert "--rounds must be > 0; got 0" in capsys.readouterr().err

    real = measure.importlib.util.find_spec
    monkeypatch.setattr(measure.importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    assert main(["--quick", "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert "onnxruntime" in err and "pip install" in err


def test_reranker_sources_in_order(tmp_path, demo_dir):
    from pipeline.cli import data_run_dir

    config = load_config("tiny", [f"run_dir={tmp_path / 'run'}"])
    trained = Path(data_run_dir(config.run_dir, demo_dir)) / "reranker"
    for folder in (trained, Path(config.rerank.model)):
        folder.mkdir(parents=True)
        (folder / "config.json").write_text("{}")
        (folder / "model.safetensors").write_bytes(b"")
    assert reranker_sources(config, demo_dir, None) == [(trained, "trained by eval.compare on --data"), (Path(config.rerank.model), "rerank.model")]
    shutil.rmtree(trained)
    assert [how for _, how in reranker_sources(config, demo_dir, None)] == ["rerank.model"]
    with pytest.raises(BenchError, match="--reranker .*nope.*Fix"):
        reranker_sources(config, demo_dir, str(tmp_path / "nope"))


def test_generation_rows_count_tokens_and_identical_answers():
    rows = generation_rows({"project": (["a b c", "d e", "f"], 2.0), "baseline": (["a b c", "d x", "f"], 4.0)}, lambda texts: sum(len(t.split()) for t in texts))
    assert rows["project"] == {"seconds": 2.0, "tokens": 6, "tokens_per_s": 3.0}
    assert rows["baseline"]["tokens_per_s"] == 1.5 and rows["identical"] == 2 and rows["identical_share"] == pytest.approx(2 / 3)


def test_generation_rows_score_both_runs_against_the_references():
    references = ["the cat sat on the mat", "a b c d", "x y z"]
    project = ["the cat sat on the mat", "a b", "x y z"]  # one answer worse than the baseline's
    baseline = ["the cat sat on the mat", "a b c d", "x y z"]
    rows = generation_rows({"project": (project, 1.0), "baseline": (baseline, 1.0)}, lambda texts: len(texts), references, samples=200, seed=0)
    quality = rows["rougeL"]
    assert quality["baseline"] == pytest.approx(1.0)
    assert quality["project"] == pytest.approx((1.0 + 2 * 0.5 * 1.0 / 1.5 + 1.0) / 3)  # "a b" vs "a b c d": P 1, R 0.5, F 2/3
    assert quality["delta"] == pytest.approx(quality["project"] - 1.0) and quality["delta"] < 0
    low, high = quality["delta_ci95"]
    assert low <= quality["delta"] <= high <= 0.0
    assert "rougeL" not in generation_rows({"project": (project, 1.0), "baseline": (baseline, 1.0)}, lambda texts: len(texts))
    detail = _detail()
    detail["generate"]["rougeL"] = {**quality}
    assert figures(detail)["generate_rougeL_delta"] == round(quality["delta"], 4)
    assert figures(_detail())["generate_rougeL_delta"] is None  # results written before it was measured


def test_plain_generate_cuts_each_answer_at_the_first_stop_token():
    import torch

    class Encoded(dict):
        def to(self, device):
            return self

    class Tokenizer:
        eos_token_id, pad_token_id = 0, 9

        def __call__(self, prompts, **kwargs):
            assert kwargs["add_special_tokens"] is False and kwargs["padding"] is True
            return Encoded(input_ids=torch.ones((len(prompts), 2), dtype=torch.long))

        def decode(self, ids, skip_special_tokens):
            return " ".join(map(str, ids))

    class Model:
        device = "cpu"
        calls = []

        def generate(self, input_ids, max_new_tokens, do_sample, repetition_penalty, pad_token_id):
            self.calls.append((len(input_ids), max_new_tokens, do_sample, repetition_penalty))
            new = torch.tensor([[5, 6, 0, 7], [8, 9, 9, 9], [4, 4, 4, 4]][: len(input_ids)])
            return torch.cat([input_ids, new], dim=1)

    model = Model()
    answers = plain_generate(model, Tokenizer(), ["p1", "p2", "p3"], batch_size=2, max_new_tokens=4, repetition_penalty=1.1)
    assert answers == ["5 6", "8", "5 6"]  # batches [p1, p2], [p3]: in the given order, 2 per batch
    assert model.calls == [(2, 4, False, 1.1), (1, 4, False, 1.1)]


def test_compare_timings_reads_what_eval_compare_writes(tmp_path):
    from pipeline.fileio import write_json

    write_json(tmp_path / "metrics.json", {
        "profile": "smollm2", "data": {"dir": "data/demo", "split": "test"},
        "plan": [{"artifact": "index", "action": "build", "seconds": 12.5}, {"artifact": "base_lm", "action": "reuse", "seconds": None}],
        "systems": {"vanilla": {"latency": {"p50_s": 0.8}}},
    })
    write_json(tmp_path / "predictions" / "vanilla.done.json", {"system": "vanilla", "n": 49, "seconds": 25.3})
    out = compare_timings(tmp_path, 99.0)
    assert out["build"] == {"index": {"action": "build", "seconds": 12.5}, "base_lm": {"action": "reuse", "seconds": None}}
    assert out["build_s"] == 12.5 and out["systems"] == {"vanilla": {"seconds": 25.3, "questions": 49, "p50_s": 0.8}}
    assert out["systems_s"] == 25.3 and out["wall_s"] == 99.0 and out["profile"] == "smollm2"


def test_sections_on_tiny_models(tmp_path, demo_dir, tiny_cross_encoder_dir, hash_embedding_cls):
    from pipeline.encoders import load_cross_encoder

    data = _write_splits(tmp_path / "data", demo_dir, {"train": 40, "val": 6, "test": 4})
    train = load_split(data, "train")
    questions = [r["question"] for r in load_split(data, "val")]
    config = load_config("tiny", [f"run_dir={tmp_path / 'run'}", "rerank.candidates=8"])
    work = tmp_path / "work"
    path, how = copy_reranker(config, data, str(tiny_cross_encoder_dir), work, log=lambda *_: None)
    assert path == work / "reranker" and how.endswith("(--reranker)") and not (tiny_cross_encoder_dir / ".ragft-int8").exists()
    configs = backend_configs(config, path, work)
    assert {n: (c.index.backend, c.rerank.backend, c.rerank.model) for n, c in configs.items()} == {
        "torch": ("torch", "torch", str(path)), "int8": ("onnx-int8", "onnx-int8", str(path)), "int8_torch": ("torch-int8", "torch-int8", str(path)), "bf16": ("torch-bf16", "torch-bf16", str(path))
    }
    parts = Parts(
        configs=configs,
        embedders={name: hash_embedding_cls() for name in configs},
        cross_encoders={name: load_cross_encoder(str(path), device="cpu", backend=cfg.rerank.backend, max_length=64) for name, cfg in configs.items()},
        reranker=how,
    )

    ingest = measure_ingest(parts, train, passages=25, rounds=2)
    assert ingest["texts"] == 25 and ingest["torch_texts_per_s"] > 0 and ingest["int8_texts_per_s"] > 0
    assert ingest["cos_mean"] == pytest.approx(1.0) and ingest["bf16_cos_mean"] == pytest.approx(1.0) == ingest["int8_torch_cos_mean"]  # the same embedder four times: the same vectors
    assert "torch_token_order_texts_per_s" not in ingest  # the token-order reference needs a HuggingFaceEmbedding's tokenizer

    kb = build_kb(parts, "int8", train)
    try:
        lists = candidate_lists(configs["int8"], kb, questions[:3])
        assert [len(hits) for _, hits in lists] == [8, 8, 8]
        rerank = measure_rerank(parts, lists, rounds=1)
        assert rerank["pairs"] == 24 and rerank["queries"] == 3 and rerank["batch"] == config.rerank.batch_size and rerank["int8_pairs_per_s"] > 0
        assert rerank["bf16_pairs_per_s"] > 0 and -1.0 <= rerank["bf16_logit_corr"] <= 1.0  # a random tiny head: its fidelity is measured on real weights (tests/pipeline/test_models.py)
        # a random tiny head's logits barely vary, so their correlation says little; it must still be a number
        assert rerank["int8_torch_pairs_per_s"] > 0 and math.isfinite(rerank["int8_torch_logit_corr"])
        assert rerank["torch_token_order_pairs_per_s"] > 0  # torch fp32 fed batches cut in token order
        one_query = measure_one_query(parts, lists)
        assert one_query["queries"] == 3 and set(one_query["embed_p50_ms"]) == set(one_query["rerank_p50_ms"]) == {"onnx-int8", "torch-int8", "torch-bf16", "torch"}
        assert all(ms > 0 for ms in [*one_query["embed_p50_ms"].values(), *one_query["rerank_p50_ms"].values()])
        one_query, paired = measure_latency(parts, kb, "int8", lists, train, questions[:3])
        assert len(one_query["pair_p50_ms"]) == 4 and all(ms > 0 for ms in one_query["pair_p50_ms"].values())
        assert f"{paired['embed_backend']} + {paired['rerank_backend']}" in one_query["pair_p50_ms"] and paired["queries"] == 3
        latency = measure_retrieve_rerank(parts, kb, "int8", "int8", questions[:3])
        assert latency["queries"] == 3 and latency["rerank_backend"] == "onnx-int8" and latency["candidates"] == 8
        assert latency["p50_ms"] > 0 and latency["retrieve_p50_ms"] > 0 and latency["rerank_p50_ms"] > 0
    finally:
        kb.close()

    quality = measure_quality(parts, data, [0, 2, 4], log=lambda *_: None)
    assert quality["questions"] == 3 and quality["corpus"] == 50
    mrr = quality["mrr@10"]
    assert all(0.0 <= v <= 1.0 for rows in mrr.values() for v in rows.values())
    assert quality["mrr10_delta"] == pytest.approx(mrr["onnx-int8"]["hybrid+rerank"] - mrr["torch"]["hybrid+rerank"])
    assert mrr["onnx-int8"]["hybrid"] == mrr["torch"]["hybrid"]  # same embedder: retrieval alone cannot differ
    assert quality["delta_ci95"][0] <= quality["mrr10_delta"] <= quality["delta_ci95"][1]
    assert quality["mrr10_delta_bf16"] == pytest.approx(mrr["torch-bf16"]["hybrid+rerank"] - mrr["torch"]["hybrid+rerank"])
    assert quality["mrr10_delta_int8_torch"] == pytest.approx(mrr["torch-int8"]["hybrid+rerank"] - mrr["torch"]["hybrid+rerank"])


def test_readme_from_a_result():
    result = {
        "format": bench_speed.FORMAT, "mode": "quick", "command": "python -m eval.bench speed --quick", "git_revision": "abc1234", "git_dirty": True,
        "finished": "2026-01-01T00:00:00+00:00", "wall_s": 201.4, "machine": {"cpus": 2, "cpu": "x", "torch_threads": 2, "load_avg_1m_start": 1.0, "load_avg_1m_end": 2.0},
        "samples": {"passages": 4, "rounds": 2, "candidates": 20}, "seconds": {"ingest": 3.0}, "detail": {**_detail(), "compare": None}, **figures(_detail()),
    }
    text = readme_text(result, "results/bench/speed-quick.json")
    assert "`python -m eval.bench speed --quick`" in text and "`abc1234` (with uncommitted changes)" in text and "wall time 201 s" in text
    assert "from `results/bench/speed-quick.json`" in text and "delta -0.0300" in text and "identical answers 3/4" in text


def _result(**overrides):
    detail = {**_detail(), "compare": {"wall_s": 930.0, "profile": "smollm2", "data": "data/demo", "split": "test", "build": {}, "systems": {}}}
    result = {
        "format": bench_speed.FORMAT, "mode": "full", "command": "python -m eval.bench speed", "git_revision": "abc1234", "git_dirty": False,
        "finished": "2026-01-01T00:00:00+00:00", "wall_s": 1201.4, "machine": {"cpus": 2, "cpu": "x", "torch_threads": 2, "load_avg_1m_start": 1.0, "load_avg_1m_end": 2.0},
        "samples": {"passages": 4, "rounds": 2, "candidates": 20}, "seconds": {"ingest": 3.0}, "detail": detail, **figures(detail),
    }
    result.update(overrides)
    return result


def test_targets_table_gives_each_result_its_figure_and_verdict(tmp_path, capsys):
    """One column per result: 3.0x ingest meets >= 3x, 0.25x rerank does not, the p50 of 41 ms meets
    50 ms; the make-run row has a verdict only when the result timed the install too; a result
    without a ROUGE-L figure shows a dash."""
    table = targets_table([("fast box", _result()), ("old box", _result(git_revision="def5678", ingest_speedup=2.5))])
    lines = table.splitlines()
    assert lines[0] == "| figure | target | fast box, abc1234 | old box, def5678 |"
    assert "| ingest vs torch fp32 | >= 3x | 3.00x (onnx-int8) (met) | 2.50x (onnx-int8) (not met) |" in lines
    assert "| cross-encoder vs torch fp32 | >= 3x | 0.25x (onnx-int8) (not met) | 0.25x (onnx-int8) (not met) |" in lines
    assert "| retrieve + rerank top 20, p50 | <= 50 ms | 41 ms (retrieve 11, rerank 30) (met) | 41 ms (retrieve 11, rerank 30) (met) |" in lines
    assert "| MRR@10 int8 - fp32 | >= -0.005 | -0.0300 (not met) | -0.0300 (not met) |" in lines
    assert "| ROUGE-L of the faster answers - fp32's | 0 within the interval | - | - |" in lines
    assert any(line.startswith("| `make run` from a fresh clone") and line.endswith("| 930 s (15.5 min) + the install (not timed) | 930 s (15.5 min) + the install (not timed) |") for line in lines)

    # with the install timed (--time-install), make run gets its verdict: install + eval.compare <= 15 min
    timed = _result()
    timed["detail"]["install"] = {"wall_s": 60.0, "command": "make install VENV=/tmp/v"}
    slow = _result()
    slow["detail"]["install"] = {"wall_s": 120.0, "command": "make install VENV=/tmp/v"}
    row = next(line for line in targets_table([("a", timed), ("b", slow)]).splitlines() if line.startswith("| `make run`"))
    assert row.endswith("| 60 + 930 s = 16.5 min (not met) | 120 + 930 s = 17.5 min (not met) |")
    timed["detail"]["compare"]["wall_s"] = 830.0
    row = next(line for line in targets_table([("a", timed)]).splitlines() if line.startswith("| `make run`"))
    assert row.endswith("| 60 + 830 s = 14.8 min (met) |")
    assert "`make install` into a fresh venv (`make install VENV=/tmp/v`): 60 s" in readme_text(timed)

    # the CLI fills the README's block from result files, measuring nothing
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text(json.dumps(_result()))
    second.write_text(json.dumps(_result(git_revision="def5678")))
    project = tmp_path / "PROJECT.md"
    project.write_text("top\n<!-- results:bench-targets:start -->\nold 1.00x\n<!-- results:bench-targets:end -->\nend\n")
    assert main(["--targets", f"fast box={first}", "--targets", f"old box={second}", "--targets-block", str(project)]) == 0
    text = project.read_text()
    assert "old 1.00x" not in text and "| figure | target | fast box, abc1234 | old box, def5678 |" in text and text.endswith("<!-- results:bench-targets:end -->\nend\n")
    capsys.readouterr()
    assert main(["--targets", str(first), "--targets-block", str(project)]) == 2
    assert "is not LABEL=FILE" in capsys.readouterr().err
    assert main(["--targets", f"x={first}"]) == 2
    assert "--targets and --targets-block go together" in capsys.readouterr().err
    assert main(["--targets", f"x={tmp_path / 'missing.json'}", "--targets-block", str(project)]) == 2
    assert "missing.json" in capsys.readouterr().err



def test_install_is_timed_with_the_makefiles_install_into_a_fresh_venv(monkeypatch, tmp_path):
    """--time-install runs `make install VENV=<a temporary folder>` in the repository and reports its
    wall time; a failing install or a missing make is a BenchError that names the fix."""
    calls = []

    def fake_run(command, cwd, stdout, stderr):
        calls.append((command, cwd))
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(measure.shutil, "which", lambda name: "/usr/bin/make")
    monkeypatch.setattr(measure.subprocess, "run", fake_run)
    out = bench_speed.measure_install(lambda message: None)
    (command, cwd), = calls
    assert command[:3] == ["/usr/bin/make", "--no-print-directory", "install"] and command[3].startswith("VENV=") and command[3].endswith("/venv")
    assert not Path(command[3][len("VENV="):]).parent.exists()  # the temporary venv is gone afterwards
    assert cwd == measure.REPO_ROOT and out["wall_s"] >= 0 and out["command"].startswith("/usr/bin/make --no-print-directory install VENV=")

    monkeypatch.setattr(measure.subprocess, "run", lambda command, **kw: subprocess.CompletedProcess(command, 2))
    with pytest.raises(bench_speed.BenchError, match="exited with 2.*registries"):
        bench_speed.measure_install(lambda message: None)
    monkeypatch.setattr(measure.shutil, "which", lambda name: None)
    with pytest.raises(bench_speed.BenchError, match="needs `make`"):
        bench_speed.measure_install(lambda message: None)


def test_the_cross_encoder_is_timed_even_where_the_profile_reranks_with_the_query_likelihood_lm(tmp_path):
    """The default profile's reranker is an LM adapter (rerank.kind=query-likelihood); the speed
    and scale benchmarks time the cross-encoder path, so their configs say so, and the scale
    bench never mistakes the adapter folder for a cross-encoder."""
    from eval.bench_scale import resolve_bench_model

    config = load_config("smollm2", [f"run_dir={tmp_path}"])
    assert config.rerank.kind == "query-likelihood"
    reranker = tmp_path / "reranker-copy"
    configs = backend_configs(config, reranker, tmp_path)
    assert {c.rerank.kind for c in configs.values()} == {"cross-encoder"} and {c.rerank.model for c in configs.values()} == {str(reranker)}
    reference, described = resolve_bench_model(config)
    assert reference == config.finetune.reranker.base_model and "finetune.reranker.output" in described


def test_generate_prompts_carry_each_questions_dense_top_k_passages(demo_dir, hash_embedding_cls, tmp_path):
    """The generate section's prompts are rag_vanilla's: the question with its dense top
    generator.context_top_k passages, each cut to generator.max_passage_chars."""
    from types import SimpleNamespace

    from eval.bench_speed.measure import build_prompts
    from pipeline.index import KnowledgeBase, qa_nodes

    config = load_config("tiny", [f"run_dir={tmp_path}", "generator.context_top_k=2", "generator.max_passage_chars=40"])
    train = load_split(demo_dir, "train")[:10]
    kb = KnowledgeBase.from_nodes(config, qa_nodes(train, split="train"), embed_model=hash_embedding_cls())
    try:
        prompts = build_prompts(config, SimpleNamespace(tokenizer=None), [r["question"] for r in train[:3]], kb=kb)
    finally:
        kb.close()
    assert len(prompts) == 3 and all(r["question"] in p for r, p in zip(train, prompts))
    assert all("[1]" in p and "[2]" in p and "[3]" not in p for p in prompts)

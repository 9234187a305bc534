"""Language models (generator, rewriter) as LlamaIndex LLMs:

    llm = load_llm(config)                      # generator.backend: hf -> LocalCausalLM (CustomLLM)
    llm = load_llm(config, adapter="runs/tiny/adapters/generator-raft")   # + a LoRA adapter
    llm.chat(messages); llm.complete(prompt); llm.generate_batch(prompts)  # weights load on first use

`backend: openai` returns llama-index's `OpenAILike` client for any OpenAI-compatible server at
`generator.api_base`. The speed settings of local generation (bf16, prepacked weights, the
append-only KV cache of pipeline.models.kv_cache) are measured in docs/performance.md.
"""

from __future__ import annotations

import logging
import os
import time
from threading import Thread
from typing import Any, Optional, Sequence

from pipeline.config import Config, ConfigError
from pipeline.models import kv_cache
from pipeline.models.causal_lm import AdapterBank, attach_adapter, check_four_bit, load_causal_lm, model_context_window
from pipeline.models.device import apply_cpu_threads, speed_up_cpu_inference
from pipeline.models.errors import ModelLoadError, PromptTooLongError
from pipeline.models.hub import resolve_model
from pipeline.models.safety import check_model_source

logger = logging.getLogger(__name__)


def _make_local_llm_class():
    """The class is built on first use so that `import pipeline.models` stays cheap (no llama_index)."""
    from llama_index.core.base.llms.types import (
        ChatMessage,
        ChatResponse,
        ChatResponseGen,
        CompletionResponse,
        CompletionResponseGen,
        LLMMetadata,
        MessageRole,
    )
    from llama_index.core.bridge.pydantic import Field, PrivateAttr
    from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
    from llama_index.core.llms.custom import CustomLLM

    from pipeline.generate import render_prompt  # imports llama_index: deferred with it

    class LocalCausalLM(CustomLLM):
        """A local transformers causal LM (optionally with a LoRA adapter) as a LlamaIndex LLM.

        Construction only stores and checks settings; weights load on first use (`load()`).
        `chat` renders messages with the tokenizer's chat template, or the plain format of
        pipeline.generate when it has none; `complete(prompt)` continues the text as is.
        `generate_batch` is the evaluation path: one left-padded, batched, greedy pass.
        A prompt that, with its new tokens, exceeds the context window (`max_position_embeddings`)
        raises `PromptTooLongError` naming both numbers, before anything is generated.
        """

        model_ref: str = Field(description="Hub id or local folder of the base model.")
        adapter: Optional[str] = Field(default=None, description="PEFT adapter folder.")
        merge_adapter: bool = Field(default=False)
        torch_dtype: str = Field(default="auto")
        load_in_4bit: bool = Field(default=False)
        device: str = Field(default="auto")
        max_new_tokens: int = Field(default=100, gt=0)
        temperature: float = Field(default=0.0, ge=0.0)
        batch_size: int = Field(default=8, gt=0)
        trust_remote_code: bool = Field(default=False)
        allow_pickle_weights: bool = Field(default=False, description="Read pickle weights when no safetensors exist (security.allow_pickle_weights).")
        cpu_threads: Optional[int] = Field(default=None, description="torch CPU threads (process-wide) set at load; None keeps torch's default.")
        convert_dir: Optional[str] = Field(default=None, description="Where a model bundled as GGUF is converted to safetensors (generator.convert_dir).")
        repetition_penalty: float = Field(default=1.0, gt=0.0, description="transformers' repetition penalty (1.0: none).")
        copy_bias: float = Field(default=0.0, ge=0.0, description="Added to the logits of the prompt's own tokens while generating (generator.copy_bias; the RAFT generator's): answers that keep to the passages' words. 0: off.")
        prompt_lookup_tokens: Optional[int] = Field(default=None, gt=0, description="Prompt-lookup decoding (transformers' prompt_lookup_num_tokens) for one greedy prompt at a time; None: off.")
        cache_implementation: Optional[str] = Field(default=None, description="KV cache of generate: append (ragft's append-only cache with the shared prompt prefix prefilled once, CPU; pipeline.models.kv_cache); None: transformers' dynamic default.")
        prepack_weights: bool = Field(default=True, description="Keep the bf16 linear weights prepacked for oneDNN on the CPU (prepack_linear_weights): the same outputs, faster.")
        verbose: bool = Field(default=True, description="Print tokens/s after batched generation.")

        _model: Any = PrivateAttr(default=None)
        _tokenizer: Any = PrivateAttr(default=None)
        _context_window: Optional[int] = PrivateAttr(default=None)
        _bank: Any = PrivateAttr(default=None)
        _memo: dict = PrivateAttr(default_factory=dict)
        _last_costs: list = PrivateAttr(default_factory=list)

        @property
        def last_costs(self) -> list[float]:
            """Seconds of generation per prompt of the last generate_batch call (its share of its
            batch; a memoized answer is charged what it cost when it was generated)."""
            return self._last_costs

        def __init__(self, **data: Any) -> None:
            super().__init__(**data)
            check_four_bit(self.load_in_4bit)
            if self.merge_adapter and self.load_in_4bit and self.adapter:
                raise ModelLoadError("generator.merge_adapter=true with generator.load_in_4bit=true would merge LoRA weights into 4-bit weights and lose precision; set generator.merge_adapter=false")

        @classmethod
        def class_name(cls) -> str:
            return "ragft_local_causal_lm"

        # ---- loading -----------------------------------------------------------------------
        def _load_base(self) -> tuple[Any, Any]:
            apply_cpu_threads(self.cpu_threads, self.device)
            return load_causal_lm(
                self.model_ref,
                device=self.device,
                torch_dtype=self.torch_dtype,
                load_in_4bit=self.load_in_4bit,
                trust_remote_code=self.trust_remote_code,
                allow_pickle=self.allow_pickle_weights,
                convert_dir=self.convert_dir,
            )

        def share_base(self, bank: Optional[AdapterBank] = None, *, preload: Sequence[str] = ()) -> AdapterBank:
            """Use `bank`'s one base model (a new bank, which first loads the `preload` adapters,
            when None) instead of loading a copy; returns the bank, to pass to the LMs of the other
            adapters. Not with merge_adapter."""
            if self.merge_adapter:
                raise ModelLoadError("generator.merge_adapter=true merges the adapter into the weights, so the base model cannot be shared between adapters")
            self._bank = bank or AdapterBank(self._load_base, preload=preload, prepack=self.prepack_weights)
            self._memo = self._bank.memo
            return self._bank

        def load(self) -> "LocalCausalLM":
            if self._model is None and self._bank is not None:
                self._model, self._tokenizer = self._bank.acquire(self.adapter, allow_pickle=self.allow_pickle_weights)
            if self._model is None:
                model, tokenizer = self._load_base()
                if self.adapter:
                    model = attach_adapter(model, self.adapter, merge=self.merge_adapter, allow_pickle=self.allow_pickle_weights)
                    model.eval()
                speed_up_cpu_inference(model, prepack=self.prepack_weights)
                self._tokenizer = tokenizer
                self._model = model
            return self

        @property
        def model(self) -> Any:
            self.load()
            # with a shared base the bank's model is the current one (a PeftModel once any
            # adapter is loaded, even for the base LM, which then runs with adapters disabled)
            return self._bank._model if self._bank is not None else self._model

        @property
        def tokenizer(self) -> Any:
            return self.load()._tokenizer

        @property
        def metadata(self) -> LLMMetadata:
            if self._context_window is None:
                self._context_window = model_context_window(resolve_model(self.model_ref, convert_dir=self.convert_dir), self.trust_remote_code)
            return LLMMetadata(
                context_window=self._context_window,
                num_output=self.max_new_tokens,
                is_chat_model=True,  # chat() renders the right template for this tokenizer
                model_name=self.model_ref + (f"+{self.adapter}" if self.adapter else ""),
            )

        # ---- generation --------------------------------------------------------------------
        def _generation_kwargs(self, max_new_tokens: Optional[int], temperature: Optional[float]) -> dict[str, Any]:
            temperature = self.temperature if temperature is None else temperature
            kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens or self.max_new_tokens, "pad_token_id": self.tokenizer.pad_token_id, "repetition_penalty": self.repetition_penalty}
            if temperature > 0:
                kwargs.update(do_sample=True, temperature=temperature)
            else:  # greedy; unset sampling knobs a checkpoint's generation_config may carry
                kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
            return kwargs

        def _encode(self, prompts: list[str]) -> Any:
            # add_special_tokens=False: chat templates already contain BOS, and training
            # (TRL) tokenizes prompts the same way
            encoded = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
            return encoded.to(self.model.device)

        def _generate(self, **kwargs: Any) -> Any:
            """model.generate with this LM's adapter switched on (one shared base model)."""
            import torch

            if self._bank is None:
                with torch.inference_mode():
                    return self._run_generate(self.model, kwargs)
            self.load()
            with self._bank.active(self.adapter) as model, torch.inference_mode():
                return self._run_generate(model, kwargs)

        def _run_generate(self, model: Any, kwargs: dict[str, Any]) -> Any:
            if self.copy_bias:
                rows = [ids[m.bool()].tolist() for ids, m in zip(kwargs["input_ids"], kwargs["attention_mask"])]
                kwargs = {**kwargs, "logits_processor": [prompt_copy_bias(rows, self.copy_bias, self.tokenizer.all_special_ids)]}
            return self._generate_with_cache(model, kwargs)

        def _generate_with_cache(self, model: Any, kwargs: dict[str, Any]) -> Any:
            """model.generate; with cache_implementation=append, for a batch on the CPU, through
            ragft's append-only KV cache and decoding attention, the batch's shared prompt prefix
            prefilled once (pipeline.models.kv_cache). The output has the same width as the plain
            left-padded batch's."""
            plain = (
                self.cache_implementation != "append" or model.device.type != "cpu" or len(kwargs["input_ids"]) < 2
                # beams and repeated sequences reorder or repeat the cache, which it does not do
                or kwargs.get("num_beams", 1) != 1 or kwargs.get("num_return_sequences", 1) != 1
            )
            if len(kwargs["input_ids"]) == 1 and self.prompt_lookup_tokens and not kwargs.get("do_sample") and kwargs.get("num_beams", 1) == 1:
                # one greedy prompt: guess the next tokens from the prompt's own n-grams, check them in one pass
                return model.generate(**kwargs, prompt_lookup_num_tokens=self.prompt_lookup_tokens)
            if plain:  # one prompt (the chat UI's stream) has no padding and no prefix to share: the plain path was ~10% faster to its first words
                return model.generate(**kwargs)
            if model.config._attn_implementation != kv_cache.DECODE_ATTENTION:
                try:
                    model.set_attn_implementation(kv_cache.register_decode_attention())
                except (ValueError, NotImplementedError) as exc:  # a model that transformers cannot run through SDPA
                    logger.warning("generator.cache_implementation=append: %s cannot switch its attention (%s); generating through the dynamic cache", self.model_ref, exc)
                    self.cache_implementation = None
                    return model.generate(**kwargs)
            cache = kv_cache.append_only_cache()
            rows = [ids[m.bool()].tolist() for ids, m in zip(kwargs["input_ids"], kwargs["attention_mask"])]
            layout = kv_cache.prefixed_batch(model, rows, self.tokenizer.pad_token_id, cache) or {}
            return model.generate(**{**kwargs, **layout, kv_cache.cache_keyword(model): cache})

        def clear_memo(self) -> None:
            """Forget memoized greedy generations (shared with every LM of the same bank)."""
            self._memo.clear()

        def _check_fits(self, lengths: Sequence[int], max_new_tokens: int) -> None:
            """Refuse, before generating, a prompt that with its new tokens exceeds the model's
            context window: past it a model writes noise, and attention memory grows with the
            square of the length (a pasted 100k-character question would take the process down)."""
            window = self.metadata.context_window
            longest = max(lengths, default=0)
            if longest + max_new_tokens > window:
                raise PromptTooLongError(
                    f"the prompt is {longest} tokens long and {max_new_tokens} more are to be generated, over the {window}-token context window of {self.model_ref}. "
                    "Fix: shorten the question (or, for long retrieved passages, lower generator.max_passage_chars or generator.context_top_k)"
                )

        def generate_batch(self, prompts: Sequence[str], *, max_new_tokens: Optional[int] = None, temperature: Optional[float] = None, batch_size: Optional[int] = None, show_progress: bool = True) -> list[str]:
            """Continue every prompt; batches of `batch_size` (longest prompts first so padding
            stays small), left padding, greedy unless a temperature is set; prints tokens/s."""
            import torch
            from tqdm.auto import tqdm

            prompts = list(prompts)
            if not prompts:
                return []
            size = batch_size or self.batch_size
            kwargs = self._generation_kwargs(max_new_tokens, temperature)
            lengths = [len(ids) for ids in self.tokenizer(prompts, add_special_tokens=False)["input_ids"]]
            self._check_fits(lengths, kwargs["max_new_tokens"])
            outputs: list[str] = [""] * len(prompts)
            # greedy output is a function of (adapter, prompt, settings): answer repeats from the memo
            greedy = not kwargs.get("do_sample")
            settings = tuple(sorted((k, v) for k, v in kwargs.items() if k != "pad_token_id")) + ((("cache_implementation", "append"),) if self.cache_implementation == "append" else ()) + ((("copy_bias", self.copy_bias),) if self.copy_bias else ())
            keys = [(self.model_ref, self.adapter, prompt, settings) for prompt in prompts]
            todo: dict[tuple, int] = {}
            # what each answer cost to generate: a memoized one is charged what it cost the first
            # time, so the latency a system reports does not depend on which systems ran before it
            costs: list[float] = [0.0] * len(prompts)
            for i, key in enumerate(keys):
                if greedy and key in self._memo:
                    outputs[i], costs[i] = self._memo[key]
                elif not greedy or key not in todo:
                    todo[key if greedy else (key, i)] = i
            first = set(todo.values())
            order = sorted(first, key=lambda i: -lengths[i])
            generated_tokens = 0
            started = time.perf_counter()
            bar = tqdm(total=len(order), desc="generate", unit="q", disable=not show_progress or not order, dynamic_ncols=True)
            for start in range(0, len(order), size):
                chunk = order[start : start + size]
                chunk_started = time.perf_counter()
                encoded = self._encode([prompts[i] for i in chunk])
                out = self._generate(**encoded, **kwargs)
                share = (time.perf_counter() - chunk_started) / len(chunk)
                new = out[:, encoded["input_ids"].shape[1] :]
                stops = torch.tensor(sorted({self.tokenizer.eos_token_id, self.tokenizer.pad_token_id} - {None}), device=new.device)
                for row, index in zip(new, chunk):
                    # generate pads finished rows after their EOS: the answer ends at the first stop
                    ends = torch.isin(row, stops).nonzero()
                    keep = row[: int(ends[0])] if len(ends) else row
                    generated_tokens += int(keep.numel())
                    outputs[index], costs[index] = self.tokenizer.decode(keep, skip_special_tokens=True), share
                    if greedy:
                        self._memo[keys[index]] = (outputs[index], share)
                bar.update(len(chunk))
            bar.close()
            for i, key in enumerate(keys):  # repeats of a prompt inside this call
                if i not in first and greedy:
                    outputs[i], costs[i] = self._memo[key]
            self._last_costs = costs
            seconds = time.perf_counter() - started
            if self.verbose and order:
                print(f"generated {generated_tokens} tokens for {len(order)} prompts ({len(prompts) - len(order)} more from the memo) in {seconds:.1f} s: {generated_tokens / max(seconds, 1e-9):.1f} tokens/s (batch {size})")
            return outputs

        @llm_completion_callback()
        def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
            text = self.generate_batch([prompt], max_new_tokens=kwargs.get("max_new_tokens"), temperature=kwargs.get("temperature"), show_progress=False)[0]
            return CompletionResponse(text=text)

        @llm_completion_callback()
        def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
            from transformers import TextIteratorStreamer

            streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
            generation = self._generation_kwargs(kwargs.get("max_new_tokens"), kwargs.get("temperature"))
            encoded = self._encode([prompt])
            self._check_fits([encoded["input_ids"].shape[1]], generation["max_new_tokens"])
            thread = Thread(target=self._generate, kwargs={**encoded, **generation, "streamer": streamer}, daemon=True)
            thread.start()

            def gen() -> CompletionResponseGen:
                text = ""
                for delta in streamer:
                    text += delta
                    yield CompletionResponse(text=text, delta=delta)
                thread.join()

            return gen()

        def render(self, messages: Sequence[ChatMessage]) -> str:
            return render_prompt(list(messages), self.tokenizer)

        @llm_chat_callback()
        def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
            text = self.complete(self.render(messages), formatted=True, **kwargs).text
            return ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text))

        @llm_chat_callback()
        def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
            def gen() -> ChatResponseGen:
                for chunk in self.stream_complete(self.render(messages), formatted=True, **kwargs):
                    yield ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=chunk.text), delta=chunk.delta)

            return gen()

    return LocalCausalLM


_LOCAL_LLM_CLASS: Any = None


def local_llm_class() -> type:
    """The LocalCausalLM class (a LlamaIndex CustomLLM), built once per process."""
    global _LOCAL_LLM_CLASS
    if _LOCAL_LLM_CLASS is None:
        _LOCAL_LLM_CLASS = _make_local_llm_class()
    return _LOCAL_LLM_CLASS


def prompt_copy_bias(rows: Sequence[Sequence[int]], bias: float, exclude: Sequence[int] = ()) -> Any:
    """A transformers LogitsProcessor adding `bias` to the logits of the tokens of each row's own
    prompt (`rows`: the prompts' token ids, in batch order), except the `exclude`d (special) ones."""
    import torch
    from transformers import LogitsProcessor

    class PromptCopyBias(LogitsProcessor):
        def __init__(self) -> None:
            self.mask: Any = None

        def __call__(self, input_ids: Any, scores: Any) -> Any:
            if self.mask is None or self.mask.shape != scores.shape:
                if scores.shape[0] != len(rows):
                    raise ValueError(f"copy bias: {scores.shape[0]} sequences but {len(rows)} prompts")
                mask = torch.zeros(scores.shape, dtype=scores.dtype, device=scores.device)
                for row, ids in enumerate(rows):
                    keep = [t for t in set(ids) if t < scores.shape[1]]
                    mask[row, keep] = bias
                mask[:, [t for t in exclude if t < scores.shape[1]]] = 0.0
                self.mask = mask
            return scores + self.mask

    return PromptCopyBias()


def load_llm(config: Config, adapter: Optional[str] = "config", *, verbose: bool = True, copy_bias: Optional[float] = None) -> Any:
    """The generator LLM of `config` as a LlamaIndex LLM. Cheap: weights load on first use.

    `adapter`: "config" (default) uses `generator.adapter`; None means the base model; a folder
    loads that LoRA adapter instead. backend=openai returns an `OpenAILike` client for any
    OpenAI-compatible server (vLLM, TGI, llama.cpp server, Ollama) at `generator.api_base`.
    Nothing is cached globally: call it once per process and keep the object. `copy_bias`:
    generator.copy_bias for this LM (None: off; the engine gives it to the RAFT generator only).
    """
    gen = config.generator
    adapter = gen.adapter if adapter == "config" else adapter
    if gen.backend == "openai":
        if not gen.api_base:
            raise ConfigError("generator.backend=openai needs generator.api_base, e.g. --set generator.api_base=http://127.0.0.1:8000/v1")
        if adapter:
            raise ConfigError(f"generator.backend=openai cannot load the local adapter {adapter!r}: serve it with the server (e.g. vLLM --lora-modules name=path) and set generator.model to its served name")
        from llama_index.llms.openai_like import OpenAILike

        return OpenAILike(
            model=gen.model,
            api_base=gen.api_base,
            api_key=os.environ.get(gen.api_key_env) or "not-needed",  # local servers ignore the key
            is_chat_model=True,
            context_window=4096,
            max_tokens=gen.max_new_tokens,
            temperature=gen.temperature,
        )
    return local_llm_class()(
        model_ref=check_model_source(config, gen.model, "generator.model"),
        adapter=check_model_source(config, adapter, "the adapter (generator.adapter, rewrite.adapter or finetune.*.output)"),
        merge_adapter=gen.merge_adapter,
        torch_dtype=gen.torch_dtype,
        load_in_4bit=gen.load_in_4bit,
        device=gen.device,
        max_new_tokens=gen.max_new_tokens,
        temperature=gen.temperature,
        batch_size=gen.batch_size,
        trust_remote_code=gen.trust_remote_code,
        allow_pickle_weights=config.security.allow_pickle_weights,
        cpu_threads=gen.cpu_threads,
        convert_dir=gen.convert_dir,
        repetition_penalty=gen.repetition_penalty,
        cache_implementation=gen.cache_implementation,
        prompt_lookup_tokens=gen.prompt_lookup_tokens,
        copy_bias=copy_bias or 0.0,
        prepack_weights=gen.prepack_weights,
        verbose=verbose,
    )



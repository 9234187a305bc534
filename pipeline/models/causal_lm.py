"""Hugging Face causal LMs (generator, rewriter, query-likelihood reranker) from safetensors, 4-bit
NF4 loading on CUDA, LoRA adapters, and `AdapterBank`: one base model shared by every adapter.

4-bit loading (`generator.load_in_4bit`) needs CUDA; elsewhere it fails with `ModelLoadError`
naming the setting, before bitsandbytes is imported (docs/operations.md, "GPU machines and
bitsandbytes").
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Any, Optional, Sequence

from pipeline.logs import quiet_library_warnings
from pipeline.models.device import resolve_device, resolve_dtype, speed_up_cpu_inference
from pipeline.models.errors import ModelLoadError, ModelNotFoundError, ModelSourceRefusedError
from pipeline.models.hub import resolve_model
from pipeline.models.safety import pickle_refused_hint, safetensors_flag

FOUR_BIT_NEEDS_CUDA = (
    "generator.load_in_4bit=true needs a CUDA GPU (bitsandbytes 4-bit NF4 kernels), and this machine has none. "
    "Fix: --set generator.load_in_4bit=false (full-precision weights on this machine), or run on a CUDA machine."
)


def check_four_bit(load_in_4bit: bool) -> None:
    """Raise the named error when 4-bit loading is asked for without CUDA (before any import of
    bitsandbytes, which only the `gpu` extra installs)."""
    if not load_in_4bit:
        return
    import torch

    if not torch.cuda.is_available():
        raise ModelLoadError(FOUR_BIT_NEEDS_CUDA)


def four_bit_config() -> Any:
    """NF4 weights, bf16 compute, double quantization: the QLoRA recipe."""
    import torch
    from transformers import BitsAndBytesConfig

    try:
        import bitsandbytes  # noqa: F401  (only 4-bit loading needs it: the optional `gpu` extra)
    except ImportError as exc:
        raise ModelLoadError(f"generator.load_in_4bit=true needs the bitsandbytes package ({exc}); pip install -e '.[gpu]' on a CUDA machine, or set generator.load_in_4bit=false") from None
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_use_double_quant=True)


def load_causal_lm(
    reference: str,
    *,
    device: str = "auto",
    torch_dtype: str = "auto",
    load_in_4bit: bool = False,
    trust_remote_code: bool = False,
    for_training: bool = False,
    allow_pickle: bool = False,
    convert_dir: str | Path | None = None,
) -> tuple[Any, Any]:
    """(model, tokenizer) of a Hugging Face causal LM from safetensors. The tokenizer pads on the
    left (batched generation) and always has a pad token."""
    quiet_library_warnings()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_four_bit(load_in_4bit)
    path = resolve_model(reference, convert_dir=convert_dir, log=print)
    device = resolve_device(device)
    kwargs: dict[str, Any] = {"use_safetensors": safetensors_flag(allow_pickle), "trust_remote_code": trust_remote_code}
    if load_in_4bit:
        import torch

        kwargs["quantization_config"] = four_bit_config()
        kwargs["dtype"] = torch.bfloat16
        kwargs["device_map"] = {"": 0 if device == "cuda" else device}
    else:
        kwargs["dtype"] = resolve_dtype(torch_dtype, device)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except ValueError as exc:
        if "trust_remote_code" not in str(exc):
            raise
        raise ModelLoadError(
            f"causal LM {reference!r} ships its own Python code, which ragft does not run unless the config says so. "
            "Fix: read that code, then --set generator.trust_remote_code=true, or pick a model that transformers supports natively"
        ) from None
    except OSError as exc:
        raise ModelLoadError(f"cannot load causal LM {reference!r} from {path}: {exc}.{pickle_refused_hint(exc)}") from None
    if not load_in_4bit:
        model.to(device)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    tokenizer.padding_side = "left" if not for_training else "right"
    if tokenizer.pad_token is None:  # many causal LMs ship none; EOS is the usual stand-in
        tokenizer.pad_token = tokenizer.eos_token
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if not for_training:
        model.eval()
    return model, tokenizer


def continuation_ids(tokenizer: Any, prompt: str, completion: str) -> tuple[list[int], int]:
    """(prompt + completion + end-of-sequence token ids, where the completion starts): the end token
    TRL appends to every completion is scored too. The start is where the prompt's own ids stop
    matching, in case the tokenizer merged across the seam; never 0 (the first token has no
    prediction to score)."""
    prompt_ids = tokenizer(prompt).input_ids
    ids = tokenizer(prompt + completion).input_ids + [tokenizer.eos_token_id]
    start = next((i for i, (a, b) in enumerate(zip(prompt_ids, ids)) if a != b), len(prompt_ids))
    return ids, max(start, 1)


def mean_continuation_logprobs(model: Any, encoded: Sequence[tuple[Sequence[int], int]], *, pad_id: int, batch_size: int = 8, progress: Optional[str] = None) -> Any:
    """Per (ids, start) of `continuation_ids`: the mean log-probability of ids[start:] given what
    precedes it, as a float32 numpy array. Longest first, so each batch pads little; right padding,
    so positions are 0..n-1 as in training; the LM head only where a continuation token is predicted
    (token t at position t - 1): the same scores as full logits, without the vocabulary projection
    of every prompt token. `progress`: a progress bar's label (none by default)."""
    import numpy as np
    import torch
    from tqdm.auto import tqdm

    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0]))
    scores = np.zeros(len(encoded), dtype=np.float32)
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    with torch.inference_mode():
        for begin in tqdm(range(0, len(order), max(batch_size, 1)), desc=progress, disable=progress is None):
            batch = order[begin : begin + max(batch_size, 1)]
            width = max(len(encoded[i][0]) for i in batch)
            ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                seq = encoded[i][0]
                ids[row, : len(seq)] = torch.tensor(list(seq))
                mask[row, : len(seq)] = 1
            hidden = decoder(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).last_hidden_state
            for row, i in enumerate(batch):
                seq, start = encoded[i]
                logits = head(hidden[row, start - 1 : len(seq) - 1]).float()
                targets = torch.tensor(list(seq[start:]), device=logits.device)
                scores[i] = torch.log_softmax(logits, dim=-1).gather(-1, targets[:, None]).mean().item()
    return scores


def model_context_window(path: str, trust_remote_code: bool) -> int:
    """The model's context window (`max_position_embeddings`), from its config; 2048 when unknown."""
    from transformers import AutoConfig

    try:
        cfg = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception:
        return 2048
    return int(getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None) or 2048)


def check_adapter_folder(adapter: str, *, allow_pickle: bool = False) -> Path:
    """The adapter's folder, after refusing one without a config or without safetensors weights."""
    folder = Path(adapter).expanduser()
    if not (folder / "adapter_config.json").is_file():
        raise ModelNotFoundError(f"adapter {adapter!r} has no adapter_config.json; train one with `python -m finetune.generator`, or set generator.adapter=null")
    if not allow_pickle and not (folder / "adapter_model.safetensors").is_file():
        raise ModelSourceRefusedError(f"adapter {adapter!r} has no adapter_model.safetensors; only safetensors weights are read. Fix: re-save it with safe_serialization=True or, for a source you trust, --set security.allow_pickle_weights=true")
    return folder


def attach_adapter(model: Any, adapter: str, *, merge: bool = False, trainable: bool = False, allow_pickle: bool = False, adapter_name: str = "default") -> Any:
    """Load a PEFT LoRA adapter (safetensors) on top of `model`; merge it into the weights on request."""
    from peft import PeftModel

    folder = check_adapter_folder(adapter, allow_pickle=allow_pickle)
    model = PeftModel.from_pretrained(model, str(folder), adapter_name=adapter_name, is_trainable=trainable, use_safetensors=safetensors_flag(allow_pickle))
    if merge:
        model = model.merge_and_unload()
    return model


class AdapterBank:
    """ONE base model in memory for every LoRA adapter of a process (generator plain / RAFT,
    rewriter): adapters are loaded into one PeftModel by name and switched per generation call,
    instead of a full model copy per adapter. A lock makes the switch and the generation one step,
    so threads (the UI) never generate with another caller's adapter.

    It also memoizes greedy generations by (adapter, prompt, settings): systems that give the same
    model the same prompt (ablations whose difference does not reach the prompt, repeated runs)
    generate it once."""

    def __init__(self, load_base: Any, *, preload: Sequence[str] = (), prepack: bool = False) -> None:
        self._load_base = load_base  # () -> (model, tokenizer)
        self._lock = threading.RLock()
        self._model: Any = None
        self._tokenizer: Any = None
        self._names: dict[str, str] = {}
        self._preload = [p for p in preload if p]
        self.prepack = prepack
        self.memo: dict[tuple, str] = {}

    def acquire(self, adapter: Optional[str], *, allow_pickle: bool = False) -> tuple[Any, Any]:
        """(model, tokenizer), with `adapter` (a folder, or None for the base) loaded. The base
        model loads on the first call, with the `preload` adapters."""
        with self._lock:
            if self._model is None:
                self._model, self._tokenizer = self._load_base()
                for path in dict.fromkeys([*self._preload, *([adapter] if adapter else [])]):
                    self._add(path, allow_pickle)
                # adapters added later wrap the packed layers
                speed_up_cpu_inference(self._model, prepack=self.prepack)
            if adapter and adapter not in self._names:
                self._add(adapter, allow_pickle)
            return self._model, self._tokenizer

    def _add(self, adapter: str, allow_pickle: bool) -> None:
        if adapter not in self._names:
            name = f"a{len(self._names)}"
            from peft import PeftModel

            if isinstance(self._model, PeftModel):
                folder = check_adapter_folder(adapter, allow_pickle=allow_pickle)
                self._model.load_adapter(str(folder), adapter_name=name, use_safetensors=safetensors_flag(allow_pickle))
            else:
                self._model = attach_adapter(self._model, adapter, allow_pickle=allow_pickle, adapter_name=name)
            self._model.eval()
            self._names[adapter] = name

    @contextlib.contextmanager
    def active(self, adapter: Optional[str]) -> Any:
        """Hold the lock with `adapter` switched on (None: every adapter off)."""
        with self._lock:
            model = self._model
            if not hasattr(model, "peft_config"):
                yield model
            elif adapter is None:
                with model.disable_adapter():
                    yield model
            else:
                model.set_adapter(self._names[adapter])
                yield model

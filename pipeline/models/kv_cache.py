"""Faster batched generation on the CPU: an append-only KV cache with its decoding attention, and
the batch's shared prompt prefix prefilled once.

Profiled on 2 AMD EPYC cores (SmolLM2-135M bf16, 16 seed prompts of ~290 tokens, 100 new tokens):
a batch is ~40% prefill and ~60% decoding steps, and a decoding step spent a third of its time
in `torch.cat`: transformers' DynamicCache copies every layer's whole K and V to append one token.
`AppendOnlyLayer` writes the new token into a buffer grown in chunks instead, keeping K transposed
([batch, heads, head_dim, length]) so that the decoding attention (`decode_attention`, registered
as the attention implementation `DECODE_ATTENTION`) multiplies it in place: torch's CPU SDPA kernel
took ~640 us per layer for one query token over ~360 keys, two batched matmuls on this layout ~400.
Every prompt of a batch also starts with the same system message and instructions (89 of ~290
tokens for the answer prompt): `prefixed_batch` runs that prefix once at batch 1 and lays the
batch out as [prefix, padding, rest of the prompt], so prefill computes only the rest.

Both keep what the model attends to and the positions it sees; greedy outputs still differ from
the plain path in a word here and there (bfloat16 sums in another order), so their effect is
measured (`python -m eval.bench speed`: tokens/s and ROUGE-L against the references).
"""
from __future__ import annotations

import functools
import os
from typing import Any, Optional, Sequence

from pipeline.models.errors import ModelLoadError

# the attention implementation name LocalCausalLM sets on a CPU model with cache_implementation=append
DECODE_ATTENTION = "ragft_cpu_decode"
# a shared prefix shorter than this is not worth a separate forward pass
MIN_SHARED_PREFIX = 16


@functools.lru_cache(maxsize=None)
def _layer_class() -> type:
    from transformers.cache_utils import DynamicLayer

    class AppendOnlyLayer(DynamicLayer):
        """One layer's K and V in buffers grown `GROW` positions at a time: appending a token
        writes it in place instead of copying the whole cache (DynamicLayer's `torch.cat`). K is
        stored transposed, [batch, heads, head_dim, capacity]; `keys` is a [batch, heads, length,
        head_dim] view of it, as every caller expects."""

        GROW = 128

        def lazy_initialization(self, key_states: Any, value_states: Any) -> None:
            super().lazy_initialization(key_states, value_states)
            self._keys_t: Any = None
            self._values: Any = None
            self._length = 0

        def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            end = self._length + key_states.shape[-2]
            if self._values is None or end > self._values.shape[-2]:
                batch, heads, _, dim = key_states.shape
                capacity = end + self.GROW
                keys_t = key_states.new_empty(batch, heads, dim, capacity)
                values = value_states.new_empty(batch, heads, capacity, value_states.shape[-1])
                if self._length:
                    keys_t[..., : self._length] = self._keys_t[..., : self._length]
                    values[..., : self._length, :] = self._values[..., : self._length, :]
                self._keys_t, self._values = keys_t, values
            self._keys_t[..., self._length : end] = key_states.transpose(-1, -2)
            self._values[..., self._length : end, :] = value_states
            self._length = end
            self.keys = self._keys_t[..., :end].transpose(-1, -2)
            self.values = self._values[..., :end, :]
            return self.keys, self.values

        def reset(self) -> None:
            self._keys_t = self._values = None
            self._length = 0
            super().reset()

        def _unsupported(self, *args: Any, **kwargs: Any) -> None:
            # beam search and assisted decoding reorder or crop the cache; greedy and sampled
            # batches (what LocalCausalLM runs) never do
            raise NotImplementedError("the append-only KV cache supports plain greedy or sampled generation only; use generator.cache_implementation=null for beam search or assisted decoding")

        crop = batch_repeat_interleave = batch_select_indices = reorder_cache = _unsupported

    return AppendOnlyLayer


def append_only_cache() -> Any:
    """A transformers `DynamicCache` whose layers, made as the model first writes to each, are
    append-only buffers (see the module doc)."""
    from transformers import DynamicCache

    cache = DynamicCache()  # no config: one layer per layer index, of layer_class_to_replicate
    cache.layer_class_to_replicate = _layer_class()
    return cache


def decode_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, dropout: float = 0.0, scaling: Optional[float] = None, is_causal: Optional[bool] = None, **kwargs: Any) -> tuple[Any, None]:
    """Attention of one new token per row over an `AppendOnlyLayer`'s K and V, as two batched
    matmuls on its transposed K (grouped-query heads share their K/V head without copies; softmax
    in float32). Everything else (prefill, training, another cache) goes to transformers' SDPA."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    batch, query_heads, query_length, dim = query.shape
    kv_heads, length = key.shape[1], key.shape[2]
    if query_length != 1 or module.training or key.stride(-2) != 1 or query_heads % kv_heads:
        if key.stride(-1) != 1:  # the append-only layer's transposed K at prefill: SDPA's kernel is slower on it than a copy costs
            key = key.contiguous()
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs)
    group = query_heads // kv_heads  # query heads h*group ... h*group+group-1 read K/V head h
    scores = torch.bmm(query.reshape(batch * kv_heads, group, dim), key.transpose(-1, -2).reshape(batch * kv_heads, dim, length))
    scores = scores.view(batch, kv_heads, group, length).float().mul_(dim**-0.5 if scaling is None else scaling)
    if attention_mask is not None:
        mask = attention_mask[..., -1:, :]  # [batch, 1, 1, length]: the new token's row
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask.float()
    weights = torch.softmax(scores, dim=-1).to(value.dtype).view(batch * kv_heads, group, length)
    out = torch.bmm(weights, value.reshape(batch * kv_heads, length, dim))
    return out.view(batch, query_heads, 1, dim).transpose(1, 2), None


@functools.lru_cache(maxsize=None)
def register_decode_attention() -> str:
    """Register `decode_attention` (and SDPA's mask) under DECODE_ATTENTION, once; returns the name."""
    try:
        from transformers import AttentionInterface
        from transformers.cache_utils import DynamicLayer  # noqa: F401  (what AppendOnlyLayer extends)
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    except ImportError as exc:
        import transformers

        raise ModelLoadError(
            f"generator.cache_implementation=append needs transformers' attention and cache-layer interfaces (4.56 or later); this is transformers {transformers.__version__} ({exc}). "
            "Fix: pip install -U transformers, or --set generator.cache_implementation=null"
        ) from None

    AttentionInterface.register(DECODE_ATTENTION, decode_attention)
    AttentionMaskInterface.register(DECODE_ATTENTION, sdpa_mask)
    return DECODE_ATTENTION


def shared_prefix_length(rows: Sequence[Sequence[int]]) -> int:
    """Tokens every row starts with, leaving each row at least one token of its own (prefill
    must compute the last prompt position's logits)."""
    if len(rows) < 2:
        return 0
    common = len(os.path.commonprefix([list(r) for r in rows]))
    return max(0, min(common, min(len(r) for r in rows) - 1))


def cache_keyword(model: Any) -> str:
    """The name under which this transformers version takes a cache object: `cache` (5.x, where
    `past_key_values` is deprecated), else `past_key_values`."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a PeftModel's forward takes **kwargs
    return _cache_keyword_of(type(base))


@functools.lru_cache(maxsize=None)
def _cache_keyword_of(model_class: type) -> str:
    import inspect

    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


def prefixed_batch(model: Any, rows: Sequence[Sequence[int]], pad_token_id: int, cache: Any) -> Optional[dict[str, Any]]:
    """`generate`'s input_ids and attention_mask for `rows` (token ids) with their shared prefix
    prefilled into `cache` (an empty cache) for every row, or None when they share fewer than
    MIN_SHARED_PREFIX tokens. The prefix runs once at batch 1; the rows are laid out as [prefix,
    padding, rest], the attention mask zero on the padding, so the positions that transformers
    derives from the mask are those of the unpadded prompt."""
    import torch
    from transformers import DynamicCache

    shared = shared_prefix_length(rows)
    if shared < MIN_SHARED_PREFIX:
        return None
    prefix = DynamicCache(config=model.config)
    device = model.device
    with torch.inference_mode():
        model(input_ids=torch.tensor([list(rows[0][:shared])], device=device), use_cache=True, logits_to_keep=1, **{cache_keyword(model): prefix})
    batch = len(rows)
    for index, layer in enumerate(prefix.layers):  # update copies the broadcast rows into the cache's own storage
        cache.update(layer.keys.expand(batch, -1, -1, -1), layer.values.expand(batch, -1, -1, -1), index)
    longest = max(len(r) for r in rows) - shared
    input_ids, attention_mask = [], []
    for row in rows:
        rest = list(row[shared:])
        padding = longest - len(rest)
        input_ids.append(list(row[:shared]) + [pad_token_id] * padding + rest)
        attention_mask.append([1] * shared + [0] * padding + [1] * len(rest))
    return {"input_ids": torch.tensor(input_ids, device=device), "attention_mask": torch.tensor(attention_mask, device=device)}

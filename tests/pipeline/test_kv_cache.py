"""pipeline.models.kv_cache: the append-only KV cache, its decoding attention and the shared-prefix batch
layout, against what transformers computes without them."""

from __future__ import annotations

import types

import pytest
import torch

from pipeline.models import kv_cache


def test_the_shared_prefix_leaves_every_row_a_token_of_its_own():
    assert kv_cache.shared_prefix_length([[1, 2, 3, 4], [1, 2, 3, 5, 6]]) == 3
    assert kv_cache.shared_prefix_length([[1, 2, 3], [1, 2, 3, 4]]) == 2  # the shorter row keeps its last token
    assert kv_cache.shared_prefix_length([[7, 2], [1, 2]]) == 0
    assert kv_cache.shared_prefix_length([[1, 2, 3]]) == 0  # one row: nothing to share


def test_the_append_only_layer_holds_what_concatenation_would_and_grows_past_its_buffer():
    torch.manual_seed(0)
    cache = kv_cache.append_only_cache()
    grow = kv_cache._layer_class().GROW
    chunks = [torch.randn(2, 3, n, 4) for n in (5, 1, 1, grow + 7, 1)]  # prefill, steps, a chunk past the buffer
    values = [torch.randn(2, 3, c.shape[2], 4) for c in chunks]
    for k, v in zip(chunks, values):
        keys, vals = cache.update(k, v, 0)
    layer = cache.layers[0]
    assert isinstance(layer, kv_cache._layer_class())
    assert torch.equal(keys, torch.cat(chunks, dim=2)) and torch.equal(vals, torch.cat(values, dim=2))
    assert keys.shape == (2, 3, sum(c.shape[2] for c in chunks), 4)
    assert keys.stride(-2) == 1  # K is stored transposed: what decode_attention recognises
    assert layer.get_seq_length() == keys.shape[2]
    with pytest.raises(NotImplementedError, match="cache_implementation=null"):
        layer.batch_select_indices(torch.tensor([0]))


@pytest.mark.parametrize("mask_kind", ["bool", "none"])
def test_decode_attention_equals_sdpa_with_grouped_heads_and_padding(mask_kind):
    """One new token per row over the append-only cache: the same output as transformers' SDPA
    path (float32), with 6 query heads over 2 K/V heads and left padding masked out."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    torch.manual_seed(1)
    batch, kv_heads, group, length, dim = 3, 2, 3, 9, 8
    keys, values = kv_cache.append_only_cache().update(torch.randn(batch, kv_heads, length, dim), torch.randn(batch, kv_heads, length, dim), 0)
    query = torch.randn(batch, kv_heads * group, 1, dim)
    mask = None
    if mask_kind == "bool":
        mask = torch.ones(batch, 1, 1, length, dtype=torch.bool)
        mask[0, ..., :4] = False  # row 0 left-padded by 4
    module = types.SimpleNamespace(training=False, num_key_value_groups=group, is_causal=True)
    ours, _ = kv_cache.decode_attention(module, query, keys, values, mask)
    theirs, _ = sdpa_attention_forward(module, query, keys.contiguous(), values.contiguous(), mask)
    assert ours.shape == theirs.shape == (batch, 1, kv_heads * group, dim)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    if mask is not None:  # the padding is really ignored: changing it changes nothing
        keys[0, :, :4] = 100.0
        again, _ = kv_cache.decode_attention(module, query, keys, values, mask)
        torch.testing.assert_close(again, ours)


def test_prefill_goes_to_sdpa():
    """More than one query position (prefill) is SDPA's job, causal as transformers runs it."""
    torch.manual_seed(2)
    module = types.SimpleNamespace(training=False, num_key_value_groups=1, is_causal=True)
    q, k, v = (torch.randn(1, 2, 5, 4) for _ in range(3))
    out, _ = kv_cache.decode_attention(module, q, k, v, None)
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2)
    torch.testing.assert_close(out, expected)

"""transformers' KV cache during `generate` (transformers/cache_utils.py DynamicCache, transformers 5): each layer's
keys and values, [rows, kv_heads, tokens, head_dim], grown by `torch.cat` one token per decoding step."""

from __future__ import annotations

from vramplan.estimate.dtypes import tensor_bytes
from vramplan.models.spec import ModelSpec


def layer_cache_tokens(spec: ModelSpec, layer: int, tokens: int, prompt: int) -> int:
    """Tokens one layer's cache holds after `tokens` positions. A sliding-window layer (DynamicSlidingWindowLayer)
    keeps a view of its last window, whose storage is the whole prefill when the prompt alone is longer."""
    if spec.sliding_window is None or layer not in spec.sliding_layer_ids or tokens <= spec.sliding_window:
        return tokens
    return max(spec.sliding_window, min(prompt, tokens))


def layer_cache_bytes(spec: ModelSpec, rows: int, tokens: int, element_bytes: int) -> int:
    """One layer's keys and values for `rows` x `tokens` (MLA: transformers caches the expanded per-head keys and
    values, not the latent: modeling_deepseek_v3.py DeepseekV3Attention)."""
    return tensor_bytes(rows * tokens * spec.kv_size * element_bytes) + tensor_bytes(
        rows * tokens * spec.v_size * element_bytes)


def kv_cache_bytes(spec: ModelSpec, rows: int, tokens: int, prompt: int, element_bytes: int) -> int:
    """Every layer's cache after `tokens` positions of `rows` sequences."""
    return sum(layer_cache_bytes(spec, rows, layer_cache_tokens(spec, layer, tokens, prompt), element_bytes)
               for layer in range(spec.num_layers))


def cache_growth_bytes(spec: ModelSpec, rows: int, tokens: int, element_bytes: int) -> int:
    """DynamicLayer.update's `torch.cat([self.keys, key_states])`: the new keys exist before the old are freed, one
    layer's keys (the larger of keys and values) at `tokens` positions."""
    return tensor_bytes(rows * tokens * max(spec.kv_size, spec.v_size) * element_bytes)

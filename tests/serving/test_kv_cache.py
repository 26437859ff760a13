"""KV bytes per token and the page/group layout, against the models' published architecture."""

import pytest

from vramplan.models.catalog import resolve_model
from vramplan.serving.kv_cache import (
    blocks_per_request,
    estimated_max_model_len,
    kv_bytes_per_token,
    kv_layout,
    request_bytes,
)


@pytest.mark.parametrize(
    "model, kv_dtype, tp, expected",
    [
        # 32 layers x (K + V) x 8 KV heads x 128 x 2 bytes
        pytest.param("llama-3.1-8b", "auto", 1, 32 * 2 * 8 * 128 * 2, id="llama-3.1-8b"),
        pytest.param("llama-3.1-8b", "fp8", 1, 32 * 2 * 8 * 128 * 1, id="llama-3.1-8b-fp8"),
        # TP 8 splits 8 KV heads: one per rank
        pytest.param("llama-3.1-70b", "auto", 8, 80 * 2 * 1 * 128 * 2, id="llama-3.1-70b-tp8"),
        # 4 KV heads over 8 ranks: vLLM replicates, still one head per rank (get_num_kv_heads)
        pytest.param("qwen3-235b-a22b", "auto", 8, 94 * 2 * 1 * 128 * 2, id="qwen3-235b-tp8-replicated"),
        # MLA: one latent of kv_lora_rank 512 + qk_rope_head_dim 64 per layer, not split by TP
        pytest.param("deepseek-v3", "auto", 1, 61 * (512 + 64) * 2, id="deepseek-v3-mla"),
        pytest.param("deepseek-v3", "auto", 8, 61 * (512 + 64) * 2, id="deepseek-v3-mla-tp8"),
        pytest.param("deepseek-v3", "fp8", 1, 61 * (512 + 64) * 1, id="deepseek-v3-mla-fp8"),
    ],
)
def test_kv_bytes_per_token(model, kv_dtype, tp, expected):
    assert kv_bytes_per_token(resolve_model(model).spec, kv_dtype, tp) == expected


def test_llama_block_is_16_tokens_of_every_layer():
    layout = kv_layout(resolve_model("llama-3.1-8b").spec)
    assert layout.block_size == 16 and layout.bytes_per_block == 16 * 131072 == 2 * 2**20
    assert [group.kind for group in layout.groups] == ["full"]
    assert blocks_per_request(layout, 20000, 2048) == 1250  # cdiv(20000, 16)


def test_gemma2_hybrid_groups_and_sliding_window_cap():
    """Gemma 2: 21 sliding + 21 full layers -> two groups of 21 layers; the sliding group holds the window plus the
    in-flight tokens, cdiv(4096 - 1 + 4096, 16) + 1 = 513 blocks, however long the sequence."""
    layout = kv_layout(resolve_model("gemma-2-9b").spec)
    assert layout.group_size == 21 and sorted((g.kind, g.groups) for g in layout.groups) == [("full", 1),
                                                                                            ("sliding", 1)]
    assert blocks_per_request(layout, 8192, 4096) == 512 + 513
    v0 = kv_layout(resolve_model("gemma-2-9b").spec, hybrid=False)
    assert [g.kind for g in v0.groups] == ["full"] and v0.group_size == 42


def test_gemma3_groups_pad_the_sliding_layers():
    """Gemma 3 27B: 62 layers, every 6th full -> 10 full, 52 sliding: group size 10, six sliding groups (8 padding
    layers), one full group (_get_kv_cache_groups_uniform_page_size)."""
    layout = kv_layout(resolve_model("gemma-3-27b").spec)
    groups = {g.kind: g for g in layout.groups}
    assert layout.group_size == 10 and groups["full"].groups == 1 and groups["sliding"].groups == 6


def test_request_bytes_and_longest_context_agree():
    layout = kv_layout(resolve_model("llama-3.1-8b").spec)
    available = request_bytes(layout, 32768, 0)
    assert estimated_max_model_len(layout, available, 131072, 0) == 32768
    assert estimated_max_model_len(layout, available - 1, 131072, 0) == 32768 - 16
    assert estimated_max_model_len(layout, 0, 131072, 0) == 0

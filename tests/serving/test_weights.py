"""Serving weight bytes per GPU and the format byte rules."""

import pytest

from vramplan.models.catalog import resolve_model
from vramplan.serving.formats import GGUF_BLOCKS, WeightFormat, matrix_bytes
from vramplan.serving.weights import serving_weights


def _weights(model, fmt, tp=1):
    resolved = resolve_model(model)
    return serving_weights(resolved.spec, WeightFormat(fmt), tp, resolved.config.get("max_position_embeddings"))


def test_llama_8b_bf16_matches_vllms_logged_load():
    """vLLM logged "Loading model weights took 14.9888 GB" (GiB) for Llama-3.1-8B-Instruct on an RTX 3090
    (github.com/vllm-project/vllm/issues/10517): 8,030,261,248 parameters x 2 bytes + the rotary cos/sin cache
    (131072 positions x 128 x 2 bytes)."""
    weights = _weights("llama-3.1-8b", "bf16")
    assert weights.rope_cache_bytes == 131072 * 128 * 2
    assert weights.total_bytes == 8_030_261_248 * 2 + 131072 * 128 * 2
    assert round(weights.total_bytes / 2**30, 4) == 14.9888


@pytest.mark.parametrize(
    "fmt, bits",
    [pytest.param(WeightFormat.Q8_0, 8.5, id="q8_0"), pytest.param(WeightFormat.Q6_K, 6.5625, id="q6_k"),
     pytest.param(WeightFormat.Q5_K, 5.5, id="q5_k"), pytest.param(WeightFormat.Q4_K, 4.5, id="q4_k"),
     pytest.param(WeightFormat.Q4_0, 4.5, id="q4_0"), pytest.param(WeightFormat.Q3_K, 3.4375, id="q3_k"),
     pytest.param(WeightFormat.Q2_K, 2.625, id="q2_k")],
)
def test_gguf_bits_per_weight_are_ggml_block_sizes(fmt, bits):
    assert GGUF_BLOCKS[fmt].bits_per_weight == bits
    assert matrix_bytes(fmt, 4096, 4096) * 8 == 4096 * 4096 * bits


@pytest.mark.parametrize("fmt", [WeightFormat.AWQ, WeightFormat.GPTQ])
def test_awq_gptq_group_128(fmt):
    """4-bit weights, per group of 128 input rows and output column an fp16 scale and a 4-bit zero: 4 + 20/128 bits."""
    assert matrix_bytes(fmt, 4096, 4096) * 8 == 4096 * 4096 * (4 + 20 / 128)


def test_fp8_scales():
    assert matrix_bytes(WeightFormat.FP8, 4096, 14336) == 4096 * 14336 + 4
    assert matrix_bytes(WeightFormat.FP8_CHANNEL, 4096, 14336) == 4096 * 14336 + 4096 * 4
    assert matrix_bytes(WeightFormat.FP8_BLOCK, 4096, 14336) == 4096 * 14336 + 32 * 112 * 4


def test_formats_keep_embeddings_16_bit_except_gguf():
    bf16, fp8, awq, q4 = (_weights("llama-3.1-8b", f) for f in ("bf16", "fp8", "awq", "q4_k"))
    assert bf16.embedding_bytes == fp8.embedding_bytes == awq.embedding_bytes == 2 * 128256 * 4096 * 2
    assert q4.embedding_bytes == 2 * 128256 * 4096 * 4.5 / 8


@pytest.mark.parametrize("model", ["llama-3.1-8b", "qwen3-30b-a3b", "deepseek-v3", "gemma-2-9b"])
def test_quantization_and_sharding_never_raise_per_gpu_weights(model):
    for chain in (("bf16", "fp8", "awq"), ("bf16", "q8_0", "q6_k", "q5_k", "q4_k", "q3_k", "q2_k")):
        order = [_weights(model, f).total_bytes for f in chain]
        assert order == sorted(order, reverse=True), chain
    per_gpu = [_weights(model, "bf16", tp).total_bytes for tp in (1, 2, 4, 8)]
    assert per_gpu == sorted(per_gpu, reverse=True)


def test_tp_splits_the_vocabulary_and_the_experts():
    one, eight = _weights("qwen3-30b-a3b", "bf16", 1), _weights("qwen3-30b-a3b", "bf16", 8)
    assert eight.embedding_bytes * 8 == one.embedding_bytes  # 151936 is a multiple of 64 x 8
    assert one.expert_bytes > 7 * eight.expert_bytes  # experts split, routers replicated

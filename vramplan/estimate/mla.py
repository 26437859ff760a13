"""Activations of DeepSeek multi-head latent attention (transformers DeepseekV3Attention), tensor by tensor.

Confirmed against our trace of the real code (validation/matrix.toml, tiny-deepseek-v3 cases).
"""

from __future__ import annotations

from vramplan.estimate.dtypes import FP32_BYTES, tensor_bytes
from vramplan.models.spec import ModelSpec

# aten _scaled_dot_product_efficient_attention returns a philox seed and offset (0-d int64 tensors) that its
# backward keeps: one 512-byte block each.
EFFICIENT_ATTENTION_RNG_BLOCKS = 2
SMALL_BLOCK_BYTES = 512


def mla_saved_bytes(
    spec: ModelSpec, tokens: int, compute: int, linear_out: int, weights_train: bool, residual: int
) -> list[int]:
    """What one MLA attention keeps for backward, LoRA copies aside.

    - q_a_layernorm and kv_a_layernorm (RMSNorm over q_lora_rank / kv_lora_rank): the fp32 input and rsqrt;
    - `torch.cat((q_pass, q_rot))` and the `new_empty` keys, [T, heads x (nope + rope)] each, saved by SDPA;
    - the values SDPA saves, a split view of kv_b_proj's output [T, heads x (nope + v)], which stays whole;
    - SDPA (CUDA's memory-efficient kernel: the value head dim differs from the query's): output
      [T, heads x v], fp32 logsumexp [T, heads], philox seed and offset.
    When the projections return a wider dtype than autocast's (a Linear4bit returns its fp32 input's dtype under
    k-bit preparation), autocast casts q, k and v for SDPA, which then saves those copies (v alone, not
    kv_b_proj's whole output). When the weights train, q_b_proj and kv_b_proj keep their (normalised) inputs and
    both norms their outputs.
    """
    mla, heads = spec.mla, spec.num_heads
    saved: list[int] = []
    ranks = [mla.kv_lora_rank] if mla.q_lora_rank is None else [mla.q_lora_rank, mla.kv_lora_rank]
    for rank in ranks:
        saved += [tensor_bytes(tokens * rank * FP32_BYTES), tensor_bytes(tokens * FP32_BYTES)]
        if weights_train:
            saved += [tensor_bytes(tokens * rank * compute), tensor_bytes(tokens * rank * residual)]
    kv_b_out = heads * (mla.qk_nope_head_dim + mla.v_head_dim)
    values = spec.v_size if linear_out != compute else kv_b_out
    saved += [
        tensor_bytes(tokens * values * compute),
        tensor_bytes(tokens * spec.q_size * compute),
        tensor_bytes(tokens * spec.kv_size * compute),
        tensor_bytes(tokens * spec.attn_out_size * compute),
        tensor_bytes(tokens * heads * FP32_BYTES),
        EFFICIENT_ATTENTION_RNG_BLOCKS * SMALL_BLOCK_BYTES,
    ]
    return saved

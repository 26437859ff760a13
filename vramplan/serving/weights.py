"""Serving weight bytes on one GPU: vramplan's parameter inventory (ModelSpec), sharded as vLLM's tensor-parallel
layers shard it, stored in a weight format."""

from __future__ import annotations

import math

from pydantic import BaseModel

from vramplan.models.spec import LinearShape, ModelSpec
from vramplan.serving.formats import (
    FP32_BYTES,
    HALF_BYTES,
    WeightFormat,
    ceil_div,
    embedding_bytes,
    format_note,
    matrix_bytes,
    vector_bytes,
)

# vllm/model_executor/layers/vocab_parallel_embedding.py DEFAULT_VOCAB_PADDING_SIZE: the vocabulary is padded to a
# multiple of 64 before VocabParallelEmbedding / ParallelLMHead split it over the tensor-parallel ranks.
VOCAB_PADDING = 64
# RowParallelLinear splits the input dimension (o_proj, down_proj); ReplicatedLinear keeps the whole matrix on every
# rank (DeepSeek's q_a_proj and kv_a_proj_with_mqa, vllm/model_executor/models/deepseek_v2.py); every other linear is
# column-parallel (QKVParallelLinear, MergedColumnParallelLinear, ColumnParallelLinear).
ROW_PARALLEL = ("o_proj", "down_proj")
REPLICATED = ("q_a_proj", "kv_a_proj_with_mqa", "shared_expert_gate")


class ServingWeights(BaseModel):
    """Weight bytes on one GPU, by kind."""

    format: WeightFormat
    tensor_parallel: int
    decoder_linear_bytes: int  # attention and dense/shared MLP matrices of every layer
    expert_bytes: int  # routed experts (3D parameters) and routers
    embedding_bytes: int  # embed_tokens plus a separate lm_head
    other_bytes: int  # norms, biases
    rope_cache_bytes: int  # the rotary cos/sin cache buffer
    total_bytes: int
    note: str


def kv_heads_per_rank(spec: ModelSpec, tensor_parallel: int) -> int:
    """vllm/config/model.py get_num_kv_heads: KV heads are split over the ranks and replicated when there are fewer
    heads than ranks (at least one per rank)."""
    return max(1, spec.num_kv_heads // tensor_parallel)


def sharded_shape(linear: LinearShape, spec: ModelSpec, tp: int) -> tuple[int, int]:
    """(out_features, in_features) of one linear on one rank."""
    base = linear.name.rsplit(".", 1)[-1]
    if base in REPLICATED or tp == 1:
        return linear.out_features, linear.in_features
    if base in ROW_PARALLEL:
        return linear.out_features, ceil_div(linear.in_features, tp)
    if spec.mla is None and base in ("k_proj", "v_proj"):
        return kv_heads_per_rank(spec, tp) * spec.head_dim, linear.in_features
    if spec.mla is None and base == "qkv_proj":
        q = ceil_div(spec.q_size, tp)
        return q + 2 * kv_heads_per_rank(spec, tp) * spec.head_dim, linear.in_features
    return ceil_div(linear.out_features, tp), linear.in_features


def _linear_bytes(fmt: WeightFormat, spec: ModelSpec, tp: int) -> tuple[int, int]:
    """(matrix bytes, bias bytes) of every decoder layer's nn.Linear modules on one rank."""
    matrices = biases = 0
    for layer in range(spec.num_layers):
        for linear in spec.linears_of(layer):
            out_features, in_features = sharded_shape(linear, spec, tp)
            matrices += matrix_bytes(fmt, out_features, in_features)
            if linear.bias:
                biases += vector_bytes(fmt, out_features)
    return matrices, biases


def _expert_bytes(fmt: WeightFormat, spec: ModelSpec, tp: int) -> int:
    """Routed experts (FusedMoE: w13 [E, 2I/tp, H] and w2 [E, H, I/tp], each expert a matrix of the format) and the
    router (ReplicatedLinear, kept 16-bit; DeepSeek's gate fp32 with its e_score_correction_bias)."""
    if spec.moe is None:
        return 0
    moe = spec.moe
    inter = ceil_div(moe.expert_intermediate_size, tp)
    per_expert = matrix_bytes(fmt, 2 * inter, spec.hidden_size) + matrix_bytes(fmt, spec.hidden_size, inter)
    if moe.expert_bias:
        per_expert += vector_bytes(fmt, 2 * inter + spec.hidden_size)
    router_width = FP32_BYTES if moe.router_fp32 else HALF_BYTES
    router = sum(math.prod(shape) for shape in spec.router_tensor_shapes()) * router_width
    if moe.router_fp32:
        router += moe.num_experts * FP32_BYTES  # e_score_correction_bias [E] fp32
    return len(spec.moe_layer_ids) * (moe.num_experts * per_expert + router)


def padded_vocab(vocab_size: int, tp: int) -> int:
    """Rows of the embedding (and lm_head) on one rank: padded to 64, then split."""
    return ceil_div(ceil_div(vocab_size, VOCAB_PADDING) * VOCAB_PADDING, tp)


def rotary_dim(spec: ModelSpec) -> int:
    """Width of the rotary cos/sin cache rows: head_dim, or the MLA rope part."""
    return spec.mla.qk_rope_head_dim if spec.mla is not None else spec.head_dim


def rope_cache_bytes(spec: ModelSpec, max_position_embeddings: int | None) -> int:
    """vllm/model_executor/layers/rotary_embedding/base.py RotaryEmbedding: cos_sin_cache [max_position,
    rotary_dim] cast to the model dtype, one buffer shared by every layer (get_rope caches it)."""
    if not max_position_embeddings:
        return 0
    return max_position_embeddings * rotary_dim(spec) * HALF_BYTES


def serving_weights(spec: ModelSpec, fmt: WeightFormat, tensor_parallel: int = 1,
                    max_position_embeddings: int | None = None) -> ServingWeights:
    """Weight bytes vLLM loads onto each of `tensor_parallel` GPUs."""
    tp = tensor_parallel
    linears, biases = _linear_bytes(fmt, spec, tp)
    experts = _expert_bytes(fmt, spec, tp)
    rows = padded_vocab(spec.vocab_size, tp)
    embeddings = embedding_bytes(fmt, rows, spec.hidden_size) * (1 if spec.tie_word_embeddings else 2)
    norms = vector_bytes(fmt, spec.num_layers * spec.layer_norm_params + spec.final_norm_params)
    rope = rope_cache_bytes(spec, max_position_embeddings)
    total = linears + experts + embeddings + norms + biases + rope
    return ServingWeights(
        format=fmt, tensor_parallel=tp, decoder_linear_bytes=linears, expert_bytes=experts,
        embedding_bytes=embeddings, other_bytes=norms + biases, rope_cache_bytes=rope, total_bytes=total,
        note=format_note(fmt),
    )

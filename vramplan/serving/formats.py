"""Weight formats for serving, and the exact bytes one weight matrix takes in each.

Every byte count follows the checkpoint layout vLLM loads (parameters as `create_weights` allocates them), or for
GGUF the ggml block structs. A matrix is [out_features, in_features] on one GPU (already tensor-parallel sharded).
"""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, ConfigDict

HALF_BYTES = 2  # bf16 / fp16
FP32_BYTES = 4
# AutoAWQ / AutoGPTQ pack eight 4-bit values per int32 (vllm/model_executor/layers/quantization/auto_awq.py and
# auto_gptq.py create_weights: qweight int32, pack_factor = 32 // weight_bits).
INT4_PER_INT32 = 8
# The group size the AWQ and GPTQ checkpoints of the common model families use (quantize_config group_size 128):
# one fp16 scale and one packed 4-bit zero per group of 128 input rows and output column.
AWQ_GPTQ_GROUP_SIZE = 128
# vllm/model_executor/layers/quantization/fp8.py: block-quantized fp8 checkpoints (DeepSeek-V3, Qwen3-FP8) use
# weight_block_size [128, 128] with one fp32 weight_scale_inv per block.
FP8_BLOCK = 128


class WeightFormat(str, Enum):
    BF16 = "bf16"
    FP16 = "fp16"
    FP8 = "fp8"  # per-tensor scale (`--quantization fp8`, modelopt fp8)
    FP8_CHANNEL = "fp8-channel"  # compressed-tensors FP8 per output channel
    FP8_BLOCK = "fp8-block"  # 128x128 block scales (DeepSeek-V3, Qwen3-*-FP8)
    INT8 = "int8"  # compressed-tensors W8A8 int8, per output channel
    AWQ = "awq"
    GPTQ = "gptq"
    NF4 = "nf4"  # bitsandbytes 4-bit with double quantization
    Q8_0 = "q8_0"
    Q6_K = "q6_k"
    Q5_K = "q5_k"
    Q4_K = "q4_k"
    Q4_0 = "q4_0"
    Q3_K = "q3_k"
    Q2_K = "q2_k"


class GgufBlock(BaseModel):
    """One ggml quantization block: how many weights and how many bytes."""

    model_config = ConfigDict(frozen=True)

    weights: int
    bytes: int

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.bytes / self.weights


# ggml/src/ggml-common.h block structs and their static_asserts (QK_K = 256, K_SCALE_SIZE = 12, ggml_half = 2 B):
GGUF_BLOCKS = {
    WeightFormat.Q8_0: GgufBlock(weights=32, bytes=2 + 32),  # block_q8_0: d + qs[QK8_0] -> 8.5 bits/weight
    WeightFormat.Q6_K: GgufBlock(weights=256, bytes=2 + 256 // 16 + 3 * 256 // 4),  # d + scales + ql,qh: 6.5625
    WeightFormat.Q5_K: GgufBlock(weights=256, bytes=2 * 2 + 12 + 256 // 2 + 256 // 8),  # d,dmin+scales+qs+qh: 5.5
    WeightFormat.Q4_K: GgufBlock(weights=256, bytes=2 * 2 + 12 + 256 // 2),  # d,dmin + scales + qs: 4.5
    WeightFormat.Q4_0: GgufBlock(weights=32, bytes=2 + 32 // 2),  # block_q4_0: d + qs[QK4_0/2]: 4.5
    WeightFormat.Q3_K: GgufBlock(weights=256, bytes=2 + 256 // 4 + 256 // 8 + 12),  # d + qs + hmask + scales: 3.4375
    WeightFormat.Q2_K: GgufBlock(weights=256, bytes=2 * 2 + 256 // 16 + 256 // 4),  # d,dmin + scales + qs: 2.625
}
FOUR_BIT_GROUPED = (WeightFormat.AWQ, WeightFormat.GPTQ)
SIXTEEN_BIT = (WeightFormat.BF16, WeightFormat.FP16)


def is_gguf(fmt: WeightFormat) -> bool:
    return fmt in GGUF_BLOCKS


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def matrix_bytes(fmt: WeightFormat, out_features: int, in_features: int) -> int:
    """Bytes of one quantized weight matrix and its scales/zeros, as the format stores it."""
    numel = out_features * in_features
    if fmt in SIXTEEN_BIT:
        return numel * HALF_BYTES
    if fmt is WeightFormat.FP8:
        # fp8.py Fp8LinearMethod.create_weights: fp8 weight + one fp32 weight_scale per logical weight; the
        # dynamic activation scheme keeps no input_scale.
        return numel + FP32_BYTES
    if fmt in (WeightFormat.FP8_CHANNEL, WeightFormat.INT8):
        # compressed-tensors channel strategy: weight_scale [out, 1] fp32.
        return numel + out_features * FP32_BYTES
    if fmt is WeightFormat.FP8_BLOCK:
        return numel + ceil_div(out_features, FP8_BLOCK) * ceil_div(in_features, FP8_BLOCK) * FP32_BYTES
    if fmt in FOUR_BIT_GROUPED:
        # auto_awq.py: qweight [in, out/8] int32, qzeros [in/g, out/8] int32, scales [in/g, out] fp16;
        # auto_gptq.py: qweight [in/8, out] int32, same qzeros and scales: the same bytes.
        groups = ceil_div(in_features, AWQ_GPTQ_GROUP_SIZE)
        return ceil_div(numel, 2) + ceil_div(groups * out_features, 2) + groups * out_features * HALF_BYTES
    if fmt is WeightFormat.NF4:
        from vramplan.estimate.quant import quantized_linear_bytes

        return quantized_linear_bytes(in_features, out_features, double_quant=True)
    block = GGUF_BLOCKS[fmt]
    return ceil_div(numel, block.weights) * block.bytes


def embedding_bytes(fmt: WeightFormat, rows: int, width: int) -> int:
    """An embedding or lm_head matrix: 16-bit except under GGUF, whose files quantize token_embd/output too
    (vLLM's AWQ/GPTQ/fp8/int8/bitsandbytes configs return a quant method for LinearBase only; auto_awq.py
    get_quant_method quantizes ParallelLMHead only when lm_head_quantized)."""
    if is_gguf(fmt):
        return matrix_bytes(fmt, rows, width)
    return rows * width * HALF_BYTES


def vector_bytes(fmt: WeightFormat, numel: int) -> int:
    """Norm weights, biases and other 1-D parameters: 16-bit; GGUF stores 1-D tensors as F32."""
    return numel * (FP32_BYTES if is_gguf(fmt) else HALF_BYTES)


def format_note(fmt: WeightFormat) -> str:
    """What the byte count assumes for this format (shown with the answer)."""
    if fmt in SIXTEEN_BIT:
        return f"{fmt.value}: 2 bytes per parameter"
    if fmt is WeightFormat.FP8:
        return "fp8: 1 byte per linear weight + one fp32 per-tensor scale; embeddings, lm_head, norms and router 16-bit"
    if fmt is WeightFormat.FP8_CHANNEL:
        return "fp8-channel: 1 byte per linear weight + one fp32 scale per output channel; embeddings, lm_head 16-bit"
    if fmt is WeightFormat.FP8_BLOCK:
        return "fp8-block: 1 byte per linear weight + one fp32 scale per 128x128 block; embeddings, lm_head 16-bit"
    if fmt is WeightFormat.INT8:
        return "int8 (W8A8): 1 byte per linear weight + one fp32 scale per output channel; embeddings, lm_head 16-bit"
    if fmt in FOUR_BIT_GROUPED:
        return (f"{fmt.value}: 4-bit weights + an fp16 scale and a 4-bit zero per {AWQ_GPTQ_GROUP_SIZE} input rows "
                "(4.156 bits/weight); embeddings, lm_head, norms and router 16-bit")
    if fmt is WeightFormat.NF4:
        return "nf4: bitsandbytes 4-bit, absmax per 64 values re-quantized per 256 (double quant); embeddings 16-bit"
    block = GGUF_BLOCKS[fmt]
    return (f"{fmt.value}: {block.bits_per_weight:g} bits/weight ({block.bytes} B per {block.weights} weights) for "
            "every matrix, embeddings and lm_head included; norms F32. Real *_K_M files mix types per tensor")

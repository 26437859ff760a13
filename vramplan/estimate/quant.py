"""4-bit weight storage: bitsandbytes Linear4bit (the Hugging Face stacks' QLoRA) and torchao NF4Tensor (torchtune's).

Both pack two 4-bit values per byte; what differs is the quantization state each keeps beside the packed data.
"""

from __future__ import annotations

from vramplan.errors import NotModelledError
from vramplan.estimate.dtypes import FP32_BYTES, HALF_BYTES, tensor_bytes

# bitsandbytes/functional.py quantize_4bit: blocksize 64, two 4-bit values per uint8.
QUANT_BLOCK = 64
# Double quantization (compress_statistics=True): absmax stored as uint8, re-quantized in blocks of 256.
NESTED_QUANT_BLOCK = 256
# QuantState.code: the 16-value NF4/FP4 lookup table (fp32) kept per quantized weight; state2.code: 256-value table.
QUANT_CODE_VALUES = 16
NESTED_CODE_VALUES = 256
# torchao/dtypes/nf4tensor.py to_nf4: block_size=64 (one scaler per 64 values), scaler_block_size=256 (the
# scalers are themselves quantized to int8 in blocks of 256, with one factor per block in the weight's dtype).
NF4_BLOCK = 64
NF4_SCALER_BLOCK = 256
# NF4Tensor.from_tensor: the 16-entry `nf4` lookup table, kept per weight in the weight's dtype.
NF4_TABLE_VALUES = 16
# measured: tests/estimate/test_torchtune.py. torchao NF4Tensor.get_original_weight (linear_nf4's
# `weight.to(bf16)`, in forward and again in backward) unpacks the nibbles into two int64 index tensors and
# dequantizes them before the bf16 weight exists: about 6 B per value of the weight at its peak.
NF4_DEQUANT_BYTES_PER_VALUE = 6


def packed_elements(numel: int) -> int:
    """Bytes of the packed 4-bit data: two values per byte."""
    return -(-numel // 2)


def quantized_linear_bytes(in_features: int, out_features: int, double_quant: bool) -> int:
    """Storage of one Linear4bit weight as bitsandbytes allocates it (packed data, absmax, code tables)."""
    numel = in_features * out_features
    blocks = -(-numel // QUANT_BLOCK)
    packed = tensor_bytes(packed_elements(numel))
    code = tensor_bytes(QUANT_CODE_VALUES * FP32_BYTES)
    if not double_quant:
        return packed + tensor_bytes(blocks * FP32_BYTES) + code
    nested_blocks = -(-blocks // NESTED_QUANT_BLOCK)
    absmax_uint8 = tensor_bytes(blocks)
    nested_absmax = tensor_bytes(nested_blocks * FP32_BYTES)
    nested_code = tensor_bytes(NESTED_CODE_VALUES * FP32_BYTES)
    offset = tensor_bytes(FP32_BYTES)
    return packed + absmax_uint8 + nested_absmax + nested_code + offset + code


def nf4_bytes(numel: int) -> int:
    """torchao NF4Tensor.from_tensor storage: packed nibbles (uint8, numel/2), int8 scalers (numel/64), one bf16
    factor per 256 scalers, the bf16 scaler mean, and the 16-value bf16 table; each its own allocation."""
    if numel % (NF4_BLOCK * NF4_SCALER_BLOCK):
        raise NotModelledError(
            f"torchao to_nf4 needs a weight size divisible by {NF4_BLOCK * NF4_SCALER_BLOCK}; got {numel}"
        )
    scalers = numel // NF4_BLOCK
    return (
        tensor_bytes(numel // 2)
        + tensor_bytes(scalers)
        + tensor_bytes(scalers // NF4_SCALER_BLOCK * HALF_BYTES)
        + tensor_bytes(HALF_BYTES)
        + tensor_bytes(NF4_TABLE_VALUES * HALF_BYTES)
    )


def nf4_dequant_bytes(numel: int) -> int:
    """The transient of dequantizing one NF4 weight of `numel` values (its backward needs the bf16 copy)."""
    return NF4_DEQUANT_BYTES_PER_VALUE * numel

"""Byte widths of the dtypes a training step uses, and the CUDA allocator's rounding of each tensor."""

from __future__ import annotations

from vramplan.training import DEEPSPEED_STRATEGIES, FSDP_STRATEGIES, Method, Precision, Strategy, TrainingSetup

FP32_BYTES = 4
HALF_BYTES = 2  # bf16 and fp16
BOOL_BYTES = 1  # CUDA dropout masks (aten native_dropout returns bool)
INT64_BYTES = 8  # token ids and labels; MoE expert ids and permutations
# c10/cuda/CUDACachingAllocator.cpp: kMinBlockSize = 512; memory_allocated counts blocks, each a multiple of it.
ALLOCATION_GRANULE_BYTES = 512
BF16_WEIGHTS = (Precision.BF16, Precision.BF16_PURE)  # loaded in bf16 (transformers v5: the checkpoint dtype)


def tensor_bytes(nbytes: int) -> int:
    """What one tensor of `nbytes` adds to `torch.cuda.memory_allocated` (rounded up to 512 B)."""
    granule = ALLOCATION_GRANULE_BYTES
    return -(-nbytes // granule) * granule


def weight_bytes_per_param(precision: Precision) -> int:
    """Load dtype: bf16 for `bf16` (transformers v5 loads the checkpoint dtype), fp32 otherwise."""
    return HALF_BYTES if precision in BF16_WEIGHTS else FP32_BYTES


def unquantized_weight_bytes(setup: TrainingSetup) -> int:
    """Width of every parameter bitsandbytes leaves unquantized (embeddings, norms, lm_head, biases, 3D experts,
    router): the load dtype, or fp32 under QLoRA with k-bit preparation, where peft prepare_model_for_kbit_training
    casts every non-4-bit bf16/fp16 parameter to fp32 (peft/utils/other.py)."""
    if setup.method is Method.QLORA and setup.quant.kbit_prep:
        return FP32_BYTES
    return weight_bytes_per_param(setup.precision)


def trainable_bytes_per_param(setup: TrainingSetup) -> int:
    """Trainable tensors' dtype: the load dtype for full fine-tuning, fp32 for peft adapters."""
    if setup.method is Method.FULL:
        return weight_bytes_per_param(setup.precision)
    return FP32_BYTES


def compute_bytes(precision: Precision) -> int:
    """Width of matmul outputs: the autocast dtype, or fp32 when autocast is off."""
    return FP32_BYTES if precision is Precision.FP32 else HALF_BYTES


def autocast_on(setup: TrainingSetup) -> bool:
    """Whether Trainer's autocast (and accelerate's fp32 conversion of outputs) wraps the forward. Under FSDP2,
    accelerate's Accelerator._prepare_fsdp2 never calls prepare_model, so neither runs: mixed precision comes from
    MixedPrecisionPolicy's param_dtype instead (traced: vramplan/measure/fsdp/). Under DeepSpeed with bf16 accelerate
    sets no native_amp (accelerator.py: bf16 autocast excludes DEEPSPEED) and the engine casts the module itself."""
    return setup.autocast and setup.strategy not in FSDP_STRATEGIES and not deepspeed_casts_to_bf16(setup)


def deepspeed_casts_to_bf16(setup: TrainingSetup) -> bool:
    """DeepSpeed with bf16 enabled (Trainer bf16=True, on a bf16- or fp32-loaded model): the engine casts the whole
    module, adapters included, to bf16 (deepspeed/runtime/engine.py _configure_distributed_model,
    `self.module.bfloat16()`; per-parameter from 0.19.2), keeping fp32 masters in its optimizer partition
    (strategies/zero.py). Forward and backward then run in bf16 without autocast."""
    return setup.strategy in DEEPSPEED_STRATEGIES and setup.precision in (Precision.BF16, Precision.BF16_MIXED)


def fsdp_gathers_in_half(setup: TrainingSetup) -> bool:
    """FSDP with Trainer's bf16/fp16: every parameter is gathered in the 16-bit param_dtype, so layers compute in it
    and LoRA adapters run in it (accelerate/utils/dataclasses.py set_mixed_precision). bf16-pure sets no policy;
    FSDP1 QLoRA always gathers in the 4-bit storage dtype (transformers/distributed/fsdp.py update_fsdp_plugin_peft)."""
    if setup.strategy is Strategy.FSDP1 and setup.method is Method.QLORA:
        return True
    return setup.strategy in (*FSDP_STRATEGIES, Strategy.FSDP1) and setup.precision not in (
        Precision.FP32, Precision.BF16_PURE)

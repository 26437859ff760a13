"""The dtypes a setup's tensors take along the residual stream and through a decoder layer."""

from __future__ import annotations

from pydantic import BaseModel

from vramplan.estimate.dtypes import (
    FP32_BYTES,
    HALF_BYTES,
    autocast_on,
    compute_bytes,
    deepspeed_casts_to_bf16,
    fsdp_gathers_in_half,
    tensor_bytes,
    unquantized_weight_bytes,
)
from vramplan.models.spec import ModelSpec
from vramplan.training import Method, Strategy, TrainingSetup


class Flow(BaseModel):
    """Dtype widths along the residual stream of one setup, and whether the base weights train."""

    residual: int  # hidden states between layers and RMSNorm outputs (the embedding's and norms' dtype)
    compute: int  # matmul outputs under autocast (or fp32 without)
    linear_out: int  # what a base linear returns (Linear4bit casts back to its input dtype)
    weights_train: bool  # full fine-tuning: norm and linear weights need their inputs for their gradients
    autocast: bool = True  # Trainer's autocast wraps the forward (not under FSDP2: estimate/dtypes.py autocast_on)
    adapter: int = FP32_BYTES  # LoRA adapters' dtype: fp32 from peft, FSDP2's 16-bit param_dtype when gathered
    liger: bool = False  # --liger: Liger's RMSNorm and SwiGLU kernels (liger.py)
    # Every linear keeps its input for backward even when its weight is frozen: DeepSpeed ZeRO-3 routes F.linear
    # through LinearFunctionForZeroStage3 (zero/linear.py; memory_efficient_linear, on by default), which saves the
    # input whatever needs a gradient (traced on CPU: scripts/trace_deepspeed.py).
    linear_inputs_saved: bool = False

    @property
    def keeps_linear_inputs(self) -> bool:
        return self.weights_train or self.linear_inputs_saved


def dtype_flow(setup: TrainingSetup) -> Flow:
    """Trace the dtypes a setup's tensors take through a layer."""
    load = unquantized_weight_bytes(setup)  # the embedding's and norms' dtype
    compute = compute_bytes(setup.precision)
    quantized = setup.method is Method.QLORA
    if deepspeed_casts_to_bf16(setup):  # the engine's bf16 module: every weight and adapter 16-bit, no autocast
        half = HALF_BYTES
        return Flow(residual=half, compute=half, linear_out=half, weights_train=setup.method is Method.FULL,
                    autocast=False, adapter=half, linear_inputs_saved=setup.strategy is Strategy.ZERO3)
    if fsdp_gathers_in_half(setup):
        # FSDP gathers embeddings, norms, 4-bit storage and adapters alike in the 16-bit param_dtype. FSDP1's forward
        # also runs under accelerate's autocast (prepare_model), FSDP2's does not; and peft casts a LoRA layer's input
        # to lora_A.weight's dtype before lora_A's own unit gathers it, when that weight is still FSDP1's fp32 shard
        # (peft/tuners/lora/layer.py Linear.forward, _cast_input_dtype; traced).
        # Under BACKWARD_PRE or SHARD_GRAD_OP with checkpointing, the recomputed layer finds its adapters' units
        # gathered in 16 bits (the traced peak is the recompute's; the forward keeps only layer inputs then).
        half = HALF_BYTES
        gathered_in_recompute = setup.backward_prefetch == "backward-pre" or setup.fsdp1_sharding == "shard-grad-op"
        fp32_inputs = setup.strategy is Strategy.FSDP1 and not (
            gathered_in_recompute and setup.gradient_checkpointing)
        return Flow(residual=half, compute=half, linear_out=half, weights_train=setup.method is Method.FULL,
                    autocast=autocast_on(setup), adapter=FP32_BYTES if fp32_inputs else half)
    return Flow(
        residual=load,
        compute=compute,
        # bitsandbytes Linear4bit.forward: `matmul_4bit(x.to(compute_dtype), ...).to(inp_dtype)`
        linear_out=load if quantized else compute,
        weights_train=setup.method is Method.FULL,
        autocast=autocast_on(setup),
        liger=setup.liger,
    )


def hidden_state_bytes(spec: ModelSpec, setup: TrainingSetup, tokens: int) -> int:
    """One residual-stream tensor (a checkpointed layer's saved input, or a layer's output)."""
    return tensor_bytes(tokens * spec.hidden_size * dtype_flow(setup).residual)


def default_layer(spec: ModelSpec) -> int:
    """The layer `spec.layer_linears` describes: an MoE model's first sparse layer, else the first."""
    return spec.moe_layer_ids[0] if spec.moe_layer_ids else 0

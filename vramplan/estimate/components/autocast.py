"""Autocast's low-precision copies of fp32 weights: made for each matmul, cached for trainable leaves until autocast
exits, saved by the matmul for its input gradient; and the lm_head copy a fused loss releases."""

from __future__ import annotations

from pydantic import BaseModel

from vramplan.estimate.components.activations.flow import dtype_flow
from vramplan.estimate.components.weights import adapter_tensor_elements
from vramplan.estimate.dtypes import (
    FP32_BYTES,
    HALF_BYTES,
    autocast_on,
    compute_bytes,
    fsdp_gathers_in_half,
    tensor_bytes,
)
from vramplan.models.spec import ModelSpec
from vramplan.training import Method, Precision, TrainingSetup


class AutocastCopies(BaseModel):
    """Autocast's low-precision copies of fp32 weights alive at the forward peak, at the start of the loss backward,
    and for one layer in the layer backward."""

    forward_bytes: int
    loss_backward_bytes: int
    layer_bytes: int


def autocast_weight_copies(spec: ModelSpec, setup: TrainingSetup) -> AutocastCopies:
    """Low-precision copies of fp32 weights that autocast makes for each matmul.

    torch autocast casts an fp32 weight to the autocast dtype for every linear (aten/src/ATen/autocast_mode.cpp,
    cached_cast, which caches casts of leaf tensors that require grad until the autocast region exits); the matmul
    saves the copy for its input gradient. fp32 linears: every base linear under bf16-mixed/fp16-mixed (not the 4-bit
    ones), lm_head whenever the dense weights are fp32 (mixed precision, or QLoRA k-bit preparation), and the LoRA
    adapters. Under checkpointing a layer's forward saves nothing, so only the cached (trainable) copies outlive it,
    until autocast exits at the end of the forward.
    """
    if not autocast_on(setup) or fsdp_gathers_in_half(setup):  # FSDP1 gathers every weight in 16 bits already
        return AutocastCopies(forward_bytes=0, loss_backward_bytes=0, layer_bytes=0)
    half = HALF_BYTES
    lm_head = tensor_bytes(spec.vocab_size * spec.hidden_size * half) if dtype_flow(setup).residual == FP32_BYTES else 0
    layer_base = 0
    if setup.precision in (Precision.BF16_MIXED, Precision.FP16_MIXED) and setup.method is not Method.QLORA:
        layer_base = sum(tensor_bytes(lin.weight_params * half) for lin in spec.layer_linears)
    layer_adapters = sum(tensor_bytes(n * half) for n in adapter_tensor_elements(spec, setup)) // spec.num_layers
    layer = layer_base + layer_adapters
    if not setup.gradient_checkpointing:
        kept = spec.num_layers * layer + lm_head
        return AutocastCopies(forward_bytes=kept, loss_backward_bytes=kept, layer_bytes=layer)
    cached = layer_adapters + (layer_base if setup.method is Method.FULL else 0)
    return AutocastCopies(
        forward_bytes=spec.num_layers * cached + lm_head, loss_backward_bytes=lm_head, layer_bytes=layer
    )


def released_lm_head_copy_bytes(spec: ModelSpec, setup: TrainingSetup) -> int:
    """autocast's copy of an fp32 lm_head weight, which no matmul saves for backward when liger computes the loss
    (autocast_weight_copies counts it as saved by lm_head's matmul)."""
    if not autocast_on(setup) or dtype_flow(setup).residual != FP32_BYTES:
        return 0
    return tensor_bytes(spec.vocab_size * spec.hidden_size * compute_bytes(setup.precision))

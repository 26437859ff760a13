"""Compose the memory components into a per-GPU Estimate: the peak over forward, backward and optimizer step."""

from __future__ import annotations

import math

from pydantic import BaseModel

from vramplan.estimate.activations import autocast_weight_copies, hidden_state_bytes, layer_saved_bytes
from vramplan.estimate.dtypes import FP32_BYTES, INT64_BYTES, tensor_bytes
from vramplan.estimate.logits import logits_memory
from vramplan.estimate.optimizer import optimizer_memory
from vramplan.estimate.runtime import CUDA_CONTEXT_BYTES, device_bytes, reserved_bytes
from vramplan.estimate.weights import trainable_bytes_per_param, trainable_tensor_shapes, weight_memory
from vramplan.models.catalog import ResolvedModel
from vramplan.models.spec import ModelSpec
from vramplan.errors import NotModelledError
from vramplan.training import Method, Optimizer, TrainingSetup

PHASES = ("forward", "backward", "optimizer")


class PhasePeak(BaseModel):
    """Live bytes at one phase's peak, split into components."""

    phase: str
    components: dict[str, int]

    @property
    def total_bytes(self) -> int:
        return sum(self.components.values())


class Estimate(BaseModel):
    """One GPU's memory for one training step; every figure in bytes."""

    model: ResolvedModel
    setup: TrainingSetup
    total_params: int
    trainable_params: int
    peak_phase: str
    components: dict[str, int]
    phases: list[PhasePeak]
    peak_allocated_bytes: int
    peak_reserved_bytes: int
    device_bytes: int
    cuda_context_bytes: int
    paged_optimizer_bytes: int
    assumptions: list[str]


def activation_bytes(spec: ModelSpec, setup: TrainingSetup) -> tuple[int, int]:
    """(bytes kept through the forward by all layers, bytes of one recomputed layer under checkpointing)."""
    tokens = setup.tokens_per_step
    layer = layer_saved_bytes(spec, setup, tokens)
    if setup.gradient_checkpointing:
        # transformers GradientCheckpointingLayer: each layer keeps only its input; backward recomputes one layer.
        return spec.num_layers * hidden_state_bytes(spec, setup, tokens), layer
    first_needs_grad = setup.method is Method.FULL
    first = layer_saved_bytes(spec, setup, tokens, input_needs_grad=first_needs_grad)
    return first + (spec.num_layers - 1) * layer, 0


def _embedding_gradient_bytes(spec: ModelSpec, setup: TrainingSetup) -> int:
    """The input embedding's gradient arrives last in backward (full fine-tuning only)."""
    if setup.method is not Method.FULL:
        return 0
    return tensor_bytes(spec.embedding_params * trainable_bytes_per_param(setup))


def refuse_unmodelled(spec: ModelSpec, setup: TrainingSetup) -> None:
    """Combinations without a traced rule are refused rather than guessed."""
    if spec.family == "gemma2":
        raise NotModelledError(
            "gemma2 trains with eager attention in transformers (it has no SDPA path), which keeps the s x s "
            "attention scores; that path is not modelled yet"
        )


def estimate_memory(model: ResolvedModel, setup: TrainingSetup) -> Estimate:
    spec = model.spec
    refuse_unmodelled(spec, setup)
    tokens = setup.tokens_per_step
    weights = weight_memory(spec, setup)
    shapes = trainable_tensor_shapes(spec, setup)
    width = trainable_bytes_per_param(setup)
    gradients = sum(tensor_bytes(math.prod(shape) * width) for shape in shapes)
    opt = optimizer_memory(setup.optimizer, shapes, width)
    kept, recompute = activation_bytes(spec, setup)
    logits = logits_memory(spec, setup)
    # token ids and labels (int64), shifted labels
    inputs = 3 * tensor_bytes(tokens * INT64_BYTES)
    hidden = hidden_state_bytes(spec, setup, tokens)
    final_norm = tensor_bytes(tokens * spec.hidden_size * FP32_BYTES)
    copies = autocast_weight_copies(spec, setup)
    persistent = {
        "weights": weights.base_bytes,
        "lora_adapters": weights.adapter_bytes,
        "optimizer_states": opt.state_bytes,
    }
    forward = PhasePeak(
        phase="forward",
        components={
            **persistent,
            "activations": kept + hidden + final_norm + inputs,
            "autocast_weight_copies": copies.forward_bytes,
            "logits_loss": logits.forward_peak_bytes,
        },
    )
    loss_backward = PhasePeak(
        phase="backward",
        components={
            **persistent,
            "activations": kept + inputs,
            "autocast_weight_copies": copies.loss_backward_bytes,
            "logits_loss": logits.backward_peak_bytes,
        },
    )
    # Deepest point of the layer backward: every gradient but the embedding's exists, one layer is recomputed
    # (checkpointing) and the incoming and outgoing hidden-state gradients are live.
    layer_backward = PhasePeak(
        phase="backward",
        components={
            **persistent,
            "activations": kept + recompute + inputs + 2 * hidden,
            "autocast_weight_copies": copies.layer_bytes,
            "gradients": gradients - _embedding_gradient_bytes(spec, setup),
        },
    )
    backward = max(loss_backward, layer_backward, key=lambda p: p.total_bytes)
    step = PhasePeak(
        phase="optimizer",
        components={**persistent, "gradients": gradients, "optimizer_temporaries": opt.step_temporary_bytes},
    )
    phases = [forward, backward, step]
    peak = max(phases, key=lambda p: p.total_bytes)
    allocated = peak.total_bytes
    reserved = reserved_bytes(allocated)
    return Estimate(
        model=model,
        setup=setup,
        total_params=weights.total_params,
        trainable_params=weights.trainable_params,
        peak_phase=peak.phase,
        components=peak.components,
        phases=phases,
        peak_allocated_bytes=allocated,
        peak_reserved_bytes=reserved,
        device_bytes=device_bytes(reserved, opt.paged_state_bytes),
        cuda_context_bytes=CUDA_CONTEXT_BYTES,
        paged_optimizer_bytes=opt.paged_state_bytes,
        assumptions=[],
    )

"""Compose the memory components into a per-GPU Estimate: the peak over forward, backward and optimizer step."""

from __future__ import annotations

import math
import sys
import types

from pydantic import BaseModel

from vramplan.estimate.activations import (
    autocast_weight_copies,
    final_norm_saved_bytes,
    hidden_state_bytes,
    layer_saved_bytes,
    masked_layer_ids,
    mlp_backward,
    mlp_forward_transient_bytes,
    post_mlp_norm_backward_bytes,
    model_mask_bytes,
    recompute_transient_bytes,
)
from vramplan.estimate.dtypes import FP32_BYTES, INT64_BYTES, tensor_bytes
from vramplan.estimate.logits import logits_memory
from vramplan.estimate.optimizer import optimizer_memory
from vramplan.estimate.parallel import (
    FORWARD_LAYER,
    FORWARD_LOGITS,
    LAYER_BACKWARD,
    LOSS_BACKWARD,
    OPTIMIZER_STEP,
    RankStates,
    rank_states,
)
from vramplan.estimate.runtime import CUDA_CONTEXT_BYTES, device_bytes, reserved_bytes
from vramplan.estimate.weights import (
    layer_gradient_bytes,
    trainable_bytes_per_param,
    trainable_tensor_shapes,
    weight_memory,
)
from vramplan.models.catalog import ResolvedModel
from vramplan.models.spec import ModelSpec
from vramplan.errors import NotModelledError
from vramplan.training import Method, Strategy, TrainingSetup

PHASES = ("forward", "backward", "optimizer")


class PhasePeak(BaseModel):
    """Live bytes at one phase's peak, split into components."""

    phase: str
    components: dict[str, int]

    @property
    def total_bytes(self) -> int:
        return sum(self.components.values())


class StepPeak(BaseModel):
    """What both an estimate and a trace report for one training step: the peak, its phase, and its parts."""

    model: ResolvedModel
    setup: TrainingSetup
    total_params: int
    trainable_params: int
    peak_phase: str
    components: dict[str, int]
    phases: list[PhasePeak]
    peak_allocated_bytes: int


class Estimate(StepPeak):
    """One GPU's memory for one training step; every figure in bytes."""

    peak_reserved_bytes: int
    device_bytes: int
    cuda_context_bytes: int
    paged_optimizer_bytes: int
    nccl_bytes: int = 0  # NCCL's device buffers, outside torch's allocator (in device_bytes)
    host_bytes: int = 0  # host RAM per GPU for offloaded states (multiply by GPUs per node for a machine)
    strategy_notes: list[str] = []
    assumptions: list[str]


def activation_bytes(spec: ModelSpec, setup: TrainingSetup) -> tuple[int, int]:
    """(bytes kept through the forward by all layers, bytes of one recomputed layer under checkpointing)."""
    tokens = setup.tokens_per_step
    masked = masked_layer_ids(spec, setup)
    if setup.gradient_checkpointing:
        # transformers GradientCheckpointingLayer: each layer keeps only its input; backward recomputes one layer.
        recompute = layer_saved_bytes(spec, setup, tokens, masked=spec.num_layers - 1 in masked, input_kept=True)
        return spec.num_layers * hidden_state_bytes(spec, setup, tokens), recompute
    first_needs_grad = setup.method is Method.FULL
    by_kind = {
        (first, kind): layer_saved_bytes(spec, setup, tokens, input_needs_grad=first_needs_grad or not first,
                                         masked=kind)
        for first in (True, False)
        for kind in (True, False)
    }
    return sum(by_kind[(i == 0, i in masked)] for i in range(spec.num_layers)), 0


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


def _layer_backward_points(
    spec: ModelSpec, setup: TrainingSetup, persistent: dict[str, int], inputs: int, copies: int, states: RankStates
) -> list[PhasePeak]:
    """Candidate peaks of the layer backward.

    Backward walks the layers from the top; at layer i the inputs (checkpointing) or saved tensors of layers
    0..i are alive and the gradients of layers i+1..L-1 exist. Among layers of one kind (sliding-window or full
    attention) that is linear in i, so each kind's topmost and bottommost layer are the candidates. In each
    candidate layer three moments are taken: where its backward starts (after recomputation, with what that
    leaves in flight, and the gradients of the layer's output and input), the SwiGLU step of its MLP backward,
    and (Gemma) its fp32 post-feedforward norm's backward.
    """
    tokens = setup.tokens_per_step
    hidden = hidden_state_bytes(spec, setup, tokens)
    # The input embedding's gradient arrives after every layer; lm_head's and the final norm's are there before.
    per_layer_grads = states.layer_gradient_bytes
    before_layers = states.before_layer_gradient_bytes
    masked = set(masked_layer_ids(spec, setup))
    mlp = mlp_backward(spec, setup, tokens)
    post_norm = post_mlp_norm_backward_bytes(spec, setup, tokens)
    ckpt = setup.gradient_checkpointing
    # Recomputation passes through the MLP's forward transient before it stops at the layer's last saving op.
    transient = 0
    if ckpt:
        transient = max(
            recompute_transient_bytes(spec, setup, tokens), mlp_forward_transient_bytes(spec, setup, tokens)
        )
    full = setup.method is Method.FULL
    by_kind = {
        (first, kind): layer_saved_bytes(
            spec, setup, tokens, input_needs_grad=full or not first, masked=kind, input_kept=ckpt
        )
        for first in (True, False)
        for kind in (True, False)
    }
    saved = [by_kind[(i == 0, i in masked)] for i in range(spec.num_layers)]
    # Memory is linear in i among layers of one kind (sliding-window or not): the candidates are each kind's
    # topmost and bottommost layer.
    layers = range(spec.num_layers)
    kinds = ([i for i in layers if i in masked], [i for i in layers if i not in masked])
    candidates = sorted({i for kind in kinds if kind for i in (kind[0], kind[-1])})
    ends = []
    for i in candidates:
        others = (i + 1) * hidden if ckpt else sum(saved[:i])
        ends.append((others, saved[i], before_layers + (spec.num_layers - 1 - i) * per_layer_grads))
    points = []
    for others, layer, grads in ends:
        start = others + layer + transient + 2 * hidden
        mlp_step = others + layer - mlp.released_bytes + mlp.in_flight_bytes
        norm_step = others + layer + post_norm
        for acts in (start, mlp_step, norm_step):
            points.append(
                PhasePeak(
                    phase="backward",
                    components={
                        **persistent,
                        "activations": acts + inputs,
                        "autocast_weight_copies": copies,
                        "gradients": grads,
                        **_in_flight(states, LAYER_BACKWARD),
                    },
                )
            )
    return points


def _in_flight(states: RankStates, moment: str) -> dict[str, int]:
    """Gathered parameters and communication buffers at one moment (none on a single GPU)."""
    extra = states.in_flight.get(moment, 0) + states.comm_buffers
    held = {"sharding_in_flight": extra} if extra else {}
    if states.gradient_partition:
        held["gradient_partition"] = states.gradient_partition
    return held


def estimate_memory(model: ResolvedModel, setup: TrainingSetup) -> Estimate:
    spec = model.spec
    refuse_unmodelled(spec, setup)
    if setup.strategy is Strategy.DEVICE_MAP:
        from vramplan.estimate.device_map import estimate_device_map

        return estimate_device_map(model, setup)
    tokens = setup.tokens_per_step
    weights = weight_memory(spec, setup)
    opt = optimizer_memory(setup.optimizer, trainable_tensor_shapes(spec, setup), trainable_bytes_per_param(setup))
    states = rank_states(spec, setup)
    kept, _ = activation_bytes(spec, setup)
    logits = logits_memory(spec, setup)
    # token ids and labels (int64), shifted labels; a sliding-window model's bool mask
    inputs = 3 * tensor_bytes(tokens * INT64_BYTES) + model_mask_bytes(spec, setup)
    hidden = hidden_state_bytes(spec, setup, tokens)
    final_norm = tensor_bytes(tokens * spec.hidden_size * FP32_BYTES)
    copies = autocast_weight_copies(spec, setup)
    persistent = {
        "weights": states.weights,
        "lora_adapters": states.lora_adapters,
        "optimizer_states": states.optimizer_states,
    }
    forward = PhasePeak(
        phase="forward",
        components={
            **persistent,
            "activations": kept + hidden + final_norm + inputs,
            "autocast_weight_copies": copies.forward_bytes,
            "logits_loss": logits.forward_peak_bytes,
            **_in_flight(states, FORWARD_LOGITS),
        },
    )
    # Inside the last layer's forward, at its down_proj (the logits do not exist yet).
    last_layer_forward = PhasePeak(
        phase="forward",
        components={
            **persistent,
            "activations": kept + inputs + mlp_forward_transient_bytes(spec, setup, tokens),
            "autocast_weight_copies": copies.forward_bytes,
            **_in_flight(states, FORWARD_LAYER),
        },
    )
    forward = max(forward, last_layer_forward, key=lambda p: p.total_bytes)
    loss_backward = PhasePeak(
        phase="backward",
        components={
            **persistent,
            "activations": kept + inputs + final_norm_saved_bytes(spec, setup, tokens),
            "autocast_weight_copies": copies.loss_backward_bytes,
            "logits_loss": logits.backward_peak_bytes,
            **_in_flight(states, LOSS_BACKWARD),
        },
    )
    layer_points = _layer_backward_points(spec, setup, persistent, inputs, copies.layer_bytes, states)
    backward = max([loss_backward, *layer_points], key=lambda p: p.total_bytes)
    step = PhasePeak(
        phase="optimizer",
        components={
            **persistent,
            "gradients": states.gradients_at_step,
            "optimizer_temporaries": states.optimizer_temporaries,
            **_in_flight(states, OPTIMIZER_STEP),
        },
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
        device_bytes=device_bytes(reserved, opt.paged_state_bytes) + states.nccl_bytes,
        cuda_context_bytes=CUDA_CONTEXT_BYTES,
        paged_optimizer_bytes=opt.paged_state_bytes,
        nccl_bytes=states.nccl_bytes,
        host_bytes=states.host_bytes,
        strategy_notes=states.notes,
        assumptions=[],
    )


class _EstimatePackage(types.ModuleType):
    """Keeps `vramplan.estimate(...)` the API call once this package is imported.

    Importing `vramplan.estimate.<module>` binds the package to the `vramplan.estimate` attribute, shadowing
    the API function of the same name; a callable package forwards the call instead.
    """

    def __call__(self, model: str, method: str = "lora", **options) -> Estimate:
        from vramplan.api import estimate

        return estimate(model, method, **options)


sys.modules[__name__].__class__ = _EstimatePackage

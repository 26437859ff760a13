"""One rank's step on the Hugging Face stacks (transformers + peft + torch under Trainer; axolotl and LLaMA-Factory
presets compose the same way): the candidate peaks of the forward, the backward and the optimizer step, built from
the memory terms (components/) and the strategy's states (strategies/), and the Estimate of their peak."""

from __future__ import annotations

from vramplan.estimate.components.activations.attention import eager_forward_transient_bytes, scores_elements
from vramplan.estimate.components.activations.flow import dtype_flow, hidden_state_bytes
from vramplan.estimate.components.activations.layer import activation_bytes
from vramplan.estimate.components.activations.mlp import mlp_forward_transient_bytes
from vramplan.estimate.components.activations.norms import final_norm_forward_bytes, final_norm_saved_bytes
from vramplan.estimate.components.autocast import autocast_weight_copies, released_lm_head_copy_bytes
from vramplan.estimate.components.batch import hf_batch_bytes
from vramplan.estimate.components.logits import fused_loss_memory, logits_memory
from vramplan.estimate.components.optimizer import optimizer_memory
from vramplan.estimate.components.weights import weights_of
from vramplan.estimate.compose.layer_backward import layer_backward_points
from vramplan.estimate.compose.parts import StepParts, in_flight
from vramplan.estimate.compose.peak import estimate_from_phases, held_throughout
from vramplan.estimate.dtypes import FP32_BYTES, tensor_bytes, trainable_bytes_per_param
from vramplan.estimate.params import model_units, trainable_shapes
from vramplan.estimate.strategies import rank_states
from vramplan.estimate.strategies.states import (
    BACKWARD_END,
    FORWARD_LAYER,
    FORWARD_LOGITS,
    LOSS_BACKWARD,
    OPTIMIZER_STEP,
    RankStates,
)
from vramplan.models.catalog import ResolvedModel
from vramplan.models.spec import ModelSpec
from vramplan.result import Estimate, PhasePeak
from vramplan.training import Attention, Loss, TrainingSetup


def step_parts(spec: ModelSpec, setup: TrainingSetup, states: RankStates) -> StepParts:
    tokens = setup.tokens_per_step
    kept, _ = activation_bytes(spec, setup)
    # --loss fused: Liger's fused linear cross-entropy, whose chunked logits replace the full ones.
    logits = fused_loss_memory(spec, setup) if setup.loss is Loss.FUSED else logits_memory(spec, setup)
    return StepParts(
        persistent=held_throughout(states.weights, states.lora_adapters, states.optimizer_states),
        kept=kept,
        inputs=hf_batch_bytes(spec, setup),
        hidden=hidden_state_bytes(spec, setup, tokens),
        final_norm=final_norm_forward_bytes(spec, setup),
        copies=autocast_weight_copies(spec, setup),
        logits=logits,
        states=states,
    )


def forward_peak(spec: ModelSpec, setup: TrainingSetup, parts: StepParts) -> PhasePeak:
    """The largest of: the logits and loss, the last layer's down_proj, and (eager attention) its softmax."""
    states, persistent, copies = parts.states, parts.persistent, parts.copies.forward_bytes
    forward = PhasePeak(phase="forward", components={
        **persistent,
        "activations": parts.kept + parts.hidden + parts.final_norm + parts.inputs,
        "autocast_weight_copies": copies,
        "logits_loss": parts.logits.forward_peak_bytes,
        **in_flight(states, FORWARD_LOGITS),
    })
    # Inside the last layer's forward, at its down_proj (the logits do not exist yet).
    transient = mlp_forward_transient_bytes(spec, setup, setup.tokens_per_step)
    last_layer_forward = PhasePeak(phase="forward", components={
        **persistent,
        "activations": parts.kept + parts.inputs + transient,
        "autocast_weight_copies": copies,
        **in_flight(states, FORWARD_LAYER),
    })
    forward_points = [forward, last_layer_forward]
    if setup.attn is Attention.EAGER:
        forward_points.append(PhasePeak(phase="forward", components={
            **persistent,
            "activations": parts.kept + parts.inputs + parts.hidden + _eager_softmax_bytes(spec, setup),
            "autocast_weight_copies": copies,
            **in_flight(states, FORWARD_LAYER),
        }))
    return max(forward_points, key=lambda p: p.total_bytes)


def _eager_softmax_bytes(spec: ModelSpec, setup: TrainingSetup) -> int:
    """The last layer's softmax: without checkpointing its own probabilities (kept in `kept`) are not made yet."""
    compute = dtype_flow(setup).compute
    scores = scores_elements(spec, setup)
    if setup.gradient_checkpointing:  # nothing of the layer is kept: softmax's input, cast and output
        return tensor_bytes(scores * FP32_BYTES) + eager_forward_transient_bytes(spec, setup, compute)
    # the layer's own saved tensors are in `kept`; its probabilities are not made yet, the fp32 cast is
    return tensor_bytes(scores * FP32_BYTES) - tensor_bytes(scores * compute)


def backward_peak(spec: ModelSpec, setup: TrainingSetup, parts: StepParts) -> PhasePeak:
    """The largest of: the loss and lm_head's backward, the layers' (compose/layer_backward.py), and under sharded
    strategies the input embedding's, after every layer."""
    states, fused = parts.states, setup.loss is Loss.FUSED
    loss_backward = PhasePeak(phase="backward", components={
        **parts.persistent,
        # A fused loss's point is the final norm's backward, whose saved tensors are in its logits_loss term.
        "activations": parts.kept + parts.inputs
        + (0 if fused else final_norm_saved_bytes(spec, setup, setup.tokens_per_step)),
        "autocast_weight_copies": parts.copies.loss_backward_bytes
        - (released_lm_head_copy_bytes(spec, setup) if fused else 0),
        "logits_loss": parts.logits.backward_peak_bytes,
        **in_flight(states, LOSS_BACKWARD),
    })
    layer_points = layer_backward_points(spec, setup, parts)
    end_points = []
    if BACKWARD_END in states.in_flight:
        # Sharded strategies: the input embedding's unit runs its backward after every layer.
        end_points.append(PhasePeak(phase="backward", components={
            **parts.persistent,
            "activations": parts.inputs + parts.hidden,
            "gradients": states.before_layer_gradient_bytes + sum(states.layer_gradients),
            **in_flight(states, BACKWARD_END),
        }))
    return max([loss_backward, *layer_points, *end_points], key=lambda p: p.total_bytes)


def estimate_hf(model: ResolvedModel, setup: TrainingSetup) -> Estimate:
    """One rank's peak on the Hugging Face stacks (estimate_memory has refused what is not modelled)."""
    spec = model.spec
    states = rank_states(spec, setup)
    parts = step_parts(spec, setup, states)
    return estimate_with_step(model, setup, setup, parts, forward_peak(spec, setup, parts),
                              backward_peak(spec, setup, parts))


def estimate_with_step(model: ResolvedModel, setup: TrainingSetup, terms: TrainingSetup, parts: StepParts,
                       forward: PhasePeak, backward: PhasePeak, before: list[PhasePeak] = ()) -> Estimate:
    """The Estimate of `setup` from its forward and backward peaks, the optimizer step's peak added; `terms` is the
    setup the step's terms were computed at (DPO's doubled rows; `setup` itself otherwise); `before`, phases that
    run ahead of the step (GRPO's generation)."""
    units = model_units(model.spec, terms)
    weights = weights_of(units)
    opt = optimizer_memory(terms.optimizer, trainable_shapes(units), trainable_bytes_per_param(terms))
    states = parts.states
    step = PhasePeak(phase="optimizer", components={
        **parts.persistent,
        "gradients": states.gradients_at_step,
        "optimizer_temporaries": states.optimizer_temporaries,
        **in_flight(states, OPTIMIZER_STEP),
    })
    return estimate_from_phases(
        model, setup, [*before, forward, backward, step], total_params=weights.total_params,
        trainable_params=weights.trainable_params, paged_bytes=opt.paged_state_bytes, nccl_bytes=states.nccl_bytes,
        host_bytes=states.host_bytes, notes=states.notes,
    )

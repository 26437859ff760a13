"""Compose the memory components into a per-GPU Estimate: the peak over forward, backward and optimizer step."""

from __future__ import annotations

import sys
import types

from vramplan.estimate.eager import eager_backward_transient_bytes, eager_forward_transient_bytes, scores_elements
from vramplan.estimate.activations import (
    dtype_flow,
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
from vramplan.estimate.fused_loss import fused_loss_memory, refuse_unmodelled_fused, released_lm_head_copy_bytes
from vramplan.estimate.liger import final_norm_forward_bytes as liger_final_norm_bytes
from vramplan.estimate.liger import refuse_unmodelled_liger
from vramplan.estimate.logits import logits_memory
from vramplan.estimate.moe import refuse_unmodelled_moe
from vramplan.estimate.optimizer import optimizer_memory
from vramplan.estimate.parallel import (
    BACKWARD_END,
    FORWARD_LAYER,
    FORWARD_LOGITS,
    LAYER_BACKWARD,
    LOSS_BACKWARD,
    OPTIMIZER_STEP,
    RankStates,
    rank_states,
)
from vramplan.estimate.peak import estimate_from_phases
from vramplan.estimate.weights import (
    trainable_bytes_per_param,
    trainable_tensor_shapes,
    weight_memory,
)
from vramplan.models.catalog import ResolvedModel
from vramplan.models.spec import ModelSpec
from vramplan.result import PHASES, Estimate, PhasePeak, StepPeak  # noqa: F401 - the results live in vramplan.result
from vramplan.errors import NotModelledError
from vramplan.training import Attention, Loss, Method, Stack, Strategy, TrainingSetup

__all__ = ["Estimate", "PhasePeak", "StepPeak", "PHASES", "estimate_memory", "estimate_from_phases",
           "refuse_unmodelled"]


def activation_bytes(spec: ModelSpec, setup: TrainingSetup) -> tuple[int, int]:
    """(bytes kept through the forward by all layers, bytes of one recomputed layer under checkpointing)."""
    tokens = setup.tokens_per_step
    masked = masked_layer_ids(spec, setup)
    if setup.gradient_checkpointing:
        # transformers GradientCheckpointingLayer: each layer keeps only its input; backward recomputes one layer.
        recompute = layer_saved_bytes(spec, setup, tokens, masked=spec.num_layers - 1 in masked, input_kept=True)
        return spec.num_layers * hidden_state_bytes(spec, setup, tokens), recompute
    first_needs_grad = setup.method is Method.FULL
    saved = _saved_by_layer(spec, setup, input_needs_grad_first=first_needs_grad, input_kept=False)
    return sum(saved), 0


def _saved_by_layer(spec: ModelSpec, setup: TrainingSetup, input_needs_grad_first: bool, input_kept: bool) -> list[int]:
    """Each layer's saved bytes; layers of one kind (first or not, masked or not, dense or MoE) are computed once."""
    tokens = setup.tokens_per_step
    masked = set(masked_layer_ids(spec, setup))
    by_kind: dict[tuple[bool, bool, bool], int] = {}
    saved = []
    for i in range(spec.num_layers):
        kind = (i == 0, i in masked, spec.is_moe_layer(i))
        if kind not in by_kind:
            by_kind[kind] = layer_saved_bytes(
                spec, setup, tokens, input_needs_grad=input_needs_grad_first or i > 0, masked=i in masked,
                input_kept=input_kept, layer=i,
            )
        saved.append(by_kind[kind])
    return saved


# Switches whose memory rules are not written yet: refused with the reason rather than estimated as if absent.
_UNMODELLED_SWITCHES = {
    "activation_offload": (lambda s: s.activation_offload and s.stack is not Stack.TORCHTUNE, "--activation-offload"),
    "optimizer_in_backward": (
        lambda s: s.optimizer_in_backward and s.stack is not Stack.TORCHTUNE, "--optimizer-in-backward"
    ),
}


def refuse_unmodelled(spec: ModelSpec, setup: TrainingSetup) -> None:
    """Combinations without a traced rule are refused rather than guessed."""
    refuse_unmodelled_moe(spec, setup)
    if setup.loss is Loss.FUSED:
        refuse_unmodelled_fused(setup)
    if setup.liger:
        refuse_unmodelled_liger(spec.family, setup)
    for applies, what in _UNMODELLED_SWITCHES.values():
        if applies(setup):
            raise NotModelledError(f"{what} is not modelled yet")
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
    before_layers = states.before_layer_gradient_bytes
    masked = set(masked_layer_ids(spec, setup))
    post_norm = post_mlp_norm_backward_bytes(spec, setup, tokens)
    ckpt = setup.gradient_checkpointing
    full = setup.method is Method.FULL
    saved = _saved_by_layer(spec, setup, input_needs_grad_first=full, input_kept=ckpt)
    layer_grads = states.layer_gradients
    flight = states.layer_backward_in_flight or [states.in_flight.get(LAYER_BACKWARD, 0)] * spec.num_layers
    # Memory is linear in i among layers of one kind (sliding-window or not, dense or MoE): the candidates are
    # each kind's topmost and bottommost layer.
    layers = range(spec.num_layers)
    kinds: dict[tuple[bool, bool], list[int]] = {}
    for i in layers:
        kinds.setdefault((i in masked, spec.is_moe_layer(i)), []).append(i)
    # Under FSDP the bottom layer prefetches the embedding and the top one holds the tail's reduce input instead of
    # a neighbour layer's: the second layer from each end is a candidate too.
    ends_of = (0, -1, 1, -2) if states.layer_backward_in_flight else (0, -1)
    candidates = sorted({kind[j] for kind in kinds.values() for j in ends_of if -len(kind) <= j < len(kind)})
    ends = []
    for i in candidates:
        others = (i + 1) * hidden if ckpt else sum(saved[:i])
        ends.append((i, others, saved[i], before_layers + sum(layer_grads[i + 1:])))
    points = []
    for i, others, layer, grads in ends:
        mlp = mlp_backward(spec, setup, tokens, layer=i)
        # Recomputation passes through the MLP's forward transient before it stops at the layer's last saving op.
        transient = 0
        if ckpt:
            transient = max(
                recompute_transient_bytes(spec, setup, tokens, layer=i),
                mlp_forward_transient_bytes(spec, setup, tokens, layer=i),
            )
        start = others + layer + transient + 2 * hidden
        mlp_step = others + layer - mlp.released_bytes + mlp.in_flight_bytes
        norm_step = others + layer + post_norm
        own = states.layer_own_gradients[i] if states.layer_own_gradients else 0
        mlp_own = states.layer_mlp_gradients[i] if states.layer_mlp_gradients else 0
        # Under FSDP the layer's unsharded gradients grow through its backward; when it ends they are all there,
        # the layer's saved tensors are gone and the gradient of its input is alive.
        moments = [(start, 0), (mlp_step, mlp_own), (norm_step, 0)]
        if setup.attn is Attention.EAGER:
            compute = dtype_flow(setup).compute
            probs = tensor_bytes(scores_elements(spec, setup) * compute)
            # softmax's backward, the probabilities already released by the matmul's backward
            moments.append((others + layer - probs + eager_backward_transient_bytes(spec, setup, compute), 0))
            if ckpt:  # recomputation passes through softmax with its input and fp32 cast
                moments.append((others + layer - probs + eager_forward_transient_bytes(spec, setup, compute), 0))
        if own:
            reduce = states.layer_reduce_in_flight[i] if states.layer_reduce_in_flight else 0
            moments.append((others + hidden, max(own, reduce - flight[i])))
        for acts, growing in moments:
            points.append(
                PhasePeak(
                    phase="backward",
                    components={
                        **persistent,
                        "activations": acts + inputs,
                        "autocast_weight_copies": copies,
                        "gradients": grads,
                        **_in_flight(states, LAYER_BACKWARD, flight[i] + growing),
                    },
                )
            )
    return points


def _in_flight(states: RankStates, moment: str, bytes_: int | None = None) -> dict[str, int]:
    """Gathered parameters and communication buffers at one moment (none on a single GPU)."""
    extra = (states.in_flight.get(moment, 0) if bytes_ is None else bytes_) + states.comm_buffers
    held = {"in_flight": extra} if extra else {}
    if states.gradient_partition:
        held["gradient_partition"] = states.gradient_partition
    return held


def estimate_memory(model: ResolvedModel, setup: TrainingSetup) -> Estimate:
    spec = model.spec
    if setup.stack is Stack.TORCHTUNE:
        from vramplan.estimate.torchtune import estimate_torchtune

        return estimate_torchtune(model, setup)
    refuse_unmodelled(spec, setup)
    if setup.strategy is Strategy.DEVICE_MAP:
        from vramplan.estimate.device_map import estimate_device_map

        return estimate_device_map(model, setup)
    tokens = setup.tokens_per_step
    weights = weight_memory(spec, setup)
    opt = optimizer_memory(setup.optimizer, trainable_tensor_shapes(spec, setup), trainable_bytes_per_param(setup))
    states = rank_states(spec, setup)
    kept, _ = activation_bytes(spec, setup)
    # --loss fused: Liger's fused linear cross-entropy, whose chunked logits replace the full ones.
    fused = setup.loss is Loss.FUSED
    logits = fused_loss_memory(spec, setup) if fused else logits_memory(spec, setup)
    # token ids and labels (int64), shifted labels; a sliding-window model's bool mask
    inputs = 3 * tensor_bytes(tokens * INT64_BYTES) + model_mask_bytes(spec, setup)
    hidden = hidden_state_bytes(spec, setup, tokens)
    # the final norm's fp32 copy of its input; Liger's saves the input itself and an fp32 RSTD (estimate/liger.py)
    final_norm = tensor_bytes(tokens * spec.hidden_size * FP32_BYTES)
    if setup.liger:
        final_norm = liger_final_norm_bytes(tokens)
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
    forward_points = [forward, last_layer_forward]
    if setup.attn is Attention.EAGER:
        compute = dtype_flow(setup).compute
        # The last layer's softmax: without checkpointing its own probabilities (kept in `kept`) are not made yet.
        scores = scores_elements(spec, setup)
        if setup.gradient_checkpointing:  # nothing of the layer is kept: softmax's input, cast and output
            attention = tensor_bytes(scores * FP32_BYTES) + eager_forward_transient_bytes(spec, setup, compute)
        else:  # the layer's own saved tensors are in `kept`; its probabilities are not made yet, the fp32 cast is
            attention = tensor_bytes(scores * FP32_BYTES) - tensor_bytes(scores * compute)
        forward_points.append(PhasePeak(phase="forward", components={
            **persistent,
            "activations": kept + inputs + hidden + attention,
            "autocast_weight_copies": copies.forward_bytes,
            **_in_flight(states, FORWARD_LAYER),
        }))
    forward = max(forward_points, key=lambda p: p.total_bytes)
    loss_backward = PhasePeak(
        phase="backward",
        components={
            **persistent,
            # A fused loss's point is the final norm's backward, whose saved tensors are in its logits_loss term.
            "activations": kept + inputs + (0 if fused else final_norm_saved_bytes(spec, setup, tokens)),
            "autocast_weight_copies": copies.loss_backward_bytes
            - (released_lm_head_copy_bytes(spec, setup) if fused else 0),
            "logits_loss": logits.backward_peak_bytes,
            **_in_flight(states, LOSS_BACKWARD),
        },
    )
    layer_points = _layer_backward_points(spec, setup, persistent, inputs, copies.layer_bytes, states)
    end_points = []
    if BACKWARD_END in states.in_flight:
        # Sharded strategies: the input embedding's unit runs its backward after every layer.
        end_points.append(PhasePeak(
            phase="backward",
            components={
                **persistent,
                "activations": inputs + hidden,
                "gradients": states.before_layer_gradient_bytes + sum(states.layer_gradients),
                **_in_flight(states, BACKWARD_END),
            },
        ))
    backward = max([loss_backward, *layer_points, *end_points], key=lambda p: p.total_bytes)
    step = PhasePeak(
        phase="optimizer",
        components={
            **persistent,
            "gradients": states.gradients_at_step,
            "optimizer_temporaries": states.optimizer_temporaries,
            **_in_flight(states, OPTIMIZER_STEP),
        },
    )
    return estimate_from_phases(
        model, setup, [forward, backward, step], total_params=weights.total_params,
        trainable_params=weights.trainable_params, paged_bytes=opt.paged_state_bytes, nccl_bytes=states.nccl_bytes,
        host_bytes=states.host_bytes, notes=states.notes,
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

"""The candidate peaks of the layer backward on the Hugging Face stacks.

Backward walks the layers from the top; at layer i the inputs (checkpointing) or saved tensors of layers 0..i are
alive and the gradients of layers i+1..L-1 exist. Among layers of one kind (sliding-window or full attention, dense
or MoE) that is linear in i, so each kind's topmost and bottommost layer are the candidates. In each candidate layer
three moments are taken: where its backward starts (after recomputation, with what that leaves in flight, and the
gradients of the layer's output and input), the SwiGLU step of its MLP backward, and (Gemma) its fp32
post-feedforward norm's backward; eager attention adds softmax's backward, FSDP the end of the layer's backward.
"""

from __future__ import annotations

from vramplan.estimate.components.activations.attention import (
    eager_backward_transient_bytes,
    eager_forward_transient_bytes,
    masked_layer_ids,
    scores_elements,
)
from vramplan.estimate.components.activations.flow import dtype_flow
from vramplan.estimate.components.activations.layer import saved_by_layer
from vramplan.estimate.components.activations.mlp import (
    mlp_backward,
    mlp_forward_transient_bytes,
    recompute_transient_bytes,
)
from vramplan.estimate.components.activations.norms import post_mlp_norm_backward_bytes
from vramplan.estimate.compose.parts import StepParts, in_flight
from vramplan.estimate.dtypes import tensor_bytes
from vramplan.estimate.strategies.states import LAYER_BACKWARD, RankStates
from vramplan.models.spec import ModelSpec
from vramplan.result import PhasePeak
from vramplan.training import Attention, Method, TrainingSetup


def candidate_layers(spec: ModelSpec, setup: TrainingSetup, states: RankStates) -> list[int]:
    """Each kind's topmost and bottommost layer. Under FSDP the bottom layer prefetches the embedding and the top one
    holds the tail's reduce input instead of a neighbour layer's: the second layer from each end is a candidate too."""
    masked = set(masked_layer_ids(spec, setup))
    kinds: dict[tuple[bool, bool], list[int]] = {}
    for i in range(spec.num_layers):
        kinds.setdefault((i in masked, spec.is_moe_layer(i)), []).append(i)
    ends_of = (0, -1, 1, -2) if states.layer_backward_in_flight else (0, -1)
    return sorted({kind[j] for kind in kinds.values() for j in ends_of if -len(kind) <= j < len(kind)})


def _eager_moments(spec: ModelSpec, setup: TrainingSetup, held: int) -> list[tuple[int, int]]:
    """softmax's backward in a layer holding `held` activations."""
    compute = dtype_flow(setup).compute
    probs = tensor_bytes(scores_elements(spec, setup) * compute)
    # softmax's backward, the probabilities already released by the matmul's backward
    moments = [(held - probs + eager_backward_transient_bytes(spec, setup, compute), 0)]
    if setup.gradient_checkpointing:  # recomputation passes through softmax with its input and fp32 cast
        moments.append((held - probs + eager_forward_transient_bytes(spec, setup, compute), 0))
    return moments


def _layer_moments(
    spec: ModelSpec, setup: TrainingSetup, states: RankStates, i: int, others: int, layer: int, hidden: int,
    flight: int,
) -> list[tuple[int, int]]:
    """(activations, gradients growing in flight) at each moment of layer i's backward; `others`: what the layers
    below keep, `layer`: what layer i saved."""
    tokens = setup.tokens_per_step
    mlp = mlp_backward(spec, setup, tokens, layer=i)
    # Recomputation passes through the MLP's forward transient before it stops at the layer's last saving op.
    transient = 0
    if setup.gradient_checkpointing:
        transient = max(
            recompute_transient_bytes(spec, setup, tokens, layer=i),
            mlp_forward_transient_bytes(spec, setup, tokens, layer=i),
        )
    start = others + layer + transient + 2 * hidden
    mlp_step = others + layer - mlp.released_bytes + mlp.in_flight_bytes
    norm_step = others + layer + post_mlp_norm_backward_bytes(spec, setup, tokens)
    own = states.layer_own_gradients[i] if states.layer_own_gradients else 0
    mlp_own = states.layer_mlp_gradients[i] if states.layer_mlp_gradients else 0
    # Under FSDP the layer's unsharded gradients grow through its backward; when it ends they are all there,
    # the layer's saved tensors are gone and the gradient of its input is alive.
    moments = [(start, 0), (mlp_step, mlp_own), (norm_step, 0)]
    if setup.attn is Attention.EAGER:
        moments += _eager_moments(spec, setup, others + layer)
    if own:
        reduce = states.layer_reduce_in_flight[i] if states.layer_reduce_in_flight else 0
        moments.append((others + hidden, max(own, reduce - flight)))
    return moments


def layer_backward_points(spec: ModelSpec, setup: TrainingSetup, parts: StepParts) -> list[PhasePeak]:
    """Candidate peaks of the layer backward: each candidate layer's moments."""
    states, hidden = parts.states, parts.hidden
    ckpt = setup.gradient_checkpointing
    saved = saved_by_layer(spec, setup, input_needs_grad_first=setup.method is Method.FULL, input_kept=ckpt)
    flight = states.layer_backward_in_flight or [states.in_flight.get(LAYER_BACKWARD, 0)] * spec.num_layers
    points = []
    for i in candidate_layers(spec, setup, states):
        others = (i + 1) * hidden if ckpt else sum(saved[:i])
        # The input embedding's gradient arrives after every layer; lm_head's and the final norm's are there before.
        grads = states.before_layer_gradient_bytes + sum(states.layer_gradients[i + 1:])
        for acts, growing in _layer_moments(spec, setup, states, i, others, saved[i], hidden, flight[i]):
            points.append(PhasePeak(phase="backward", components={
                **parts.persistent,
                "activations": acts + parts.inputs,
                "autocast_weight_copies": parts.copies.layer_bytes,
                "gradients": grads,
                **in_flight(states, LAYER_BACKWARD, flight[i] + growing),
            }))
    return points

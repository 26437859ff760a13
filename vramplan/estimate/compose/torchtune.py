"""`--stack torchtune`: one GPU's peak for torchtune's single-device recipes (lora_finetune_single_device.py,
full_finetune_single_device.py, torchtune 0.6.1), composed from the rules of its modules.

Everything is bf16 (the recipes' `dtype: bf16`, adapters included). The model's tensors are
params.torchtune_units; the layer's activations components/activations/torchtune.py; the loss
(CEWithChunkedOutputLoss over `num_output_chunks` logits chunks, or CrossEntropyLoss on the fp32 logits)
components/logits.py. Checked against vramplan/measure/torchtune_step.py, which runs torchtune's own modules
(tests/estimate/test_torchtune.py).
"""

from __future__ import annotations

from typing import Any, Callable

from pydantic import BaseModel

from vramplan.estimate.components.activations.torchtune import (
    final_norm_bytes,
    hidden_bytes,
    kept_through_forward,
    layer_saved_bytes,
    offload_recompute_bytes,
    offloaded_bytes,
    swiglu_backward_bytes,
)
from vramplan.estimate.components.batch import torchtune_batch_bytes
from vramplan.estimate.components.gradients import down_proj_gradient_bytes, gradient_tensor_bytes
from vramplan.estimate.components.logits import (
    HEAD_GRADIENT_COPIES,
    TIED_END_GRADIENT_COPIES,
    chunked_head_backward_bytes,
    torchtune_logits_bytes,
)
from vramplan.estimate.components.optimizer import optimizer_memory
from vramplan.estimate.components.weights import rope_buffer_bytes, weights_of
from vramplan.estimate.compose.peak import estimate_from_phases, held_throughout
from vramplan.estimate.dtypes import HALF_BYTES, tensor_bytes
from vramplan.estimate.params import torchtune_units, trainable_shapes
from vramplan.estimate.quant import nf4_dequant_bytes
from vramplan.estimate.scope import refuse_unmodelled_torchtune
from vramplan.estimate.strategies.states import (
    BACKWARD_END,
    FORWARD_LAYER,
    FORWARD_LOGITS,
    FORWARD_START,
    LOSS_BACKWARD,
)
from vramplan.models.catalog import ResolvedModel
from vramplan.models.spec import ModelSpec
from vramplan.result import Estimate, PhasePeak
from vramplan.training import Loss, Method, TrainingSetup


class ModelState(BaseModel):
    """Bytes held for the whole step."""

    weights: int  # base weights (bf16 or NF4) and the RoPE buffers
    lora_adapters: int
    optimizer_states: int
    optimizer_temporaries: int
    gradients: int  # every trainable parameter's bf16 gradient (what exists at optimizer.step)
    largest_gradient: int  # one parameter's gradient: all that exists at once with optimizer_in_bwd
    embedding_gradient: int  # full fine-tuning, untied: the embedding's gradient, which arrives last
    output_gradient: int  # full fine-tuning: the output projection's (or tied matrix's) gradient, arriving first
    dequant: int  # QLoRA: the transient of dequantizing the largest NF4 weight (its backward needs the bf16 copy)
    total_params: int
    trainable_params: int


def model_state(spec: ModelSpec, config: dict[str, Any], setup: TrainingSetup) -> ModelState:
    units = torchtune_units(spec, setup)
    held = weights_of(units)
    opt = optimizer_memory(setup.optimizer, trainable_shapes(units), HALF_BYTES)
    grads = gradient_tensor_bytes(units, HALF_BYTES)
    full = setup.method is Method.FULL
    vocab_matrix = tensor_bytes(spec.vocab_size * spec.hidden_size * HALF_BYTES) if full else 0
    largest_nf4 = max((t.params for unit in units for t in unit.tensors if t.quantized), default=0)
    return ModelState(
        weights=held.base_bytes + rope_buffer_bytes(spec, config, setup),
        lora_adapters=held.adapter_bytes,
        optimizer_states=opt.state_bytes,
        optimizer_temporaries=opt.step_temporary_bytes,
        gradients=sum(grads),
        largest_gradient=max(grads, default=0),
        # A tied output (TiedLinear) accumulates into the embedding's gradient: one V x h gradient, arriving first.
        embedding_gradient=0 if spec.tie_word_embeddings else vocab_matrix,
        output_gradient=vocab_matrix,
        dequant=nf4_dequant_bytes(largest_nf4),
        total_params=held.total_params,
        trainable_params=held.trainable_params,
    )


class _Step(BaseModel):
    """What the peak candidates of one step share."""

    persistent: dict[str, int]
    hidden: int  # one b x s x h bf16 tensor
    saved: list[int]  # each layer's saved bytes
    kept_forward: int  # what the layers hold at the end of forward
    head: int  # final norm, the output head's kept input, the batch (shifted labels included)
    batch: int


def estimate_torchtune(model: ResolvedModel, setup: TrainingSetup) -> Estimate:
    spec = model.spec
    refuse_unmodelled_torchtune(spec, setup)
    state = model_state(spec, model.config, setup)
    if setup.world_size > 1:
        return _estimate_distributed(model, setup, state)
    step = _step(spec, setup, state)
    phases = [_forward_peak(spec, setup, step), _backward_peak(spec, setup, state, step)]
    if not setup.optimizer_in_backward:
        phases.append(PhasePeak(phase="optimizer", components={
            **step.persistent,
            "gradients": state.gradients,
            "optimizer_temporaries": state.optimizer_temporaries,
            "activations": step.batch,
        }))
    return estimate_from_phases(
        model, setup, phases, total_params=state.total_params, trainable_params=state.trainable_params,
        host_bytes=offloaded_bytes(spec, setup), notes=_notes(setup),
    )


def _step(spec: ModelSpec, setup: TrainingSetup, state: ModelState) -> _Step:
    hidden = hidden_bytes(spec, setup)
    saved = [layer_saved_bytes(spec, setup, first=i == 0) for i in range(spec.num_layers)]
    batch = torchtune_batch_bytes(setup)
    # Full fine-tuning: the output projection keeps its (chunked) bf16 input for its weight gradient.
    head_input = hidden if setup.method is Method.FULL else 0
    return _Step(
        persistent=held_throughout(state.weights, state.lora_adapters, state.optimizer_states),
        hidden=hidden,
        saved=saved,
        kept_forward=kept_through_forward(spec, setup, saved),
        head=final_norm_bytes(spec, setup) + head_input + batch,
        batch=batch,
    )


def _forward_peak(spec: ModelSpec, setup: TrainingSetup, step: _Step) -> PhasePeak:
    loss_forward, _ = torchtune_logits_bytes(spec, setup)
    forward = PhasePeak(phase="forward", components={
        **step.persistent, "activations": step.kept_forward + step.head, "logits_loss": loss_forward,
    })
    if setup.gradient_checkpointing:
        # A checkpointed layer's forward keeps nothing; its transient is below its recomputation in backward.
        return forward
    # At the end of the last layer's forward all layers' saved tensors exist.
    last_layer = PhasePeak(phase="forward", components={**step.persistent, "activations": sum(step.saved) + step.batch})
    return max(forward, last_layer, key=lambda p: p.total_bytes)


def _backward_peak(spec: ModelSpec, setup: TrainingSetup, state: ModelState, step: _Step) -> PhasePeak:
    """The largest of: the loss's backward (its first chunk), the output head's backward (full fine-tuning), and
    the top and bottom layer's backward (where it starts; its SwiGLU step)."""
    full = setup.method is Method.FULL
    _, loss_backward = torchtune_logits_bytes(spec, setup)
    loss = {**step.persistent, "activations": step.kept_forward + step.head, "logits_loss": loss_backward}
    points = [PhasePeak(phase="backward", components=loss)]
    if setup.loss is Loss.CHUNKED and full:
        # The output head's backward, two chunks in (components/logits.py chunked_head_backward_bytes).
        points.append(PhasePeak(phase="backward", components={
            **step.persistent,
            "activations": step.kept_forward + step.head,
            "logits_loss": chunked_head_backward_bytes(spec, setup),
            "gradients": HEAD_GRADIENT_COPIES * state.output_gradient,
        }))
    if full and spec.tie_word_embeddings:
        # The tied matrix's gradient from the head waits in autograd's input buffer through the whole backward;
        # the embedding's gradient (embedding_dense_backward) is added to it at the very end.
        layer_grads = 0 if setup.optimizer_in_backward else state.gradients - state.output_gradient
        points.append(PhasePeak(phase="backward", components={
            **step.persistent,
            "activations": step.batch,
            "gradients": layer_grads + TIED_END_GRADIENT_COPIES[setup.loss is Loss.CHUNKED] * state.output_gradient,
        }))
    points += _layer_points(spec, setup, state, step)
    if setup.activation_offload:
        activations, temporaries = offload_recompute_bytes(spec, setup, step.saved[-1])
        points.append(PhasePeak(phase="backward", components={
            **step.persistent, "activations": activations + step.batch, "temporaries": temporaries,
        }))
    return max(points, key=lambda p: p.total_bytes)


def _layer_points(spec: ModelSpec, setup: TrainingSetup, state: ModelState, step: _Step) -> list[PhasePeak]:
    """The top and bottom layer's backward: its SwiGLU step, and where it starts (all it saved, and the gradient
    of its output)."""
    grads_at = _gradients_before_layer(spec, setup, state)
    full = setup.method is Method.FULL
    down_grad = down_proj_gradient_bytes(spec) if full and not setup.optimizer_in_backward else 0
    released, swiglu = swiglu_backward_bytes(spec, setup)
    points = []
    for i in {spec.num_layers - 1, 0}:
        if not setup.gradient_checkpointing:
            below = sum(step.saved[:i])
        else:  # the inputs of layers 0..i (offloading: the one brought back, and the previous one still stashed)
            below = step.hidden * (2 if setup.activation_offload else i + 1)
        acts = below + step.saved[i] + step.batch
        points.append(PhasePeak(phase="backward", components={
            **step.persistent,
            "activations": acts - released,
            "temporaries": swiglu + state.dequant,
            "gradients": grads_at(i) + down_grad,
        }))
        points.append(PhasePeak(phase="backward", components={
            **step.persistent, "activations": acts, "temporaries": step.hidden, "gradients": grads_at(i),
        }))
    return points


def _gradients_before_layer(spec: ModelSpec, setup: TrainingSetup, state: ModelState) -> Callable[[int], int]:
    """Gradients alive while layer i runs its backward: with optimizer_in_bwd only the one being stepped; otherwise
    the output's and final norm's, the layers above i, and (LoRA) every adapter gradient as it arrives."""
    layers = spec.num_layers

    def at(i: int) -> int:
        if setup.optimizer_in_backward:
            return 0  # each gradient is stepped and freed by its own hook before the next op runs
        above = state.gradients - state.embedding_gradient - state.output_gradient
        return state.output_gradient + above * (layers - 1 - i) // layers

    return at


def _notes(setup: TrainingSetup) -> list[str]:
    notes = ["torchtune recipe: pure bf16 (adapters too), CEWithChunkedOutputLoss (8 chunks) "
             "unless --loss standard, activation checkpointing per TransformerSelfAttentionLayer"]
    if setup.method is Method.QLORA:
        notes.append("torchao NF4 (block 64, int8 scalers in blocks of 256: always double-quantized); "
                     "--double-quant/--kbit-prep do not apply (no fp32 upcast of the other weights)")
    if setup.optimizer_in_backward:
        notes.append("optimizer_in_bwd: one AdamW per parameter, stepped as its gradient arrives")
    if setup.activation_offload:
        notes.append("activation offloading: layer inputs in host memory (host_bytes), not in the GPU peak")
    return notes


def _estimate_distributed(model: ResolvedModel, setup: TrainingSetup, state: ModelState) -> Estimate:
    """torchtune's distributed recipes (full_finetune_distributed.py, lora_finetune_distributed.py): the
    single-device step's activations and loss, with FSDP2's sharded states and in-flight bytes
    (strategies/fsdp.py over strategies/fsdp_units.py torchtune_fsdp_groups: raw `fully_shard`, no upcast)."""
    from vramplan.estimate.strategies.fsdp import fsdp_states

    spec = model.spec
    states = fsdp_states(spec, setup)
    rope = rope_buffer_bytes(spec, model.config, setup)
    step = _step(spec, setup, state).model_copy(update={
        "persistent": held_throughout(states.weights + rope, states.lora_adapters, states.optimizer_states)})
    persistent = step.persistent
    full = setup.method is Method.FULL
    loss_forward, loss_backward = torchtune_logits_bytes(spec, setup)
    # The root (embedding, final norm, output) is resharded at the model's post-forward, before the recipe's loss;
    # it is gathered while the output projection makes the logits (with the top layer's all-gather output), and
    # again from its pre-backward hook, when the logits' gradients exist (with its own all-gather output, until
    # the top layer's all-gather replaces it).
    made = tensor_bytes(setup.tokens_per_step * spec.vocab_size * HALF_BYTES)
    logits_grads = made if setup.loss is Loss.CHUNKED else 2 * made
    head_gathered = states.in_flight[FORWARD_LOGITS]
    points = [
        PhasePeak(phase="forward", components={  # the root's all-gather, before the first layer runs
            **persistent, "activations": step.batch, "in_flight": states.in_flight[FORWARD_START]}),
        PhasePeak(phase="forward", components={
            **persistent, "activations": step.kept_forward + step.head, "logits_loss": loss_forward}),
        PhasePeak(phase="forward", components={
            **persistent, "activations": step.kept_forward + step.head, "logits_loss": made,
            "in_flight": head_gathered}),
    ]
    if not setup.gradient_checkpointing:
        points.append(PhasePeak(phase="forward", components={
            **persistent, "activations": sum(step.saved) + step.batch, "in_flight": states.in_flight[FORWARD_LAYER]}))
    forward = max(points, key=lambda p: p.total_bytes)
    held = states.before_layer_gradient_bytes
    backward = [
        PhasePeak(phase="backward", components={
            **persistent, "activations": step.kept_forward + step.head, "logits_loss": loss_backward}),
        PhasePeak(phase="backward", components={
            **persistent, "activations": step.kept_forward + step.head, "logits_loss": logits_grads,
            "in_flight": states.in_flight[LOSS_BACKWARD]}),
    ]
    if setup.loss is Loss.CHUNKED and full:
        backward.append(PhasePeak(phase="backward", components={
            **persistent, "activations": step.kept_forward + step.head,
            "logits_loss": chunked_head_backward_bytes(spec, setup),
            "in_flight": head_gathered + HEAD_GRADIENT_COPIES * state.output_gradient}))
    released, swiglu = swiglu_backward_bytes(spec, setup)
    flight = states.layer_backward_in_flight
    for i in {spec.num_layers - 1, spec.num_layers - 2, 1, 0} & set(range(spec.num_layers)):
        below = step.hidden * (i + 1) if setup.gradient_checkpointing else sum(step.saved[:i])
        acts = below + step.saved[i] + step.batch
        grads = held + sum(states.layer_gradients[i + 1:])
        mlp = states.layer_mlp_gradients[i] if states.layer_mlp_gradients else 0
        own = states.layer_own_gradients[i] if states.layer_own_gradients else 0
        reduce = states.layer_reduce_in_flight[i] if states.layer_reduce_in_flight else 0
        for activations, temporaries, growing in ((acts - released, swiglu, mlp), (acts, step.hidden, 0),
                                                   (below + step.hidden + step.batch, 0, max(own, reduce - flight[i]))):
            backward.append(PhasePeak(phase="backward", components={
                **persistent, "activations": activations, "temporaries": temporaries, "gradients": grads,
                "in_flight": flight[i] + growing}))
    if BACKWARD_END in states.in_flight:
        backward.append(PhasePeak(phase="backward", components={
            **persistent, "activations": step.batch + step.hidden,
            "gradients": held + sum(states.layer_gradients), "in_flight": states.in_flight[BACKWARD_END]}))
    optimizer = PhasePeak(phase="optimizer", components={
        **persistent, "gradients": states.gradients_at_step, "optimizer_temporaries": states.optimizer_temporaries,
        "activations": step.batch})
    return estimate_from_phases(
        model, setup, [forward, max(backward, key=lambda p: p.total_bytes), optimizer],
        total_params=state.total_params, trainable_params=state.trainable_params, nccl_bytes=states.nccl_bytes,
        notes=[*_notes(setup), *_distributed_notes(setup)],
    )


def _distributed_notes(setup: TrainingSetup) -> list[str]:
    return [f"torchtune distributed recipe over {setup.world_size} GPUs: training.shard_model (fully_shard on every "
            "layers.i, then the root: embedding, final norm, output), no MixedPrecisionPolicy: every shard, gradient "
            "and optimizer state bf16"]

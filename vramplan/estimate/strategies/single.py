"""One GPU (and each replica of DDP, each GPU of a device map): the whole model's states, from the inventory."""

from __future__ import annotations

from vramplan.estimate.components.gradients import (
    embedding_gradient_bytes,
    gradient_tensor_bytes,
    layer_gradient_bytes,
)
from vramplan.estimate.components.optimizer import optimizer_memory
from vramplan.estimate.components.weights import weights_of
from vramplan.estimate.dtypes import autocast_on, compute_bytes, trainable_bytes_per_param, weight_bytes_per_param
from vramplan.estimate.params import model_units, trainable_shapes
from vramplan.estimate.strategies.states import BACKWARD_END, RankStates
from vramplan.models.spec import ModelSpec
from vramplan.training import TrainingSetup


# Tied embedding gradients at the embedding's backward (torch/csrc/autograd/input_buffer.cpp accumulate): the
# buffered head gradient, the embedding's, and their sum; or the two, when the sum is made in place. Traced:
# tests/measure/test_gradient_accumulation.py (which sums torch makes in place), tests/estimate (tied full cases).
TIED_SUM_OUT_OF_PLACE = 3
TIED_SUM_IN_PLACE = 2


def tied_sum_in_place(setup: TrainingSetup) -> bool:
    """Whether the embedding's gradient is added into the tied head's in place: only when the head's arrives as a
    tensor the input buffer alone holds. lm_head's own matmul hands it over as a transposed view of mm's result,
    which `can_accumulate_inplace` refuses (bf16, bf16-pure, fp32); autocast over fp32 weights passes it through
    the cast's backward, a fresh tensor (bf16-mixed, fp16-mixed). TRL's fused head: `with_fused_head_gradient`.
    Liger's fused loss is counted out of place (not traced for tied models: the upper end)."""
    return autocast_on(setup) and weight_bytes_per_param(setup.precision) != compute_bytes(setup.precision)


def with_fused_head_gradient(states: RankStates) -> RankStates:
    """One GPU's states when TRL's fused head computes the lm_head's gradient (DPO, KTO, GRPO: chunked_logprob.py
    backward returns its own fp32 accumulator, or a cast of it): a tensor the input buffer alone holds, so a tied
    embedding's gradient is added into it in place."""
    if BACKWARD_END not in states.in_flight or not states.layer_backward_in_flight:
        return states
    waiting = states.layer_backward_in_flight[0]
    return states.model_copy(update={"in_flight": {**states.in_flight, BACKWARD_END: TIED_SUM_IN_PLACE * waiting}})


def single_gpu_states(spec: ModelSpec, setup: TrainingSetup) -> RankStates:
    """The whole model on one GPU: what estimate_memory always modelled."""
    units = model_units(spec, setup)
    weights = weights_of(units)
    width = trainable_bytes_per_param(setup)
    gradients = sum(gradient_tensor_bytes(units, width))
    opt = optimizer_memory(setup.optimizer, trainable_shapes(units), width)
    per_layer = layer_gradient_bytes(units, width)
    embedding = embedding_gradient_bytes(units, width)
    waiting = embedding if spec.tie_word_embeddings else 0
    summed = (TIED_SUM_IN_PLACE if tied_sum_in_place(setup) else TIED_SUM_OUT_OF_PLACE) * waiting
    return RankStates(
        # A tied lm_head's gradient waits in autograd's input buffer for the embedding's (AccumulateGrad runs once,
        # after both uses), through every layer's backward; at the embedding the two are summed
        layer_backward_in_flight=[waiting] * spec.num_layers if waiting else [],
        in_flight={BACKWARD_END: summed} if waiting else {},
        weights=weights.base_bytes,
        lora_adapters=weights.adapter_bytes,
        optimizer_states=opt.state_bytes,
        optimizer_temporaries=opt.step_temporary_bytes,
        gradients_at_step=gradients,
        layer_gradients=per_layer,
        before_layer_gradient_bytes=gradients - embedding - sum(per_layer),
    )

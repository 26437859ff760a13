"""One GPU (and each replica of DDP, each GPU of a device map): the whole model's states, from the inventory."""

from __future__ import annotations

from vramplan.estimate.components.gradients import (
    embedding_gradient_bytes,
    gradient_tensor_bytes,
    layer_gradient_bytes,
)
from vramplan.estimate.components.optimizer import optimizer_memory
from vramplan.estimate.components.weights import weights_of
from vramplan.estimate.dtypes import trainable_bytes_per_param
from vramplan.estimate.params import model_units, trainable_shapes
from vramplan.estimate.strategies.states import BACKWARD_END, RankStates
from vramplan.models.spec import ModelSpec
from vramplan.training import TrainingSetup


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
    return RankStates(
        # A tied lm_head's gradient waits in autograd's input buffer for the embedding's (AccumulateGrad runs once,
        # after both uses), through every layer's backward; at the embedding the two are summed into a third tensor.
        layer_backward_in_flight=[waiting] * spec.num_layers if waiting else [],
        in_flight={BACKWARD_END: 3 * waiting} if waiting else {},
        weights=weights.base_bytes,
        lora_adapters=weights.adapter_bytes,
        optimizer_states=opt.state_bytes,
        optimizer_temporaries=opt.step_temporary_bytes,
        gradients_at_step=gradients,
        layer_gradients=per_layer,
        before_layer_gradient_bytes=gradients - embedding - sum(per_layer),
    )

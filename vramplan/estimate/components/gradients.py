"""Gradients: one per trainable tensor of the inventory (estimate/params.py), in the gradient dtype, for the whole
model, per decoder layer and per module. Strategies decide how many of them a rank holds at each moment."""

from __future__ import annotations

from vramplan.estimate.dtypes import HALF_BYTES, tensor_bytes
from vramplan.estimate.params import EMBEDDING, Unit, unit_named, unit_of_layer
from vramplan.models.spec import ModelSpec


def unit_gradient_bytes(unit: Unit | None, width: int) -> int:
    """The gradients of one module's trainable tensors, `width` bytes per value (0 for a missing module)."""
    if unit is None:
        return 0
    return sum(tensor_bytes(t.numel * width) for t in unit.tensors if t.trainable)


def gradient_tensor_bytes(units: list[Unit], width: int) -> list[int]:
    """Every trainable tensor's gradient, each module repeated as often as the model has it."""
    return [tensor_bytes(t.numel * width) for unit in units for _ in range(unit.count) for t in unit.tensors
            if t.trainable]


def layer_gradient_bytes(units: list[Unit], width: int) -> list[int]:
    """Each decoder layer's gradients (linears, norms, biases, router and experts; or its adapters)."""
    by_kind = {unit.name: unit_gradient_bytes(unit, width) for unit in units if unit.layers}
    return [by_kind[unit.name] for unit in unit_of_layer(units)]


def embedding_gradient_bytes(units: list[Unit], width: int) -> int:
    """The input embedding's gradient (full fine-tuning): the last to arrive in backward."""
    return unit_gradient_bytes(unit_named(units, EMBEDDING), width)


def down_proj_gradient_bytes(spec: ModelSpec) -> int:
    """torchtune full fine-tuning: w2's bf16 weight gradient, the first of a layer's backward."""
    down = spec.dense_mlp_linears[-1]
    return tensor_bytes(down.in_features * down.out_features * HALF_BYTES)

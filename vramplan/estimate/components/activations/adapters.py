"""peft LoRA in the forward: which linears of a layer are adapted, and the copies each adapter keeps for backward."""

from __future__ import annotations

from vramplan.estimate.components.activations.flow import Flow
from vramplan.estimate.dtypes import BOOL_BYTES, tensor_bytes
from vramplan.models.spec import LinearShape, ModelSpec
from vramplan.training import TrainingSetup


def adapted_names(spec: ModelSpec, setup: TrainingSetup, layer: int) -> set[str]:
    """Names of the linears of `layer` peft wraps in lora.Linear."""
    return {lin.name for lin in spec.lora_linears(setup.lora.targets, layer)} if setup.lora else set()


def lora_input_copies(lin: LinearShape, setup: TrainingSetup, flow: Flow, tokens: int) -> list[int]:
    """peft lora.Linear.forward: x.to(fp32) -> dropout -> lora_A -> lora_B.

    Saved: dropout's bool mask, lora_A's input (its autocast copy in the compute dtype, or the fp32 tensor when
    autocast is off) and lora_A's output (rank wide) for lora_B's weight gradient.
    """
    rank = setup.lora.rank
    a_input = flow.compute if flow.autocast else flow.adapter
    saved = [tensor_bytes(tokens * lin.in_features * a_input), tensor_bytes(tokens * rank * a_input)]
    if setup.lora.dropout > 0:
        saved.append(tensor_bytes(tokens * lin.in_features * BOOL_BYTES))
    return saved

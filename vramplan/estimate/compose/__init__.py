"""Composition: the phases of a training step and their peak, per stack.

estimate_memory picks the composer: hf.py (the Hugging Face stacks, with layer_backward.py for the layers' backward
and parts.py for what the candidate peaks share), torchtune.py, device_map.py (one estimate per GPU of the map);
peak.py turns phase peaks into the Estimate.
"""

from __future__ import annotations

from vramplan.estimate.compose.hf import estimate_hf
from vramplan.estimate.scope import refuse_unmodelled
from vramplan.models.catalog import ResolvedModel
from vramplan.result import Estimate
from vramplan.training import Stack, Strategy, TrainingSetup


def estimate_memory(model: ResolvedModel, setup: TrainingSetup) -> Estimate:
    """One GPU's memory for one training step of `model` under `setup`."""
    if setup.objective == "dpo":
        from vramplan.estimate.compose.dpo import estimate_dpo

        refuse_unmodelled(model.spec, setup)
        return estimate_dpo(model, setup)
    if setup.objective == "kto":
        from vramplan.estimate.compose.kto import estimate_kto

        refuse_unmodelled(model.spec, setup)
        return estimate_kto(model, setup)
    if setup.objective == "orpo":
        from vramplan.estimate.compose.orpo import estimate_orpo

        refuse_unmodelled(model.spec, setup)
        return estimate_orpo(model, setup)
    if setup.objective == "grpo":
        from vramplan.estimate.compose.grpo import estimate_grpo

        refuse_unmodelled(model.spec, setup)
        return estimate_grpo(model, setup)
    if setup.stack is Stack.TORCHTUNE:  # imported when used: the cold start of an HF estimate skips them
        from vramplan.estimate.compose.torchtune import estimate_torchtune

        return estimate_torchtune(model, setup)
    refuse_unmodelled(model.spec, setup)
    if setup.strategy is Strategy.DEVICE_MAP:
        from vramplan.estimate.compose.device_map import estimate_device_map

        return estimate_device_map(model, setup)
    return estimate_hf(model, setup)

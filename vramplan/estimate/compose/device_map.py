"""`device_map="auto"`: each GPU estimated as a model of its own layers (strategies/device_map.py has the split and
what each GPU lacks), the answer being the fullest GPU."""

from __future__ import annotations

from vramplan.estimate.components.weights import weight_memory
from vramplan.estimate.compose.hf import estimate_hf
from vramplan.estimate.compose.peak import estimate_from_phases
from vramplan.estimate.strategies.device_map import device_map_note, gpu_phases, gpu_shares
from vramplan.models.catalog import ResolvedModel
from vramplan.result import Estimate
from vramplan.training import Strategy, TrainingSetup


def estimate_device_map(model: ResolvedModel, setup: TrainingSetup) -> Estimate:
    spec = model.spec
    shares = gpu_shares(spec, setup)
    single = setup.model_copy(update={"gpus": 1, "strategy": Strategy.SINGLE})
    per_gpu, paged = [], []
    for share in shares:
        sub = estimate_hf(model.model_copy(update={"spec": share.spec}), single)
        per_gpu.append(gpu_phases(spec, setup, share, sub.phases))
        paged.append(sub.paged_optimizer_bytes)
    peaks = [max(p.total_bytes for p in phases) for phases in per_gpu]
    fullest = max(range(setup.gpus), key=lambda g: peaks[g])
    whole = weight_memory(spec, single)  # the parameter counts; no second estimate of the whole model
    return estimate_from_phases(
        model, setup, per_gpu[fullest], total_params=whole.total_params, trainable_params=whole.trainable_params,
        paged_bytes=paged[fullest], notes=[device_map_note(shares, peaks, fullest)],
    )

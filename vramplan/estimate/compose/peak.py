"""The Estimate of a step's phase peaks: the largest phase, the allocator's reserve over it, and the device's rest."""

from __future__ import annotations

from vramplan.estimate.runtime import CUDA_CONTEXT_BYTES, device_bytes, reserved_bytes
from vramplan.models.catalog import ResolvedModel
from vramplan.result import Estimate, PhasePeak
from vramplan.training import TrainingSetup


def held_throughout(weights: int, lora_adapters: int, optimizer_states: int) -> dict[str, int]:
    """The components every phase of a step holds: weights, adapters and optimizer states."""
    return {"weights": weights, "lora_adapters": lora_adapters, "optimizer_states": optimizer_states}


def estimate_from_phases(
    model: ResolvedModel,
    setup: TrainingSetup,
    phases: list[PhasePeak],
    *,
    total_params: int,
    trainable_params: int,
    paged_bytes: int = 0,
    nccl_bytes: int = 0,
    host_bytes: int = 0,
    notes: list[str] = (),
) -> Estimate:
    """The Estimate of a step's phase peaks: the largest one, the allocator's reserve over it, and what the device
    adds (CUDA context, managed paged state, NCCL)."""
    peak = max(phases, key=lambda p: p.total_bytes)
    allocated = peak.total_bytes
    reserved = reserved_bytes(model.spec, setup, phases, total_params)
    return Estimate(
        model=model,
        setup=setup,
        total_params=total_params,
        trainable_params=trainable_params,
        peak_phase=peak.phase,
        components=peak.components,
        phases=phases,
        peak_allocated_bytes=allocated,
        peak_reserved_bytes=reserved,
        device_bytes=device_bytes(reserved, paged_bytes) + nccl_bytes,
        cuda_context_bytes=CUDA_CONTEXT_BYTES,
        paged_optimizer_bytes=paged_bytes,
        nccl_bytes=nccl_bytes,
        host_bytes=host_bytes,
        strategy_notes=list(notes),
        assumptions=[],
    )

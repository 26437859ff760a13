"""The pre-flight verdict: does the job's per-GPU need fit in what is free on each GPU it would use?"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel

from vramplan.errors import EXIT_DOES_NOT_FIT, EXIT_OK, UsageError
from vramplan.estimate import Estimate
from vramplan.hardware.suggest import Suggestion, suggest_changes


class GpuVerdict(BaseModel):
    index: int | None  # None for a catalog GPU
    name: str
    total_bytes: int
    free_bytes: int
    other_processes_bytes: int
    needed_bytes: int
    usable_bytes: int  # free memory less the requested headroom
    margin_bytes: int  # usable - needed; negative when it does not fit
    fits: bool


class Verdict(BaseModel):
    """The typed answer of a pre-flight check; `exit_code` is what `vramplan check` exits with."""

    source: Literal["local", "catalog"]
    estimate: Estimate
    driver_version: str | None
    cuda_version: str | None
    headroom: float
    gpus: list[GpuVerdict]
    fits: bool
    suggestions: list[Suggestion]
    notes: list[str]

    @property
    def exit_code(self) -> int:
        return EXIT_OK if self.fits else EXIT_DOES_NOT_FIT


def _gpu_verdict(index, name, total, free, others, needed, headroom) -> GpuVerdict:
    usable = int(free - total * headroom)
    return GpuVerdict(index=index, name=name, total_bytes=total, free_bytes=free, other_processes_bytes=others,
                      needed_bytes=needed, usable_bytes=usable, margin_bytes=usable - needed, fits=needed <= usable)


def _local_rank_index(visible: list[int], environ) -> list[int] | None:
    rank = environ.get("LOCAL_RANK")
    if rank is None:
        return None
    if not rank.isdigit() or int(rank) >= len(visible):
        raise UsageError(f"LOCAL_RANK={rank} but only {len(visible)} GPUs are visible")
    return [visible[int(rank)]]


def check_local(estimate: Estimate, gpus: list[int] | None = None, headroom: float = 0.0, nvml=None,
                environ: dict[str, str] | None = None) -> Verdict:
    """Check against the local GPUs. Under torchrun (LOCAL_RANK set) a rank checks only its own device."""
    from vramplan.check.nvml import read_gpus, visible_indices

    environ = dict(os.environ) if environ is None else environ
    local = read_gpus(nvml)
    visible = visible_indices(local, environ)
    if gpus is None:
        chosen = _local_rank_index(visible, environ) or visible
    else:
        if not gpus:
            raise UsageError("--gpus: name at least one GPU index")
        unknown = [index for index in gpus if index < 0 or index >= len(visible)]
        if unknown:
            raise UsageError(f"--gpus {unknown[0]}: only {len(visible)} GPUs are visible")
        chosen = [visible[index] for index in gpus]
    notes = []
    if not chosen:
        from vramplan.errors import CannotCheckError

        raise CannotCheckError("no GPU is visible (CUDA_VISIBLE_DEVICES hides them all)")
    if len(chosen) > 1:
        notes.append("each GPU is checked for the one-GPU need (a data-parallel replica); sharded strategies are "
                     "not modelled yet")
    by_index = {gpu.index: gpu for gpu in local.gpus}
    own = os.getpid()
    verdicts = []
    for index in chosen:
        gpu = by_index[index]
        # Memory this process already holds (a Trainer that loaded the model) belongs to the job, not to others.
        mine = sum(p.used_bytes or 0 for p in gpu.processes if p.pid == own)
        others = sum(p.used_bytes or 0 for p in gpu.processes if p.pid != own)
        if mine:
            notes.append(f"GPU {index}: {mine / 2**30:.2f} GiB this process already holds count as free for the job")
        verdicts.append(_gpu_verdict(index, gpu.name, gpu.total_bytes, gpu.free_bytes + mine, others,
                                     estimate.device_bytes, headroom))
    return _verdict("local", estimate, verdicts, headroom, local.driver_version, local.cuda_version, notes)


def check_catalog(estimate: Estimate, gpu_id: str, headroom: float = 0.0, catalog_dir=None) -> Verdict:
    """Check against an idle catalog GPU (works everywhere)."""
    from vramplan.hardware.catalog import load_hardware

    hardware = load_hardware(catalog_dir)
    if gpu_id not in hardware.gpus:
        raise UsageError(f"--gpu {gpu_id!r} is not in the catalog (see vramplan catalog gpus)")
    card = hardware.gpus[gpu_id]
    verdict = _gpu_verdict(None, card.name, card.memory_bytes, card.memory_bytes, 0, estimate.device_bytes, headroom)
    return _verdict("catalog", estimate, [verdict], headroom, None, None,
                    [f"an idle {card.id}: {card.memory_basis} memory, nothing else running"])


def _verdict(source, estimate, verdicts, headroom, driver, cuda, notes) -> Verdict:
    fits = all(v.fits for v in verdicts)
    suggestions = [] if fits else suggest_changes(estimate, min(v.usable_bytes for v in verdicts))
    return Verdict(source=source, estimate=estimate, driver_version=driver, cuda_version=cuda, headroom=headroom,
                   gpus=verdicts, fits=fits, suggestions=suggestions, notes=notes)

"""The pre-flight verdict: does the job's per-GPU need fit in what is free on each GPU it would use?"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel

from vramplan.errors import EXIT_DOES_NOT_FIT, EXIT_OK, UsageError
from vramplan.result import Estimate
from vramplan.hardware.suggest import SHARD_GPU_COUNTS, RunRequest, Suggestion, suggest_changes
from vramplan.units import DEFAULT_HEADROOM


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
    fits_gpu_count: bool = True  # the job's GPUs per node are there
    # What decided it: the estimate's closed-form reserve (an upper end) or, with --exact, the allocator replay.
    basis: str = "estimate: closed-form allocator reserve (an upper end; check --exact replays the traced step)"

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


def _job_devices(visible: list[int], devices: list[int] | None, ranks: int, environ) -> list[int]:
    """The visible GPUs the job's ranks on this node would use: `devices` (indices among the visible GPUs), the
    rank's own under torchrun (LOCAL_RANK), or the first `ranks` visible GPUs, as a launcher numbers them."""
    if devices is not None:
        if not devices:
            raise UsageError("--devices: name at least one GPU index")
        unknown = [index for index in devices if index < 0 or index >= len(visible)]
        if unknown:
            raise UsageError(f"--devices {unknown[0]}: only {len(visible)} GPUs are visible")
        if len(set(devices)) != len(devices):
            raise UsageError("--devices: each GPU index once")
        return [visible[index] for index in devices]
    return _local_rank_index(visible, environ) or visible[:ranks]


def check_local(estimate: Estimate, devices: list[int] | None = None, headroom: float = DEFAULT_HEADROOM, nvml=None,
                environ: dict[str, str] | None = None, request: RunRequest | None = None) -> Verdict:
    """Check against the local GPUs: each GPU one of the job's ranks on this node (estimate.setup.gpus of them)
    uses must hold the per-GPU need. Under torchrun (LOCAL_RANK set) a rank checks only its own device."""
    from vramplan.check.nvml import read_gpus, visible_indices

    environ = dict(os.environ) if environ is None else environ
    local = read_gpus(nvml)
    visible = visible_indices(local, environ)
    if not visible:
        from vramplan.errors import CannotCheckError

        raise CannotCheckError("no GPU is visible (CUDA_VISIBLE_DEVICES hides them all)")
    ranks = estimate.setup.gpus
    chosen = _job_devices(visible, devices, ranks, environ)
    notes = []
    enough = True
    if devices is not None and len(chosen) != ranks and "LOCAL_RANK" not in environ:
        enough = len(chosen) >= ranks
        notes.append(f"--devices names {len(chosen)} GPUs for a job of {ranks} GPU(s) per node (--gpus {ranks})")
    elif devices is None and "LOCAL_RANK" not in environ:
        if len(visible) < ranks:
            enough = False
            notes.append(f"the job runs {ranks} GPUs per node (--gpus {ranks}) but only {len(visible)} are visible")
        elif len(visible) > ranks:
            notes.append(f"checked the job's {ranks} GPU(s) of {len(visible)} visible; a launcher that uses them all "
                         f"(accelerate launch, torchrun --nproc-per-node {len(visible)}) runs {len(visible)} ranks: "
                         f"check with --gpus {len(visible)}")
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
                                     estimate.needed_on(gpu.total_bytes), headroom))
    return _verdict("local", estimate, verdicts, headroom, local.driver_version, local.cuda_version, notes, request,
                    max_gpus=len(visible), enough_gpus=enough)


def check_catalog(estimate: Estimate, gpu_id: str, headroom: float = DEFAULT_HEADROOM, catalog_dir=None,
                  request: RunRequest | None = None) -> Verdict:
    """Check against an idle catalog GPU (works everywhere)."""
    from vramplan.hardware.catalog import load_hardware
    from vramplan.hardware.targets import resolve_gpu_target

    card = resolve_gpu_target(gpu_id, load_hardware(catalog_dir).gpus)
    verdict = _gpu_verdict(None, card.name, card.memory_bytes, card.memory_bytes, 0,
                           estimate.needed_on(card.memory_bytes), headroom)
    basis = "memory as the driver reports it" if card.source == "catalog" else "memory as given"
    ranks = estimate.setup.gpus
    where = f"{ranks} idle {card.id}, one per rank" if ranks > 1 else f"an idle {card.id}"
    return _verdict("catalog", estimate, [verdict], headroom, None, None,
                    [f"{where}: {basis}, nothing else running"], request)


def _verdict(source, estimate, verdicts, headroom, driver, cuda, notes, request, max_gpus: int = max(SHARD_GPU_COUNTS),
             enough_gpus: bool = True) -> Verdict:
    fits = enough_gpus and all(v.fits for v in verdicts)
    server = estimate.generation_server
    if server is not None:  # GRPO's vLLM server: another GPU, assumed like these (`trl vllm-serve` beside them)
        needed = server.floor_bytes / server.gpu_memory_utilization
        starts = all(v.total_bytes >= needed for v in verdicts)
        fits = fits and starts
        notes = [*notes, f"the vLLM server's own GPU (assumed like this one) needs at least {needed / 2**30:.1f} GiB "
                         f"at gpu_memory_utilization {server.gpu_memory_utilization:g}: "
                         + ("it starts" if starts else "IT CANNOT START (lower --vllm-max-model-len)")
                         + "; size it with vramplan serve-size"]
    suggestions = []
    if not fits and request is not None:
        tightest = min(verdicts, key=lambda v: v.usable_bytes)
        suggestions = suggest_changes(estimate, tightest.usable_bytes, request, max_gpus,
                                      total_bytes=tightest.total_bytes)
    return Verdict(source=source, estimate=estimate, driver_version=driver, cuda_version=cuda, headroom=headroom,
                   gpus=verdicts, fits=fits, suggestions=suggestions, notes=notes, fits_gpu_count=enough_gpus)

"""The local GPU as a target for `fit`: its free memory less the headroom, read through NVML."""

from __future__ import annotations

import os

from vramplan.errors import CannotCheckError
from vramplan.hardware.targets import GpuTarget


def local_gpu_target(headroom: float, nvml=None, environ: dict[str, str] | None = None) -> tuple[GpuTarget, int]:
    """(the GPU this process would use, usable bytes): the first visible GPU, or LOCAL_RANK's own under torchrun;
    usable is what is free now less `headroom` of its total. CannotCheckError without a driver or a visible GPU."""
    from vramplan.check.nvml import read_gpus, visible_indices

    environ = dict(os.environ) if environ is None else environ
    local = read_gpus(nvml)
    visible = visible_indices(local, environ)
    if not visible:
        raise CannotCheckError("no GPU is visible (CUDA_VISIBLE_DEVICES hides them all); name one with --gpu")
    rank = environ.get("LOCAL_RANK", "0")
    index = visible[int(rank)] if rank.isdigit() and int(rank) < len(visible) else visible[0]
    gpu = next(g for g in local.gpus if g.index == index)
    target = GpuTarget(id=f"local:{index}", name=f"GPU {index}: {gpu.name} ({gpu.free_bytes / 2**30:.2f} GiB free)",
                       memory_bytes=gpu.total_bytes, source="local")
    return target, int(gpu.free_bytes - gpu.total_bytes * headroom)

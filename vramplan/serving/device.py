"""The total memory vLLM sees on a GPU: torch.cuda.mem_get_info's total (cudaMemGetInfo), not nvidia-smi's.

vLLM multiplies gpu_memory_utilization by MemorySnapshot.total_memory (vllm/utils/mem_utils.py, mem_get_info). CUDA
reports less than nvidia-smi's total (0.35-0.45 GiB less on the cards below). The hardware catalog records
nvidia-smi totals; these are the CUDA totals where the catalog's sources give one.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

# CUDA totalGlobalMem per catalog GPU id, as quoted in each catalog file's comment (thamada/gls deviceQuery dumps,
# vramplan/hardware/catalog_data/gpus/<id>.toml line 6).
CUDA_TOTAL_BYTES = {
    "a10": 23595909120,
    "a100-sxm4-80gb": 85100068864,
    "h100-nvl-94gb": 99861594112,
    "h100-sxm5-80gb": 85045477376,
    "h200-sxm-141gb": 150021734400,
    "l4": 23570219008,
    "l40s": 47803596800,
    "rtx-3090": 25327697920,
    "rtx-4060-ti-16gb": 16857038848,
    "rtx-4090": 25386352640,
    "rtx-5090": 33680457728,
    "rtx-6000-ada": 51002867712,
    "v100-16gb": 16928342016,
}


class ServingDevice(BaseModel):
    """One GPU as vLLM measures it."""

    id: str
    name: str
    total_bytes: int
    basis: Literal["cuda-total", "nvidia-smi", "size"]  # where total_bytes comes from


def serving_device(gpu_id: str, name: str, catalog_bytes: int, source: str) -> ServingDevice:
    """The CUDA total for a catalog GPU when known, else its catalog figure (an nvidia-smi or marketed total: the KV
    estimate then runs high by about gpu_memory_utilization x 0.4 GiB); a size the user gave is taken as the total."""
    if source == "size":
        return ServingDevice(id=gpu_id, name=name, total_bytes=catalog_bytes, basis="size")
    if gpu_id in CUDA_TOTAL_BYTES:
        return ServingDevice(id=gpu_id, name=name, total_bytes=CUDA_TOTAL_BYTES[gpu_id], basis="cuda-total")
    return ServingDevice(id=gpu_id, name=name, total_bytes=catalog_bytes, basis="nvidia-smi")

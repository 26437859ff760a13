"""Fit the GPU-side terms the trace cannot see, per GPU family, from probe measurements.

Method (named in every result): for each GPU name, over its probes with status ok,
- CUDA context: the median of `cuda_context_bytes` (NVML used after the first kernel, minus memory reserved);
- allocator slack: the median of (max_memory_reserved - max_memory_allocated) / max_memory_allocated;
- other device memory: the median of nvml_peak_used - max_memory_reserved - cuda_context_bytes (libraries,
  NCCL, paged state).
Medians, not means: one odd probe (a fragmentation spike, another process) must not move the fit.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

from pydantic import BaseModel

METHOD = ("per GPU name, probes with status ok: median CUDA context; median (reserved - allocated) / allocated; "
          "median NVML peak - reserved - context")


class GpuCalibration(BaseModel):
    gpu: str
    probes: int
    cuda_context_bytes: int | None
    reserved_slack_fraction: float | None
    other_device_bytes: int | None
    method: str = METHOD


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def calibrate(records: list[dict]) -> list[GpuCalibration]:
    by_gpu: dict[str, list[dict]] = defaultdict(list)
    for record in records:
        if record.get("status") == "ok" and record.get("gpu", "cpu") != "cpu":
            by_gpu[record["gpu"]].append(record)
    results = []
    for gpu, probes in sorted(by_gpu.items()):
        contexts = [p["cuda_context_bytes"] for p in probes if p.get("cuda_context_bytes") is not None]
        slack = [(p["max_memory_reserved"] - p["max_memory_allocated"]) / p["max_memory_allocated"]
                 for p in probes if p.get("max_memory_reserved") and p.get("max_memory_allocated")]
        other = [p["nvml_peak_used"] - p["max_memory_reserved"] - p["cuda_context_bytes"] for p in probes
                 if None not in (p.get("nvml_peak_used"), p.get("max_memory_reserved"), p.get("cuda_context_bytes"))]
        context = _median(contexts)
        rest = _median(other)
        results.append(GpuCalibration(gpu=gpu, probes=len(probes),
                                      cuda_context_bytes=None if context is None else round(context),
                                      reserved_slack_fraction=_median(slack),
                                      other_device_bytes=None if rest is None else round(rest)))
    return results


def read_probe_records(folder: Path) -> list[dict]:
    records = []
    for path in sorted(folder.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a cut line; `vramplan validate` reports it
    return records

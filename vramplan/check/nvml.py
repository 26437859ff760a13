"""Read the local NVIDIA GPUs through NVML.

`read_gpus` speaks to any object with pynvml's function names: the real `pynvml` module (nvidia-ml-py), or
`RecordedNvml`, which replays answers recorded from real machines (tests/fixtures/nvml/*.json) so the same code
runs on machines without a GPU.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from pydantic import BaseModel

from vramplan.errors import CannotCheckError, UsageError


class GpuProcess(BaseModel):
    pid: int
    used_bytes: int | None  # None where the driver does not say (e.g. inside some containers)


class LocalGpu(BaseModel):
    index: int
    uuid: str
    name: str
    total_bytes: int
    used_bytes: int
    free_bytes: int
    processes: list[GpuProcess]


class LocalGpus(BaseModel):
    driver_version: str
    cuda_version: str  # "12.4" from NVML's 12040
    gpus: list[LocalGpu]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_gpus(nvml=None) -> LocalGpus:
    """Every GPU NVML sees, with memory and the processes using it. CannotCheckError without a driver."""
    if nvml is None:
        try:
            import pynvml as nvml
        except ImportError:
            raise CannotCheckError("nvidia-ml-py is not installed (pip install nvidia-ml-py)") from None
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as err:
        raise CannotCheckError(f"no NVIDIA driver or GPU here (NVML: {err})") from None
    try:
        cuda = nvml.nvmlSystemGetCudaDriverVersion()
        gpus = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            processes = [
                GpuProcess(pid=p.pid, used_bytes=p.usedGpuMemory)
                for p in nvml.nvmlDeviceGetComputeRunningProcesses(handle)
            ]
            gpus.append(LocalGpu(index=index, uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
                                 name=_text(nvml.nvmlDeviceGetName(handle)), total_bytes=memory.total,
                                 used_bytes=memory.used, free_bytes=memory.free, processes=processes))
        return LocalGpus(driver_version=_text(nvml.nvmlSystemGetDriverVersion()),
                         cuda_version=f"{cuda // 1000}.{cuda % 1000 // 10}", gpus=gpus)
    except nvml.NVMLError as err:
        raise CannotCheckError(f"NVML failed while reading the GPUs ({err})") from None
    finally:
        try:
            nvml.nvmlShutdown()
        except nvml.NVMLError:
            pass


def visible_indices(gpus: LocalGpus, environ: dict[str, str] | None = None) -> list[int]:
    """The NVML indices CUDA_VISIBLE_DEVICES exposes (indices or GPU-UUIDs), in CUDA order."""
    value = (os.environ if environ is None else environ).get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return [gpu.index for gpu in gpus.gpus]
    chosen = []
    for item in (part.strip() for part in value.split(",")):
        if not item:
            continue
        if item.isdigit():
            index = int(item)
            if index >= len(gpus.gpus):
                break  # CUDA stops at the first invalid entry
            chosen.append(index)
        else:
            match = [gpu.index for gpu in gpus.gpus if gpu.uuid.startswith(item)]
            if not match:
                break
            chosen.append(match[0])
    return chosen


class RecordedNvml:
    """pynvml's functions, answering from a recording of a real machine (see tests/fixtures/nvml/)."""

    class NVMLError(Exception):
        pass

    def __init__(self, recording: dict[str, Any]):
        self.recording = recording

    @classmethod
    def from_file(cls, path: Path) -> RecordedNvml:
        try:
            return cls(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError) as err:
            raise UsageError(f"{path}: not a readable NVML recording ({err})") from None

    def nvmlInit(self) -> None:
        if "error" in self.recording:
            raise self.NVMLError(self.recording["error"])

    def nvmlShutdown(self) -> None:
        return None

    def nvmlSystemGetDriverVersion(self) -> str:
        return self.recording["driver_version"]

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        return self.recording["cuda_driver_version"]

    def nvmlDeviceGetCount(self) -> int:
        return len(self.recording["devices"])

    def nvmlDeviceGetHandleByIndex(self, index: int) -> dict[str, Any]:
        return self.recording["devices"][index]

    def nvmlDeviceGetName(self, handle) -> str:
        return handle["name"]

    def nvmlDeviceGetUUID(self, handle) -> str:
        return handle["uuid"]

    def nvmlDeviceGetMemoryInfo(self, handle):
        return SimpleNamespace(**handle["memory"])

    def nvmlDeviceGetComputeRunningProcesses(self, handle):
        return [SimpleNamespace(**process) for process in handle.get("processes", [])]

"""The hardware catalog: one TOML file per GPU (`hardware_catalog/gpus/`) and per system (`.../systems/`).

Users layer their own files over ours with `--catalog DIR` or VRAMPLAN_CATALOG (a folder holding `gpus/` and/or
`systems/`); a user file with an existing id replaces ours, and every file is validated the same way.
"""

from __future__ import annotations

import os
from datetime import date
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from vramplan.errors import UsageError
from vramplan.tomlfile import parse_record, read_toml


CATALOG_DIR = Path(__file__).resolve().parents[2] / "hardware_catalog"
CATALOG_ENV = "VRAMPLAN_CATALOG"

PriceKind = Literal["list", "street", "msrp", "cloud-hourly"]


class Price(BaseModel):
    """One price with what kind it is, when and where it was seen. Cloud prices are per instance-hour."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    amount: float = Field(gt=0)
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    kind: PriceKind
    date: str  # "2026-01-21", "2025-03" or "2022": as precise as the source is
    source: str
    note: str = ""


class Gpu(BaseModel):
    """One GPU model. `memory_bytes` is what the driver reports as total when a reading is known
    (`memory_basis` says which reading), else the marketed size."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    name: str
    vendor: Literal["NVIDIA", "AMD"]
    software: Literal["cuda", "rocm"]
    segment: Literal["datacenter", "workstation", "consumer"]
    memory_bytes: int = Field(gt=0)
    memory_basis: Literal["nvidia-smi", "cuda-total", "rocm-smi", "marketed-gib", "marketed-gb"]
    memory_marketed_gb: float = Field(gt=0)
    memory_type: str
    bandwidth_gb_s: float | None = Field(default=None, gt=0)
    bf16_dense_tflops: float | None = Field(default=None, gt=0)
    fp8_dense_tflops: float | None = Field(default=None, gt=0)
    tdp_w: float | None = Field(default=None, gt=0)
    interconnect: str
    nvlink_gb_s: float | None = Field(default=None, gt=0)
    pcie_gen: int | None = Field(default=None, ge=3, le=6)
    form_factor: str
    prices: list[Price] = []
    unverified: list[str] = []
    source: str
    retrieved: date
    notes: str = ""

    @model_validator(mode="after")
    def _unverified_fields_exist(self) -> Gpu:
        unknown = [name for name in self.unverified if name not in type(self).model_fields]
        if unknown:
            raise ValueError(f"unverified names unknown fields: {unknown}")
        return self


class System(BaseModel):
    """A machine or cloud instance: its GPU by catalog id, how many, host RAM and interconnect."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    name: str
    kind: Literal["cloud", "workstation", "server"]
    provider: str
    gpu: str
    gpu_count: int = Field(gt=0)
    host_ram_bytes: int | None = Field(default=None, gt=0)
    interconnect: str
    network: str = ""
    # Gbit/s per node between nodes, read from `network` where it states a figure; None: unknown, and the
    # planner then offers no multi-node runs of this system.
    network_gbps: float | None = Field(default=None, gt=0)
    region: str = ""
    prices: list[Price] = []
    unverified: list[str] = []
    source: str
    retrieved: date
    notes: str = ""


class HardwareCatalog(BaseModel):
    gpus: dict[str, Gpu]
    systems: dict[str, System]
    origins: dict[str, str]  # id -> the file it came from


def _read(path: Path, kind: type[BaseModel]):
    record = parse_record(kind, read_toml(path), str(path))
    if record.id != path.stem:
        raise UsageError(f"{path}: id {record.id!r} does not match the file name")
    return record


def _layer(folder: Path, gpus: dict, systems: dict, origins: dict, replace: bool) -> None:
    for sub, kind, into in (("gpus", Gpu, gpus), ("systems", System, systems)):
        seen: set[str] = set()
        for path in sorted((folder / sub).glob("**/*.toml")):
            record = _read(path, kind)
            if record.id in seen or (record.id in into and not replace):
                raise UsageError(f"{path}: duplicate id {record.id!r} (also in {origins[record.id]})")
            seen.add(record.id)
            into[record.id] = record
            origins[record.id] = str(path)


def load_hardware(user_dir: str | Path | None = None) -> HardwareCatalog:
    """Our catalog, with the user's folder (argument, else VRAMPLAN_CATALOG) layered over it."""
    user = user_dir if user_dir is not None else os.environ.get(CATALOG_ENV) or None
    return _load(str(user) if user else None)


@lru_cache(maxsize=8)
def _load(user: str | None) -> HardwareCatalog:
    gpus: dict[str, Gpu] = {}
    systems: dict[str, System] = {}
    origins: dict[str, str] = {}
    _layer(CATALOG_DIR, gpus, systems, origins, replace=False)
    if user is not None:
        folder = Path(user).expanduser()
        if not folder.is_dir():
            raise UsageError(f"--catalog {user}: not a folder")
        if not (folder / "gpus").is_dir() and not (folder / "systems").is_dir():
            raise UsageError(f"--catalog {user}: holds neither gpus/ nor systems/")
        _layer(folder, gpus, systems, origins, replace=True)
    dangling = [f"{s.id} -> {s.gpu}" for s in systems.values() if s.gpu not in gpus]
    if dangling:
        raise UsageError(f"systems name GPUs not in the catalog: {', '.join(dangling)}")
    return HardwareCatalog(gpus=gpus, systems=systems, origins=origins)

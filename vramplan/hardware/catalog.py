"""The hardware catalog: one TOML file per GPU (`vramplan/hardware/catalog_data/gpus/`) and per system
(`.../systems/`), shipped inside the package.

Users layer their own files over ours with `--catalog DIR` or VRAMPLAN_CATALOG (a folder holding `gpus/` and/or
`systems/`); a user file with an existing id replaces ours, and every file is validated the same way.
"""

from __future__ import annotations

import os
from datetime import date
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from vramplan.errors import UsageError
from vramplan.tomlfile import parse_record, read_toml


CATALOG_DIR = Path(__file__).resolve().parent / "catalog_data"  # package data (pyproject.toml)
CATALOG_ENV = "VRAMPLAN_CATALOG"

PriceKind = Literal["list", "street", "msrp", "cloud-hourly"]

# Sanity bounds on every number of a record, so a typo (or `inf`, `1e308`) in a user's file is refused with its file
# and field instead of turning a throughput or a cost into 0 or infinity. Each sits far above today's largest figure.
# GPU memory: B300 / MI355X 288 GB; 2 TiB leaves 7x headroom.
MAX_GPU_MEMORY_BYTES = 2**41
MAX_GPU_MEMORY_GB = MAX_GPU_MEMORY_BYTES / 10**9
# Memory bandwidth: B200/B300 HBM3e 8,000 GB/s; 100,000 GB/s leaves 12x headroom.
MAX_BANDWIDTH_GB_S = 100_000.0
# Dense tensor throughput: B300 2,500 bf16 / 5,000 fp8 TFLOPS; 100,000 leaves 20x headroom.
MAX_DENSE_TFLOPS = 100_000.0
# Board power: B300 1,400 W; 10 kW leaves 7x headroom.
MAX_TDP_W = 10_000.0
# NVLink 5: 1,800 GB/s per GPU; 100,000 GB/s leaves 50x headroom.
MAX_NVLINK_GB_S = 100_000.0
# GPUs in one system: 8 in a DGX, 72 in a GB200 NVL72 rack; 1,024 leaves 14x headroom.
MAX_GPUS_PER_SYSTEM = 1024
# Host RAM of one node: a few TB in today's servers (the catalog's largest, 3.1 TB); 256 TiB leaves 90x headroom.
MAX_HOST_RAM_BYTES = 2**48
# Inter-node network: 8 x 400 Gbit/s (3,200) to 4,000 Gbit/s per node; 100,000 Gbit/s leaves 25x headroom.
MAX_NETWORK_GBPS = 100_000.0
# A price: the catalog's largest is a 45,000 USD GPU; 100 million covers any machine or rack.
MAX_PRICE = 1e8


def _positive(high: float, default: Any = ...) -> Any:
    """A finite number above 0 and at most `high` (strict: a bool or a string is refused, an int is a number)."""
    return Field(default, gt=0, le=high, allow_inf_nan=False, strict=True)


class Price(BaseModel):
    """One price with what kind it is, when and where it was seen. Cloud prices are per instance-hour."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    amount: float = _positive(MAX_PRICE)
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    kind: PriceKind
    date: str  # "2026-01-21", "2025-03" or "2022": as precise as the source is
    source: str
    note: str = ""


def newest_price(prices: list[Price]) -> Price | None:
    """The newest of `prices` (dates compare as strings: '2026-01-21' > '2025' > '2022'), None for none."""
    return max(prices, key=lambda price: price.date) if prices else None


class Gpu(BaseModel):
    """One GPU model. `memory_bytes` is what the driver reports as total when a reading is known
    (`memory_basis` says which reading), else the marketed size."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    name: str
    vendor: Literal["NVIDIA", "AMD"]
    software: Literal["cuda", "rocm"]
    segment: Literal["datacenter", "workstation", "consumer"]
    memory_bytes: int = _positive(MAX_GPU_MEMORY_BYTES)
    memory_basis: Literal["nvidia-smi", "cuda-total", "rocm-smi", "marketed-gib", "marketed-gb"]
    memory_marketed_gb: float = _positive(MAX_GPU_MEMORY_GB)
    memory_type: str
    bandwidth_gb_s: float | None = _positive(MAX_BANDWIDTH_GB_S, None)
    bf16_dense_tflops: float | None = _positive(MAX_DENSE_TFLOPS, None)
    fp8_dense_tflops: float | None = _positive(MAX_DENSE_TFLOPS, None)
    tdp_w: float | None = _positive(MAX_TDP_W, None)
    interconnect: str
    nvlink_gb_s: float | None = _positive(MAX_NVLINK_GB_S, None)
    pcie_gen: int | None = Field(default=None, ge=3, le=6, strict=True)
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
    gpu_count: int = _positive(MAX_GPUS_PER_SYSTEM)
    host_ram_bytes: int | None = _positive(MAX_HOST_RAM_BYTES, None)
    interconnect: str
    network: str = ""
    # Gbit/s per node between nodes, read from `network` where it states a figure; None: unknown, and the
    # planner then offers no multi-node runs of this system.
    network_gbps: float | None = _positive(MAX_NETWORK_GBPS, None)
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


def _user_folder(user: str) -> Path:
    folder = Path(user).expanduser()
    try:
        if not folder.is_dir():
            raise UsageError(f"--catalog {user}: not a folder")
        if not (folder / "gpus").is_dir() and not (folder / "systems").is_dir():
            raise UsageError(f"--catalog {user}: holds neither gpus/ nor systems/")
    except OSError as err:  # a name too long for the file system, ...
        raise UsageError(f"--catalog {user[:80]}: cannot read ({err.strerror or err.__class__.__name__})") from None
    return folder


@lru_cache(maxsize=8)
def _load(user: str | None) -> HardwareCatalog:
    gpus: dict[str, Gpu] = {}
    systems: dict[str, System] = {}
    origins: dict[str, str] = {}
    _layer(CATALOG_DIR, gpus, systems, origins, replace=False)
    if user is not None:
        _layer(_user_folder(user), gpus, systems, origins, replace=True)
    dangling = [f"{s.id} -> {s.gpu}" for s in systems.values() if s.gpu not in gpus]
    if dangling:
        raise UsageError(f"systems name GPUs not in the catalog: {', '.join(dangling)}")
    return HardwareCatalog(gpus=gpus, systems=systems, origins=origins)

"""GPU measurements to score the estimator against: our probe files and published runs by others.

Each source keeps its own metric apart: `allocated` (torch.cuda.max_memory_allocated) is compared with the
estimate's peak_allocated_bytes, `reserved` (max_memory_reserved) with peak_reserved_bytes, and `device`
(NVML / nvidia-smi used) with device_bytes.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from vramplan.errors import UsageError
from vramplan.tomlfile import read_toml


Metric = Literal["allocated", "reserved", "device"]
ESTIMATE_FIELD: dict[str, str] = {
    "allocated": "peak_allocated_bytes",
    "reserved": "peak_reserved_bytes",
    "device": "device_bytes",
}
_UNIT_BYTES = {"B": 1, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}
_QUANTITY = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(B|KB|MB|GB|KiB|MiB|GiB)\s*$")


class MeasuredPeak(BaseModel):
    """One measured peak of one setup, in bytes, with the metric it stands for and where it comes from."""

    source: str
    id: str
    model: str
    method: str
    options: dict[str, Any]
    metric: Metric
    measured_bytes: int
    gpu: str = ""
    tolerance: float | None = None
    note: str = ""


class PublishedMapping(BaseModel):
    """How one row of published_measurements.tsv maps to our setup options and one metric."""

    model_config = ConfigDict(extra="forbid")

    row: str
    model: str
    method: str
    options: dict[str, Any] = {}
    metric: Metric
    value: str  # the quantity as the source prints it, e.g. "67.46 GiB"
    tolerance: float
    note: str = ""


def parse_quantity(text: str) -> int:
    """'67.46 GiB' -> bytes (exact for the printed digits); units are kept as the source wrote them."""
    match = _QUANTITY.match(text)
    if match is None:
        raise UsageError(f"cannot read the quantity {text!r}; write e.g. '67.46 GiB' or '77256 MiB'")
    number, unit = match.groups()
    whole, _, fraction = number.partition(".")
    scale = 10 ** len(fraction)
    return (int(whole + fraction) * _UNIT_BYTES[unit] + scale // 2) // scale


def load_published(tsv: Path, mapping_file: Path) -> list[MeasuredPeak]:
    """Published peaks for the rows the mapping file maps; each value must appear in its row's peak_mem field."""
    try:
        with tsv.open(newline="") as handle:
            rows = {row["id"]: row for row in csv.DictReader(handle, delimiter="\t")}
    except FileNotFoundError as err:
        raise UsageError(f"{err.filename}: no such file") from None
    entries = read_toml(mapping_file).get("row", [])
    peaks = []
    for raw in entries:
        try:
            entry = PublishedMapping(**raw)
        except ValidationError as err:
            raise UsageError(f"{mapping_file}: {err.errors()[0]['msg']} in {raw}") from None
        row = rows.get(entry.row)
        if row is None:
            raise UsageError(f"{mapping_file}: row {entry.row!r} is not in {tsv.name}")
        if entry.value.replace(" ", "") not in row["peak_mem"].replace(" ", ""):
            raise UsageError(f"{mapping_file}: {entry.value!r} does not appear in row {entry.row}'s peak_mem")
        peaks.append(
            MeasuredPeak(
                source=row["source"],
                id=entry.row,
                model=entry.model,
                method=entry.method,
                options=entry.options,
                metric=entry.metric,
                measured_bytes=parse_quantity(entry.value),
                gpu=row["gpu"],
                tolerance=entry.tolerance,
                note=entry.note,
            )
        )
    return peaks


def load_probe_files(folder: Path, on_corrupt=None) -> list[MeasuredPeak]:
    """Peaks from probe JSON lines (`validation/measurements/*.jsonl`): one line per probe, OOM lines skipped.

    A line carries `id`, `model`, `method`, `options`, `gpu` and the metrics it measured as
    `max_memory_allocated`, `max_memory_reserved` and `nvml_peak_used` (bytes). A line that is not JSON (a
    probe cut off mid-write) is skipped and reported to `on_corrupt(where)`; without a callback it is an error.
    """
    if not folder.is_dir():
        raise UsageError(f"--measurements {folder}: not a folder")
    peaks = []
    for path in sorted(folder.glob("*.jsonl")):
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                probe = json.loads(line)
            except json.JSONDecodeError:
                if on_corrupt is None:
                    raise UsageError(f"{path}:{number}: not a JSON line") from None
                on_corrupt(f"{path}:{number}")
                continue
            if probe.get("status", "ok") != "ok" or probe.get("gpu") == "cpu":
                continue  # OOMs are results but not peaks; CPU probes check the driver, not a GPU
            for metric, key in (("allocated", "max_memory_allocated"), ("reserved", "max_memory_reserved"),
                                ("device", "nvml_peak_used")):
                if probe.get(key) is not None:
                    peaks.append(
                        MeasuredPeak(
                            source=f"{path.name}:{number}", id=str(probe.get("id", number)), model=probe["model"],
                            method=probe["method"], options=probe.get("options", {}), metric=metric,
                            measured_bytes=int(probe[key]), gpu=str(probe.get("gpu", "")),
                        )
                    )
    return peaks


class MeasuredScore(BaseModel):
    id: str
    source: str
    gpu: str
    metric: Metric
    measured_bytes: int
    estimate_bytes: int
    error: float
    tolerance: float | None
    within_tolerance: bool | None


def score_measured(peaks: list[MeasuredPeak]) -> list[MeasuredScore]:
    from vramplan.api import estimate

    scores = []
    for peak in peaks:
        predicted = getattr(estimate(peak.model, peak.method, **peak.options), ESTIMATE_FIELD[peak.metric])
        error = (predicted - peak.measured_bytes) / peak.measured_bytes
        scores.append(
            MeasuredScore(
                id=peak.id, source=peak.source, gpu=peak.gpu, metric=peak.metric,
                measured_bytes=peak.measured_bytes, estimate_bytes=predicted, error=error, tolerance=peak.tolerance,
                within_tolerance=None if peak.tolerance is None else abs(error) <= peak.tolerance,
            )
        )
    return scores

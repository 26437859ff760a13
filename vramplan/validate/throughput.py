"""The throughput model scored against published training runs: tokens per second measured by others, next to the
tokens per second vramplan's step model predicts for the same setup on the same GPU.

Cases live in validation/throughput/cases.toml: each maps one published row (validation/throughput/
published_throughput.tsv, ../shared/validation/published_measurements.tsv) to our options, and says what was
assumed where the source is silent. The error is on job time: predicted time / measured time - 1.
"""

from __future__ import annotations

import statistics
from datetime import date
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from vramplan.errors import VramplanError
from vramplan.hardware.catalog import HardwareCatalog, System
from vramplan.hardware.links import links_of
from vramplan.hardware.throughput import step_time, step_traffic, step_work
from vramplan.tomlfile import parse_record, read_toml

CASES_FILE = Path(__file__).resolve().parents[2] / "validation" / "throughput" / "cases.toml"


class ThroughputCase(BaseModel):
    """One published run: its setup in our options and the tokens per second it measured over all GPUs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    source: str
    model: str
    method: str
    gpu: str  # catalog GPU id
    gpus: int = Field(1, gt=0)
    link: Literal["nvlink", "pcie"] = "nvlink"  # between the GPUs of a several-GPU run
    options: dict[str, Any] = {}
    measured_tokens_per_s: float = Field(gt=0)
    setup: str  # the setup as the source states it
    assumed: str = ""  # what the source does not state and the case assumes
    # why the case is shown but left out of the medians: a mechanism vramplan does not time (a paged optimizer
    # swapping over PCIe, the CPU optimizer step under offload)
    excluded: str = ""


class CasesFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    case: list[ThroughputCase]


class ThroughputResult(BaseModel):
    case: ThroughputCase
    predicted_tokens_per_s: float | None
    ideal_tokens_per_s: float | None  # the same step with STACK_EFFICIENCY = 1 (matmuls at MAMF, memory at bandwidth)
    refused: str = ""

    @property
    def time_error(self) -> float | None:
        """Predicted job time over measured job time, minus 1 (+ = vramplan says the job takes longer)."""
        if self.predicted_tokens_per_s is None:
            return None
        return self.case.measured_tokens_per_s / self.predicted_tokens_per_s - 1

    @property
    def ideal_share(self) -> float | None:
        """Measured over ideal: the share of the ideal step the real stack reached."""
        if self.ideal_tokens_per_s is None:
            return None
        return self.case.measured_tokens_per_s / self.ideal_tokens_per_s


def load_cases(path: Path = CASES_FILE) -> list[ThroughputCase]:
    return parse_record(CasesFile, read_toml(path), str(path)).case


def _system(case: ThroughputCase) -> System | None:
    if case.gpus == 1:
        return None
    interconnect = "NVLink / NVSwitch" if case.link == "nvlink" else "PCIe (no NVLink)"
    return System(id=case.id, name=case.id, kind="server", provider="published run", gpu=case.gpu,
                  gpu_count=case.gpus, interconnect=interconnect, source=case.source, retrieved=date(2026, 12, 7))


def predict(case: ThroughputCase, catalog: HardwareCatalog) -> ThroughputResult:
    """The case's tokens per second over all its GPUs as vramplan predicts them (and the ideal)."""
    from vramplan.api import estimate
    from vramplan.hardware import throughput

    gpu = catalog.gpus[case.gpu]
    options = dict(case.options)
    if case.gpus > 1:
        options.setdefault("gpus", case.gpus)
    try:
        result = estimate(case.model, case.method, **options)
    except VramplanError as err:
        return ThroughputResult(case=case, predicted_tokens_per_s=None, ideal_tokens_per_s=None, refused=str(err))
    setup, spec = result.setup, result.model.spec
    work = step_work(spec, setup, result.components.get("optimizer_states", 0))
    links = links_of(gpu, _system(case))
    timing = step_time(work, setup, step_traffic(spec, setup), links, gpu)
    ideal_compute = timing.compute_s * throughput.STACK_EFFICIENCY
    ideal = timing.tokens_per_step / (ideal_compute + (timing.communication_s or 0.0))
    return ThroughputResult(case=case, predicted_tokens_per_s=timing.tokens_per_second, ideal_tokens_per_s=ideal)


class ThroughputSummary(BaseModel):
    results: list[ThroughputResult]
    median_abs_time_error: float
    median_ideal_share: float  # what STACK_EFFICIENCY should be
    time_ratio_low: float  # 10th percentile of measured / predicted time
    time_ratio_high: float  # 90th percentile


def summarise(results: list[ThroughputResult]) -> ThroughputSummary:
    scored = [r for r in results if r.time_error is not None and not r.case.excluded]
    if not scored:
        raise VramplanError("no throughput case could be predicted")
    ratios = sorted(1 / (1 + r.time_error) for r in scored)  # measured time / predicted time
    deciles = statistics.quantiles(ratios, n=10, method="inclusive")
    return ThroughputSummary(results=results,
                             median_abs_time_error=statistics.median(abs(r.time_error) for r in scored),
                             median_ideal_share=statistics.median(r.ideal_share for r in scored),
                             time_ratio_low=deciles[0], time_ratio_high=deciles[-1])

"""The jobs file a team writes for `vramplan report`: its jobs, and the cost assumptions."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from vramplan.tomlfile import RunRecord, parse_record, read_toml
from vramplan.units import DEFAULT_HEADROOM


class Job(RunRecord):
    name: str
    tokens: str | int = "100M"  # per epoch, e.g. "50M" or 50000000
    epochs: float = Field(default=1.0, gt=0)


class ReportAssumptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    headroom: str = f"{DEFAULT_HEADROOM:.0%}"  # the default check, fit and plan keep
    mfu: float = Field(default=0.40, gt=0, le=1)
    amortise_years: float = Field(default=3.0, gt=0)
    kwh_price: float = Field(default=0.15, ge=0)


class JobsFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    title: str = "GPU procurement report"
    assumptions: ReportAssumptions = ReportAssumptions()
    job: list[Job] = Field(min_length=1)


def load_jobs(path: Path) -> JobsFile:
    return parse_record(JobsFile, read_toml(path), str(path))

"""The jobs file a team writes for `vramplan report`: its jobs, the deployments it will serve, and the cost
assumptions."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from vramplan.tomlfile import RunRecord, parse_record, read_toml
from vramplan.hardware.purchase import DESKTOP_HOST_USD, WORKSTATION_HOST_USD
from vramplan.serving.formats import WeightFormat
from vramplan.serving.kv_cache import KvDtype
from vramplan.units import DEFAULT_HEADROOM


class Job(RunRecord):
    name: str
    tokens: str | int = "100M"  # per epoch, e.g. "50M" or 50000000
    epochs: float = Field(default=1.0, gt=0)


class ServeEntry(BaseModel):
    """A `[[serve]]` entry: a model to serve with vLLM, `concurrency` sequences of `context` tokens per replica."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    model: str
    context: int = Field(ge=1, le=2**24, strict=True)
    concurrency: int = Field(default=1, ge=1, le=2**20, strict=True)
    weights: WeightFormat = WeightFormat.BF16
    kv_dtype: KvDtype = "auto"


class ReportAssumptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    headroom: str = f"{DEFAULT_HEADROOM:.0%}"  # the default check, fit and plan keep
    # None: the step model (validated against published runs); a number replaces it for every GPU
    mfu: float | None = Field(default=None, gt=0, le=1)
    amortise_years: float = Field(default=3.0, gt=0, le=50)
    kwh_price: float = Field(default=0.15, ge=0, le=100)
    busy_share: float = Field(default=0.5, gt=0, le=1)  # share of the year a bought machine runs jobs (energy)
    host_usd: float = Field(default=DESKTOP_HOST_USD, ge=0, le=1e6)  # the desktop PC around a bought card
    workstation_host_usd: float = Field(default=WORKSTATION_HOST_USD, ge=0, le=1e6)  # the host around 2-4 cards
    allow_rocm: bool = Field(default=False, strict=True)  # let ROCm parts lead the recommendations


class JobsFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    title: str = "GPU procurement report"
    assumptions: ReportAssumptions = ReportAssumptions()
    job: list[Job] = Field(min_length=1)
    serve: list[ServeEntry] = []

    @model_validator(mode="after")
    def _names_are_unique(self) -> JobsFile:
        for what, names in (("job", [job.name for job in self.job]), ("serve", [entry.name for entry in self.serve])):
            repeated = sorted({name for name in names if names.count(name) > 1})
            if repeated:
                raise ValueError(f"{what} names must differ: {', '.join(repeated)} repeated")
        return self


def load_jobs(path: Path) -> JobsFile:
    return parse_record(JobsFile, read_toml(path), str(path))

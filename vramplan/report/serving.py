"""The report's serving section: for each `[[serve]]` entry of the jobs file, the cheapest catalog system to rent and
the cheapest to buy that serve it (vramplan/serving/fleet.py), computed, not rendered."""

from __future__ import annotations

from pydantic import BaseModel

from vramplan.errors import UsageError
from vramplan.hardware.catalog import HardwareCatalog
from vramplan.report.jobs import ServeEntry
from vramplan.serving.fleet import FleetRow, size_fleet
from vramplan.serving.formats import WeightFormat
from vramplan.serving.kv_cache import KvDtype
from vramplan.serving.sizing import ServeOptions


class ServingPick(BaseModel):
    """One serve entry: what it asks for, and the cheapest rental and purchase that hold it (None: none does)."""

    name: str
    model: str  # the resolved model's name
    context: int
    concurrency: int
    weights: WeightFormat
    kv_dtype: KvDtype
    engine: str  # "vLLM 0.31.0 V1 engine; rule read from source, not traced"
    systems_fitting: int
    rent: FleetRow | None
    buy: FleetRow | None


def serving_pick(entry: ServeEntry, catalog: HardwareCatalog, allow_rocm: bool, host_usd: float,
                 workstation_host_usd: float) -> ServingPick:
    """The cheapest system to rent and to buy that serve `entry`'s sequences, at the smallest fitting TP."""
    from vramplan.models.catalog import resolve_model

    options = ServeOptions(weights=entry.weights, kv_dtype=entry.kv_dtype, max_model_len=entry.context,
                           concurrency=entry.concurrency)
    try:
        fleet = size_fleet(resolve_model(entry.model), catalog, options, allow_rocm, host_usd=host_usd,
                           workstation_host_usd=workstation_host_usd)
    except UsageError as err:
        raise UsageError(f"serve {entry.name!r}: {err}") from None
    return ServingPick(
        name=entry.name, model=fleet.model.name, context=entry.context, concurrency=entry.concurrency,
        weights=entry.weights, kv_dtype=entry.kv_dtype, engine=fleet.engine, systems_fitting=len(fleet.rows),
        rent=next((row for row in fleet.rows if row.cheapest_rent), None),
        buy=next((row for row in fleet.rows if row.cheapest_buy), None),
    )

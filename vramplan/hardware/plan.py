"""`vramplan plan`: every catalog option that runs a job, with its headroom, speed, wall time and cost.

A bare GPU runs the job alone (with host-RAM offload where that fits). A system runs it on all of its GPUs with
the fastest strategy that fits, or on several nodes of it when one does not (vramplan/hardware/layouts.py).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from vramplan.errors import VramplanError
from vramplan.units import DEFAULT_HEADROOM
from vramplan.estimate import estimate_memory
from vramplan.result import Estimate
from vramplan.hardware.catalog import Gpu, HardwareCatalog, Price, System
from vramplan.hardware.layouts import NODE_COUNTS, LayoutCheck, choose_layout
from vramplan.hardware.links import links_of
from vramplan.hardware.throughput import step_flops
from vramplan.training import TrainingSetup

HOURS_PER_YEAR = 365 * 24
WATTS_PER_KILOWATT = 1000


class CostAssumptions(BaseModel):
    """The knobs the plan's speed and cost depend on; all stated in every answer."""

    utilisation: float = Field(default=0.40, gt=0, le=1)  # model FLOPs utilisation of dense BF16
    amortisation_years: float = Field(default=3.0, gt=0)  # purchase price spread over this many years of use
    energy_usd_per_kwh: float = Field(default=0.15, ge=0)
    headroom: float = Field(default=DEFAULT_HEADROOM, ge=0, lt=1)  # fraction of GPU memory kept free
    max_nodes: int = Field(default=NODE_COUNTS[-1], ge=1)  # the most nodes of one system a layout may use


class PlanOption(BaseModel):
    """One way to run the job: a bare GPU (bought) or a system (bought or rented)."""

    kind: Literal["gpu", "system"]
    id: str
    name: str
    gpu: str
    gpus_in_option: int  # GPUs in one unit (one node) of the option
    gpus_used: int  # GPUs per node the job runs on
    nodes: int = 1
    strategy: str  # single | ddp | zero1 | zero2 | zero3 | fsdp | fsdp-hybrid | device-map
    offload: str = "none"
    gpu_memory_bytes: int
    needed_bytes: int  # per GPU (device) under the chosen layout; the single-GPU need when nothing fits
    headroom_bytes: int
    host_bytes_needed: int = 0  # host RAM per node for offloaded states
    host_ram_bytes: int | None = None
    fits: bool
    tokens_per_second: float | None
    step_seconds: float | None = None
    communication_share: float | None = None  # of the step time (communication not overlapped)
    gpu_link: str = ""  # the link the in-node collectives cross
    choice: str = ""  # why this layout
    layouts_tried: list[LayoutCheck] = []
    hours: float | None
    cost_usd: float | None
    cost_basis: str
    price: Price | None
    notes: list[str]
    cheapest: bool = False
    fastest: bool = False


class Plan(BaseModel):
    estimate: Estimate
    training_tokens: int
    assumptions: CostAssumptions
    flops_per_token: int
    options: list[PlanOption]
    rejected: list[PlanOption]


def _price_of(prices: list[Price]) -> Price | None:
    """The newest price (dates compare as strings: '2026-01-21' > '2025' > '2022')."""
    return max(prices, key=lambda price: price.date) if prices else None


def _gpus_only_price(gpu: Gpu, count: int) -> Price | None:
    """A lower bound for a system without a price: its GPUs' purchase price (host, chassis and power left out)."""
    own = _price_of([price for price in gpu.prices if price.kind != "cloud-hourly"])
    if own is None:
        return None
    return own.model_copy(update={"amount": own.amount * count,
                                  "note": f"{count} x {gpu.id} at {own.amount:,.0f} {own.currency}; GPUs only",
                                  "source": own.source})


def _cost(
    price: Price | None, hours: float | None, watts: float | None, assumptions: CostAssumptions
) -> tuple[float | None, str]:
    if price is None:
        return None, "no price in the catalog"
    if hours is None:
        return None, "no throughput figure (dense BF16 TFLOPS unknown)"
    if price.currency != "USD":
        return None, f"price in {price.currency}; only USD is compared"
    if price.kind == "cloud-hourly":
        return price.amount * hours, f"{price.amount:.2f} USD/h x {hours:.1f} h ({price.date})"
    amortised = price.amount * hours / (assumptions.amortisation_years * HOURS_PER_YEAR)
    energy = (watts or 0.0) * hours / WATTS_PER_KILOWATT * assumptions.energy_usd_per_kwh
    basis = (
        f"{price.kind} {price.amount:,.0f} USD ({price.date}) over {assumptions.amortisation_years:g} years, "
        f"{hours:.1f} h of it, + energy {energy:.2f} USD"
    )
    if watts is None:
        basis += " (TDP unknown: energy left out)"
    return amortised + energy, basis


def _option(
    kind: Literal["gpu", "system"],
    record: Gpu | System,
    gpu: Gpu,
    gpus_in_option: int,
    estimate: Estimate,
    estimator,
    training_tokens: int,
    flops_per_token: int,
    assumptions: CostAssumptions,
) -> PlanOption:
    system = record if isinstance(record, System) else None
    usable = int(gpu.memory_bytes * (1 - assumptions.headroom))
    links = links_of(gpu, system)
    chosen, timing, tried, why = choose_layout(estimate.setup, estimator, gpu, system, gpus_in_option, links,
                                               flops_per_token, usable, assumptions.utilisation,
                                               assumptions.max_nodes)
    notes: list[str] = []
    if gpu.software == "rocm":
        notes.append("ROCm: the estimate models the CUDA stack (bitsandbytes and kernels differ on ROCm)")
    if chosen is None:
        smallest = min((c.needed_bytes for c in tried if c.needed_bytes is not None), default=estimate.device_bytes)
        return PlanOption(kind=kind, id=record.id, name=record.name, gpu=gpu.id, gpus_in_option=gpus_in_option,
                          gpus_used=gpus_in_option, strategy="none", gpu_memory_bytes=gpu.memory_bytes,
                          needed_bytes=smallest, headroom_bytes=gpu.memory_bytes - smallest, fits=False,
                          host_ram_bytes=system.host_ram_bytes if system else None, tokens_per_second=None,
                          hours=None, cost_usd=None, cost_basis="does not fit", price=None, notes=notes,
                          choice=why, layouts_tried=tried)
    speed = chosen.tokens_per_second
    hours = training_tokens / speed / 3600 if speed else None
    if chosen.reason:
        notes.append(chosen.reason)
    price = _option_price(kind, record, gpu, gpus_in_option, chosen.nodes, notes)
    # the GPUs the job runs on (idle ones left out)
    watts = None if gpu.tdp_w is None else gpu.tdp_w * chosen.gpus * chosen.nodes
    cost, basis = _cost(price, hours, watts, assumptions)
    return PlanOption(
        kind=kind,
        id=record.id,
        name=record.name,
        gpu=gpu.id,
        gpus_in_option=gpus_in_option,
        gpus_used=chosen.gpus,
        nodes=chosen.nodes,
        strategy=chosen.strategy,
        offload=chosen.offload,
        gpu_memory_bytes=gpu.memory_bytes,
        needed_bytes=chosen.needed_bytes,
        headroom_bytes=gpu.memory_bytes - chosen.needed_bytes,
        host_bytes_needed=chosen.host_bytes_per_node,
        host_ram_bytes=system.host_ram_bytes if system else None,
        fits=True,
        tokens_per_second=speed,
        step_seconds=timing.step_s if timing else None,
        communication_share=chosen.communication_share,
        gpu_link=links.gpu_link if chosen.gpus * chosen.nodes > 1 else "",
        hours=hours,
        cost_usd=cost,
        cost_basis=basis,
        price=price,
        notes=notes,
        choice=why,
        layouts_tried=tried,
    )


def _option_price(kind: str, record: Gpu | System, gpu: Gpu, gpus_in_option: int, nodes: int,
                  notes: list[str]) -> Price | None:
    """The option's price for one node, times the nodes a layout uses."""
    price = _price_of(record.prices)
    if kind == "system" and price is None:
        # A machine without a price is at least its GPUs; a cloud instance without one has no price to use.
        if isinstance(record, System) and record.kind != "cloud":
            price = _gpus_only_price(gpu, gpus_in_option)
        notes.append("no system price in the catalog" + ("; priced as its GPUs alone" if price else ""))
    if price is not None and nodes > 1:
        price = price.model_copy(update={"amount": price.amount * nodes,
                                         "note": f"{nodes} nodes x {price.amount:,.2f} {price.currency}"})
    return price


def _cached_estimator(estimate: Estimate):
    """Estimates depend on the layout, not on the GPU: each layout is estimated once for the whole catalog."""
    cache: dict[tuple, Estimate | VramplanError] = {}

    def estimator(setup: TrainingSetup) -> Estimate:
        key = (setup.gpus, setup.nodes, setup.strategy, setup.offload)
        if key not in cache:
            try:
                cache[key] = estimate if setup == estimate.setup else estimate_memory(estimate.model, setup)
            except VramplanError as err:  # refused layouts are cached too, and re-raised for every option asking
                cache[key] = err
        result = cache[key]
        if isinstance(result, VramplanError):
            raise result
        return result

    return estimator


def plan_options(
    estimate: Estimate, catalog: HardwareCatalog, training_tokens: int, assumptions: CostAssumptions
) -> Plan:
    """Every GPU and system of the catalog, split into those that run the job and those that do not."""
    flops = step_flops(estimate.model.spec, estimate.setup).per_token
    estimator = _cached_estimator(estimate)
    options = [
        _option("gpu", gpu, gpu, 1, estimate, estimator, training_tokens, flops, assumptions)
        for gpu in catalog.gpus.values()
    ]
    options += [
        _option("system", system, catalog.gpus[system.gpu], system.gpu_count, estimate, estimator, training_tokens,
                flops, assumptions)
        for system in catalog.systems.values()
    ]
    fitting = [option for option in options if option.fits]
    rejected = sorted((option for option in options if not option.fits), key=lambda o: -o.gpu_memory_bytes)
    fitting.sort(key=lambda o: (o.cost_usd is None, o.cost_usd or 0.0, o.hours or float("inf")))
    priced = [option for option in fitting if option.cost_usd is not None]
    timed = [option for option in fitting if option.hours is not None]
    marks = {}
    if priced:
        marks[id(min(priced, key=lambda o: o.cost_usd))] = "cheapest"
    if timed:
        fastest = min(timed, key=lambda o: o.hours)
        marks[id(fastest)] = marks.get(id(fastest), "") + "fastest"
    fitting = [
        option.model_copy(update={"cheapest": "cheapest" in marks.get(id(option), ""),
                                  "fastest": "fastest" in marks.get(id(option), "")})
        for option in fitting
    ]
    return Plan(estimate=estimate, training_tokens=training_tokens, assumptions=assumptions, flops_per_token=flops,
                options=fitting, rejected=rejected)


def chosen_setup(plan: Plan, option: PlanOption) -> TrainingSetup:
    """The training setup of an option's chosen layout (for --emit)."""
    from vramplan.hardware.layouts import variant
    from vramplan.training import Offload, Strategy

    return variant(plan.estimate.setup, option.gpus_used, option.nodes, Strategy(option.strategy),
                   Offload(option.offload))

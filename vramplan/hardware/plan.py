"""`vramplan plan`: every catalog option that runs a job, with its headroom, speed, wall time and cost.

One GPU per job for now: the estimate is per GPU and multi-GPU strategies (DDP, ZeRO, FSDP) arrive with the
multi-GPU issue. A multi-GPU system is offered as one of its GPUs running the job, priced as the whole system.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from vramplan.estimate import Estimate
from vramplan.hardware.catalog import Gpu, HardwareCatalog, Price, System
from vramplan.hardware.throughput import step_flops, tokens_per_second

HOURS_PER_YEAR = 365 * 24
WATTS_PER_KILOWATT = 1000


class CostAssumptions(BaseModel):
    """The knobs the plan's speed and cost depend on; all stated in every answer."""

    utilisation: float = Field(default=0.40, gt=0, le=1)  # model FLOPs utilisation of dense BF16
    amortisation_years: float = Field(default=3.0, gt=0)  # purchase price spread over this many years of use
    energy_usd_per_kwh: float = Field(default=0.15, ge=0)
    headroom: float = Field(default=0.10, ge=0, lt=1)  # fraction of GPU memory kept free


class PlanOption(BaseModel):
    """One way to run the job: a bare GPU (bought) or a system (bought or rented)."""

    kind: Literal["gpu", "system"]
    id: str
    name: str
    gpu: str
    gpus_in_option: int
    gpus_used: int
    strategy: str
    gpu_memory_bytes: int
    needed_bytes: int
    headroom_bytes: int
    fits: bool
    tokens_per_second: float | None
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
    training_tokens: int,
    flops_per_token: int,
    assumptions: CostAssumptions,
) -> PlanOption:
    needed = estimate.device_bytes
    usable = int(gpu.memory_bytes * (1 - assumptions.headroom))
    notes: list[str] = []
    if gpu.software == "rocm":
        notes.append("ROCm: the estimate models the CUDA stack (bitsandbytes and kernels differ on ROCm)")
    if gpus_in_option > 1:
        notes.append(f"uses 1 of {gpus_in_option} GPUs; spreading the job over all of them needs multi-GPU support")
    speed = None
    if gpu.bf16_dense_tflops is not None:
        speed = tokens_per_second(flops_per_token, gpu.bf16_dense_tflops, assumptions.utilisation)
    hours = training_tokens / speed / 3600 if speed else None
    price = _price_of(record.prices)
    if kind == "system" and price is None:
        # A machine without a price is at least its GPUs; a cloud instance without one has no price to use.
        if isinstance(record, System) and record.kind != "cloud":
            price = _gpus_only_price(gpu, gpus_in_option)
        notes.append("no system price in the catalog" + ("; priced as its GPUs alone" if price else ""))
    watts = None if gpu.tdp_w is None else gpu.tdp_w  # the one GPU the job runs on (idle ones left out)
    cost, basis = _cost(price, hours, watts, assumptions)
    return PlanOption(
        kind=kind,
        id=record.id,
        name=record.name,
        gpu=gpu.id,
        gpus_in_option=gpus_in_option,
        gpus_used=1,
        strategy="single GPU",
        gpu_memory_bytes=gpu.memory_bytes,
        needed_bytes=needed,
        headroom_bytes=gpu.memory_bytes - needed,
        fits=needed <= usable,
        tokens_per_second=speed,
        hours=hours,
        cost_usd=cost,
        cost_basis=basis,
        price=price,
        notes=notes,
    )


def plan_options(
    estimate: Estimate, catalog: HardwareCatalog, training_tokens: int, assumptions: CostAssumptions
) -> Plan:
    """Every GPU and system of the catalog, split into those that run the job and those that do not."""
    flops = step_flops(estimate.model.spec, estimate.setup).per_token
    options = [
        _option("gpu", gpu, gpu, 1, estimate, training_tokens, flops, assumptions) for gpu in catalog.gpus.values()
    ]
    options += [
        _option("system", system, catalog.gpus[system.gpu], system.gpu_count, estimate, training_tokens, flops,
                assumptions)
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

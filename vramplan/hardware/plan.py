"""`vramplan plan`: every catalog option that runs a job, with its headroom, speed, wall time and cost.

A bare GPU runs the job alone (with host-RAM offload where that fits). A system runs it on all of its GPUs with
the fastest strategy that fits, or on several nodes of it when one does not (vramplan/hardware/layouts.py).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from vramplan.errors import VramplanError
from vramplan.units import DEFAULT_HEADROOM
from vramplan.estimate import estimate_memory
from vramplan.result import Estimate
from vramplan.hardware.catalog import Gpu, HardwareCatalog, Price, System, newest_price
from vramplan.hardware.costs import amortised_usd, energy_usd, rent_usd
from vramplan.hardware.layouts import NODE_COUNTS, LayoutCheck, choose_layout
from vramplan.hardware.links import links_of
from vramplan.hardware.purchase import DESKTOP_HOST_USD, WORKSTATION_HOST_USD, Purchase, purchase_of
from vramplan.hardware.throughput import STACK_EFFICIENCY, TIME_RANGE, step_flops
from vramplan.training import TrainingSetup


class CostAssumptions(BaseModel):
    """The knobs the plan's speed and cost depend on; all stated in every answer."""

    # None: the step model (MAMF, bandwidth, STACK_EFFICIENCY; vramplan/hardware/throughput.py); a number: the
    # user's model FLOPs utilisation of dense BF16, applied to every GPU alike
    utilisation: float | None = Field(default=None, gt=0, le=1)
    amortisation_years: float = Field(default=3.0, gt=0)  # purchase price spread over this many years of use
    energy_usd_per_kwh: float = Field(default=0.15, ge=0)
    headroom: float = Field(default=DEFAULT_HEADROOM, ge=0, lt=1)  # fraction of GPU memory kept free
    max_nodes: int = Field(default=NODE_COUNTS[-1], ge=1)  # the most nodes of one system a layout may use
    busy_share: float = Field(default=0.5, gt=0, le=1)  # share of the year a bought machine runs jobs (energy)
    host_usd: float = Field(default=DESKTOP_HOST_USD, ge=0)  # the desktop around a bought card
    workstation_host_usd: float = Field(default=WORKSTATION_HOST_USD, ge=0)  # the host around 2-4 cards
    allow_rocm: bool = False  # let ROCm parts head recommendations (the estimate models the CUDA stack)


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
    hours_low: float | None = None  # the range the throughput validation leaves (TIME_RANGE)
    hours_high: float | None = None
    # the option's cost for this job: the rent for a cloud instance, else the amortised share of the purchase plus
    # electricity (labelled "amortised", never a total)
    cost_usd: float | None
    cost_basis: str
    price: Price | None
    purchase: Purchase | None = None  # how to buy it (None: rented only, or no price)
    not_buyable: str = ""  # why it cannot be bought
    rent_usd: float | None = None  # the total rent for the job's hours (cloud instances)
    amortised_usd: float | None = None  # the purchase's share for the job's hours, energy included
    energy_usd: float | None = None  # electricity for the job's hours on a bought machine
    rocm: bool = False
    traded: list[str] = []  # the run's settings the layout changed to fit, in words
    settings: dict[str, Any] = {}  # the same as option values
    notes: list[str]
    cheapest: bool = False  # lowest cost for this job (rent, or amortised purchase) among recommendable options
    cheapest_buy: bool = False  # lowest upfront price among the options that can be bought
    cheapest_rent: bool = False  # lowest total rent
    fastest: bool = False


class Plan(BaseModel):
    estimate: Estimate
    training_tokens: int
    assumptions: CostAssumptions
    flops_per_token: int
    options: list[PlanOption]
    rejected: list[PlanOption]


def hours_text(hours: float) -> str:
    """Hours as people read them: minutes below one hour."""
    return f"{hours * 60:.0f} min" if hours < 1 else f"{hours:,.1f} h"


def _job_cost(hours: float | None, purchase: Purchase | None, hourly: Price | None, nodes: int,
              assumptions: CostAssumptions) -> dict:
    """The job's rent (cloud) or amortised share and energy (bought), and the basis in words."""
    if hours is None:
        return {"cost_usd": None, "cost_basis": "no throughput figure (dense BF16 TFLOPS unknown)"}
    if hourly is not None:
        rent = rent_usd(hourly.amount * nodes, hours)
        each = f"{hourly.amount:.2f} USD/h" + (f" x {nodes} nodes" if nodes > 1 else "")
        return {"cost_usd": rent, "rent_usd": rent,
                "cost_basis": f"rent {each} x {hours_text(hours)} ({hourly.date})"}
    if purchase is None:
        return {"cost_usd": None, "cost_basis": "no price in the catalog"}
    energy = 0.0 if purchase.watts is None else energy_usd(purchase.watts, hours, assumptions.energy_usd_per_kwh)
    share = amortised_usd(purchase.upfront_usd, hours, assumptions.amortisation_years, assumptions.busy_share) + energy
    estimated = " (estimated from parts)" if purchase.estimated else ""
    basis = (f"amortised: {purchase.upfront_usd:,.0f} USD upfront{estimated} over the hours it is busy in "
             f"{assumptions.amortisation_years:g} years ({assumptions.busy_share:.0%} busy), {hours_text(hours)} of "
             f"them, + energy {energy:.2f} USD")
    if purchase.watts is None:
        basis += " (TDP unknown: energy left out)"
    return {"cost_usd": share, "amortised_usd": share, "energy_usd": energy, "cost_basis": basis}


def _option(
    kind: Literal["gpu", "system"],
    record: Gpu | System,
    gpu: Gpu,
    gpus_in_option: int,
    estimate: Estimate,
    estimator,
    training_tokens: int,
    assumptions: CostAssumptions,
) -> PlanOption:
    system = record if isinstance(record, System) else None
    usable = int(gpu.memory_bytes * (1 - assumptions.headroom))
    links = links_of(gpu, system)
    chosen, timing, tried, why = choose_layout(estimate.setup, estimator, gpu, system, gpus_in_option, links,
                                               usable, assumptions.utilisation, assumptions.max_nodes)
    notes: list[str] = []
    rocm = gpu.software == "rocm"
    if rocm:
        notes.append("ROCm: the estimate models the CUDA stack (bitsandbytes and kernels differ on ROCm)")
    if chosen is None:
        smallest = min((c.needed_bytes for c in tried if c.needed_bytes is not None), default=estimate.device_bytes)
        return PlanOption(kind=kind, id=record.id, name=record.name, gpu=gpu.id, gpus_in_option=gpus_in_option,
                          gpus_used=gpus_in_option, strategy="none", gpu_memory_bytes=gpu.memory_bytes,
                          needed_bytes=smallest, headroom_bytes=gpu.memory_bytes - smallest, fits=False,
                          host_ram_bytes=system.host_ram_bytes if system else None, tokens_per_second=None,
                          hours=None, cost_usd=None, cost_basis="does not fit", price=None, notes=notes,
                          choice=why, layouts_tried=tried, rocm=rocm)
    speed = chosen.tokens_per_second
    hours = training_tokens / speed / 3600 if speed else None
    if chosen.reason:
        notes.append(chosen.reason)
    if chosen.traded:
        notes.append("traded time for memory: " + ", ".join(chosen.traded))
    hourly = None
    if isinstance(record, System) and record.kind == "cloud":
        hourly = newest_price([p for p in record.prices if p.kind == "cloud-hourly" and p.currency == "USD"])
        if hourly is None:
            notes.append("no hourly price in the catalog")
    purchase, not_buyable = purchase_of(record, gpu, chosen.nodes, assumptions.host_usd,
                                        assumptions.workstation_host_usd)
    costs = _job_cost(hours, purchase, hourly, chosen.nodes, assumptions)
    low, high = TIME_RANGE if assumptions.utilisation is None else (None, None)
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
        hours_low=hours * low if hours is not None and low is not None else None,
        hours_high=hours * high if hours is not None and high is not None else None,
        price=hourly or (None if purchase is None else newest_price(record.prices)),
        purchase=purchase,
        not_buyable=not_buyable,
        rocm=rocm,
        traded=chosen.traded,
        settings=chosen.settings,
        notes=notes,
        choice=why,
        layouts_tried=tried,
        **costs,
    )


def _cached_estimator(estimate: Estimate):
    """Estimates depend on the layout, not on the GPU: each layout is estimated once for the whole catalog."""
    cache: dict[tuple, Estimate | VramplanError] = {}

    def estimator(setup: TrainingSetup) -> Estimate:
        key = (setup.gpus, setup.nodes, setup.strategy, setup.offload, setup.gradient_checkpointing,
               setup.batch_size, setup.optimizer)
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
        _option("gpu", gpu, gpu, 1, estimate, estimator, training_tokens, assumptions)
        for gpu in catalog.gpus.values()
    ]
    options += [
        _option("system", system, catalog.gpus[system.gpu], system.gpu_count, estimate, estimator, training_tokens,
                assumptions)
        for system in catalog.systems.values()
    ]
    fitting = [option for option in options if option.fits]
    rejected = sorted((option for option in options if not option.fits), key=lambda o: -o.gpu_memory_bytes)
    fitting.sort(key=lambda o: (o.cost_usd is None, o.cost_usd or 0.0, o.hours or float("inf")))
    fitting = mark_options(fitting, assumptions.allow_rocm)
    return Plan(estimate=estimate, training_tokens=training_tokens, assumptions=assumptions, flops_per_token=flops,
                options=fitting, rejected=rejected)


def mark_options(options: list[PlanOption], allow_rocm: bool) -> list[PlanOption]:
    """Flag the cheapest (job cost), cheapest to buy (upfront), cheapest to rent and fastest; ROCm parts take no
    flag unless `allow_rocm`."""
    eligible = [o for o in options if allow_rocm or not o.rocm]
    picks = {
        "cheapest": min((o for o in eligible if o.cost_usd is not None), key=lambda o: o.cost_usd, default=None),
        "cheapest_buy": min((o for o in eligible if o.purchase is not None), default=None,
                            key=lambda o: (o.purchase.upfront_usd, o.hours or float("inf"))),
        "cheapest_rent": min((o for o in eligible if o.rent_usd is not None), key=lambda o: o.rent_usd, default=None),
        # among equally fast options, a rental before a purchase, then the cheaper
        "fastest": min((o for o in eligible if o.hours is not None), default=None,
                       key=lambda o: (o.hours, o.rent_usd is None, o.cost_usd if o.cost_usd is not None else 1e300)),
    }
    return [option.model_copy(update={flag: pick is option for flag, pick in picks.items()}) for option in options]


def chosen_setup(plan: Plan, option: PlanOption) -> TrainingSetup:
    """The training setup of an option's chosen layout, its traded settings applied (for --emit)."""
    from vramplan.hardware.layouts import traded, variant
    from vramplan.training import Offload, Strategy

    return variant(traded(plan.estimate.setup, option.settings), option.gpus_used, option.nodes,
                   Strategy(option.strategy), Offload(option.offload))


def speed_assumption(assumptions: CostAssumptions) -> str:
    """How the plan's times were made, in words."""
    if assumptions.utilisation is not None:
        return f"{assumptions.utilisation:.0%} of dense BF16 per GPU (--mfu), no range"
    return (f"times from the step model (matmuls at each GPU's measured matmul ceiling, memory-bound work at its "
            f"bandwidth, {STACK_EFFICIENCY:.0%} of that ideal), shown as the {TIME_RANGE[0]:.2f}x-{TIME_RANGE[1]:.2f}x "
            "range the published-run validation leaves")

"""Cost arithmetic, in USD: renting for the hours the jobs take, buying (upfront, energy, amortised share), and the
break-even between the two. Pure functions; every figure the report shows comes from here.
"""

from __future__ import annotations

from pydantic import BaseModel

HOURS_PER_YEAR = 365 * 24
MONTHS_PER_YEAR = 12
HOURS_PER_MONTH = HOURS_PER_YEAR / MONTHS_PER_YEAR  # 730
WATTS_PER_KILOWATT = 1000


def rent_usd(hourly_usd: float, hours: float) -> float:
    """What renting costs for `hours` at `hourly_usd` per instance-hour (all nodes priced in `hourly_usd`)."""
    return hourly_usd * hours


def energy_usd(watts: float, hours: float, usd_per_kwh: float) -> float:
    """Electricity for `hours` at a draw of `watts`."""
    return watts / WATTS_PER_KILOWATT * hours * usd_per_kwh


def yearly_energy_usd(watts: float, busy_share: float, usd_per_kwh: float) -> float:
    """A year's electricity for a machine busy `busy_share` of the hours (idle draw left out)."""
    return energy_usd(watts, HOURS_PER_YEAR * busy_share, usd_per_kwh)


def amortised_usd(upfront_usd: float, hours: float, years: float, busy_share: float = 1.0) -> float:
    """The share of a purchase that `hours` of use stand for: the purchase is spread over the hours the machine is
    busy in `years` (a machine busy half the time carries twice the share per hour of use)."""
    return upfront_usd * hours / (years * HOURS_PER_YEAR * busy_share)


class BreakEven(BaseModel):
    """When buying a machine beats renting one for the same work.

    runs: how many times the job list must run before the purchase has paid for itself (upfront / rent saved per run,
    the saving being the rent minus the bought machine's electricity); None when renting costs no more than the
    electricity, so buying never pays.
    hours_per_month: the bought machine's busy hours per month above which buying is cheaper over `years`;
    gpu_hours_per_month is the same in GPU-hours (times its GPUs). within_reach is False when that exceeds a month.
    """

    runs: float | None
    hours_per_month: float | None
    gpu_hours_per_month: float | None
    within_reach: bool


def break_even(upfront_usd: float, buy_hours: float, energy_usd_per_run: float, buy_gpus: int,
               rent_usd_per_run: float, years: float) -> BreakEven:
    """Buying (upfront, then `buy_hours` and `energy_usd_per_run` per run of the jobs) against renting
    (`rent_usd_per_run`)."""
    saved_per_run = rent_usd_per_run - energy_usd_per_run
    if saved_per_run <= 0 or buy_hours <= 0:
        return BreakEven(runs=None, hours_per_month=None, gpu_hours_per_month=None, within_reach=False)
    runs = upfront_usd / saved_per_run
    # per month: upfront / (12 years) = saving per busy hour x busy hours
    hours = upfront_usd / (years * MONTHS_PER_YEAR) / (saved_per_run / buy_hours)
    return BreakEven(runs=runs, hours_per_month=hours, gpu_hours_per_month=hours * buy_gpus,
                     within_reach=hours <= HOURS_PER_MONTH)

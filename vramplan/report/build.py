"""Everything a procurement report shows, computed (no rendering here).

Two ways to pay, side by side: buy (whole machines, or a card with its desktop; upfront price, power, yearly
energy) and rent (cloud instances for the hours the jobs take), then the break-even between the cheapest of each.
Recommendations: the cheapest machine to buy that runs every job, the cheapest rental, the fastest option; the
best buy per budget tier; jobs that alone force a bigger purchase are called out. ROCm parts never lead unless the
jobs file allows them. The jobs file's serving deployments get the cheapest system to rent and to buy.
"""

from __future__ import annotations

from datetime import date

from pydantic import BaseModel

from vramplan.errors import UsageError
from vramplan.hardware.catalog import HardwareCatalog
from vramplan.hardware.costs import BreakEven, break_even, yearly_energy_usd
from vramplan.hardware.plan import CostAssumptions, Plan, PlanOption, plan_options
from vramplan.report.jobs import JobsFile
from vramplan.report.rules import RuleRow, rule_rows
from vramplan.report.serving import ServingPick, serving_pick
from vramplan.result import Estimate
from vramplan.units import parse_count, parse_fraction

# Budget tiers of an upfront purchase, USD (upper bound excluded; None: no bound): a workstation card, a
# multi-GPU workstation, a small server, a datacenter server.
BUDGET_TIERS = ((0, 10_000), (10_000, 50_000), (50_000, 250_000), (250_000, None))
# A job is called out when the cheapest purchase that runs every other job costs at most this share of the
# cheapest purchase that runs them all: that one job decides the purchase.
BIG_JOB_SHARE = 0.5


class JobResult(BaseModel):
    name: str
    estimate: Estimate
    plan: Plan


class JobRun(BaseModel):
    """One job on one option: the layout and the time (and its range)."""

    job: str
    layout: str
    hours: float | None
    hours_low: float | None
    hours_high: float | None


class Candidate(BaseModel):
    """An option (GPU or system id) that runs every job, with the totals over the jobs."""

    id: str
    name: str
    kind: str
    gpu: str
    rocm: bool
    runs: list[JobRun]
    hours: float | None
    hours_low: float | None = None
    hours_high: float | None = None
    upfront_usd: float | None = None  # buying: the machine for the most nodes any job uses
    purchase_basis: str = ""
    estimated_price: bool = False  # priced from parts (card + assumed desktop)
    host_requirements: str = ""
    watts: float | None = None
    yearly_energy_usd: float | None = None  # at the jobs file's busy share
    not_buyable: str = ""
    rent_usd: float | None = None  # renting: total rent over the jobs
    amortised_usd: float | None = None  # buying: the purchase's share for these hours, energy included
    energy_usd: float | None = None  # buying: electricity for the jobs' hours
    smallest_headroom_bytes: int
    most_nodes: int = 1
    host_bytes_per_node: int = 0
    largest_communication_share: float | None = None
    traded: list[str] = []  # per job, what the layout traded for memory

    @property
    def layouts(self) -> list[str]:
        return [f"{run.job}: {run.layout}" for run in self.runs]


class TierPick(BaseModel):
    """The best purchase in one budget tier: the most jobs, then the shortest time."""

    low_usd: float
    high_usd: float | None
    option: str | None
    name: str = ""
    upfront_usd: float | None = None
    hours: float | None = None
    jobs_run: list[str] = []
    jobs_left: list[str] = []


class BigJob(BaseModel):
    """A job that alone forces a bigger purchase, and how to run it instead."""

    job: str
    without_it: str  # the cheapest purchase that runs the other jobs
    without_it_usd: float
    rent_it: str | None  # the cheapest rental that runs this job
    rent_it_usd: float | None


class UnfitJob(BaseModel):
    """A job no option in the catalog runs."""

    job: str
    needed_bytes: int  # on one GPU, as given
    largest_gpu_bytes: int


class Report(BaseModel):
    title: str
    made_on: date
    assumptions: CostAssumptions
    jobs: list[JobResult]
    candidates: list[Candidate]
    cheapest_buy: Candidate | None
    cheapest_rent: Candidate | None
    fastest: Candidate | None
    break_even: BreakEven | None
    tiers: list[TierPick]
    big_jobs: list[BigJob]
    unfit_jobs: list[UnfitJob] = []
    rules: list[RuleRow]
    serving: list[ServingPick] = []  # the jobs file's [[serve]] entries

    @property
    def recommended(self) -> Candidate | None:
        """The purchase to act on: the cheapest machine to buy that runs every job, else the cheapest rental."""
        return self.cheapest_buy or self.cheapest_rent


def _layout(option: PlanOption) -> str:
    nodes = f" x {option.nodes} nodes" if option.nodes > 1 else ""
    offload = f" + offload {option.offload}" if option.offload != "none" else ""
    traded = f" with {', '.join(option.traded)}" if option.traded else ""
    gpus = f"{option.gpus_used} GPU{'s' if option.gpus_used > 1 else ''}"
    return f"{option.strategy} on {gpus}{nodes}{offload}{traded}"


def _sum(values: list[float | None]) -> float | None:
    return None if any(value is None for value in values) else sum(values)


def _candidate(jobs: list[JobResult], picks: list[PlanOption], assumptions: CostAssumptions) -> Candidate:
    first = picks[0]
    widest = max(picks, key=lambda p: (p.nodes, p.purchase.upfront_usd if p.purchase else 0.0))
    purchase = widest.purchase
    shares = [p.communication_share for p in picks if p.communication_share is not None]
    runs = [JobRun(job=job.name, layout=_layout(p), hours=p.hours, hours_low=p.hours_low, hours_high=p.hours_high)
            for job, p in zip(jobs, picks)]
    fields = {}
    if purchase is not None:
        fields = {"upfront_usd": purchase.upfront_usd, "purchase_basis": purchase.basis,
                  "estimated_price": purchase.estimated, "host_requirements": purchase.host_requirements,
                  "watts": purchase.watts, "amortised_usd": _sum([p.amortised_usd for p in picks]),
                  "energy_usd": _sum([p.energy_usd for p in picks]),
                  "yearly_energy_usd": None if purchase.watts is None else
                  yearly_energy_usd(purchase.watts, assumptions.busy_share, assumptions.energy_usd_per_kwh)}
    return Candidate(id=first.id, name=first.name, kind=first.kind, gpu=first.gpu, rocm=first.rocm, runs=runs,
                     hours=_sum([p.hours for p in picks]), hours_low=_sum([p.hours_low for p in picks]),
                     hours_high=_sum([p.hours_high for p in picks]), not_buyable=first.not_buyable,
                     rent_usd=_sum([p.rent_usd for p in picks]),
                     smallest_headroom_bytes=min(p.headroom_bytes for p in picks),
                     most_nodes=max(p.nodes for p in picks),
                     host_bytes_per_node=max(p.host_bytes_needed for p in picks),
                     largest_communication_share=max(shares) if shares else None,
                     traded=[f"{job.name}: {', '.join(p.traded)}" for job, p in zip(jobs, picks) if p.traded],
                     **fields)


def candidates_for(jobs: list[JobResult], assumptions: CostAssumptions) -> list[Candidate]:
    """The options that run every job in `jobs`, cheapest job-list cost first (rent, else amortised)."""
    by_job = [{option.id: option for option in job.plan.options} for job in jobs]
    common = set(by_job[0]).intersection(*by_job[1:]) if by_job else set()
    found = [_candidate(jobs, [options[option_id] for options in by_job], assumptions) for option_id in common]
    found.sort(key=lambda c: (_job_cost(c) is None, _job_cost(c) or 0.0, c.hours or float("inf"), c.id))
    return found


def _job_cost(candidate: Candidate) -> float | None:
    return candidate.rent_usd if candidate.rent_usd is not None else candidate.amortised_usd


def _eligible(candidates: list[Candidate], assumptions: CostAssumptions) -> list[Candidate]:
    return [c for c in candidates if assumptions.allow_rocm or not c.rocm]


def _cheapest_buy(candidates: list[Candidate]) -> Candidate | None:
    """The lowest upfront price among those that can be bought; a machine whose speed is known before one whose
    speed is not (its time, and so the break-even, cannot be given)."""
    bought = [c for c in candidates if c.upfront_usd is not None]
    return min(bought, key=lambda c: (c.hours is None, c.upfront_usd, c.hours or float("inf"), c.id), default=None)


def _tiers(jobs: list[JobResult], assumptions: CostAssumptions) -> list[TierPick]:
    picks = []
    for low, high in BUDGET_TIERS:
        best: tuple | None = None
        ids = {o.id for job in jobs for o in job.plan.options if o.purchase is not None
               and low <= o.purchase.upfront_usd and (high is None or o.purchase.upfront_usd < high)
               and (assumptions.allow_rocm or not o.rocm)}
        for option_id in ids:
            runs = [(job.name, next(o for o in job.plan.options if o.id == option_id)) for job in jobs
                    if any(o.id == option_id for o in job.plan.options)]
            hours = _sum([o.hours for _, o in runs])
            upfront = max(o.purchase.upfront_usd for _, o in runs)
            if high is not None and upfront >= high:
                continue  # a job needed more nodes than the tier buys
            key = (-len(runs), hours if hours is not None else float("inf"), upfront, option_id)
            if best is None or key < best[0]:
                best = (key, option_id, runs, hours, upfront)
        if best is None:
            picks.append(TierPick(low_usd=low, high_usd=high, option=None, jobs_left=[job.name for job in jobs]))
            continue
        _, option_id, runs, hours, upfront = best
        done = [name for name, _ in runs]
        picks.append(TierPick(low_usd=low, high_usd=high, option=option_id, name=runs[0][1].name,
                              upfront_usd=upfront, hours=hours, jobs_run=done,
                              jobs_left=[job.name for job in jobs if job.name not in done]))
    return picks


def _big_jobs(jobs: list[JobResult], all_jobs_buy: Candidate | None,
              assumptions: CostAssumptions) -> list[BigJob]:
    if all_jobs_buy is None or len(jobs) < 2:
        return []
    found = []
    for job in jobs:
        others = [other for other in jobs if other is not job]
        without = _cheapest_buy(_eligible(candidates_for(others, assumptions), assumptions))
        if without is None or without.upfront_usd > BIG_JOB_SHARE * all_jobs_buy.upfront_usd:
            continue
        rentals = [o for o in job.plan.options if o.rent_usd is not None and (assumptions.allow_rocm or not o.rocm)]
        rental = min(rentals, key=lambda o: o.rent_usd, default=None)
        found.append(BigJob(job=job.name, without_it=without.id, without_it_usd=without.upfront_usd,
                            rent_it=rental.id if rental else None, rent_it_usd=rental.rent_usd if rental else None))
    return found


def _break_even(buy: Candidate | None, rent: Candidate | None, catalog: HardwareCatalog,
                assumptions: CostAssumptions) -> BreakEven | None:
    if buy is None or rent is None or buy.hours is None or buy.rent_usd is not None:
        return None
    gpus = catalog.systems[buy.id].gpu_count * buy.most_nodes if buy.id in catalog.systems else 1
    return break_even(buy.upfront_usd, buy.hours, buy.energy_usd or 0.0, gpus, rent.rent_usd,
                      assumptions.amortisation_years)


def build_report(jobs_file: JobsFile, catalog: HardwareCatalog, made_on: date | None = None) -> Report:
    from vramplan.api import estimate

    given = jobs_file.assumptions
    assumptions = CostAssumptions(utilisation=given.mfu, amortisation_years=given.amortise_years,
                                  energy_usd_per_kwh=given.kwh_price, busy_share=given.busy_share,
                                  headroom=parse_fraction(given.headroom, "headroom"), host_usd=given.host_usd,
                                  workstation_host_usd=given.workstation_host_usd, allow_rocm=given.allow_rocm)
    results = []
    for job in jobs_file.job:
        try:
            job_estimate = estimate(job.model, job.method, **job.options)
        except UsageError as err:
            raise UsageError(f"job {job.name!r}: {err}") from None
        except (TypeError, ValueError) as err:
            raise UsageError(f"job {job.name!r}: bad options ({str(err).splitlines()[0]})") from None
        tokens = round(parse_count(job.tokens, f"job {job.name!r} tokens") * job.epochs)
        results.append(JobResult(name=job.name, estimate=job_estimate,
                                 plan=plan_options(job_estimate, catalog, tokens, assumptions)))
    candidates = candidates_for(results, assumptions)
    eligible = _eligible(candidates, assumptions)
    buy = _cheapest_buy(eligible)
    rentals = [c for c in eligible if c.rent_usd is not None]
    rent = min(rentals, key=lambda c: (c.rent_usd, c.id), default=None)
    timed = [c for c in eligible if c.hours is not None]
    # among equally fast options, a rental before a purchase, then the cheaper
    fastest = min(timed, default=None, key=lambda c: (c.hours, c.rent_usd is None,
                                                      _job_cost(c) if _job_cost(c) is not None else float("inf"), c.id))
    return Report(title=jobs_file.title, made_on=made_on or date.today(), assumptions=assumptions, jobs=results,
                  candidates=candidates, cheapest_buy=buy, cheapest_rent=rent, fastest=fastest,
                  break_even=_break_even(buy, rent, catalog, assumptions), tiers=_tiers(results, assumptions),
                  big_jobs=_big_jobs(results, buy, assumptions),
                  unfit_jobs=[UnfitJob(job=job.name, needed_bytes=job.estimate.device_bytes,
                                       largest_gpu_bytes=max(gpu.memory_bytes for gpu in catalog.gpus.values()))
                              for job in results if not job.plan.options],
                  rules=rule_rows(catalog, assumptions.headroom, assumptions.allow_rocm),
                  serving=[serving_pick(entry, catalog, assumptions.allow_rocm, assumptions.host_usd,
                                        assumptions.workstation_host_usd) for entry in jobs_file.serve])

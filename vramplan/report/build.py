"""Everything a procurement report shows, computed (no rendering here)."""

from __future__ import annotations

from datetime import date

from pydantic import BaseModel

from vramplan.units import parse_count, parse_fraction
from vramplan.errors import UsageError
from vramplan.result import Estimate
from vramplan.hardware.catalog import HardwareCatalog
from vramplan.hardware.plan import CostAssumptions, Plan, PlanOption, plan_options
from vramplan.report.jobs import JobsFile

GB = 10**9

# The seed material's rule-of-thumb table (a hardware vendor's sizing guide), row by row, with the single-GPU
# reading of its hardware advice where it gives one.
RULES_OF_THUMB = (
    ("mistral-7b", "qlora", "8-12 GB cards, tiny batches", 12),
    ("qwen2.5-32b", "full", "~512 GB: 4 x 141 GB or 8 x 96 GB", 512),
    ("qwen2.5-32b", "lora", "~64 GB: 2 x 32 GB or 1 x 96 GB", 64),
    ("qwen2.5-32b", "qlora", "~16 GB: one 16-24 GB card", 16),
    ("llama-3.1-70b", "lora", "2 x 96 GB", 192),
)


class JobResult(BaseModel):
    name: str
    estimate: Estimate
    plan: Plan


class Candidate(BaseModel):
    """An option (GPU or system id) that runs every job, with the totals over the jobs."""

    id: str
    name: str
    kind: str
    gpu: str
    hours: float | None
    cost_usd: float | None
    smallest_headroom_bytes: int
    cost_basis: str
    rocm: bool
    layouts: list[str] = []  # per job: "<job>: <strategy> on <GPUs per node> x <nodes>", as the plan chose
    most_nodes: int = 1
    host_bytes_per_node: int = 0  # the most host RAM any job's offload needs on one node
    largest_communication_share: float | None = None


class RuleRow(BaseModel):
    model: str
    method: str
    rule: str
    rule_gb: float
    vramplan_bytes: int
    smallest_gpu: str | None


class Report(BaseModel):
    title: str
    made_on: date
    assumptions: CostAssumptions
    jobs: list[JobResult]
    candidates: list[Candidate]
    recommended: Candidate | None
    rules: list[RuleRow]


def _candidates(jobs: list[JobResult]) -> list[Candidate]:
    by_job = [{option.id: option for option in job.plan.options} for job in jobs]
    common = set(by_job[0]).intersection(*by_job[1:]) if by_job else set()
    candidates = []
    for option_id in common:
        picks: list[PlanOption] = [options[option_id] for options in by_job]
        hours = None if any(p.hours is None for p in picks) else sum(p.hours for p in picks)
        cost = None if any(p.cost_usd is None for p in picks) else sum(p.cost_usd for p in picks)
        first = picks[0]
        shares = [p.communication_share for p in picks if p.communication_share is not None]
        candidates.append(Candidate(id=option_id, name=first.name, kind=first.kind, gpu=first.gpu, hours=hours,
                                    cost_usd=cost, smallest_headroom_bytes=min(p.headroom_bytes for p in picks),
                                    cost_basis=first.cost_basis,
                                    rocm=any(note.startswith("ROCm") for note in first.notes),
                                    layouts=[f"{job.name}: {_layout(p)}" for job, p in zip(jobs, picks)],
                                    most_nodes=max(p.nodes for p in picks),
                                    host_bytes_per_node=max(p.host_bytes_needed for p in picks),
                                    largest_communication_share=max(shares) if shares else None))
    candidates.sort(key=lambda c: (c.cost_usd is None, c.cost_usd or 0.0, c.hours or float("inf")))
    return candidates


def _layout(option: PlanOption) -> str:
    nodes = f" x {option.nodes} nodes" if option.nodes > 1 else ""
    offload = f" + offload {option.offload}" if option.offload != "none" else ""
    return f"{option.strategy} on {option.gpus_used} GPU{'s' if option.gpus_used > 1 else ''}{nodes}{offload}"


def _rules(catalog: HardwareCatalog, headroom: float) -> list[RuleRow]:
    from vramplan.api import estimate

    rows = []
    gpus = sorted(catalog.gpus.values(), key=lambda gpu: gpu.memory_bytes)
    for model, method, rule, rule_gb in RULES_OF_THUMB:
        needed = estimate(model, method, batch_size=1, seq_len=2048).device_bytes
        smallest = next((gpu.id for gpu in gpus if gpu.memory_bytes * (1 - headroom) >= needed), None)
        rows.append(RuleRow(model=model, method=method, rule=rule, rule_gb=rule_gb, vramplan_bytes=needed,
                            smallest_gpu=smallest))
    return rows


def build_report(jobs_file: JobsFile, catalog: HardwareCatalog, made_on: date | None = None) -> Report:
    from vramplan.api import estimate

    given = jobs_file.assumptions
    assumptions = CostAssumptions(utilisation=given.mfu, amortisation_years=given.amortise_years,
                                  energy_usd_per_kwh=given.kwh_price,
                                  headroom=parse_fraction(given.headroom, "headroom"))
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
    candidates = _candidates(results)
    # The estimate models the CUDA stack (bitsandbytes, CUDA kernels): ROCm parts are listed, not recommended.
    priced = [c for c in candidates if c.cost_usd is not None and not c.rocm]
    return Report(title=jobs_file.title, made_on=made_on or date.today(), assumptions=assumptions, jobs=results,
                  candidates=candidates, recommended=priced[0] if priced else None, rules=_rules(catalog, assumptions.headroom))

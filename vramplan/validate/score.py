"""Run matrix cases through the estimator and the trace, and summarise the relative errors.

Besides the total peak, each case compares the estimate and the trace group by group (vramplan/result.py
COMPARED_GROUPS) at the trace's peak phase, so two wrong terms can no longer cancel in the total. A group's error is
relative to the trace's peak total, not to the group's own bytes (a small group's noise would blow up), and is held
to the same targets as the total.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable

from pydantic import BaseModel

from vramplan.result import COMPARED_GROUPS, Estimate, Trace, compared_groups
from vramplan.validate.matrix import MatrixCase

# Issue 3's targets over the whole matrix, on peak_allocated_bytes and on each compared group (issue 14).
TARGET_MEDIAN_ABS_ERROR = 0.02
TARGET_MAX_ABS_ERROR = 0.05


class CaseResult(BaseModel):
    """Estimate against trace for one case; error = (estimate - trace) / trace."""

    id: str
    model: str
    method: str
    options: dict
    estimate_bytes: int
    trace_bytes: int
    error: float
    estimate_phase: str
    trace_phase: str
    trace_seconds: float
    # At the trace's peak phase: both sides' components (the estimate's `phases` entry of that phase, the trace's
    # peak), their bytes per COMPARED_GROUPS group, and each group's (estimate - trace) / trace's peak total.
    estimate_components: dict[str, int]
    trace_components: dict[str, int]
    estimate_groups: dict[str, int]
    trace_groups: dict[str, int]
    group_errors: dict[str, float]


class Summary(BaseModel):
    cases: int
    median_abs_error: float
    max_abs_error: float
    worst_under_estimate: float
    worst_case: str
    group_median_abs_error: dict[str, float]
    group_max_abs_error: dict[str, float]
    group_worst_case: dict[str, str]
    meets_target: bool  # the total and every group


def relative_error(estimate: int, measured: int) -> float:
    return (estimate - measured) / measured


def group_column(group: str) -> str:
    """A COMPARED_GROUPS name as a column stem: 'the step (activations, ...)' -> 'the_step'."""
    return group.split(" (")[0].replace(" ", "_")


def compare_groups(predicted: Estimate, measured: Trace) -> dict[str, dict]:
    """CaseResult's per-group fields: both sides at the trace's peak phase, grouped, and each group's error."""
    phase = measured.peak_phase
    estimated = next((entry.components for entry in predicted.phases if entry.phase == phase), None)
    if estimated is None:
        raise ValueError(
            f"the trace peaks in {phase}, a phase the estimate does not model "
            f"({', '.join(entry.phase for entry in predicted.phases)})"
        )
    estimate_groups = compared_groups(estimated, traced=False)
    trace_groups = compared_groups(measured.components, traced=True)
    total = measured.peak_allocated_bytes
    return dict(
        estimate_components=estimated,
        trace_components=measured.components,
        estimate_groups=estimate_groups,
        trace_groups=trace_groups,
        group_errors={group: (estimate_groups[group] - trace_groups[group]) / total for group in COMPARED_GROUPS},
    )


def score_case(case: MatrixCase) -> CaseResult:
    from vramplan.api import estimate, trace

    predicted = estimate(case.model, case.method, **case.options)
    measured = trace(case.model, case.method, **case.options)
    return CaseResult(
        id=case.id,
        model=case.model,
        method=case.method,
        options=case.options,
        estimate_bytes=predicted.peak_allocated_bytes,
        trace_bytes=measured.peak_allocated_bytes,
        error=relative_error(predicted.peak_allocated_bytes, measured.peak_allocated_bytes),
        estimate_phase=predicted.peak_phase,
        trace_phase=measured.peak_phase,
        trace_seconds=measured.trace_seconds,
        **compare_groups(predicted, measured),
    )


class SkippedCase(BaseModel):
    """A case that could not run here (its optional extra, such as torchtune or liger, is not installed)."""

    id: str
    reason: str


def score_cases(
    cases: Iterable[MatrixCase], on_result: Callable[[CaseResult | SkippedCase], None] | None = None
) -> tuple[list[CaseResult], list[SkippedCase]]:
    """Score every case; a case whose extra is missing is skipped and counted, not fatal."""
    from vramplan.errors import CannotCheckError

    results, skipped = [], []
    for case in cases:
        try:
            outcome = score_case(case)
        except CannotCheckError as err:
            outcome = SkippedCase(id=case.id, reason=str(err))
            skipped.append(outcome)
        else:
            results.append(outcome)
        if on_result is not None:
            on_result(outcome)
    return results, skipped


def summarise(results: list[CaseResult]) -> Summary:
    errors = [result.error for result in results]
    worst = max(results, key=lambda result: abs(result.error))
    median_abs = statistics.median(abs(error) for error in errors)
    max_abs = abs(worst.error)
    group_median = {
        group: statistics.median(abs(result.group_errors[group]) for result in results) for group in COMPARED_GROUPS
    }
    group_worst = {
        group: max(results, key=lambda result: abs(result.group_errors[group])) for group in COMPARED_GROUPS
    }
    group_max = {group: abs(result.group_errors[group]) for group, result in group_worst.items()}
    return Summary(
        cases=len(results),
        median_abs_error=median_abs,
        max_abs_error=max_abs,
        worst_under_estimate=min(min(errors), 0.0),
        worst_case=worst.id,
        group_median_abs_error=group_median,
        group_max_abs_error=group_max,
        group_worst_case={group: result.id for group, result in group_worst.items()},
        meets_target=all(
            median <= TARGET_MEDIAN_ABS_ERROR and largest <= TARGET_MAX_ABS_ERROR
            for median, largest in [(median_abs, max_abs), *zip(group_median.values(), group_max.values())]
        ),
    )

"""Run matrix cases through the estimator and the trace, and summarise the relative errors."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable

from pydantic import BaseModel

from vramplan.validate.matrix import MatrixCase

# Issue 3's targets over the whole matrix, on peak_allocated_bytes.
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


class Summary(BaseModel):
    cases: int
    median_abs_error: float
    max_abs_error: float
    worst_under_estimate: float
    worst_case: str
    meets_target: bool


def relative_error(estimate: int, measured: int) -> float:
    return (estimate - measured) / measured


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
    return Summary(
        cases=len(results),
        median_abs_error=median_abs,
        max_abs_error=max_abs,
        worst_under_estimate=min(min(errors), 0.0),
        worst_case=worst.id,
        meets_target=median_abs <= TARGET_MEDIAN_ABS_ERROR and max_abs <= TARGET_MAX_ABS_ERROR,
    )

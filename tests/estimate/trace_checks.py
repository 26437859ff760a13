"""Checks the DPO, KTO and GRPO tests share: each estimate against TRL's own step traced on fake tensors, for a
list of (case, trace, estimate)."""

import statistics

import pytest


def assert_peaks_within(results, median: float = 0.02, largest: float = 0.05) -> None:
    """The allocated peak within `median` at the median and `largest` at most of the trace's."""
    errors = [abs(est.peak_allocated_bytes / trace.peak_allocated_bytes - 1) for _, trace, est in results]
    assert statistics.median(errors) <= median and max(errors) <= largest, errors


def assert_phases_within(results, rel: float, required: tuple[str, ...] = ()) -> None:
    """Every traced phase's peak within `rel` of the estimate's phase; `required` phases in every estimate."""
    for case, trace, est in results:
        estimated = {phase.phase: phase.total_bytes for phase in est.phases}
        for name in required:
            assert name in estimated, (case, name)
        for phase in trace.phases:
            assert estimated[phase.phase] == pytest.approx(phase.peak_bytes, rel=rel), (case, phase.phase)


def assert_reference_copy(results, has_copy) -> None:
    """The reference_model component is a second copy of the weights exactly where `has_copy(case)`, and the trace
    holds the two bf16 copies there."""
    for case, trace, est in results:
        reference = est.phases[-1].components["reference_model"]
        if has_copy(case):
            assert reference == est.phases[-1].components["weights"]
            assert trace.phases[0].categories["parameters"] >= 2 * trace.total_params * 2 * 0.99  # policy + copy
        else:
            assert reference == 0

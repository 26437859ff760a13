"""Scoring a case group by group: each compared group at the trace's peak phase, as a share of the trace's peak."""

import pytest

from vramplan.result import COMPARED_GROUPS, Estimate, PhasePeak, Trace
from vramplan.validate.score import CaseResult, compare_groups, group_column, summarise

PARAMS, STATES, STEP = COMPARED_GROUPS
MIB = 2**20


def _estimate(**phases: dict[str, int]) -> Estimate:
    return Estimate.model_construct(
        phases=[PhasePeak(phase=phase, components=parts) for phase, parts in phases.items()]
    )


def _trace(phase: str, components: dict[str, int]) -> Trace:
    return Trace.model_construct(peak_phase=phase, components=components,
                                 peak_allocated_bytes=sum(components.values()))


def _result(case_id: str, error: float, group_errors: dict[str, float]) -> CaseResult:
    return CaseResult(
        id=case_id, model="m", method="lora", options={}, estimate_bytes=1, trace_bytes=1, error=error,
        estimate_phase="backward", trace_phase="backward", trace_seconds=0.0, estimate_components={},
        trace_components={}, estimate_groups=dict.fromkeys(COMPARED_GROUPS, 0),
        trace_groups=dict.fromkeys(COMPARED_GROUPS, 0), group_errors=group_errors,
    )


def test_two_wrong_terms_that_cancel_in_the_total_show_in_their_groups():
    estimate = _estimate(
        forward={"weights": 100 * MIB, "optimizer_states": 40 * MIB, "activations": 70 * MIB},
        backward={"weights": 90 * MIB, "lora_adapters": 10 * MIB, "optimizer_states": 30 * MIB,
                  "activations": 50 * MIB, "logits_loss": 20 * MIB},
    )
    trace = _trace("backward", {"parameters": 100 * MIB, "optimizer_states": 40 * MIB, "activations": 40 * MIB,
                                "temporaries": 20 * MIB})
    compared = compare_groups(estimate, trace)
    assert compared["estimate_components"]["logits_loss"] == 20 * MIB  # the estimate's backward entry, not forward
    assert compared["estimate_groups"] == {PARAMS: 100 * MIB, STATES: 30 * MIB, STEP: 70 * MIB}
    assert compared["trace_groups"] == {PARAMS: 100 * MIB, STATES: 40 * MIB, STEP: 60 * MIB}
    assert compared["group_errors"] == {PARAMS: 0.0, STATES: -10 / 200, STEP: 10 / 200}  # shares of the 200 MiB peak


def test_a_phase_the_estimate_lacks_is_an_error():
    with pytest.raises(ValueError, match="optimizer"):
        compare_groups(_estimate(forward={"weights": 1}), _trace("optimizer", {"parameters": 1}))


def test_summary_holds_every_group_to_the_targets():
    within = {PARAMS: 0.0, STATES: 0.001, STEP: -0.01}
    results = [_result("a", 0.01, within), _result("b", 0.0, {**within, STEP: 0.06}), _result("c", 0.0, within)]
    summary = summarise(results)
    assert summary.max_abs_error == 0.01 and summary.median_abs_error == 0.0
    assert summary.group_max_abs_error[STEP] == 0.06 and summary.group_worst_case[STEP] == "b"
    assert summary.group_median_abs_error[STATES] == 0.001
    assert not summary.meets_target  # the total is within 5%, the step group of case b is not
    results[1] = _result("b", 0.0, within)
    assert summarise(results).meets_target


def test_csv_columns_per_group():
    pytest.importorskip("pandas")
    from vramplan.validate.report import matrix_frame, matrix_table_text

    frame = matrix_frame([_result("a", 0.01, {PARAMS: 0.0, STATES: 0.001, STEP: -0.02})])
    assert group_column(STEP) == "the_step"
    assert {"resident_parameters_error", "optimizer_states_trace_bytes", "the_step_estimate_bytes"} <= set(frame)
    assert frame["the_step_error_pct"].tolist() == [-2.0]
    assert not {"group_errors", "estimate_components"} & set(frame)
    assert "the_step_error_pct" in matrix_table_text(frame)

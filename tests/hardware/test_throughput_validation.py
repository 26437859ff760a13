"""The throughput model against published runs: its calibration constants are what the validation computes, and
the model's terms move time the way their mechanism says."""

import pytest

from vramplan.hardware import throughput
from vramplan.hardware.catalog import load_hardware
from vramplan.hardware.throughput import compute_seconds, matmul_efficiency, step_work
from vramplan.models.catalog import resolve_model
from vramplan.training import resolve_setup
from vramplan.validate.throughput import load_cases, predict, summarise


@pytest.fixture(scope="module")
def summary():
    catalog = load_hardware()
    return summarise([predict(case, catalog) for case in load_cases()])


def test_median_time_error_within_the_goal(summary):
    # issue 17: median |error| on job time <= 20% over every published run the model covers
    assert summary.median_abs_time_error <= 0.20
    assert sum(r.time_error is not None and not r.case.excluded for r in summary.results) >= 30


def test_stack_efficiency_and_time_range_are_the_validations_figures(summary):
    assert throughput.STACK_EFFICIENCY == pytest.approx(summary.median_ideal_share, abs=0.01)
    low, high = throughput.TIME_RANGE
    assert low == pytest.approx(summary.time_ratio_low, abs=0.02)
    assert high == pytest.approx(summary.time_ratio_high, abs=0.02)


def test_every_case_names_a_catalog_gpu_and_says_its_source():
    gpus = load_hardware().gpus
    for case in load_cases():
        assert case.gpu in gpus and case.source and case.setup


def test_mamf_efficiency_is_measured_where_known():
    gpus = load_hardware().gpus
    a100, _ = matmul_efficiency(gpus["a100-sxm4-80gb"])
    assert a100 == pytest.approx(267.9 / 312, rel=1e-3)
    default, basis = matmul_efficiency(gpus["rtx-4090"])
    assert default == throughput.DEFAULT_MATMUL_EFFICIENCY and "no MAMF" in basis


def test_qlora_pays_dequantisation_and_checkpointing_pays_a_forward():
    spec = resolve_model("8b").spec
    gpu = load_hardware().gpus["a100-sxm4-80gb"]
    lora = step_work(spec, resolve_setup("lora", seq_len=2048, gradient_checkpointing=True), 0)
    qlora = step_work(spec, resolve_setup("qlora", seq_len=2048, gradient_checkpointing=True), 0)
    assert lora.dequant_bytes == 0 and qlora.dequant_bytes > 0
    assert compute_seconds(qlora, 2048, gpu) > compute_seconds(lora, 2048, gpu)
    plain = step_work(spec, resolve_setup("lora", seq_len=2048, gradient_checkpointing=False), 0)
    assert compute_seconds(lora, 2048, gpu) > compute_seconds(plain, 2048, gpu)


def test_a_users_mfu_replaces_the_model():
    spec = resolve_model("8b").spec
    gpu = load_hardware().gpus["h100-sxm5-80gb"]
    work = step_work(spec, resolve_setup("full", seq_len=2048, gradient_checkpointing=False), 10**9)
    seconds = compute_seconds(work, 2048, gpu, utilisation=0.5)
    assert seconds == pytest.approx(work.flops_per_token * 2048 / (gpu.bf16_dense_tflops * 1e12 * 0.5))

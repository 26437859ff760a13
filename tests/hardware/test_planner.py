"""The planner's arithmetic (FLOPs, speed, time, cost), the options it offers, fit and suggestions."""

import pytest

from vramplan.api import estimate
from vramplan.hardware.catalog import Price, load_hardware
from vramplan.hardware.fit import largest_fitting
from vramplan.hardware.plan import CostAssumptions, _cost, plan_options
from vramplan.hardware.suggest import suggest_changes
from vramplan.request import RunRequest
from vramplan.hardware.throughput import step_flops, tokens_per_second
from vramplan.models.catalog import resolve_model
from vramplan.training import resolve_setup
from vramplan.estimate import estimate_memory

# Llama-3.1-8B by hand: per layer q,o 4096x4096, k,v 1024x4096, gate/up/down 4096x14336.
LLAMA8B_LINEARS = 32 * (2 * 4096 * 4096 + 2 * 1024 * 4096 + 3 * 4096 * 14336)
LLAMA8B_LM_HEAD = 128256 * 4096


def test_full_fine_tuning_flops_are_six_per_weight_and_attention_mac():
    flops = step_flops(resolve_model("8b").spec, resolve_setup("full", seq_len=2048, gradient_checkpointing=False))
    attention = 32 * 2048 * 4096  # 32 layers x (QK^T + AV) x seq x q_size / 2 (causal)
    assert LLAMA8B_LINEARS == 6_979_321_856
    assert flops.forward_per_token == 2 * (LLAMA8B_LINEARS + LLAMA8B_LM_HEAD + attention)
    assert flops.per_token == 6 * (LLAMA8B_LINEARS + LLAMA8B_LM_HEAD + attention)


def test_lora_skips_base_weight_gradients_and_checkpointing_adds_a_forward():
    spec = resolve_model("8b").spec
    lora = step_flops(spec, resolve_setup("lora", seq_len=2048, gradient_checkpointing=False))
    full = step_flops(spec, resolve_setup("full", seq_len=2048, gradient_checkpointing=False))
    adapters = 32 * 16 * (2 * (4096 + 4096) + 2 * (4096 + 1024) + 2 * (4096 + 14336) + (14336 + 4096))
    assert lora.per_token == full.per_token - 2 * (LLAMA8B_LINEARS + LLAMA8B_LM_HEAD) + 6 * adapters
    ckpt = step_flops(spec, resolve_setup("lora", seq_len=2048, gradient_checkpointing=True))
    assert ckpt.recompute_per_token == lora.forward_per_token - 2 * LLAMA8B_LM_HEAD


def test_tokens_per_second_by_hand():
    # 989.4 TFLOPS x 40% / 48e9 FLOPs per token = 8245 tokens/s
    assert tokens_per_second(48 * 10**9, 989.4, 0.40) == pytest.approx(8245.0)


def test_cloud_cost_is_hourly_price_times_hours():
    price = Price(amount=55.04, currency="USD", kind="cloud-hourly", date="2026-01-21", source="t")
    cost, basis = _cost(price, 10.0, 5600, CostAssumptions())
    assert cost == pytest.approx(550.40) and "55.04 USD/h" in basis


def test_purchase_cost_is_amortised_share_plus_energy():
    price = Price(amount=30000, currency="USD", kind="msrp", date="2022", source="t")
    hours = 26.28  # 1/1000 of three years
    cost, _ = _cost(price, hours, 700, CostAssumptions(amortisation_years=3, energy_usd_per_kwh=0.15))
    assert cost == pytest.approx(30.0 + 0.7 * 26.28 * 0.15)


def test_plan_marks_cheapest_and_fastest_and_respects_headroom():
    job = estimate("8b", "qlora", batch_size=1, seq_len=2048)
    plan = plan_options(job, load_hardware(), 50_000_000, CostAssumptions(headroom=0.10))
    assert plan.options and all(o.needed_bytes <= o.gpu_memory_bytes * 0.9 for o in plan.options)
    # a rejected option failed every layout tried: too big, or offload without the host RAM for it
    assert all(not check.fits for o in plan.rejected for check in o.layouts_tried)
    assert all(job.device_bytes > o.gpu_memory_bytes * 0.9 for o in plan.rejected)
    costs = [o.cost_usd for o in plan.options if o.cost_usd is not None]
    assert costs == sorted(costs)
    assert sum(o.cheapest for o in plan.options) == 1 and sum(o.fastest for o in plan.options) == 1
    cheapest = next(o for o in plan.options if o.cheapest)
    assert cheapest.cost_usd == min(costs)
    fastest = next(o for o in plan.options if o.fastest)
    assert fastest.hours == min(o.hours for o in plan.options if o.hours is not None)
    for option in plan.options:
        if option.tokens_per_second:
            assert option.hours == pytest.approx(50_000_000 / option.tokens_per_second / 3600)


def test_fit_finds_the_boundary():
    model, setup = resolve_model("8b"), resolve_setup("qlora", seq_len=2048)
    usable = int(load_hardware().gpus["rtx-4090"].memory_bytes * 0.9)
    result = largest_fitting(model, setup, "batch-size", usable)
    assert result.value >= 1 and result.estimate.device_bytes <= usable
    above = estimate_memory(model, setup.model_copy(update={"batch_size": result.value + 1}))
    assert above.device_bytes > usable
    assert result.estimates_run <= 16


def test_fit_reports_nothing_fits():
    result = largest_fitting(resolve_model("70b"), resolve_setup("full"), "batch-size", 24 * 2**30)
    assert result.value is None and result.estimate is None


def test_suggestions_are_ranked_by_memory_saved():
    options = {"batch_size": 4, "seq_len": 4096, "gradient_checkpointing": False}
    job = estimate("70b", "lora", **options)
    suggestions = suggest_changes(job, 80 * 2**30, RunRequest.of("70b", "lora", **options))
    saved = [s.saved_bytes for s in suggestions]
    assert saved == sorted(saved, reverse=True) and saved[0] > 0
    changes = [s.change for s in suggestions]
    assert changes[0] == "turn on gradient checkpointing" and suggestions[0].flags == ["--gradient-checkpointing"]
    sharding = next(s for s in suggestions if s.change.startswith("more GPUs: FSDP over"))
    sharded = estimate("70b", "lora", **options, gpus=8, strategy="fsdp")
    assert sharding.needed_bytes == sharded.device_bytes and sharding.flags == ["--gpus", "8", "--strategy", "fsdp"]
    # Without checkpointing QLoRA's fp32 residual stream (k-bit preparation) costs more activation memory than
    # its 4-bit weights save at this length, so it is not offered; with checkpointing it saves about 86 GiB.
    assert not any("QLoRA" in change for change in changes)
    short = {"batch_size": 1, "seq_len": 2048}
    with_ckpt = suggest_changes(estimate("70b", "lora", **short), 80 * 2**30,
                                RunRequest.of("70b", "lora", **short))
    qlora = next(s for s in with_ckpt if "QLoRA" in s.change)
    assert qlora.saved_bytes > 80 * 2**30 and qlora.fits and qlora.flags == ["--method", "qlora"]
    assert qlora.needed_bytes == estimate("70b", "qlora", **short).device_bytes



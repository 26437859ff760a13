"""The planner's arithmetic (FLOPs, speed, time, cost), the options it offers, fit and suggestions."""

import pytest

from vramplan.api import estimate
from vramplan.hardware.catalog import load_hardware
from vramplan.hardware.fit import largest_fitting
from vramplan.hardware.plan import CostAssumptions, plan_options
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


def test_plan_marks_cheapest_and_fastest_and_respects_headroom():
    job = estimate("8b", "qlora", batch_size=1, seq_len=2048)
    plan = plan_options(job, load_hardware(), 50_000_000, CostAssumptions(headroom=0.10))
    assert plan.options and all(o.needed_bytes <= o.gpu_memory_bytes * 0.9 for o in plan.options)
    # a rejected option failed every layout tried: too big, or offload without the host RAM for it
    assert all(not check.fits for o in plan.rejected for check in o.layouts_tried)
    assert all(job.device_bytes > o.gpu_memory_bytes * 0.9 for o in plan.rejected)
    costs = [o.cost_usd for o in plan.options if o.cost_usd is not None]
    assert costs == sorted(costs)
    for flag in ("cheapest", "cheapest_buy", "cheapest_rent", "fastest"):
        assert sum(getattr(o, flag) for o in plan.options) == 1
    cuda = [o for o in plan.options if not o.rocm]
    cheapest = next(o for o in plan.options if o.cheapest)
    assert not cheapest.rocm and cheapest.cost_usd == min(o.cost_usd for o in cuda if o.cost_usd is not None)
    fastest = next(o for o in plan.options if o.fastest)
    assert fastest.hours == min(o.hours for o in cuda if o.hours is not None)
    buy = next(o for o in plan.options if o.cheapest_buy)
    assert buy.purchase.upfront_usd == min(o.purchase.upfront_usd for o in cuda if o.purchase is not None)
    rent = next(o for o in plan.options if o.cheapest_rent)
    assert rent.rent_usd == min(o.rent_usd for o in cuda if o.rent_usd is not None)
    # a cloud instance is rented, never bought; an SXM module is never bought bare
    assert all(o.purchase is None for o in plan.options if o.id.startswith(("aws-", "gcp-", "lambda-")))
    assert all(o.purchase is None and "module" in o.not_buyable for o in plan.options if o.id == "h100-sxm5-80gb")
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




def test_rocm_parts_take_no_mark_unless_allowed():
    from vramplan.hardware.plan import mark_options

    plan = plan_options(estimate("8b", "lora"), load_hardware(), 10**8, CostAssumptions())
    keep = next(o for o in plan.options if o.rent_usd is not None)
    flipped = [o.model_copy(update={"rocm": o is not keep}) for o in plan.options]
    marked = mark_options(flipped, allow_rocm=False)
    assert all(not (o.cheapest or o.cheapest_buy or o.cheapest_rent or o.fastest) for o in marked if o.rocm)
    allowed = mark_options(flipped, allow_rocm=True)
    assert any(o.rocm and (o.cheapest or o.fastest) for o in allowed)


def test_planner_trades_time_for_memory_before_adding_nodes():
    # 70B full fine-tuning without checkpointing: one 8 x B200 node fits once checkpointing is on, and says so
    job = estimate("70b", "full", gradient_checkpointing=False)
    plan = plan_options(job, load_hardware(), 10**8, CostAssumptions())
    b200 = next(o for o in plan.options if o.id == "hgx-b200-8gpu")
    assert b200.nodes == 1 and b200.traded == ["gradient checkpointing"]
    assert b200.settings == {"gradient_checkpointing": True} and "trading time for memory" in b200.choice
    assert not any(c.fits for c in b200.layouts_tried if not c.traded and c.nodes == 1 and c.offload == "none")

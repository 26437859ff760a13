"""FSDP2's units and dtypes as accelerate makes them (the estimate's side; the trace's side is in the matrix)."""

from __future__ import annotations

import pytest

from vramplan.estimate import estimate_memory
from vramplan.estimate.dtypes import FP32_BYTES, HALF_BYTES
from vramplan.estimate.strategies import rank_states
from vramplan.estimate.strategies.fsdp_units import fsdp_groups
from vramplan.models.catalog import resolve_model
from vramplan.training import resolve_setup


def _groups(model: str, method: str, **options):
    spec = resolve_model(model).spec
    return {g.name: g for g in fsdp_groups(spec, resolve_setup(method, gpus=8, strategy="fsdp", **options))}


def test_full_fine_tuning_units_follow_accelerate():
    groups = _groups("llama-3.1-8b", "full")
    # every decoder layer, the input embedding, a tail [final norm, lm_head]; the root keeps nothing
    assert set(groups) == {"decoder layer", "input embedding", "tail (lm_head)"}
    assert groups["decoder layer"].count == 32 and groups["decoder layer"].reshard_after_forward
    assert not groups["tail (lm_head)"].reshard_after_forward and len(groups["tail (lm_head)"].tensors) == 2
    # Trainer bf16: trainable parameters upcast to fp32 shards, gathered in bf16
    assert set(groups["decoder layer"].sharded_widths) == {FP32_BYTES}
    assert groups["decoder layer"].gathered_width == HALF_BYTES


def test_peft_models_keep_the_final_norm_in_the_root_and_adapters_fp32():
    groups = _groups("llama-3.1-8b", "lora")
    # accelerate's _find_final_norm finds no norm through the peft wrapper: the tail is lm_head alone
    assert set(groups) == {"decoder layer", "input embedding", "tail (lm_head)", "root (final norm)"}
    layer = groups["decoder layer"]
    widths = {(t.adapter, w) for t, w in zip(layer.tensors, layer.sharded_widths)}
    assert widths == {(False, HALF_BYTES), (True, FP32_BYTES)}


def test_tied_embeddings_form_one_unit_never_resharded():
    groups = _groups("qwen2.5-0.5b", "full")
    assert "input embedding" not in groups and not groups["tail (tied embedding)"].reshard_after_forward


def test_qlora_is_not_upcast_and_keeps_quant_states_whole():
    spec = resolve_model("llama-3.1-8b").spec
    setup = resolve_setup("qlora", gpus=8, strategy="fsdp")
    layer = next(g for g in fsdp_groups(spec, setup) if g.name == "decoder layer")
    assert all(w == t.width for t, w in zip(layer.tensors, layer.sharded_widths))
    assert layer.extra_bytes > 0  # absmax and code tables stay on every rank
    states = rank_states(spec, setup)
    assert states.weights > 32 * layer.extra_bytes


@pytest.mark.parametrize("method", ["full", "lora", "qlora"])
def test_per_rank_peak_falls_as_ranks_are_added(method):
    model = resolve_model("llama-3.1-8b")
    peaks = [estimate_memory(model, resolve_setup(method, gpus=n, strategy="fsdp")).peak_allocated_bytes
             for n in (2, 4, 8)]
    assert peaks[0] > peaks[1] > peaks[2]


def test_fp32_precision_gathers_in_fp32_without_upcast():
    groups = _groups("llama-3.1-8b", "full", precision="fp32")
    assert groups["decoder layer"].gathered_width is None
    assert set(groups["decoder layer"].sharded_widths) == {FP32_BYTES}


def test_offloaded_parameters_leave_only_gathered_units_on_the_gpu():
    model = resolve_model("llama-3.1-8b")
    resident = estimate_memory(model, resolve_setup("full", gpus=8, strategy="fsdp", gradient_checkpointing=True))
    offloaded = estimate_memory(model, resolve_setup("full", gpus=8, strategy="fsdp", offload="params",
                                                     gradient_checkpointing=True))
    assert offloaded.components["weights"] == 0 and offloaded.host_bytes > 0
    assert offloaded.peak_allocated_bytes < resident.peak_allocated_bytes / 2

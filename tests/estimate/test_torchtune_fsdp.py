"""torchtune's distributed recipes: raw FSDP2 as training.shard_model applies it (estimate/strategies/fsdp_units.py
torchtune_fsdp_groups, compose/torchtune.py _estimate_distributed). The totals and component groups are held to
traces of torchtune's own shard_model by the matrix's *-tt-fsdp* cases (tests/measure/test_trace_crosscheck.py);
these tests pin the wrapping and what is refused."""

import pytest

from vramplan.api import estimate
from vramplan.errors import NotModelledError
from vramplan.estimate.strategies.fsdp_units import TORCHTUNE_ROOT, fsdp_groups
from vramplan.models.catalog import resolve_model
from vramplan.training import resolve_setup


def test_units_are_each_layer_and_a_bf16_root():
    spec = resolve_model("llama-3.1-8b").spec
    groups = fsdp_groups(spec, resolve_setup("full", stack="torchtune", gpus=8, strategy="fsdp"))
    assert [g.name for g in groups] == ["decoder layer", TORCHTUNE_ROOT]
    root = groups[-1]
    assert [t.name for t in root.tensors] == ["embedding", "final norm", "lm_head"]
    # no MixedPrecisionPolicy, no upcast: every shard and every gather in the model's bf16
    assert {w for g in groups for w in g.sharded_widths} == {2} and all(g.gathered_width is None for g in groups)


def test_full_fine_tuning_states_are_bf16_and_sharded():
    """8 B per parameter (bf16 weight, gradient and two Adam states) / N, where accelerate's FSDP2 upcast is 16 B."""
    torchtune = estimate("8b", "full", stack="torchtune", gpus=8, strategy="fsdp")
    accelerate = estimate("8b", "full", gpus=8, strategy="fsdp")
    assert torchtune.components["weights"] * 2 == pytest.approx(accelerate.components["weights"], rel=0.05)
    assert torchtune.components["optimizer_states"] * 2 == pytest.approx(
        accelerate.components["optimizer_states"], rel=0.01)
    assert any("torchtune distributed recipe" in line for line in torchtune.assumptions)


@pytest.mark.parametrize("options, message", [
    (dict(method="qlora"), "NF4"),
    (dict(method="full", offload="params"), "fsdp_cpu_offload"),
    (dict(method="full", strategy="zero3"), "FSDP2"),
])
def test_what_the_distributed_trace_does_not_run_is_refused(options, message):
    method = options.pop("method")
    with pytest.raises(Exception, match=message) as raised:
        estimate("8b", method, **{"stack": "torchtune", "gpus": 4, "strategy": "fsdp", **options})
    assert raised.type.__name__ in ("NotModelledError", "UsageError")


def test_single_device_answers_are_unchanged_by_the_distributed_path():
    one = estimate("8b", "lora", stack="torchtune")
    assert one.setup.world_size == 1 and not any("distributed" in line for line in one.assumptions)
    with pytest.raises(NotModelledError):
        estimate("8b", "lora", stack="torchtune", gpus=2, strategy="fsdp", activation_offload=True)

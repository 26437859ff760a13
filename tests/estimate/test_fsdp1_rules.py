"""FSDP1's byte rules (estimate/strategies/fsdp1.py) on hand-worked units, and how --strategy fsdp1 resolves.

The totals are held to traces of the real FullyShardedDataParallel by the matrix's fsdp1 cases
(tests/measure/test_trace_crosscheck.py, per component group); these tests pin each rule's arithmetic."""

import pytest

from vramplan.api import estimate
from vramplan.errors import NotModelledError, UsageError
from vramplan.estimate.params import ParamTensor
from vramplan.estimate.strategies.fsdp1 import FlatUnit, fsdp1_units
from vramplan.models.catalog import resolve_model
from vramplan.training import Method, Strategy, resolve_setup


def _unit(numels, world, width=4, gathered=2, trainable=True):
    tensors = [ParamTensor(shape=(n,), width=2, trainable=trainable) for n in numels]
    return FlatUnit(name="u", count=1, tensors=tensors, width=width, gathered_width=gathered, trains=trainable,
                    world=world)


def test_a_flat_parameter_is_padded_to_the_world_and_split_evenly():
    unit = _unit([1000, 24], world=3)  # 1024 elements -> padded to 1026, 342 per rank
    assert unit.shard == 342
    assert unit.sharded_bytes == 1536  # 342 x 4 B = 1368, in 512 B blocks
    assert unit.gathered_bytes == 2560  # 1026 x 2 B = 2052
    assert unit.low_precision_shard == 1024  # 342 x 2 B, only when the gathered dtype differs
    assert _unit([1024], world=4, gathered=4).low_precision_shard == 0


def test_the_reduce_moment_holds_the_gradient_its_padded_copy_the_output_and_its_cast():
    unit = _unit([1000, 24], world=3)
    # unsharded 1024 x 2 = 2048; F.pad to 1026 x 2 = 2052 -> 2560; output 342 x 2 -> 1024; cast 342 x 4 -> 1536
    assert unit.reduce_moment == 2048 + 2560 + 1024 + 1536
    assert _unit([1026], world=3, width=2).reduce_moment == 2560 + 0 + 1024 + 0  # no padding, no cast
    assert _unit([1026], world=3, trainable=False).reduce_moment == 0


def test_rank0_holds_the_first_shard_of_each_trainable_tensor():
    unit = _unit([300, 300, 424], world=4)  # shard 256: rank 0 holds 256 of the first tensor only
    assert unit.rank0_trainable() == [(256,)]
    assert _unit([100, 200], world=2).rank0_trainable() == [(100,), (50,)]


@pytest.fixture(scope="module")
def llama():
    return resolve_model("llama-3.1-8b").spec


def test_units_follow_accelerate_and_peft(llama):
    full = fsdp1_units(llama, resolve_setup("full", gpus=4, strategy="fsdp1"))
    assert [u.name for u in full] == ["decoder layer", "root"]
    assert full[0].count == 32 and full[0].width == 4 and full[0].gathered_width == 2  # upcast, gathered in bf16
    pure = fsdp1_units(llama, resolve_setup("full", gpus=4, strategy="fsdp1", precision="bf16-pure"))
    assert pure[0].width == 2 and pure[0].gathered_width == 2
    lora = fsdp1_units(llama, resolve_setup("lora", gpus=4, strategy="fsdp1", lora_targets="q_proj,v_proj"))
    names = [u.name for u in lora]
    assert names == ["decoder layer", "decoder layer: q_proj.lora_A", "decoder layer: q_proj.lora_B",
                     "decoder layer: v_proj.lora_A", "decoder layer: v_proj.lora_B", "root"]
    assert not lora[0].trains and lora[0].width == 2  # frozen base: no upcast
    assert lora[1].trains and lora[1].width == 4 and lora[1].gathered_width == 2
    qlora = fsdp1_units(llama, resolve_setup("qlora", gpus=2, strategy="fsdp1", precision="bf16-pure"))
    assert qlora[0].gathered_width == 2 and qlora[1].gathered_width == 2  # the 4-bit storage dtype
    assert qlora[1].width == 4  # peft's fp32 adapters, never upcast (already fp32)


def test_pure_bf16_halves_full_fine_tunings_model_states_against_trainer_bf16():
    mixed = estimate("8b", "full", gpus=2, strategy="fsdp1")
    pure = estimate("8b", "full", gpus=2, strategy="fsdp1", precision="bf16-pure")
    for name in ("weights", "optimizer_states"):
        assert abs(mixed.components[name] - 2 * pure.components[name]) < 2**20


def test_fsdp1_resolves_its_own_settings():
    assert resolve_setup("qlora", gpus=2, strategy="fsdp1").quant.kbit_prep is False
    assert resolve_setup("qlora", gpus=2, strategy="fsdp1").strategy is Strategy.FSDP1
    assert resolve_setup("qlora", gpus=2, strategy="fsdp2").quant.kbit_prep is True
    with pytest.raises(NotModelledError, match="kbit"):
        resolve_setup("qlora", gpus=2, strategy="fsdp1", kbit_prep=True)
    assert resolve_setup("full", gpus=2, strategy="fsdp1", offload="params").offload.value == "params"
    with pytest.raises(UsageError, match="fsdp1"):
        resolve_setup("full", gpus=2, strategy="fsdp2", forward_prefetch=True)
    with pytest.raises(UsageError, match="hybrid-shard"):
        resolve_setup("full", gpus=2, strategy="fsdp1", fsdp1_sharding="hybrid-shard-zero2")
    with pytest.raises(UsageError, match="FSDP2"):
        resolve_setup("full", gpus=2, strategy="fsdp1", stack="torchtune")
    assert resolve_setup(Method.FULL, gpus=2, strategy="fsdp", transformers="4").strategy is Strategy.FSDP1


def test_fsdp1_and_fsdp2_answer_differently_and_name_their_engines():
    """Both engines shard the same bytes; they differ in flight (FSDP2's all-gather buffers and prefetch, FSDP1's
    root kept gathered): the answers differ, and each names its engine."""
    one = estimate("8b", "lora", gpus=4, strategy="fsdp1")
    two = estimate("8b", "lora", gpus=4, strategy="fsdp2")
    assert one.peak_allocated_bytes != two.peak_allocated_bytes
    assert any("FSDP1" in line for line in one.assumptions) and not any("FSDP1 " in line for line in two.assumptions)



def test_shard_grad_op_keeps_every_layer_gathered_from_forward_to_backward():
    """SHARD_GRAD_OP frees no layer after its forward (_post_forward_reshard): at the logits every layer is gathered,
    on top of FULL_SHARD's root; each is resharded after its own backward."""
    full = estimate("8b", "full", gpus=8, strategy="fsdp1")
    kept = estimate("8b", "full", gpus=8, strategy="fsdp1", fsdp1_sharding="shard-grad-op")
    spec = resolve_model("llama-3.1-8b").spec
    layer = fsdp1_units(spec, resolve_setup("full", gpus=8, strategy="fsdp1"))[0]
    forward = {p.phase: p.components.get("in_flight", 0) for p in kept.phases}["forward"]
    assert forward - {p.phase: p.components.get("in_flight", 0) for p in full.phases}["forward"] >= (
        (spec.num_layers - 1) * layer.gathered_bytes)
    assert any("SHARD_GRAD_OP" in line for line in kept.assumptions)
    with pytest.raises(UsageError, match="fsdp1"):
        resolve_setup("full", gpus=8, strategy="fsdp2", fsdp1_sharding="shard-grad-op")


def test_hybrid_shard_shards_over_the_node_and_no_shard_keeps_units_whole(llama):
    hybrid = fsdp1_units(llama, resolve_setup("full", gpus=4, nodes=2, strategy="fsdp1", fsdp1_sharding="hybrid-shard"))
    full = fsdp1_units(llama, resolve_setup("full", gpus=4, strategy="fsdp1"))
    assert hybrid[0].world == 4 and hybrid[0].sharded_bytes == full[0].sharded_bytes
    whole = fsdp1_units(llama, resolve_setup("full", gpus=2, strategy="fsdp1", fsdp1_sharding="no-shard"))[0]
    assert whole.world == 1 and not whole.sharded and whole.low_precision_shard == 0
    # NO_SHARD under MixedPrecision computes with a 16-bit copy of the whole flat parameter, and reduces in place
    assert whole.gathered_bytes == whole.numel * 2 and whole.reduce_moment == whole.numel * 2 + whole.numel * 4
    pure = fsdp1_units(llama, resolve_setup("lora", gpus=2, strategy="fsdp1", fsdp1_sharding="no-shard",
                                            precision="bf16-pure"))[0]
    assert pure.gathered_bytes == 0  # the frozen bf16 base computes with its own flat parameter


def test_forward_prefetch_gathers_the_next_layer_in_forward(llama):
    from vramplan.estimate.strategies.fsdp1 import fsdp1_states
    from vramplan.estimate.strategies.states import FORWARD_LAYER

    base = resolve_setup("full", gpus=4, strategy="fsdp1", gradient_checkpointing=False)
    ahead = resolve_setup("full", gpus=4, strategy="fsdp1", gradient_checkpointing=False, forward_prefetch=True)
    layer = fsdp1_units(llama, base)[0]
    extra = fsdp1_states(llama, ahead).in_flight[FORWARD_LAYER] - fsdp1_states(llama, base).in_flight[FORWARD_LAYER]
    assert extra == layer.gathered_bytes + layer.low_precision_shard  # the next layer and its 16-bit shard copy
    answer = estimate("8b", "full", gpus=4, strategy="fsdp1", forward_prefetch=True)
    assert any("forward prefetch" in line for line in answer.assumptions)


def test_cpu_offload_moves_shards_gradients_and_optimizer_to_the_host():
    kept = estimate("8b", "full", gpus=4, strategy="fsdp1")
    offloaded = estimate("8b", "full", gpus=4, strategy="fsdp1", offload="params")
    assert offloaded.host_bytes >= kept.components["weights"] + kept.components["optimizer_states"]
    assert offloaded.peak_allocated_bytes < kept.peak_allocated_bytes / 2
    assert offloaded.components.get("optimizer_states", 0) == 0

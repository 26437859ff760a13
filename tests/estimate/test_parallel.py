"""Multi-GPU model states held against DeepSpeed's own estimator (recorded) and against their own invariants.

tests/estimate/deepspeed_reference.json holds what DeepSpeed 0.19.8's estimate_zero2/zero3_model_states_mem_needs
return on a grid (recorded on CPU with `DS_BUILD_OPS=0 pip install deepspeed`; its generator is inside the file).
The tests first check that the formulas below reproduce every record, then that our per-rank states equal those
formulas, with the differences DeepSpeed's code has and its estimator leaves out stated one by one.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vramplan.estimate import estimate_memory
from vramplan.estimate.params import model_units
from vramplan.estimate.strategies import rank_states
from vramplan.estimate.strategies.device_map import layer_split
from vramplan.estimate.strategies.single import single_gpu_states
from vramplan.estimate.strategies.states import LAYER_BACKWARD
from vramplan.models.catalog import resolve_model
from vramplan.training import resolve_setup

REFERENCE = json.loads((Path(__file__).parent / "deepspeed_reference.json").read_text())
BUFFER_FACTOR = 1.5  # additional_buffer_factor, DeepSpeed's default in both estimators


def ds_zero2(p: int, gpn: int, nodes: int, offload: bool) -> tuple[int, int]:
    """deepspeed/runtime/zero/stage_1_and_2.py estimate_zero2_model_states_mem_needs -> (cpu, gpu)."""
    total_gpus = gpn * nodes
    if offload:
        return int(p * max(4 * total_gpus, 16) * BUFFER_FACTOR), 2 * p
    return int(4 * p * gpn * BUFFER_FACTOR), 2 * p + int(18 * p / total_gpus)


def ds_zero3(p: int, llp: int, gpn: int, nodes: int, offload: bool, offload_params: bool, zero_init: bool):
    """deepspeed/runtime/zero/stage3.py estimate_zero3_model_states_mem_needs -> (cpu, gpu)."""
    total_gpus, per_node = gpn * nodes, 1 / nodes
    largest = 4 * llp
    if offload and offload_params:
        cpu = p * 18 * per_node if zero_init else p * max(4 * gpn, 18 * per_node)
        return int(cpu * BUFFER_FACTOR), largest
    if offload:
        cpu = p * 16 * per_node if zero_init else p * max(4 * gpn, 16 * per_node)
        return int(cpu * BUFFER_FACTOR), largest + int(2 * p / total_gpus)
    cpu = llp * 4 * gpn if zero_init else 4 * p * gpn
    return int(cpu * BUFFER_FACTOR), largest + int(18 * p / total_gpus)


def test_the_formulas_reproduce_every_recorded_deepspeed_answer():
    for row in REFERENCE["zero2"]:
        cpu, gpu = ds_zero2(row["total_params"], row["num_gpus_per_node"], row["num_nodes"], row["cpu_offload"])
        assert (cpu, gpu) == (row["cpu_mem_bytes"], row["gpu_mem_bytes"]), row
    for row in REFERENCE["zero3"]:
        cpu, gpu = ds_zero3(row["total_params"], row["largest_layer_params"], row["num_gpus_per_node"],
                            row["num_nodes"], row["cpu_offload"], row["cpu_offload_params"], row["zero_init"])
        assert (cpu, gpu) == (row["cpu_mem_bytes"], row["gpu_mem_bytes"]), row
    assert len(REFERENCE["zero2"]) >= 40 and len(REFERENCE["zero3"]) >= 200


def _states(model: str, method: str, **options):
    resolved = resolve_model(model)
    setup = resolve_setup(method, **options)
    return resolved.spec, setup, rank_states(resolved.spec, setup)


def _at_step(states) -> int:
    """Model states on the GPU while the optimizer step converts the gradient partition to fp32."""
    return (states.weights + states.lora_adapters + states.optimizer_states + states.gradient_partition
            + states.optimizer_temporaries)


@pytest.mark.parametrize("model", ["llama-3.1-8b", "qwen2.5-14b"])
@pytest.mark.parametrize("gpus, nodes", [(2, 1), (8, 1), (8, 2)])
def test_zero2_equals_deepspeeds_estimator(model, gpus, nodes):
    spec, setup, states = _states(model, "full", gpus=gpus, nodes=nodes, strategy="zero2")
    p = spec.total_params
    _, gpu = ds_zero2(p, gpus, nodes, offload=False)
    # 2P 16-bit weights + 2P/N gradient partition + 12P/N fp32 master and Adam + 4P/N fp32 gradient at the step.
    assert _at_step(states) == pytest.approx(gpu, rel=1e-5)


@pytest.mark.parametrize("gpus", [1, 2, 4])
def test_zero2_offload_matches_deepspeed_on_gpu_and_host(gpus):
    spec, setup, states = _states("llama-3.1-8b", "full", gpus=gpus, strategy="zero2", offload="optimizer")
    p = spec.total_params
    cpu, gpu = ds_zero2(p, gpus, 1, offload=True)
    assert _at_step(states) == pytest.approx(gpu, rel=1e-5)
    # With 4N <= 16 DeepSpeed's host figure is 16P (fp32 master, Adam, fp32 gradients) times its 1.5 buffer factor.
    assert states.host_bytes * gpus * BUFFER_FACTOR == pytest.approx(cpu, rel=1e-5)


@pytest.mark.parametrize("model, gpus, nodes", [("llama-3.1-8b", 8, 2), ("llama-3.1-70b", 8, 1),
                                                ("llama-3.1-70b", 8, 4)])
def test_zero3_differs_from_deepspeeds_estimator_only_by_what_its_code_allocates(model, gpus, nodes):
    spec, setup, states = _states(model, "full", gpus=gpus, nodes=nodes, strategy="zero3")
    p, world = spec.total_params, gpus * nodes
    llp = max(t.numel for unit in model_units(spec, setup) for t in unit.tensors)
    _, gpu = ds_zero3(p, llp, gpus, nodes, offload=False, offload_params=False, zero_init=True)
    # The estimator's 18P/N = 2 (16-bit params) + 12 (fp32 master, Adam) + 4 (fp32 gradient of the whole partition).
    # The code (stage3.py) also keeps the 16-bit gradient partition (grad_partitions_flat_buffer, 2P/N) and makes
    # the fp32 gradient one sub-group (sub_group_size 1e9) at a time, after a 16-bit flattened copy (2 + 4 bytes).
    sub_group = min(p / world, 1e9)
    assert _at_step(states) == pytest.approx(gpu - 4 * llp - 4 * p / world + 2 * p / world + 6 * sub_group,
                                             rel=1e-3)
    if p / world <= 1e9:  # one sub-group: exactly 4P/N above the estimator's model states
        assert _at_step(states) == pytest.approx(gpu - 4 * llp + 4 * p / world, rel=1e-3)
    # Its 4 x largest-layer term (gathered 16-bit parameter and gradient) is inside our backward in-flight bytes.
    assert states.in_flight[LAYER_BACKWARD] >= 4 * llp


@pytest.mark.parametrize("offload_params", [False, True])
def test_zero3_offload_matches_deepspeed_on_gpu_and_host(offload_params):
    gpus = 8
    spec, setup, states = _states("llama-3.1-70b", "full", gpus=gpus, strategy="zero3",
                                  offload="params" if offload_params else "optimizer")
    p = spec.total_params
    llp = max(t.numel for unit in model_units(spec, setup) for t in unit.tensors)
    cpu, gpu = ds_zero3(p, llp, gpus, 1, offload=True, offload_params=offload_params, zero_init=True)
    persistent = states.weights if offload_params else 0  # parameters under the persistence threshold stay
    assert _at_step(states) - persistent == pytest.approx(gpu - 4 * llp, rel=1e-3, abs=1)
    assert persistent < 1e-3 * p
    assert states.host_bytes * gpus * BUFFER_FACTOR == pytest.approx(cpu, rel=1e-3)


def test_ddp_buckets_are_a_second_copy_of_the_trainable_gradients():
    _, _, single = _states("llama-3.1-8b", "lora")
    _, _, ddp = _states("llama-3.1-8b", "lora", gpus=4, strategy="ddp")
    assert ddp.comm_buffers == pytest.approx(single.gradients_at_step, rel=1e-3)
    assert ddp.weights == single.weights and ddp.optimizer_states == single.optimizer_states


@pytest.mark.parametrize("method", ["full", "lora", "qlora"])
def test_fsdp_shards_sum_to_the_whole_model(method):
    spec, setup, states = _states("llama-3.1-8b", method, gpus=8, strategy="fsdp")
    whole = single_gpu_states(spec, resolve_setup(method))
    extra = sum(unit.count * unit.extra_bytes for unit in model_units(spec, setup))
    sharded = states.weights + states.lora_adapters - extra
    # accelerate upcasts trainable parameters to fp32 under mixed precision (full fine-tuning: 4 B, not 2 B).
    upcast = 2 if method == "full" else 1
    assert 8 * sharded == pytest.approx(upcast * (whole.weights + whole.lora_adapters - extra), rel=2e-3)


@pytest.mark.parametrize("strategy", ["zero3", "fsdp"])
def test_sharded_strategies_need_less_per_gpu_as_gpus_are_added(strategy):
    peaks = [
        estimate_memory(resolve_model("llama-3.1-70b"), resolve_setup("full", gpus=g, strategy=strategy))
        .peak_allocated_bytes
        for g in (2, 4, 8, 16)
    ]
    assert peaks == sorted(peaks, reverse=True)


def test_hybrid_sharding_shards_within_a_node_only():
    model = resolve_model("llama-3.1-8b")
    hybrid = estimate_memory(model, resolve_setup("full", gpus=4, nodes=2, strategy="fsdp-hybrid"))
    within = estimate_memory(model, resolve_setup("full", gpus=4, strategy="fsdp"))
    assert hybrid.components["weights"] == within.components["weights"]
    assert hybrid.nccl_bytes == 3 * within.nccl_bytes


def test_device_map_splits_layers_and_holds_each_part_once():
    assert [len(r) for r in layer_split(80, 3)] == [27, 27, 26]
    model = resolve_model("llama-3.1-70b")
    one = estimate_memory(model, resolve_setup("qlora"))
    two = estimate_memory(model, resolve_setup("qlora", gpus=2, strategy="device-map"))
    assert one.components["weights"] / 2 < two.components["weights"] < one.components["weights"]
    assert two.peak_allocated_bytes < one.peak_allocated_bytes


def test_deepspeed_bf16_runs_the_engines_bf16_module_without_autocast():
    """DeepSpeed's engine casts the module to bf16 (engine.py _configure_distributed_model) and accelerate adds no
    autocast under DeepSpeed bf16: an fp32-loaded model (bf16-mixed) trains like a bf16-loaded one, so its
    activations are the same, where a single GPU keeps fp32 hidden states and autocast copies."""
    from vramplan.api import estimate
    from vramplan.estimate.components.activations.flow import dtype_flow
    from vramplan.estimate.dtypes import autocast_on
    from vramplan.training import resolve_setup

    for precision in ("bf16", "bf16-mixed"):
        setup = resolve_setup("lora", gpus=8, strategy="zero3", precision=precision)
        flow = dtype_flow(setup)
        assert (flow.residual, flow.compute, flow.adapter, flow.autocast) == (2, 2, 2, False)
        assert not autocast_on(setup)
    mixed = estimate("8b", "lora", gpus=8, strategy="zero3", precision="bf16-mixed")
    pure = estimate("8b", "lora", gpus=8, strategy="zero3", precision="bf16")
    assert mixed.components["activations"] == pure.components["activations"]
    assert autocast_on(resolve_setup("lora", precision="bf16-mixed"))  # one GPU: Trainer's autocast

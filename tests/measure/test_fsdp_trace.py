"""Rank 0 of an FSDP2 run, traced on CPU: a fake process group of N ranks, the model sharded by accelerate's own
`fsdp2_prepare_model`, the real forward/backward/optimizer step counted byte by byte.

The expected values are what FSDP2 itself does (torch/distributed/fsdp/_fully_shard): parameters padded to a
multiple of N rows and sharded on dim 0, fp32 sharded gradients and AdamW states, one decoder layer gathered twice
(unsharded copy + all-gather buffer) in forward, the current layer plus one prefetched in backward.
"""

from functools import lru_cache
from importlib.metadata import version as _installed
from math import ceil, prod
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("accelerate")
pytest.importorskip("bitsandbytes")

from vramplan.measure.fsdp import trace_fsdp_step, trace_fsdp_step_in_process  # noqa: E402
from vramplan.measure.livebytes import cuda_block_bytes  # noqa: E402
from vramplan.models.catalog import resolve_model  # noqa: E402
from vramplan.training import resolve_setup  # noqa: E402

pytestmark = pytest.mark.trace


def _version(package: str) -> tuple[int, int]:
    major, minor = _installed(package).split(".")[:2]
    return int(major), int(minor)


CONFIGS = Path(__file__).resolve().parents[2] / "validation" / "configs"
WORLD_SIZES = (2, 4, 8)
_ACCELERATE_OUTPUT_DTYPE = "bfloat16" if _version("accelerate") < (1, 16) else None
FP32_BYTES = 4
# torch/optim/adam.py, Adam._init_group: a scalar fp32 `step` tensor per parameter (counted like the 1-GPU trace).
ADAM_STEP_BYTES = cuda_block_bytes(FP32_BYTES)


def _config(name: str) -> dict:
    return resolve_model(str(CONFIGS / f"{name}.json")).config


def _setup(method: str, **options):
    return resolve_setup(method, **{"batch_size": 2, "seq_len": 128, **options})


@lru_cache(maxsize=None)
def _trace(name: str, method: str, world_size: int, **options):
    fsdp_options = {key: options.pop(key) for key in ("reshard_after_forward", "offload_params") if key in options}
    return trace_fsdp_step_in_process(_config(name), _setup(method, **options), world_size, **fsdp_options)


def _sharded_fp32_bytes(name: str, world_size: int) -> tuple[int, int, int]:
    """FSDP2's dim-0 shard of every parameter, padded to ceil(rows / N) rows, in fp32 (accelerate's upcast).

    Returns (parameter bytes: one storage per parameter; gradient bytes: one flat reduce-scatter output per
    unit, viewed per parameter; number of parameters). Units: each decoder layer, the embedding, the rest.
    """
    import re

    import torch
    import transformers

    from vramplan.measure.build import hf_config_for

    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(hf_config_for(_config(name)))
    shards: dict[str, list[int]] = {}
    for param_name, param in model.named_parameters():
        unit = re.match(r"model\.(layers\.\d+|embed_tokens)\.", param_name)
        numel = ceil(param.shape[0] / world_size) * prod(param.shape[1:])
        shards.setdefault(unit.group(1) if unit else "tail", []).append(numel * FP32_BYTES)
    params = sum(cuda_block_bytes(nbytes) for unit in shards.values() for nbytes in unit)
    grads = sum(cuda_block_bytes(sum(unit)) for unit in shards.values())
    return params, grads, sum(len(unit) for unit in shards.values())


@pytest.mark.parametrize("world_size", WORLD_SIZES)
def test_full_model_state_is_sharded_in_fp32(world_size):
    """Full fine-tuning in bf16: accelerate upcasts trainable weights to fp32; params, grads, AdamW states / N."""
    trace = _trace("tiny-llama-v512", "full", world_size)
    optimizer = next(phase for phase in trace.phases if phase.phase == "optimizer").categories
    sharded, gradients, count = _sharded_fp32_bytes("tiny-llama-v512", world_size)
    assert trace.components["sharded_parameters"] == sharded
    assert optimizer["gradients"] == gradients
    assert optimizer["optimizer_states"] == 2 * sharded + count * ADAM_STEP_BYTES
    assert trace.gradient_dtypes == ["float32"]
    # accelerate's FullyShardedDataParallelPlugin.set_mixed_precision (accelerate/utils/dataclasses.py) set
    # output_dtype too up to 1.15 and leaves it unset from 1.16; the outputs are bf16 either way (param_dtype).
    assert trace.mixed_precision == {"param_dtype": "bfloat16", "reduce_dtype": "bfloat16",
                                     "output_dtype": _ACCELERATE_OUTPUT_DTYPE}


@pytest.mark.parametrize("method", ["full", "lora", "qlora"])
def test_per_rank_peak_falls_as_ranks_are_added(method):
    peaks = [_trace("tiny-llama-v512", method, n).peak_allocated_bytes for n in WORLD_SIZES]
    sharded = [_trace("tiny-llama-v512", method, n).components["sharded_parameters"] for n in WORLD_SIZES]
    assert peaks == sorted(peaks, reverse=True) and len(set(peaks)) == len(peaks)
    assert sharded == sorted(sharded, reverse=True)


def test_forward_gathers_one_layer_twice_and_backward_prefetches_the_next():
    """Forward: the layer's unsharded copy and its all-gather buffer (kept until the next all-gather).
    Backward: the layer being differentiated, plus the previous layer's all-gather already issued (prefetch)."""
    trace = _trace("tiny-llama-v512", "full", 4)
    layer = next(unit for unit in trace.units if unit.name == "model.layers.0")
    forward, backward = trace.most_gathered["forward"], trace.most_gathered["backward"]
    assert forward == {f"model.layers.0 ({kind})": layer.unsharded_bytes for kind in ("buffer", "params")}
    assert len(backward) == 2
    (prefetched, buffer_bytes), (current, param_bytes) = sorted(backward.items())
    assert prefetched.endswith("(buffer)") and current.endswith("(params)")
    assert buffer_bytes == param_bytes == layer.unsharded_bytes
    assert int(prefetched.split(".")[2].split()[0]) == int(current.split(".")[2].split()[0]) - 1


def test_accelerate_wraps_layers_embedding_and_tail():
    """fsdp2_prepare_model: one unit per decoder layer, the input embedding, [final norm, lm_head] kept gathered
    after forward; the root is left without parameters of its own."""
    trace = _trace("tiny-llama-v512", "full", 2)
    names = [unit.name for unit in trace.units]
    assert names == ["model.embed_tokens", *(f"model.layers.{i}" for i in range(4)), "model.norm, lm_head"]
    assert [unit.reshard_after_forward for unit in trace.units] == [True] * 5 + [False]


def test_qlora_4bit_weights_shard_as_bf16_and_quant_states_stay_whole():
    """FSDP-QLoRA: packed 4-bit bytes stored as bf16 shard like any bf16 weight; QuantStates are not parameters."""
    small, large = _trace("tiny-llama-v512", "qlora", 2), _trace("tiny-llama-v512", "qlora", 8)
    layer = next(unit for unit in large.units if unit.name.endswith("layers.0"))
    assert layer.dtypes == ["bfloat16", "float32"]  # packed 4-bit weights, fp32 LoRA adapters (peft's autocast)
    assert small.components["replicated_tensors"] == large.components["replicated_tensors"] > 0
    assert large.components["sharded_parameters"] < small.components["sharded_parameters"]


def test_offloaded_parameters_gradients_and_states_leave_the_gpu():
    offloaded = _trace("tiny-llama-v512", "full", 4, offload_params=True)
    resident = _trace("tiny-llama-v512", "full", 4)
    for phase in offloaded.phases:
        for category in ("sharded_parameters", "gradients", "optimizer_states"):
            assert phase.categories[category] == 0, (phase.phase, category)
    assert offloaded.peak_allocated_bytes < resident.peak_allocated_bytes


def test_without_reshard_after_forward_every_layer_stays_gathered():
    trace = _trace("tiny-llama-v512", "full", 4, reshard_after_forward=False)
    gathered = trace.gathered_at_peak["backward"]
    assert all(f"model.layers.{i} (params)" in gathered for i in range(4))
    assert trace.peak_allocated_bytes > _trace("tiny-llama-v512", "full", 4).peak_allocated_bytes


def test_trace_in_a_fresh_process_matches():
    """`trace_fsdp_step` runs each call in a fresh `python -m` process: the process group is process-global."""
    spawned = trace_fsdp_step(_config("tiny-llama-v512"), _setup("full"), 2)
    assert spawned == _trace("tiny-llama-v512", "full", 2)


def test_optimizer_warmup_equals_a_whole_step_warmup():
    """One optimizer step on zero gradients leaves FSDP in the same state as a whole first training step."""
    config, setup = _config("tiny-llama-v512"), _setup("full")
    stepped = trace_fsdp_step_in_process(config, setup, 2, warmup="step")
    quick = _trace("tiny-llama-v512", "full", 2)
    assert stepped.peak_allocated_bytes == quick.peak_allocated_bytes
    assert stepped.components == quick.components
    assert stepped.phases == quick.phases


@pytest.mark.parametrize("precision, gathered_bytes_per_param", [("fp32", 4), ("bf16-mixed", 2)])
def test_precision_sets_what_is_gathered(precision, gathered_bytes_per_param):
    """Trainer's bf16 flag -> MixedPrecisionPolicy(param_dtype=bf16): layers are gathered in 2 bytes a parameter;
    fp32 -> MixedPrecisionPolicy() (no casts): 4 bytes."""
    trace = _trace("tiny-llama-v512", "full", 2, precision=precision)
    layer = next(unit for unit in trace.units if unit.name == "model.layers.0")
    assert layer.dtypes == ["float32"]
    assert layer.unsharded_bytes == pytest.approx(layer.params * gathered_bytes_per_param, abs=512 * 9)

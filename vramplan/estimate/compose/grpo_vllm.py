"""GRPO's vLLM in colocate mode (trl/generation/vllm_generation.py, TRL 1.16): an `LLM` in the training process on the
same GPU, with gpu_memory_utilization = vllm_gpu_memory_utilization, max_num_seqs = per_device_train_batch_size x
vllm_tensor_parallel_size x steps_per_generation, max_num_batched_tokens 4096, max_model_len =
vllm_max_model_length (the model's own maximum when unset), and sleep mode (level 2) when vllm_enable_sleep_mode.

vLLM takes ceil(utilization x total) of the GPU whatever the training side holds (vllm/v1/worker/utils.py
request_memory), so its share depends on the GPU: Estimate.needed_on adds it there. What its share must hold to
start is vLLM's own rule (vramplan/serving: weights, the profiling run's peak, CUDA graphs, non-torch growth, and one
max_model_len sequence of KV cache, vllm/v1/core/kv_cache_utils.py check_enough_kv_cache_memory); read from vLLM's
source, not traced.
"""

from __future__ import annotations

from vramplan.models.catalog import ResolvedModel
from vramplan.result import ColocatedEngine, Estimate
from vramplan.serving.activations import profile_peak
from vramplan.serving.engines import DEFAULT_ENGINE
from vramplan.serving.formats import WeightFormat
from vramplan.serving.kv_cache import kv_layout, request_bytes
from vramplan.serving.vllm_budget import cudagraph_estimate, non_torch_bytes
from vramplan.serving.weights import serving_weights
from vramplan.training import Method, TrainingSetup

# trl/generation/vllm_generation.py: LLM(..., max_num_batched_tokens=4096): the profiling run's size.
TRL_VLLM_BATCHED_TOKENS = 4096


def colocated_vllm(model: ResolvedModel, setup: TrainingSetup, estimate: Estimate,
                   held: dict[str, int]) -> ColocatedEngine:
    spec, grpo, rule = model.spec, setup.grpo, DEFAULT_ENGINE
    position_max = model.config.get("max_position_embeddings")
    max_len = grpo.vllm_max_model_len or position_max or setup.seq_len
    # vllm_generation.py: colocated, a bitsandbytes 4-bit policy is loaded by vLLM with quantization="bitsandbytes";
    # a server (`trl vllm-serve --model`) loads the checkpoint in its own dtype
    colocated = grpo.generation == "vllm-colocate"
    weights_format = WeightFormat.NF4 if setup.method is Method.QLORA and colocated else WeightFormat.BF16
    max_num_seqs = setup.generation_rows
    graphs = cudagraph_estimate(spec, max_num_seqs, TRL_VLLM_BATCHED_TOKENS, "", 1)
    non_torch = non_torch_bytes(rule, 1)
    layout = kv_layout(spec, "auto", 1, hybrid=rule.hybrid_kv)
    terms = {
        "weights": serving_weights(spec, weights_format, 1, position_max).total_bytes,
        "profiling_peak": profile_peak(spec, TRL_VLLM_BATCHED_TOKENS, max_num_seqs, 1).peak_bytes,
        "cuda_graphs": graphs,
        "non_torch": non_torch,
        f"kv_one_sequence_of_{max_len}": request_bytes(layout, max_len,
                                                       rule.concurrent_batches * TRL_VLLM_BATCHED_TOKENS),
    }
    where = ("colocated (TRL 1.16 vllm_mode colocate)" if grpo.generation == "vllm-colocate" else
             "a server on a GPU of its own (`trl vllm-serve`, tensor and data parallel 1)")
    return ColocatedEngine(
        engine=f"vLLM {rule.version} {rule.engine} engine, {where}; rule read from source, not traced",
        gpu_memory_utilization=grpo.vllm_gpu_memory_utilization, sleeps=grpo.vllm_sleep,
        floor_bytes=sum(terms.values()), floor_terms=terms,
        # while vLLM generates, this side holds its state but runs no step
        generation_bytes=sum(held.values()) + estimate.cuda_context_bytes,
        asleep_bytes=graphs + non_torch if grpo.vllm_sleep else 0,
    )


def colocated_note(engine: ColocatedEngine) -> str:
    """What the colocated engine adds on a GPU, and what to change when its share cannot hold it."""
    floor = engine.floor_bytes / 2**30
    terms = ", ".join(f"{name.replace('_', ' ')} {value / 2**30:.2f}" for name, value in engine.floor_terms.items())
    smallest = engine.floor_bytes / engine.gpu_memory_utilization / 2**30
    sleep = ("asleep while the step trains (vllm_enable_sleep_mode, level 2): the step and vLLM's share do not add"
             if engine.sleeps else "held through training (vllm_enable_sleep_mode off): the step and the share add")
    return (f"{engine.engine}: takes gpu_memory_utilization {engine.gpu_memory_utilization:g} x each GPU's total "
            f"memory, {sleep}; the share must hold {floor:.2f} GiB to start ({terms} GiB), so GPUs under "
            f"{smallest:.1f} GiB cannot run it: raise --vllm-gpu-memory-utilization or lower --vllm-max-model-len")


def server_note(engine: ColocatedEngine) -> str:
    """What the server's own GPU needs; the figures above are the training GPU's alone."""
    smallest = engine.floor_bytes / engine.gpu_memory_utilization / 2**30
    terms = ", ".join(f"{name.replace('_', ' ')} {value / 2**30:.2f}" for name, value in engine.floor_terms.items())
    return (f"{engine.engine}: one more GPU, not in this GPU's figure; at gpu_memory_utilization "
            f"{engine.gpu_memory_utilization:g} it needs at least {smallest:.1f} GiB ({terms} GiB to start); size "
            "it with `vramplan serve-size`")

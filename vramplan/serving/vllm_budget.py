"""vLLM's rule for the memory left to the KV cache on one GPU (read from the source, not traced).

vllm 0.31.0 (vllm/v1/worker/gpu_worker.py determine_available_memory, vllm/utils/mem_utils.py memory_profiling):
    requested = ceil(gpu_memory_utilization x total)                       (vllm/v1/worker/utils.py request_memory)
    KV cache  = requested - (weights + activation peak of the profiling run + non-torch growth since the snapshot)
                          - CUDA-graph memory estimate                     (VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS=1)
The baseline snapshot is taken after the CUDA context and NCCL exist, so those sit in the 1 - utilization slack;
vLLM refuses to start when the free memory at that point is below `requested`. Older rules differ (engines.py):
0.10 snapshots before NCCL init and subtracts no CUDA graphs; V0 0.6.4 counts the whole context as non-torch.
"""

from __future__ import annotations

import math

from pydantic import BaseModel

from vramplan.estimate.nccl import NCCL_COMMUNICATOR_BYTES
from vramplan.models.spec import ModelSpec
from vramplan.serving.activations import ACT_BYTES, layer_elements
from vramplan.serving.engines import MIB, EngineRule

# PR pytorch/pytorch#86509: a CUDA context measured 274 MiB loaded lazily at first use and 636 MiB with every kernel
# loaded (CUDA_MODULE_LOADING=EAGER). vLLM's snapshot sees the lazy context; the kernels the profiling forward loads
# grow it by at most the difference, which V1 counts as non-torch growth (the upper end: no per-GPU figure exists).
CUDA_CONTEXT_LAZY_BYTES = 274 * MIB
CUDA_CONTEXT_EAGER_BYTES = 636 * MIB
LAZY_KERNEL_GROWTH_BYTES = CUDA_CONTEXT_EAGER_BYTES - CUDA_CONTEXT_LAZY_BYTES
# vllm/v1/worker/gpu_model_runner.py profile_cudagraph_memory: "Use at least 1 MiB per graph for driver overhead";
# the estimate is the first capture (the graph pool's buffers at the largest size) plus this per further graph.
CUDAGRAPH_PER_GRAPH_BYTES = 1 * MIB
# vllm/config/vllm.py _set_cudagraph_sizes: max capture size min(2 x max_num_seqs, 512), 1024 on data-center
# Blackwell (compute capability 10.x); sizes [1, 2, 4] + range(8, 256, 8) + range(256, max + 1, 16).
CUDAGRAPH_MAX_SIZE = 512
CUDAGRAPH_MAX_SIZE_BLACKWELL = 1024
DATACENTER_BLACKWELL = ("b200", "b300", "gb200", "gb300")


class VllmBudget(BaseModel):
    """The KV-cache budget on one GPU, term by term (bytes)."""

    total_bytes: int
    gpu_memory_utilization: float
    requested_bytes: int
    weights_bytes: int
    activation_bytes: int
    non_torch_bytes: int
    cudagraph_bytes: int
    kv_bytes: int  # negative when the other terms exceed the request
    startup_free_bytes: int  # free memory at vLLM's baseline snapshot (total - context - NCCL where built before)


def capture_sizes(max_num_seqs: int, max_num_batched_tokens: int, gpu_id: str) -> list[int]:
    """The CUDA-graph batch sizes vLLM captures by default (piecewise mode), capped by max_num_batched_tokens."""
    ceiling = CUDAGRAPH_MAX_SIZE_BLACKWELL if gpu_id.startswith(DATACENTER_BLACKWELL) else CUDAGRAPH_MAX_SIZE
    largest = min(2 * max_num_seqs, ceiling, max_num_batched_tokens)
    sizes = [1, 2, 4, *range(8, 256, 8), *range(256, largest + 1, 16)]
    return [size for size in sizes if size <= largest]


def cudagraph_estimate(spec: ModelSpec, max_num_seqs: int, max_num_batched_tokens: int, gpu_id: str,
                       tensor_parallel: int) -> int:
    """profile_cudagraph_memory's estimate under the default FULL_AND_PIECEWISE mode: the first capture holds one
    decoder layer's activations at the largest size; every further piecewise graph and full decode graph (sizes up
    to max_num_seqs) adds at least 1 MiB."""
    sizes = capture_sizes(max_num_seqs, max_num_batched_tokens, gpu_id)
    if not sizes:
        return 0
    decode = [size for size in sizes if size <= max_num_seqs]
    elements, _ = layer_elements(spec, tensor_parallel)
    first = sizes[-1] * elements * ACT_BYTES
    further = (len(sizes) - 1) + max(len(decode) - 1, 0)
    return first + further * CUDAGRAPH_PER_GRAPH_BYTES


def non_torch_bytes(rule: EngineRule, tensor_parallel: int) -> int:
    """Memory outside torch that the rule subtracts: V0 the whole (grown) context, V1 the growth after the
    snapshot; plus one NCCL communicator's buffers when the snapshot precedes NCCL init (vramplan/estimate/nccl.py,
    the upper end)."""
    nccl = NCCL_COMMUNICATOR_BYTES if tensor_parallel > 1 and rule.counts_nccl_init else 0
    context = CUDA_CONTEXT_EAGER_BYTES if rule.counts_cuda_context else LAZY_KERNEL_GROWTH_BYTES
    return context + nccl


def requested_bytes(rule: EngineRule, total_bytes: int, utilization: float) -> int:
    """0.31: math.ceil(total x utilization) (request_memory); older rules multiply floats and truncate later."""
    product = total_bytes * utilization
    return math.ceil(product) if rule.subtracts_cudagraph else int(product)


def startup_free_bytes(rule: EngineRule, total_bytes: int, tensor_parallel: int) -> int:
    """Free memory when vLLM takes its baseline: the lazy CUDA context exists, and in 0.31 NCCL too."""
    nccl = NCCL_COMMUNICATOR_BYTES if tensor_parallel > 1 and not rule.counts_nccl_init else 0
    return total_bytes - CUDA_CONTEXT_LAZY_BYTES - nccl


def kv_budget(rule: EngineRule, total_bytes: int, utilization: float, weights: int, activation: int,
              cudagraph: int, tensor_parallel: int) -> VllmBudget:
    """The KV-cache bytes one GPU gets under `rule`."""
    requested = requested_bytes(rule, total_bytes, utilization)
    non_torch = non_torch_bytes(rule, tensor_parallel)
    graphs = cudagraph if rule.subtracts_cudagraph else 0
    kv = requested - weights - activation - non_torch - graphs
    return VllmBudget(
        total_bytes=total_bytes, gpu_memory_utilization=utilization, requested_bytes=requested,
        weights_bytes=weights, activation_bytes=activation, non_torch_bytes=non_torch, cudagraph_bytes=graphs,
        kv_bytes=kv, startup_free_bytes=startup_free_bytes(rule, total_bytes, tensor_parallel),
    )

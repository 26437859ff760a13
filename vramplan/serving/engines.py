"""vLLM versions whose KV-cache memory rule vramplan models, and the defaults each version applies.

The pinned default is vLLM 0.31.0's V1 engine: the newest release TRL 1.16 accepts (its `vllm` extra requires
vllm>=0.22.0,<=0.31.0). Two older rules are kept because published KV capacities come from them (validation/serving/).
Every rule was read from the release's wheel, not traced on a GPU.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

GIB = 2**30
MIB = 2**20

# vllm/config/cache.py CacheConfig.DEFAULT_BLOCK_SIZE (0.31.0): tokens per KV-cache page.
BLOCK_SIZE_TOKENS = 16
# vllm/config/scheduler.py SchedulerConfig.DEFAULT_MAX_NUM_SEQS (0.31.0): used when no usage-context default applies.
FALLBACK_MAX_NUM_SEQS = 128
# vllm/config/scheduler.py SchedulerConfig.DEFAULT_MAX_NUM_BATCHED_TOKENS (0.31.0).
FALLBACK_MAX_NUM_BATCHED_TOKENS = 2048

Entrypoint = Literal["serve", "llm"]  # `vllm serve` (UsageContext.OPENAI_API_SERVER) or the `LLM` class (LLM_CLASS)


class BatchTier(BaseModel):
    """One row of vllm/engine/arg_utils.py EngineArgs.get_batch_defaults: defaults for GPUs of at least this memory."""

    model_config = ConfigDict(frozen=True)

    min_memory_bytes: int
    excludes_a100: bool  # the 70 GiB tier skips A100s (PR vllm#17885: larger batches slowed A100s)
    serve_tokens: int  # max_num_batched_tokens for `vllm serve`
    llm_tokens: int  # max_num_batched_tokens for the LLM class
    max_num_seqs: int


class EngineRule(BaseModel):
    """What one vLLM release subtracts from gpu_memory_utilization x total memory before the KV cache."""

    model_config = ConfigDict(frozen=True)

    name: str
    version: str
    engine: Literal["V0", "V1"]
    gpu_memory_utilization: float  # the CacheConfig default
    counts_cuda_context: bool  # V0 measures non-torch memory as device-used - torch-allocated: the context is in it
    counts_nccl_init: bool  # the baseline snapshot is taken before the NCCL communicators are built
    subtracts_cudagraph: bool  # VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS: on by default since 0.21.0
    chunked_prefill_below_32k: bool  # V1 always chunks prefill; V0 only above 32K context
    tokens_reported: Literal["blocks", "concurrency"]  # how the log's "GPU KV cache size" is computed
    hybrid_kv: bool  # sliding-window layers get their own block tables (V1's hybrid allocator); V0 caches every token
    concurrent_batches: int  # batches in flight, which sliding-window groups reserve tokens for
    batch_tiers: tuple[BatchTier, ...]
    source: str


_TIERS_0_31 = (
    # vllm/engine/arg_utils.py get_batch_defaults (0.31.0): >= 160 GiB (B200/B300), >= 70 GiB except A100, the rest.
    BatchTier(min_memory_bytes=160 * GIB, excludes_a100=False, serve_tokens=16384, llm_tokens=16384, max_num_seqs=1024),
    BatchTier(min_memory_bytes=70 * GIB, excludes_a100=True, serve_tokens=8192, llm_tokens=16384, max_num_seqs=1024),
    BatchTier(min_memory_bytes=0, excludes_a100=False, serve_tokens=2048, llm_tokens=8192, max_num_seqs=256),
)
_TIERS_0_10 = _TIERS_0_31[1:]  # vllm/engine/arg_utils.py (0.10.0): the same two tiers, no 160 GiB tier yet

VLLM_0_31 = EngineRule(
    name="vllm-0.31",
    version="0.31.0",
    engine="V1",
    gpu_memory_utilization=0.92,  # vllm/config/cache.py CacheConfig.gpu_memory_utilization default (0.31.0)
    counts_cuda_context=False,  # vllm/v1/worker/gpu_worker.py init_device: MemorySnapshot after NCCL init
    counts_nccl_init=False,
    subtracts_cudagraph=True,  # vllm/envs.py VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS default "1"
    chunked_prefill_below_32k=True,
    tokens_reported="concurrency",  # vllm/v1/core/kv_cache_utils.py get_kv_cache_capacity
    hybrid_kv=True,
    concurrent_batches=2,  # vllm/config/vllm.py max_concurrent_batches: 2 with async scheduling (on by default)
    batch_tiers=_TIERS_0_31,
    source="vllm 0.31.0 wheel: vllm/v1/worker/gpu_worker.py determine_available_memory, "
           "vllm/v1/worker/utils.py request_memory, vllm/utils/mem_utils.py memory_profiling, "
           "vllm/v1/core/kv_cache_utils.py get_kv_cache_configs",
)
VLLM_0_10 = EngineRule(
    name="vllm-0.10",
    version="0.10.0",
    engine="V1",
    gpu_memory_utilization=0.9,  # vllm/config.py CacheConfig.gpu_memory_utilization default (0.10.0)
    counts_cuda_context=False,
    counts_nccl_init=True,  # vllm/v1/worker/gpu_worker.py init_device (0.10.0): snapshot, then NCCL init
    subtracts_cudagraph=False,
    chunked_prefill_below_32k=True,
    tokens_reported="blocks",  # vllm/v1/core/kv_cache_utils.py (0.10.0): num_blocks x block_size
    hybrid_kv=True,
    concurrent_batches=1,  # async scheduling was opt-in in 0.10.0
    batch_tiers=_TIERS_0_10,
    source="vllm 0.10.0 wheel: vllm/v1/worker/gpu_worker.py determine_available_memory (requested - "
           "non_kv_cache_memory), vllm/engine/arg_utils.py get_batch_defaults",
)
VLLM_0_6_4 = EngineRule(
    name="vllm-0.6.4",
    version="0.6.4.post1",
    engine="V0",
    gpu_memory_utilization=0.9,  # vllm/config.py CacheConfig (0.6.4.post1)
    counts_cuda_context=True,  # vllm/worker/worker.py determine_num_available_blocks: non_torch = used - allocated
    counts_nccl_init=True,
    subtracts_cudagraph=False,
    chunked_prefill_below_32k=False,  # vllm/engine/arg_utils.py (0.6.4.post1): use_long_context = max_model_len > 32768
    tokens_reported="blocks",
    hybrid_kv=False,  # vllm/worker/cache_engine.py (0.6.4.post1): one block table for every layer
    concurrent_batches=1,
    # vllm/config.py SchedulerConfig (0.6.4.post1): max_num_seqs 256; with chunked prefill max_num_batched_tokens
    # 512, without it max(max_model_len, 2048) (default_max_num_batched_tokens below).
    batch_tiers=(BatchTier(min_memory_bytes=0, excludes_a100=False, serve_tokens=512, llm_tokens=512,
                           max_num_seqs=256),),
    source="vllm 0.6.4.post1 wheel: vllm/worker/worker.py determine_num_available_blocks "
           "(total x util - torch peak - non-torch), vllm/config.py SchedulerConfig",
)
ENGINES = {rule.name: rule for rule in (VLLM_0_31, VLLM_0_10, VLLM_0_6_4)}
DEFAULT_ENGINE = VLLM_0_31
# Above this max_model_len V0 turned chunked prefill on by default (vllm/engine/arg_utils.py 0.6.4.post1).
V0_LONG_CONTEXT_TOKENS = 32768


def batch_tier(rule: EngineRule, memory_bytes: int, gpu_name: str) -> BatchTier:
    """The get_batch_defaults row a GPU of `memory_bytes` falls in (vLLM reads the device's total memory)."""
    for tier in rule.batch_tiers:
        if memory_bytes >= tier.min_memory_bytes and not (tier.excludes_a100 and "a100" in gpu_name.lower()):
            return tier
    return rule.batch_tiers[-1]


def default_max_num_batched_tokens(rule: EngineRule, tier: BatchTier, entrypoint: Entrypoint,
                                   max_model_len: int) -> int:
    """max_num_batched_tokens when the user sets none: the usage-context default, or for V0 without chunked
    prefill max(max_model_len, 2048) (vllm/config.py SchedulerConfig, 0.6.4.post1)."""
    if not rule.chunked_prefill_below_32k and max_model_len <= V0_LONG_CONTEXT_TOKENS:
        return max(max_model_len, FALLBACK_MAX_NUM_BATCHED_TOKENS)
    return tier.serve_tokens if entrypoint == "serve" else tier.llm_tokens

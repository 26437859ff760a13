"""vLLM's paged KV cache on one GPU: bytes per token, the page (block) layout, and what one request needs.

Read from vllm 0.31.0: vllm/v1/kv_cache_interface.py (AttentionSpec.page_size_bytes, FullAttentionSpec and
SlidingWindowSpec.max_memory_usage_bytes, MLAAttentionSpec) and vllm/v1/core/kv_cache_utils.py (get_kv_cache_groups,
_get_kv_cache_groups_uniform_page_size, _get_kv_cache_bytes_per_block, get_max_concurrency_for_kv_cache_config).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from vramplan.models.spec import ModelSpec
from vramplan.serving.engines import BLOCK_SIZE_TOKENS
from vramplan.serving.formats import HALF_BYTES, ceil_div
from vramplan.serving.weights import kv_heads_per_rank

KvDtype = Literal["auto", "fp8"]
# vllm/utils/torch_utils.py STR_DTYPE_TO_TORCH_DTYPE: "fp8" (e4m3) and "fp8_e5m2" caches are uint8, 1 byte.
FP8_KV_BYTES = 1
# Hybrid models whose attention types have layer counts within 1.5x of each other are grouped by the larger count
# (_get_kv_cache_groups_uniform_page_size: `max_num_layers < min_num_layers * 1.5`).
GROUP_SIZE_RATIO = 1.5


def kv_dtype_bytes(kv_dtype: KvDtype) -> int:
    """`--kv-cache-dtype auto` stores K/V in the model dtype (vLLM loads 16-bit: float32 configs are cast down,
    vllm/config/model.py _resolve_auto_dtype); fp8 stores one byte."""
    return FP8_KV_BYTES if kv_dtype == "fp8" else HALF_BYTES


class KvGroup(BaseModel):
    """One KV-cache group: layers that share a block table."""

    kind: Literal["full", "sliding"]
    layers: int  # layers of this kind in the model (on this rank)
    groups: int  # block tables vLLM makes for them (each holds `group_size` layers, padded)
    sliding_window: int | None = None


class KvLayout(BaseModel):
    """The KV cache's layout on one GPU."""

    attention: Literal["mha/gqa", "mla"]
    dtype_bytes: int
    bytes_per_token_per_layer: int  # one layer's K and V (MLA: the compressed latent) for one token
    bytes_per_token: int  # every attention layer, one token (sliding layers counted as if full)
    block_size: int
    page_bytes: int  # one layer's page: block_size tokens
    group_size: int  # layers per group; a block spans one page in each of them
    bytes_per_block: int  # what one block id costs across the pool
    groups: list[KvGroup]


def bytes_per_token_per_layer(spec: ModelSpec, kv_dtype: KvDtype, tensor_parallel: int = 1) -> int:
    """Standard/GQA attention: K and V, num_kv_heads (per rank) x head_dim each. MLA (DeepSeek): one latent of
    kv_lora_rank + qk_rope_head_dim per token, replicated on every rank (vllm/model_executor/layers/attention/
    mla_attention.py get_kv_cache_spec: num_kv_heads=1, max_tp_shards=1, head_size_v=0)."""
    width = kv_dtype_bytes(kv_dtype)
    if spec.mla is not None:
        return (spec.mla.kv_lora_rank + spec.mla.qk_rope_head_dim) * width
    return 2 * kv_heads_per_rank(spec, tensor_parallel) * spec.head_dim * width


def kv_bytes_per_token(spec: ModelSpec, kv_dtype: KvDtype = "auto", tensor_parallel: int = 1) -> int:
    """KV bytes one token takes across every layer on one GPU, before any sliding-window saving."""
    return spec.num_layers * bytes_per_token_per_layer(spec, kv_dtype, tensor_parallel)


def kv_layout(spec: ModelSpec, kv_dtype: KvDtype = "auto", tensor_parallel: int = 1,
              hybrid: bool = True) -> KvLayout:
    """Groups as vLLM's hybrid allocator forms them: one group when every layer has the same spec; else layers are
    bucketed by kind and split into groups of equal size (the smaller count, or the larger when within 1.5x),
    the last group of a kind padded. A block costs group_size pages (_get_kv_cache_bytes_per_block). Without the
    hybrid allocator (V0) sliding-window layers cache every token like full attention."""
    per_layer = bytes_per_token_per_layer(spec, kv_dtype, tensor_parallel)
    page = per_layer * BLOCK_SIZE_TOKENS
    sliding = spec.sliding_layers if spec.sliding_window and hybrid else 0
    full = spec.num_layers - sliding
    counts = {kind: n for kind, n in (("full", full), ("sliding", sliding)) if n}
    if len(counts) == 1:
        group_size = spec.num_layers
    else:
        smallest, largest = min(counts.values()), max(counts.values())
        group_size = largest if largest < smallest * GROUP_SIZE_RATIO else smallest
    groups = [KvGroup(kind=kind, layers=n, groups=ceil_div(n, group_size),
                      sliding_window=spec.sliding_window if kind == "sliding" else None)
              for kind, n in counts.items()]
    return KvLayout(
        attention="mla" if spec.mla is not None else "mha/gqa", dtype_bytes=kv_dtype_bytes(kv_dtype),
        bytes_per_token_per_layer=per_layer, bytes_per_token=per_layer * spec.num_layers,
        block_size=BLOCK_SIZE_TOKENS, page_bytes=page, group_size=group_size, bytes_per_block=group_size * page,
        groups=groups,
    )


def group_blocks_per_request(group: KvGroup, max_model_len: int, in_flight_tokens: int) -> int:
    """Blocks one request at max_model_len holds in one group: FullAttentionSpec cdiv(len, block); a sliding group
    cdiv(min(window - 1 + in-flight tokens, len), block) + 1 (SlidingWindowSpec.max_admission_blocks_per_request)."""
    if group.kind == "full" or group.sliding_window is None:
        return ceil_div(max_model_len, BLOCK_SIZE_TOKENS)
    tokens = min(group.sliding_window - 1 + in_flight_tokens, max_model_len)
    return ceil_div(tokens, BLOCK_SIZE_TOKENS) + 1


def blocks_per_request(layout: KvLayout, max_model_len: int, in_flight_tokens: int) -> int:
    """Block ids one request at max_model_len draws from the shared pool: the sum over groups
    (get_max_concurrency_for_kv_cache_config)."""
    return sum(g.groups * group_blocks_per_request(g, max_model_len, in_flight_tokens) for g in layout.groups)


def request_bytes(layout: KvLayout, max_model_len: int, in_flight_tokens: int) -> int:
    """KV bytes one request at max_model_len needs (what vLLM's "To serve at least one request" check compares)."""
    return blocks_per_request(layout, max_model_len, in_flight_tokens) * layout.page_bytes * layout.group_size


def estimated_max_model_len(layout: KvLayout, available_bytes: int, upper: int, in_flight_tokens: int) -> int:
    """The longest max_model_len whose one request fits `available_bytes` (vLLM's estimate_max_model_len: a binary
    search from 1 to the configured max_model_len); 0 when not even one token fits."""
    low, high, best = 1, upper, 0
    while low <= high:
        mid = (low + high) // 2
        if request_bytes(layout, mid, in_flight_tokens) <= available_bytes:
            best, low = mid, mid + 1
        else:
            high = mid - 1
    return best

"""KV capacity from the KV-cache bytes: blocks, tokens, concurrent sequences, and the longest context that fits.

vllm 0.31.0 vllm/v1/core/kv_cache_utils.py: num_blocks = available // bytes_per_block
(get_kv_cache_config_from_groups); one block is the null block the BlockPool keeps, so the admission check plans
against available - one block (get_kv_cache_configs); "Maximum concurrency" = num_blocks / blocks per request at
max_model_len, and "GPU KV cache size" = int(concurrency x max_model_len) (get_kv_cache_capacity). 0.10 and V0
logged num_blocks x block_size instead.
"""

from __future__ import annotations

from pydantic import BaseModel

from vramplan.serving.engines import EngineRule
from vramplan.serving.kv_cache import KvLayout, blocks_per_request, estimated_max_model_len, request_bytes


class KvCapacity(BaseModel):
    """What the KV cache holds on each GPU (every rank holds the same number of blocks)."""

    blocks: int
    token_slots: int  # blocks x block_size: tokens of one full-attention block table
    blocks_per_sequence: int  # block ids one request at max_model_len takes from the pool
    sequence_bytes: int  # KV bytes of one request at max_model_len
    max_concurrency: float  # vLLM's "Maximum concurrency for max_model_len tokens per request"
    reported_tokens: int  # vLLM's "GPU KV cache size: N tokens" under the engine's rule
    whole_sequences: int  # whole sequences of max_model_len the usable blocks hold (the null block excluded)
    sequences: int  # the same, capped by max_num_seqs: what runs at once
    fits_one_sequence: bool
    estimated_max_model_len: int  # the longest max_model_len one request fits (0: none)


def kv_capacity(rule: EngineRule, layout: KvLayout, kv_bytes: int, max_model_len: int, max_num_seqs: int,
                in_flight_tokens: int) -> KvCapacity:
    """Blocks, tokens and sequences `kv_bytes` of KV cache hold."""
    blocks = max(kv_bytes, 0) // layout.bytes_per_block
    per_request = blocks_per_request(layout, max_model_len, in_flight_tokens)
    concurrency = blocks / per_request
    if rule.tokens_reported == "concurrency":
        reported = int(concurrency * max_model_len)
    else:
        reported = blocks * layout.block_size
    usable = max(kv_bytes - layout.bytes_per_block, 0)  # the null block is never handed out
    needed = request_bytes(layout, max_model_len, in_flight_tokens)
    longest = estimated_max_model_len(layout, usable, max_model_len, in_flight_tokens) if usable else 0
    whole = max(blocks - 1, 0) // per_request
    return KvCapacity(
        blocks=blocks, token_slots=blocks * layout.block_size, blocks_per_sequence=per_request,
        sequence_bytes=needed, max_concurrency=round(concurrency, 4), reported_tokens=reported,
        whole_sequences=whole, sequences=min(whole, max_num_seqs), fits_one_sequence=kv_bytes > 0 and needed <= usable,
        estimated_max_model_len=longest,
    )

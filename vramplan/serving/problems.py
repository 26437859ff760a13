"""Why a serving setup does not fit: vLLM's own start-up errors (worded as vLLM words them) and the user's
concurrency target, each with what to change."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from vramplan.serving.capacity import KvCapacity
from vramplan.serving.vllm_budget import VllmBudget
from vramplan.units import gib

ProblemCode = Literal["startup-free-memory", "no-kv-memory", "context-too-long", "context-above-model",
                      "concurrency", "max-num-seqs"]


class Problem(BaseModel):
    code: ProblemCode
    message: str
    fix: str


def _g(nbytes: int) -> str:
    return f"{gib(nbytes):.2f} GiB"


def startup_problem(budget: VllmBudget) -> Problem | None:
    """vllm/v1/worker/utils.py request_memory: ValueError when the free memory at start is below the request."""
    if budget.startup_free_bytes >= budget.requested_bytes:
        return None
    most = budget.startup_free_bytes / budget.total_bytes
    return Problem(
        code="startup-free-memory",
        message=(f"Free memory on device ({_g(budget.startup_free_bytes)}/{_g(budget.total_bytes)}) on startup is "
                 f"less than desired GPU memory utilization ({budget.gpu_memory_utilization}, "
                 f"{_g(budget.requested_bytes)})"),
        fix=f"lower --gpu-memory-utilization to at most {int(most * 100) / 100:.2f}",
    )


def kv_problems(budget: VllmBudget, capacity: KvCapacity, max_model_len: int) -> list[Problem]:
    """vllm/v1/core/kv_cache_utils.py _check_enough_kv_cache_memory: no memory for the cache blocks, or not enough
    for one request of max_model_len."""
    if budget.kv_bytes <= 0:
        return [Problem(
            code="no-kv-memory",
            message=(f"No available memory for the cache blocks: weights, activations and the rest take "
                     f"{_g(budget.requested_bytes - budget.kv_bytes)} of the {_g(budget.requested_bytes)} requested"),
            fix=("raise --gpu-memory-utilization, quantize the weights (--weights fp8/awq), add GPUs (--tp), or "
                 "lower --max-num-batched-tokens"),
        )]
    if capacity.fits_one_sequence:
        return []
    estimate = (f" Based on the available memory, the estimated maximum model length is "
                f"{capacity.estimated_max_model_len}." if capacity.estimated_max_model_len else "")
    return [Problem(
        code="context-too-long",
        message=(f"To serve at least one request with the model's max seq len ({max_model_len}), "
                 f"({_g(capacity.sequence_bytes)} KV cache is needed, which is larger than the available KV cache "
                 f"memory ({_g(budget.kv_bytes)}).{estimate}"),
        fix=(f"lower --context to {capacity.estimated_max_model_len} or less, use --kv-dtype fp8, raise "
             "--gpu-memory-utilization or add GPUs (--tp)" if capacity.estimated_max_model_len else
             "use --kv-dtype fp8, raise --gpu-memory-utilization, quantize the weights or add GPUs (--tp)"),
    )]


def context_problem(max_model_len: int, model_max: int | None) -> Problem | None:
    """vllm/config/model.py _get_and_verify_max_len: a max_model_len above the model's derived length is refused
    (unless VLLM_ALLOW_LONG_MAX_MODEL_LEN=1)."""
    if model_max is None or max_model_len <= model_max:
        return None
    return Problem(code="context-above-model",
                   message=f"User-specified max_model_len ({max_model_len}) is greater than the derived "
                           f"max_model_len (max_position_embeddings={model_max} in the model's config.json)",
                   fix=f"lower --context to {model_max} or less (or extend the model's rope scaling)")


def concurrency_problems(wanted: int | None, capacity: KvCapacity, max_num_seqs: int,
                         max_model_len: int) -> list[Problem]:
    """The user's target: `wanted` sequences of max_model_len at once."""
    if wanted is None:
        return []
    found = []
    if wanted > max_num_seqs:
        found.append(Problem(code="max-num-seqs",
                             message=f"max_num_seqs is {max_num_seqs}: vLLM runs at most that many sequences at once",
                             fix=f"set --max-num-seqs {wanted} (vllm serve --max-num-seqs {wanted})"))
    if wanted > capacity.whole_sequences:
        found.append(Problem(
            code="concurrency",
            message=(f"the KV cache holds {capacity.max_concurrency:.2f} sequences of {max_model_len} tokens, "
                     f"not {wanted}"),
            fix="use --kv-dtype fp8, quantize the weights, add GPUs (--tp), raise --gpu-memory-utilization or "
                "shorten --context",
        ))
    return found

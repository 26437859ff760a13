"""What would make a job fit: each change to the run's options, its new per-GPU need, and the memory it saves.

A suggestion is a change of the options the user gave (the same names as the CLI flags), estimated through the same
path as the command it prints, so pasting the command gives the figure the suggestion promised.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from vramplan.errors import VramplanError
from vramplan.estimate import estimate_memory
from vramplan.request import RunRequest, resolve_request
from vramplan.result import Estimate
from vramplan.training import DEEPSPEED_STRATEGIES, Loss, Method, Optimizer, Stack, Strategy

# GPU counts tried when suggesting to shard the job (one node's worth: 2, 4 or 8 GPUs).
SHARD_GPU_COUNTS = (2, 4, 8)
# Shortest sequence the "halve the sequence length" change offers (below it the change saves little).
MIN_HALVED_SEQ_LEN = 256


class Suggestion(BaseModel):
    change: str
    changes: dict[str, Any]  # option name -> new value ("method" included); the CLI writes them as flags
    flags: list[str]  # the same change as command-line flags, e.g. ["--gpus", "2", "--strategy", "fsdp"]
    needed_bytes: int
    saved_bytes: int
    fits: bool
    note: str = ""


def option_flags(changes: dict[str, Any]) -> list[str]:
    """Command-line flags for option changes: `--seq-len 1024`, `--gradient-checkpointing`, `--no-kbit-prep`,
    `--lora-targets q_proj,v_proj`."""
    flags: list[str] = []
    for name, value in changes.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + flag[2:])
        else:
            flags.extend([flag, ",".join(value) if isinstance(value, tuple) else str(value)])
    return flags


# Shares of the GPU a colocated vLLM is offered, in the steps people set vllm_gpu_memory_utilization.
VLLM_SHARES = (0.4, 0.5, 0.6, 0.7)


def _variants(setup, max_gpus: int) -> list[tuple[str, dict[str, Any]]]:
    variants: list[tuple[str, dict[str, Any]]] = []
    if not setup.allocator.expandable_segments:
        # The allocator's slack: one growing segment per stream instead of a segment per large request.
        variants.append(("run with PYTORCH_ALLOC_CONF=expandable_segments:True (less allocator slack)",
                         {"alloc_conf": _with_expandable(setup.allocator)}))
    if setup.method is Method.QLORA and setup.quant.kbit_prep:
        # peft's prepare_model_for_kbit_training upcasts every non-4-bit parameter (an MoE's 3D experts included)
        variants.append(("skip k-bit preparation (non-4-bit weights stay 16-bit)", {"kbit_prep": False}))
    if not setup.gradient_checkpointing:
        variants.append(("turn on gradient checkpointing", {"gradient_checkpointing": True}))
    if setup.method is not Method.QLORA:
        variants.append(("train with QLoRA (4-bit base weights)", {"method": "qlora"}))
    if setup.optimizer in (Optimizer.ADAMW, Optimizer.ADAMW_FUSED) and setup.strategy not in DEEPSPEED_STRATEGIES:
        variants.append(("use the 8-bit AdamW optimizer (bitsandbytes)", {"optimizer": Optimizer.ADAMW_8BIT.value}))
    if setup.strategy in (Strategy.ZERO3, Strategy.FSDP) and setup.world_size > 1:
        for factor in (2, 4):
            nodes = setup.nodes * factor
            variants.append((f"shard over {nodes} nodes of {setup.gpus} GPUs ({setup.gpus * nodes} GPUs)",
                             {"nodes": nodes}))
    if setup.loss is Loss.STANDARD and setup.stack is not Stack.TORCHTUNE and setup.strategy is Strategy.SINGLE:
        variants.append(("Liger's fused linear cross-entropy (no full logits)", {"loss": Loss.FUSED.value}))
    if setup.seq_len >= 2 * MIN_HALVED_SEQ_LEN:
        half = setup.seq_len // 2
        variants.append((f"halve the sequence length to {half}", {"seq_len": half}))
    if setup.batch_size > 1:
        variants.append((f"micro-batch 1 with {setup.batch_size} gradient-accumulation steps", {"batch_size": 1}))
    if setup.objective == "grpo":
        variants += _grpo_variants(setup)
    if setup.world_size == 1:
        for count in (c for c in SHARD_GPU_COUNTS if c <= max_gpus):
            variants.append((f"more GPUs: FSDP over {count} GPUs (per GPU)", {"gpus": count, "strategy": "fsdp"}))
    return variants


def _grpo_variants(setup) -> list[tuple[str, dict[str, Any]]]:
    """GRPO's own levers: shorter completions, and for a colocated vLLM its max_model_len, sleep mode and share."""
    grpo, variants = setup.grpo, []
    if setup.completion_len >= 2 * MIN_HALVED_SEQ_LEN:
        half = setup.completion_len // 2
        variants.append((f"halve the completion length to {half}", {"completion_len": half}))
    if grpo.generation != "vllm-colocate":
        return variants
    if grpo.vllm_max_model_len is None or grpo.vllm_max_model_len > setup.seq_len:
        variants.append((f"let vLLM hold only the longest row (vllm_max_model_length {setup.seq_len})",
                         {"vllm_max_model_len": setup.seq_len}))
    if not grpo.vllm_sleep:
        variants.append(("put vLLM to sleep while the step trains (vllm_enable_sleep_mode)", {"vllm_sleep": True}))
    larger = next((share for share in VLLM_SHARES if share > grpo.vllm_gpu_memory_utilization), None)
    if larger is not None:
        variants.append((f"give vLLM {larger:.0%} of the GPU (vllm_gpu_memory_utilization {larger})",
                         {"vllm_gpu_memory_utilization": larger}))
    return variants


def _device_bytes(request: RunRequest, total_bytes: int) -> int:
    """The per-GPU need the suggestion's command prints: estimate_request's figure on a GPU of `total_bytes` (a
    colocated engine's share counted: Estimate.needed_on), without the assumption lines (and the one-GPU baseline
    of the scaling line) it would also build and the suggestion never shows."""
    model, setup, _ = resolve_request(request)
    return estimate_memory(model, setup).needed_on(total_bytes)


def _with_expandable(config) -> str:
    """The job's allocator settings with expandable segments on."""
    from vramplan.allocator.config import describe

    current = describe(config)
    return "expandable_segments:True" if current == "torch defaults" else current + ",expandable_segments:True"


def suggest_changes(estimate: Estimate, usable_bytes: int, request: RunRequest,
                    max_gpus: int = max(SHARD_GPU_COUNTS), layouts: bool = True,
                    total_bytes: int | None = None) -> list[Suggestion]:
    """Changes ranked by memory saved; `usable_bytes` is the memory the job may use on each target GPU, of
    `total_bytes` in all (default: usable_bytes), which a colocated engine takes its share of.

    Each change is estimated from `request` with the change applied, exactly as the command it prints would be.
    Of the GPU-count changes only the fewest GPUs that fit is kept (or the most, `max_gpus`, when none does); a
    change the estimator refuses is left out, since its command would not give an answer. `layouts=False` leaves
    out the changes of GPUs and nodes (`plan` searches those itself).
    """
    total = total_bytes or usable_bytes
    current = estimate.needed_on(total)
    suggestions = []
    sharding: list[Suggestion] = []
    for change, changes in _variants(estimate.setup, max_gpus):
        if not layouts and changes.keys() & {"gpus", "nodes", "strategy"}:
            continue
        if "gpus" in changes and any(s.fits for s in sharding):
            continue  # the fewest GPUs that fit is found: more are not estimated
        try:
            needed = _device_bytes(request.changed(changes), total)
        except VramplanError:
            continue
        suggestion = Suggestion(change=change, changes=changes, flags=option_flags(changes), needed_bytes=needed,
                                saved_bytes=current - needed, fits=needed <= usable_bytes)
        if "gpus" in changes:
            sharding.append(suggestion)
        elif suggestion.saved_bytes > 0:
            suggestions.append(suggestion)
    if sharding:
        fitting = [s for s in sharding if s.fits]
        suggestions.append(fitting[0] if fitting else sharding[-1])
    suggestions.sort(key=lambda s: -s.saved_bytes)
    if suggestions and not any(s.fits for s in suggestions):
        combined = _combined(current, usable_bytes, total, request,
                             [s for s in suggestions if "gpus" not in s.changes])
        if combined is not None:
            suggestions.insert(0, combined)
    return suggestions


def _combined(current: int, usable_bytes: int, total_bytes: int, request: RunRequest,
              singles: list[Suggestion]) -> Suggestion | None:
    """When no single change fits: the changes together, largest saving first, up to the first set that fits."""
    changes: dict[str, Any] = {}
    names: list[str] = []
    for single in singles:
        changes.update(single.changes)
        names.append(single.change)
        try:
            needed = _device_bytes(request.changed(changes), total_bytes)
        except VramplanError:
            return None
        if needed <= usable_bytes:
            if len(names) == 1:
                return None
            return Suggestion(change="together: " + "; ".join(names), changes=dict(changes),
                              flags=option_flags(changes), needed_bytes=needed,
                              saved_bytes=current - needed, fits=True)
    return None

"""What would make a job fit: each change to the setup, its new per-GPU need, and the memory it saves."""

from __future__ import annotations

from pydantic import BaseModel

from vramplan.estimate import Estimate, estimate_memory
from vramplan.errors import VramplanError
from vramplan.training import DEEPSPEED_STRATEGIES, Loss, Method, Offload, Optimizer, Stack, Strategy, TrainingSetup

# GPU counts tried when suggesting to shard the job (one node's worth: 2, 4 or 8 GPUs).
SHARD_GPU_COUNTS = (2, 4, 8)


class Suggestion(BaseModel):
    change: str
    needed_bytes: int | None  # None: not modelled yet, so no figure
    saved_bytes: int | None
    fits: bool | None
    note: str = ""


def _variants(setup: TrainingSetup) -> list[tuple[str, TrainingSetup]]:
    variants = []
    if setup.method is Method.QLORA and setup.quant.kbit_prep:
        # peft's prepare_model_for_kbit_training upcasts every non-4-bit parameter (an MoE's 3D experts included)
        variants.append(("skip k-bit preparation (--no-kbit-prep: non-4-bit weights stay 16-bit)",
                         setup.model_copy(update={"quant": setup.quant.model_copy(update={"kbit_prep": False})})))
    if not setup.gradient_checkpointing:
        variants.append(("turn on gradient checkpointing", setup.model_copy(update={"gradient_checkpointing": True})))
    if setup.method is not Method.QLORA:
        from vramplan.training import resolve_setup

        try:  # on the same GPUs and strategy
            qlora = resolve_setup("qlora", batch_size=setup.batch_size, seq_len=setup.seq_len,
                                  gradient_checkpointing=setup.gradient_checkpointing, gpus=setup.gpus,
                                  nodes=setup.nodes, offload=setup.offload,
                                  strategy=setup.strategy if setup.world_size > 1 else None)
            variants.append(("train with QLoRA (4-bit base weights, rank-16 adapters)", qlora))
        except VramplanError:
            pass
    if setup.optimizer in (Optimizer.ADAMW, Optimizer.ADAMW_FUSED) and setup.strategy not in DEEPSPEED_STRATEGIES:
        variants.append(("use the 8-bit AdamW optimizer (bitsandbytes)",
                         setup.model_copy(update={"optimizer": Optimizer.ADAMW_8BIT})))
    if setup.strategy in (Strategy.ZERO3, Strategy.FSDP) and setup.world_size > 1:
        for factor in (2, 4):
            nodes = setup.nodes * factor
            variants.append((f"shard over {nodes} nodes of {setup.gpus} GPUs ({setup.gpus * nodes} GPUs)",
                             setup.model_copy(update={"nodes": nodes})))
    if setup.loss is Loss.STANDARD and setup.stack is not Stack.TORCHTUNE and setup.strategy is Strategy.SINGLE:
        variants.append(("Liger's fused linear cross-entropy (--loss fused: no full logits)",
                         setup.model_copy(update={"loss": Loss.FUSED})))
    if setup.seq_len > 256:
        half = setup.seq_len // 2
        variants.append((f"halve the sequence length to {half}", setup.model_copy(update={"seq_len": half})))
    if setup.batch_size > 1:
        variants.append((f"micro-batch 1 with {setup.batch_size} gradient-accumulation steps",
                         setup.model_copy(update={"batch_size": 1})))
    return variants


def suggest_changes(estimate: Estimate, usable_bytes: int) -> list[Suggestion]:
    """Changes ranked by memory saved; `usable_bytes` is the memory the job may use on the target GPU."""
    suggestions = []
    for change, setup in _variants(estimate.setup):
        try:
            needed = estimate_memory(estimate.model, setup).device_bytes
        except VramplanError as err:  # a variant the estimator refuses is reported, not guessed
            suggestions.append(Suggestion(change=change, needed_bytes=None, saved_bytes=None, fits=None,
                                          note=str(err)))
            continue
        saved = estimate.device_bytes - needed
        if saved > 0:
            suggestions.append(Suggestion(change=change, needed_bytes=needed, saved_bytes=saved,
                                          fits=needed <= usable_bytes))
    if estimate.setup.world_size == 1:
        suggestions.append(_sharding(estimate, usable_bytes))
    suggestions.sort(key=lambda s: -(s.saved_bytes or 0))
    return suggestions


def _sharding(estimate: Estimate, usable_bytes: int) -> Suggestion:
    """FSDP over the fewest of 2, 4 or 8 GPUs that fits (or over 8 when none does)."""
    from vramplan.hardware.layouts import variant

    needed = None
    for count in SHARD_GPU_COUNTS:
        try:
            setup = variant(estimate.setup, count, 1, Strategy.FSDP, Offload.NONE)
            needed = estimate_memory(estimate.model, setup).device_bytes
        except VramplanError as err:
            return Suggestion(change=f"more GPUs: FSDP over {count} GPUs", needed_bytes=None, saved_bytes=None,
                              fits=None, note=str(err))
        if needed <= usable_bytes:
            break
    return Suggestion(change=f"more GPUs: FSDP over {count} GPUs (--gpus {count} --strategy fsdp)",
                      needed_bytes=needed, saved_bytes=estimate.device_bytes - needed, fits=needed <= usable_bytes,
                      note="per GPU; vramplan plan also tries ZeRO, offload and several nodes")

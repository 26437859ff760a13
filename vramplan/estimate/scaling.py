"""What more GPUs change per GPU, and what they do not: model states shard with the GPUs, a micro-batch's
activations, logits and temporaries do not (each rank runs its own micro-batch). LoRA and QLoRA train few
parameters and keep a small frozen base, so sharding saves little there: the answer says so, with the figures."""

from __future__ import annotations

from vramplan.result import Estimate
from vramplan.training import Strategy

# The components that are the model's states (sharded by ZeRO/FSDP); the rest belong to the micro-batch.
STATE_COMPONENTS = ("weights", "lora_adapters", "gradients", "optimizer_states", "autocast_weight_copies")
# Below this share of the one-GPU need saved, more GPUs are said to help little.
LITTLE_HELP_SHARE = 0.25
GIB = 2**30


def _states(estimate: Estimate) -> int:
    return sum(estimate.components.get(name, 0) for name in STATE_COMPONENTS)


def scaling_line(single: Estimate, spread: Estimate) -> str:
    """One assumption line: the per-GPU device need on one GPU and on the spread layout, split into the model's
    states (which shard) and the micro-batch's memory (which does not), in GiB (2^30 bytes)."""
    gpus = spread.setup.world_size
    states = (_states(single), _states(spread))
    batch = (single.peak_allocated_bytes - states[0], spread.peak_allocated_bytes - states[1])
    saved = single.device_bytes - spread.device_bytes
    shards = spread.setup.strategy is not Strategy.DDP
    line = (f"scaling, per GPU, {gpus} GPUs against 1: device {single.device_bytes / GIB:.2f} -> "
            f"{spread.device_bytes / GIB:.2f} GiB; model states (weights, adapters, gradients, optimizer) "
            f"{states[0] / GIB:.2f} -> {states[1] / GIB:.2f} GiB {'shard' if shards else 'are replicated (DDP)'}; "
            f"the micro-batch's activations, logits and buffers {batch[0] / GIB:.2f} -> {batch[1] / GIB:.2f} GiB do "
            "not shrink (each GPU runs its own micro-batch)")
    if saved < LITTLE_HELP_SHARE * single.device_bytes:
        line += ("; more GPUs help little here: a smaller micro-batch, a shorter sequence, checkpointing or a fused "
                 "loss shrink what does not shard")
    return line

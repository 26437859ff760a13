"""What more GPUs change per GPU, and what they do not: model states shard with the GPUs (ZeRO/FSDP), communication
buffers come with them, and a micro-batch's activations and logits do not shrink (each rank runs its own
micro-batch). LoRA and QLoRA train few parameters and keep a small frozen base, so sharding saves little there:
the answer says so, with the figures."""

from __future__ import annotations

from vramplan.result import Estimate
from vramplan.training import Offload, Strategy

# The components that are the model's states (sharded by ZeRO/FSDP, replicated by DDP).
STATE_COMPONENTS = ("weights", "lora_adapters", "gradients", "gradient_partition", "optimizer_states",
                    "autocast_weight_copies")
# What each rank's micro-batch makes: the same on one GPU and on many.
BATCH_COMPONENTS = ("activations", "logits_loss", "optimizer_temporaries")
# Below this share of the one-GPU need saved, more GPUs are said to help little.
LITTLE_HELP_SHARE = 0.25
GIB = 2**30


def _sum(estimate: Estimate, names: tuple[str, ...]) -> int:
    return sum(estimate.components.get(name, 0) for name in names)


def scaling_line(single: Estimate, spread: Estimate) -> str:
    """One assumption line: the per-GPU device need on one GPU and on the spread layout, split into the model's
    states, the communication buffers the layout adds (gathers, buckets) and the micro-batch's memory, in GiB."""
    setup = spread.setup
    states = (_sum(single, STATE_COMPONENTS), _sum(spread, STATE_COMPONENTS))
    batch = (_sum(single, BATCH_COMPONENTS), _sum(spread, BATCH_COMPONENTS))
    buffers = spread.peak_allocated_bytes - states[1] - batch[1]
    how = {Strategy.DDP: "replicated (DDP)", Strategy.ZERO1: "partly sharded: ZeRO-1 keeps full weights and gradients",
           Strategy.ZERO2: "partly sharded: ZeRO-2 keeps full weights"}.get(setup.strategy, "sharded")
    if setup.offload is not Offload.NONE:
        how += f", {setup.offload.value} offloaded to host RAM"
    line = (f"scaling, per GPU, {setup.world_size} GPUs against 1: device {single.device_bytes / GIB:.2f} -> "
            f"{spread.device_bytes / GIB:.2f} GiB; model states (weights, adapters, gradients, optimizer) "
            f"{states[0] / GIB:.2f} -> {states[1] / GIB:.2f} GiB ({how}); communication buffers (gathers, buckets) "
            f"{buffers / GIB:.2f} GiB; the micro-batch's activations and logits {batch[0] / GIB:.2f} -> "
            f"{batch[1] / GIB:.2f} GiB (each GPU runs its own micro-batch)")
    if single.device_bytes - spread.device_bytes < LITTLE_HELP_SHARE * single.device_bytes:
        line += ("; more GPUs help little here: a smaller micro-batch, a shorter sequence, checkpointing or a fused "
                 "loss shrink what does not shard")
    return line

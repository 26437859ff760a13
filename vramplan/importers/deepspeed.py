"""A DeepSpeed JSON config (ds_config.json) -> ZeRO strategy, offload, micro-batch and precision."""

from __future__ import annotations

from typing import Any

from vramplan.importers.names import truthy
from vramplan.importers.parallel import read_deepspeed_block
from vramplan.importers.run import RunBuilder, as_int, as_mapping

# Keys that leave GPU memory alone: schedules, logging, monitoring, checkpoint layout, NVMe I/O tuning.
QUIET = frozenset({
    "gradient_accumulation_steps", "gradient_clipping", "steps_per_print", "wall_clock_breakdown", "scheduler",
    "zero_allow_untested_optimizer", "prescale_gradients", "gradient_predivide_factor", "flops_profiler",
    "tensorboard", "wandb", "csv_monitor", "comet", "comms_logger", "dump_state", "memory_breakdown", "checkpoint",
    "aio", "elasticity", "zero_force_ds_cpu_optimizer", "sparse_gradients", "disable_allgather",
})


def read_deepspeed(raw: dict[str, Any]) -> RunBuilder:
    builder = RunBuilder("deepspeed", raw)
    builder.used |= {"zero_optimization"}
    read_deepspeed_block(builder, raw, "")
    read_deepspeed_step(builder, raw, "")
    builder.leftovers(QUIET)
    return builder


def read_deepspeed_step(builder: RunBuilder, raw: dict[str, Any], where: str, trainer_fills_auto: bool = False) -> None:
    """Micro-batch, precision, optimizer and world size from a DeepSpeed config's top level.

    `trainer_fills_auto`: the config is embedded in a trainer config whose own keys already set these options, so
    DeepSpeed's values only override them when they are not "auto".
    """
    builder.used |= {"train_micro_batch_size_per_gpu", "bf16", "fp16", "optimizer", "train_batch_size",
                     "activation_checkpointing", "communication_data_type", "data_types", "amp", "torch_autocast",
                     "compile"}
    micro = raw.get("train_micro_batch_size_per_gpu")
    if micro == "auto":
        builder.note(f"{where}train_micro_batch_size_per_gpu: auto -> the trainer's per-device batch size")
    elif micro is not None:
        builder.set("batch_size", as_int(f"{where}train_micro_batch_size_per_gpu", micro),
                    f"{where}train_micro_batch_size_per_gpu")
    _precision(builder, raw, where, trainer_fills_auto)
    _optimizer(builder, raw.get("optimizer"), where, trainer_fills_auto)
    _world_size(builder, raw, where)
    checkpointing = as_mapping(f"{where}activation_checkpointing", raw.get("activation_checkpointing"))
    for key in ("partition_activations", "cpu_checkpointing", "contiguous_memory_optimization"):
        if truthy(checkpointing.get(key, False)):
            builder.not_modelled(f"{where}activation_checkpointing.{key}", checkpointing[key],
                                 "DeepSpeed activation checkpointing (Megatron-style API) not modelled")
    for key in ("communication_data_type", "data_types", "amp", "torch_autocast", "compile"):
        if raw.get(key) not in (None, {}, False):
            builder.not_modelled(f"{where}{key}", raw[key], "DeepSpeed dtype/compile setting not modelled")


def _precision(builder: RunBuilder, raw: dict[str, Any], where: str, trainer_fills_auto: bool) -> None:
    # deepspeed/runtime/precision_config.py: bf16.enabled and fp16.enabled both default False (fp32 training).
    bf16 = as_mapping(f"{where}bf16", raw.get("bf16")).get("enabled", False)
    fp16 = as_mapping(f"{where}fp16", raw.get("fp16")).get("enabled", False)
    if bf16 == "auto" or fp16 == "auto":
        builder.note(f"{where}bf16/fp16.enabled: auto -> the trainer's bf16/fp16 arguments")
    elif truthy(bf16):
        builder.set("precision", "bf16", f"{where}bf16.enabled", bf16)
    elif truthy(fp16):
        builder.not_modelled(f"{where}fp16.enabled", fp16, "DeepSpeed fp16 (fp16 params, fp32 master, loss "
                             "scaling) not modelled; vramplan's fp16-mixed keeps fp32 weights")
    elif not trainer_fills_auto:
        builder.default("precision", "fp32", f"{where}bf16/fp16",
                        "DeepSpeed default: deepspeed/runtime/precision_config.py, both disabled")


def _optimizer(builder: RunBuilder, block: Any, where: str, trainer_fills_auto: bool) -> None:
    if not isinstance(block, dict):
        if not trainer_fills_auto:
            builder.note(f"{where}optimizer absent -> the client's optimizer (HF Trainer: its optim argument)")
        return
    kind = str(block.get("type", ""))
    if kind.lower() in ("adam", "adamw"):
        # deepspeed/runtime/engine.py: Adam/AdamW -> FusedAdam on GPU, DeepSpeedCPUAdam when offloaded.
        builder.set("optimizer", "adamw", f"{where}optimizer.type", kind)
    else:
        builder.not_modelled(f"{where}optimizer.type", kind, "DeepSpeed optimizer not modelled (Adam/AdamW are)")


def _world_size(builder: RunBuilder, raw: dict[str, Any], where: str) -> None:
    """train_batch_size = micro x accumulation x world size (deepspeed/runtime/config.py), when all are numbers."""
    total, micro = raw.get("train_batch_size"), raw.get("train_micro_batch_size_per_gpu")
    accumulation = raw.get("gradient_accumulation_steps", 1)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (total, micro, accumulation)):
        return
    world, rest = divmod(as_int(f"{where}train_batch_size", total), micro * accumulation)
    if rest == 0 and world > 1:
        builder.options["gpus"] = world
        builder.note(f"{where}train_batch_size: {total} = {micro} x {accumulation} x {world} -> gpus {world} "
                     "(world size, read as one node)")

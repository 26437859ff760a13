"""An accelerate config file (`accelerate config`, `accelerate launch --config_file`) -> the layout of the run.

It says how the job is spread (distributed_type, num_processes, num_machines, fsdp_config, deepspeed_config) and
whether autocast runs (mixed_precision), not which model or method: those come from --model / --method. Keys as
accelerate/commands/config/config_args.py writes them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vramplan.importers.names import truthy
from vramplan.importers.parallel import read_deepspeed_block, read_fsdp
from vramplan.importers.run import RunBuilder, as_int, as_mapping

# Keys that leave per-GPU memory alone: where and how processes start, logging, rendezvous.
QUIET = frozenset({
    "compute_environment", "debug", "machine_rank", "main_process_ip", "main_process_port", "main_training_function",
    "rdzv_backend", "same_network", "tpu_env", "tpu_use_cluster", "tpu_use_sudo", "gpu_ids", "use_cpu",
    "enable_cpu_affinity", "dynamo_config", "downcast_bf16", "ipex_config", "mpirun_config", "commands",
    "command_file", "tpu_name", "tpu_zone",
})
# accelerate DistributedType values with no vramplan engine.
UNMODELLED_TYPES = {"MEGATRON_LM": "Megatron-LM", "XLA": "XLA/TPU", "TP": "tensor parallelism", "MULTI_CPU": "CPU"}


def looks_like_accelerate(raw: dict[str, Any]) -> bool:
    return "distributed_type" in raw and ("num_processes" in raw or "compute_environment" in raw)


def read_accelerate(raw: dict[str, Any], path: Path) -> RunBuilder:
    builder = RunBuilder("accelerate", raw)
    builder.used |= {"distributed_type", "num_processes", "num_machines", "fsdp_config", "deepspeed_config",
                     "mixed_precision"}
    machines = as_int("num_machines", raw.get("num_machines", 1))
    kind = str(raw.get("distributed_type", "NO")).upper()
    if kind != "NO" and "num_processes" not in raw:
        builder.not_modelled("num_processes", "unset", "a distributed config without a process count: accelerate "
                             "asks for one at launch; give --gpus")
    processes = as_int("num_processes", raw.get("num_processes", 1))
    if processes % machines:
        builder.not_modelled("num_processes", processes, f"not a multiple of num_machines {machines}")
    else:
        builder.set("gpus", processes // machines, "num_processes", f"{processes} over {machines} machine(s)")
        if machines > 1:
            builder.set("nodes", machines, "num_machines")
    if kind == "FSDP":
        fsdp = dict(as_mapping("fsdp_config", raw.get("fsdp_config")))
        if str(fsdp.get("fsdp_version", "")) == "2" and "fsdp_sharding_strategy" in fsdp:
            # accelerate's FSDP2 reads fsdp_reshard_after_forward, not the FSDP1 sharding strategy
            builder.note(f"fsdp_config.fsdp_sharding_strategy: {fsdp.pop('fsdp_sharding_strategy')} ignored by "
                         "FSDP2 (accelerate reads fsdp_reshard_after_forward)")
        read_fsdp(builder, "distributed_type", None, fsdp, "fsdp_config", unset_version=1)
    elif kind == "DEEPSPEED":
        _read_deepspeed(builder, as_mapping("deepspeed_config", raw.get("deepspeed_config")), path)
    elif kind == "MULTI_GPU":
        builder.set("strategy", "ddp", "distributed_type", kind)
    elif kind in UNMODELLED_TYPES:
        builder.not_modelled("distributed_type", kind, f"{UNMODELLED_TYPES[kind]} is not modelled")
    elif kind != "NO":
        builder.not_modelled("distributed_type", kind, "unknown accelerate distributed type")
    precision = str(raw.get("mixed_precision", "no")).lower()
    if precision in ("bf16", "fp16"):
        builder.note(f"mixed_precision: {precision} -> autocast; the weights' dtype is the training script's "
                     "(not in this file): --precision says it")
    elif precision not in ("no", "none"):
        builder.not_modelled("mixed_precision", precision, "fp8 / other mixed precision not modelled")
    builder.leftovers(QUIET)
    return builder


def _read_deepspeed(builder: RunBuilder, block: dict[str, Any], path: Path) -> None:
    """accelerate's deepspeed_config: zero_stage and offload devices, or a deepspeed_config_file to read."""
    source = block.get("deepspeed_config_file")
    if source:
        from vramplan.importers.parallel import load_deepspeed_reference

        ds = load_deepspeed_reference(builder, "deepspeed_config.deepspeed_config_file", str(source), path.parent)
        if ds is not None:
            read_deepspeed_block(builder, ds, "deepspeed_config_file.")
        return
    # accelerate/utils/dataclasses.py DeepSpeedPlugin: zero_stage defaults to 2.
    zero: dict[str, Any] = {"stage": as_int("deepspeed_config.zero_stage", block.get("zero_stage", 2), low=0, high=3)}
    for kind in ("optimizer", "param"):
        device = block.get(f"offload_{kind}_device")
        if device not in (None, "none"):
            zero[f"offload_{kind}"] = {"device": device}
    read_deepspeed_block(builder, {"zero_optimization": zero}, "deepspeed_config.")
    if truthy(block.get("zero3_init_flag", False)):
        builder.note("deepspeed_config.zero3_init_flag: parameters created partitioned (load-time only)")

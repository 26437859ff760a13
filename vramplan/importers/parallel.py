"""DeepSpeed and FSDP settings -> strategy, offload and what they leave unmodelled."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from vramplan.importers.names import truthy
from vramplan.importers.run import RunBuilder, as_mapping, expected, leftover_keys, show
from vramplan.models.structure import check_structure

# DeepSpeed zero_optimization keys that size its communication buffers or parameter caches, with DeepSpeed's defaults
# (deepspeed/runtime/zero/config.py DeepSpeedZeroConfig). vramplan keeps the defaults; another value is reported.
# overlap_comm defaults to True for stage 3 and False otherwise (the same file's validator).
DS_BUFFER_DEFAULTS: dict[str, Any] = {
    "reduce_bucket_size": 500_000_000, "allgather_bucket_size": 500_000_000,
    "stage3_prefetch_bucket_size": 50_000_000, "stage3_max_live_parameters": 1_000_000_000,
    "stage3_max_reuse_distance": 1_000_000_000, "stage3_param_persistence_threshold": 100_000,
    "sub_group_size": 1_000_000_000, "contiguous_gradients": True, "reduce_scatter": True,
    "allgather_partitions": True, "round_robin_gradients": False, "zero_quantized_weights": False,
    "zero_quantized_gradients": False, "zero_hpz_partition_size": 1, "mics_shard_size": -1, "overlap_comm": None,
}
DS_BUFFER_KEYS = frozenset(DS_BUFFER_DEFAULTS)
# zero_optimization keys that leave the training step's memory alone (save-time gathering, logging).
DS_ZERO_QUIET = frozenset({"stage", "offload_optimizer", "offload_param", "stage3_gather_16bit_weights_on_model_save",
                           "gather_16bit_weights_on_model_save", "ignore_unused_parameters", "load_from_fp32_weights",
                           "elastic_checkpoint", "cpu_offload", "cpu_offload_params"})


def read_deepspeed_block(builder: RunBuilder, ds: dict[str, Any], where: str) -> None:
    """zero_optimization -> strategy and offload; `where` prefixes key names in notes ("" or "deepspeed.")."""
    zero = ds.get("zero_optimization") or {}
    if not isinstance(zero, dict):
        builder.not_modelled(f"{where}zero_optimization", zero, "not a mapping")
        return
    stage = zero.get("stage", 0)  # deepspeed/runtime/zero/config.py: DeepSpeedZeroConfig.stage default 0
    if stage in (1, 2, 3):
        builder.set("strategy", f"zero{stage}", f"{where}zero_optimization.stage", stage)
    elif stage == 0:
        builder.set("strategy", "ddp", f"{where}zero_optimization.stage", stage)
    else:
        builder.not_modelled(f"{where}zero_optimization.stage", stage, "unknown ZeRO stage")
    _read_offload(builder, zero, stage, where)
    for key, value in zero.items():
        default = (stage == 3) if key == "overlap_comm" else DS_BUFFER_DEFAULTS.get(key)
        if key in DS_BUFFER_KEYS and value != "auto" and value != default:
            builder.not_modelled(f"{where}zero_optimization.{key}", value,
                                 f"DeepSpeed buffer setting: vramplan keeps DeepSpeed's default {default}")
    leftover_keys(builder, zero, DS_BUFFER_KEYS | DS_ZERO_QUIET, f"{where}zero_optimization")


def _read_offload(builder: RunBuilder, zero: dict[str, Any], stage: Any, where: str) -> None:
    optimizer_device = _device(zero.get("offload_optimizer"))
    param_device = _device(zero.get("offload_param"))
    for kind, device in (("offload_optimizer", optimizer_device), ("offload_param", param_device)):
        if device == "nvme":
            builder.not_modelled(f"{where}zero_optimization.{kind}.device", device,
                                 "NVMe offload read as CPU offload: GPU side alike, host side not modelled")
    if param_device in ("cpu", "nvme") and stage == 3:
        builder.set("offload", "params", f"{where}zero_optimization.offload_param.device", param_device)
    elif optimizer_device in ("cpu", "nvme"):
        builder.set("offload", "optimizer", f"{where}zero_optimization.offload_optimizer.device", optimizer_device)
    if param_device in ("cpu", "nvme") and stage != 3:
        builder.note(f"{where}zero_optimization.offload_param: DeepSpeed uses it with stage 3 only; ignored")
    if param_device in ("cpu", "nvme") and optimizer_device in (None, "none"):
        builder.not_modelled(f"{where}zero_optimization.offload_optimizer", "none",
                             "parameters offloaded but optimizer kept on GPU: vramplan offloads both")


def _device(block: Any) -> str | None:
    if isinstance(block, dict):
        return str(block.get("device", "none")).lower()  # deepspeed/runtime/zero/offload_config.py: default none
    return None


def load_deepspeed_reference(builder: RunBuilder, key: str, value: Any, base: Path) -> dict[str, Any] | None:
    """The DeepSpeed config a trainer config points at (a dict, or a JSON path relative to the config's folder)."""
    if isinstance(value, dict):
        return value
    from vramplan.importers.references import reads_references

    path = Path(str(value)).expanduser()
    candidates = [path] if path.is_absolute() else [base / path, Path.cwd() / path]
    if not reads_references():  # an upload (vramplan serve): the stage from the name alone, no file opened
        candidates = []
    for candidate in candidates:
        if _is_file(candidate):
            return _read_deepspeed_file(builder, key, value, candidate)
    stage = re.search(r"(?:zero|_z|ds_z)(\d)", path.name.lower())
    if stage is None:
        builder.not_modelled(key, value, "DeepSpeed config not found next to this file: strategy unknown"
                             if reads_references() else "DeepSpeed config not opened (an uploaded config names no "
                             "file the page reads; paste its settings inline): strategy unknown")
        return None
    offload = "offload" in path.name.lower()
    builder.note(f"{key}: {show(value)} not found; ZeRO stage {stage.group(1)} read from its file name"
                 + (", offload from 'offload' in the name" if offload else ""))
    zero: dict[str, Any] = {"stage": int(stage.group(1))}
    if offload:
        zero["offload_optimizer"] = {"device": "cpu"}
        if "all" in path.name.lower() or "param" in path.name.lower():
            zero["offload_param"] = {"device": "cpu"}
    return {"zero_optimization": zero}


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # a name too long for the file system
        return False


def _read_deepspeed_file(builder: RunBuilder, key: str, value: Any, path: Path) -> dict[str, Any] | None:
    """A DeepSpeed JSON file: a mapping of its settings, or None (reported) when it cannot be read as one."""
    try:
        ds = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:  # ValueError: bad JSON or not UTF-8
        builder.not_modelled(key, value, f"cannot read the DeepSpeed config: {' '.join(str(err).split())}")
        return None
    except RecursionError:
        builder.not_modelled(key, value, "cannot read the DeepSpeed config: nested too deep")
        return None
    if not isinstance(ds, dict):
        builder.not_modelled(key, value, "the DeepSpeed config is not a JSON object")
        return None
    check_structure(ds, str(path))
    return ds


# FSDP options, as transformers TrainingArguments.fsdp (a string or list) and fsdp_config name them
# (transformers/training_args.py, accelerate FullyShardedDataParallelPlugin); axolotl writes the same keys with or
# without an `fsdp_` prefix (axolotl/utils/schemas/fsdp.py).
FSDP_QUIET = frozenset({
    "version", "auto_wrap_policy", "transformer_layer_cls_to_wrap", "min_num_params", "state_dict_type",
    "cpu_ram_efficient_loading", "sync_module_states", "use_orig_params", "backward_prefetch", "forward_prefetch",
    "limit_all_gathers", "final_state_dict_type", "xla", "xla_fsdp_v2", "xla_fsdp_grad_ckpt", "activation_cpu_offload",
})


def read_fsdp(builder: RunBuilder, key: str, fsdp: Any, config: dict[str, Any] | None, config_key: str,
              unset_version: int = 2) -> None:
    """TrainingArguments-style `fsdp` words and `fsdp_config` -> strategy fsdp/fsdp-hybrid, offload, checkpointing.

    `unset_version`: the FSDP version when the config does not say (2 for transformers 5's Trainer; 1 for an
    accelerate config file, accelerate's FullyShardedDataParallelPlugin default)."""
    words = [word.lower() for word in _fsdp_words(key, fsdp)]
    if isinstance(config, str):  # TrainingArguments.fsdp_config may name a JSON file
        builder.not_modelled(config_key, config, "fsdp_config given as a file: not read; its settings not modelled")
        config = None
    config = {(str(k)[5:] if str(k).startswith("fsdp_") else str(k)): v
              for k, v in as_mapping(config_key, config).items()}
    sharding = str(config.get("sharding_strategy", "")).lower()
    version = config.get("version")
    flat = str(version if version is not None else unset_version) == "1"
    engine = "fsdp1" if flat else "fsdp2"
    if version is None and unset_version == 1:
        builder.assume(f"{config_key}.fsdp_version unset: FSDP1 (FullyShardedDataParallel), accelerate's "
                       "FullyShardedDataParallelPlugin default")
    elif version is None:
        builder.assume(f"{config_key}.fsdp_version unset: FSDP2, as transformers 5's Trainer defaults it "
                       "(training_args.py fsdp_config.get('version', 2)); an accelerate config without it runs FSDP1")
    if "hybrid_shard" in words or sharding in ("hybrid_shard", "4"):
        source = key if "hybrid_shard" in words else f"{config_key}.sharding_strategy"
        if flat:
            builder.set("strategy", engine, source, "HYBRID_SHARD")
            builder.set("fsdp1_sharding", "hybrid-shard", source, "HYBRID_SHARD")
        else:
            builder.set("strategy", "fsdp-hybrid", key if "hybrid_shard" in words else
                        f"{config_key}.sharding_strategy", "hybrid_shard")
    elif "hybrid_shard_zero2" in words or sharding.strip("_") in ("hybrid_shard_zero2", "5"):
        builder.not_modelled(key if "hybrid_shard_zero2" in words else f"{config_key}.sharding_strategy",
                             "HYBRID_SHARD_ZERO2", f"HYBRID_SHARD_ZERO2 not modelled; read as {engine}")
        builder.options["strategy"] = engine
    elif flat and ("shard_grad_op" in words or sharding in ("shard_grad_op", "2")):
        builder.set("strategy", engine, key if "shard_grad_op" in words else f"{config_key}.sharding_strategy",
                    "SHARD_GRAD_OP")
        builder.set("fsdp1_sharding", "shard-grad-op", key if "shard_grad_op" in words else
                    f"{config_key}.sharding_strategy", "SHARD_GRAD_OP")
    elif "shard_grad_op" in words or sharding in ("shard_grad_op", "2"):
        builder.not_modelled(key, fsdp, f"FSDP SHARD_GRAD_OP (ZeRO-2 style) not modelled; read as {engine}")
        builder.options["strategy"] = engine
    elif flat and ("no_shard" in words or sharding in ("no_shard", "3")):
        source = key if "no_shard" in words else f"{config_key}.sharding_strategy"
        builder.set("strategy", engine, source, "NO_SHARD")
        builder.set("fsdp1_sharding", "no-shard", source, "NO_SHARD")
    elif "no_shard" in words or sharding in ("no_shard", "3"):
        builder.set("strategy", "ddp", key, fsdp)
    else:
        builder.set("strategy", engine, key if fsdp else f"{config_key}.fsdp_version", fsdp if fsdp else
                    (version if version is not None else f"unset ({unset_version})"))
    if flat:
        _read_fsdp1_keys(builder, config, config_key)
    if "offload" in words or truthy(config.get("offload_params", False)):
        builder.set("offload", "params", key if "offload" in words else f"{config_key}.offload_params", True)
    if "activation_checkpointing" in config:
        checkpointing = truthy(config["activation_checkpointing"])
        builder.set("gradient_checkpointing", checkpointing, f"{config_key}.activation_checkpointing", checkpointing)
    if "reshard_after_forward" in config and not truthy(config["reshard_after_forward"]):
        builder.not_modelled(f"{config_key}.reshard_after_forward", config["reshard_after_forward"],
                             "parameters stay gathered between forward and backward: not modelled")
    if "mixed_precision_policy" in config:
        builder.not_modelled(f"{config_key}.mixed_precision_policy", config["mixed_precision_policy"],
                             "FSDP mixed-precision policy not modelled; precision read from the dtype keys")
    known = FSDP_QUIET | {"sharding_strategy", "offload_params", "activation_checkpointing", "reshard_after_forward",
                          "mixed_precision_policy"}
    leftover_keys(builder, config, known, config_key)


def _read_fsdp1_keys(builder: RunBuilder, config: dict[str, Any], config_key: str) -> None:
    """FSDP1 settings: the backward and forward prefetch (traced, measure/fsdp/flat.py), and those beyond what
    vramplan traces (use_orig_params false, limit_all_gathers off), each one named, never answered as the traced
    one."""
    prefetch = str(config.get("backward_prefetch", "NO_PREFETCH")).upper()
    if prefetch in ("BACKWARD_PRE", "BACKWARD_POST"):
        builder.set("backward_prefetch", prefetch.lower().replace("_", "-"), f"{config_key}.backward_prefetch",
                    prefetch)
    elif prefetch not in ("NO_PREFETCH", "NONE", "FALSE"):
        builder.not_modelled(f"{config_key}.backward_prefetch", prefetch, "unknown FSDP1 backward prefetch")
    if truthy(config.get("forward_prefetch", False)):
        builder.set("forward_prefetch", True, f"{config_key}.forward_prefetch", config["forward_prefetch"])
    if not truthy(config.get("limit_all_gathers", True)):
        builder.not_modelled(f"{config_key}.limit_all_gathers", config["limit_all_gathers"],
                             "FSDP1 without the all-gather rate limiter not modelled")
    if "use_orig_params" in config and not truthy(config["use_orig_params"]):
        builder.assume(f"{config_key}.use_orig_params false: modelled as true (the traced default): the optimizer "
                       "steps each flat shard instead of views of it (the same bytes), and peft may cast LoRA inputs "
                       "to 16 bits instead of fp32 (fewer bytes): the upper end is kept")


def _fsdp_words(key: str, fsdp: Any) -> list[str]:
    """TrainingArguments.fsdp: a string of options ("full_shard auto_wrap"), a list of them, or true."""
    if isinstance(fsdp, str):
        return fsdp.split()
    if isinstance(fsdp, list):
        return [str(word) for word in fsdp]
    if fsdp is None or isinstance(fsdp, bool):
        return []
    raise expected(key, "a string or list of FSDP options (e.g. full_shard auto_wrap)", fsdp)

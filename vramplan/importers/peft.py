"""A peft adapter_config.json (LoraConfig.save_pretrained) -> LoRA rank, targets and dropout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vramplan.errors import UsageError
from vramplan.models.structure import read_json_object
from vramplan.importers.names import lora_targets
from vramplan.importers.run import RunBuilder, as_float, as_int, leftover_keys

# LoraConfig fields that leave memory alone (peft/tuners/lora/config.py, peft/config.py).
QUIET = frozenset({
    "base_model_name_or_path", "peft_type", "task_type", "r", "lora_alpha", "lora_dropout", "target_modules",
    "inference_mode", "init_lora_weights", "fan_in_fan_out", "use_rslora", "revision", "auto_mapping",
    "megatron_config", "megatron_core", "loftq_config", "eva_config", "corda_config", "alpha_pattern",
    "layers_pattern", "peft_version", "ensure_weight_tying",
})
# Fields that change memory when set, with why vramplan does not model them.
UNMODELLED = {
    "modules_to_save": "trains full copies of these modules: not modelled",
    "use_dora": "DoRA adds a magnitude vector and a weight-norm pass: not modelled",
    "layers_to_transform": "LoRA on some layers only: not modelled",
    "rank_pattern": "per-module ranks: not modelled",
    "trainable_token_indices": "trains embedding rows: not modelled",
    "target_parameters": "LoRA on parameters (MoE experts): not modelled",
    "lora_bias": "trains a bias on lora_B: not modelled",
    "exclude_modules": "excluded modules: not modelled",
    "layer_replication": "replicated layers: not modelled",
    "use_qalora": "QA-LoRA: not modelled",
}


def read_adapter_file(builder: RunBuilder, path: Path, key: str) -> None:
    """Read `path` into the builder's LoRA options; `key` names where the path came from, for notes."""
    adapter = read_json_object(path, "peft adapter config (adapter_config.json)")
    builder.note(f"{key}: LoRA settings read from {path.name}")
    read_adapter(builder, adapter, path.name)


def read_adapter(builder: RunBuilder, adapter: dict[str, Any], where: str) -> None:
    peft_type = str(adapter.get("peft_type", "LORA")).upper()  # peft/config.py: the adapter's type
    if peft_type != "LORA":
        builder.not_modelled(f"{where}.peft_type", peft_type, "only LoRA adapters are modelled")
        return
    if builder.model is None and adapter.get("base_model_name_or_path"):
        builder.model = str(adapter["base_model_name_or_path"])
        builder.note(f"{where}.base_model_name_or_path: {builder.model} -> model")
    if "r" in adapter:
        builder.set("lora_rank", as_int(f"{where}.r", adapter["r"]), f"{where}.r")
    else:
        builder.default("lora_rank", 8, f"{where}.r", "peft default: peft/tuners/lora/config.py LoraConfig.r")
    if adapter.get("target_modules"):
        lora_targets(builder, f"{where}.target_modules", adapter["target_modules"])
    else:
        builder.note(f"{where}.target_modules absent -> peft picks the architecture's default (q_proj,v_proj for "
                     "Llama); lora_targets left to vramplan's default")
    dropout = adapter.get("lora_dropout")
    dropout = 0.0 if dropout is None else dropout  # peft/tuners/lora/config.py: LoraConfig.lora_dropout default 0.0
    builder.set("lora_dropout", as_float(f"{where}.lora_dropout", dropout, 0.0, 1.0), f"{where}.lora_dropout", dropout)
    if str(adapter.get("bias", "none")) != "none":
        builder.not_modelled(f"{where}.bias", adapter["bias"], "trains the base model's biases: not modelled")
    for key, why in UNMODELLED.items():
        if adapter.get(key) not in (None, False, [], {}, ""):
            builder.not_modelled(f"{where}.{key}", adapter[key], why)
    leftover_keys(builder, adapter, QUIET | set(UNMODELLED) | {"bias"}, where)

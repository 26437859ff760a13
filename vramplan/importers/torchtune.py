"""A torchtune recipe config (recipes/configs/*/*.yaml) -> model, method and vramplan options."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from vramplan.importers.names import COMPONENT_OPTIMIZERS, MLP_MODULES, TORCHTUNE_ATTN_MODULES, truthy
from vramplan.importers.run import RunBuilder, as_float, as_int, as_list, as_mapping, leftover_keys
from vramplan.models.catalog import load_catalog

RECIPE = "torchtune recipe default: recipes/{}.py cfg.get"
# torchtune.models.<family> package -> the catalog id's prefix.
FAMILIES = {
    "llama2": "llama-2", "llama3": "llama-3", "llama3_1": "llama-3.1", "llama3_2": "llama-3.2",
    "llama3_3": "llama-3.3", "qwen2_5": "qwen2.5", "qwen3": "qwen3", "gemma2": "gemma-2", "gemma3": "gemma-3",
    "mistral": "mistral", "phi3": "phi-3", "phi4": "phi-4",
}
LOSSES = {
    "torchtune.modules.loss.CEWithChunkedOutputLoss": "chunked",
    # torchtune/modules/loss/cross_entropy_loss.py: projects and takes cross-entropy chunk by chunk (ignored tokens
    # masked first); autograd keeps each chunk for backward, so it is chunked rather than Liger-style fused.
    "torchtune.modules.loss.LinearCrossEntropyLoss": "chunked",
    "torch.nn.CrossEntropyLoss": "standard",
}
MODEL_KEYS = frozenset({"_component_", "lora_attn_modules", "apply_lora_to_mlp", "apply_lora_to_output",
                        "lora_rank", "lora_alpha", "lora_dropout", "use_dora", "quantize_base"})
QUIET = frozenset({
    "tokenizer", "checkpointer", "resume_from_checkpoint", "save_adapter_weights_only", "seed", "shuffle",
    "lr_scheduler", "epochs", "max_steps_per_epoch", "gradient_accumulation_steps", "output_dir", "metric_logger",
    "log_every_n_steps", "log_peak_memory_stats", "device", "clip_grad_norm", "low_cpu_ram", "run_val_every_n_steps",
    "dataset_val", "batch_size_val", "log_level", "enable_async_checkpointing", "save_every_n_steps",
    "valid_data_files", "collate_fn", "data_parallel_replicate_dim", "data_parallel_shard_dim", "profiler",
    "enable_kv_cache", "cudnn_deterministic_mode",
})


def read_torchtune(raw: dict[str, Any], path: Path) -> RunBuilder:
    builder = RunBuilder("torchtune", raw)
    builder.set("stack", "torchtune", "format", "torchtune config")
    _model(builder)
    recipe = _recipe_name(builder, raw)
    _shape(builder, raw)
    _precision(builder)
    _optimizer(builder, recipe)
    _memory_flags(builder, recipe)
    _loss(builder)
    _distributed(builder)
    builder.leftovers(QUIET)
    profiler = raw.get("profiler") or {}
    if isinstance(profiler, dict) and truthy(profiler.get("enabled", False)):
        builder.not_modelled("profiler.enabled", True, "the torch profiler's buffers: not modelled")
    return builder


def _model(builder: RunBuilder) -> None:
    block = builder.get_mapping("model")
    component = str(block.get("_component_", ""))
    builder_name = component.rsplit(".", 1)[-1]
    builder.method = "qlora" if builder_name.startswith("qlora_") else (
        "lora" if builder_name.startswith("lora_") else "full")
    catalog_id = catalog_id_for(component)
    builder.model = catalog_id or component or None
    builder.note(f"model._component_: {component} -> method {builder.method}, model "
                 + (f"{catalog_id} (catalog)" if catalog_id else f"{component} (no catalog match)"))
    checkpoint_dir = as_mapping("checkpointer", builder.raw.get("checkpointer")).get("checkpoint_dir")
    if checkpoint_dir:
        builder.note(f"checkpointer.checkpoint_dir: {checkpoint_dir} (the weights read)")
    if builder.method != "full":
        _lora(builder, block)
    leftover_keys(builder, block, MODEL_KEYS, "model")


def catalog_id_for(component: str) -> str | None:
    """torchtune.models.llama3_1.lora_llama3_1_8b -> llama-3.1-8b, when the catalog holds it."""
    match = re.fullmatch(r"torchtune\.models\.(\w+)\.(?:q?lora_)?(\w+)", component)
    if match is None or match.group(1) not in FAMILIES:
        return None
    family, name = match.group(1), match.group(2)
    size = re.match(rf"{family}_(\d+(?:_\d+)?b|mini|medium)", name)
    if size is None:
        return None
    size_text = size.group(1).replace("_", ".")
    candidates = [f"{FAMILIES[family]}-{size_text}"]
    if family == "phi3":
        candidates = [f"phi-3-{size_text}-4k"]
    if family == "phi4":
        candidates = ["phi-4"]
    catalog = load_catalog()
    return next((c for c in candidates if c in catalog), None)


def _lora(builder: RunBuilder, block: dict[str, Any]) -> None:
    if "lora_rank" in block:
        builder.set("lora_rank", as_int("model.lora_rank", block["lora_rank"]), "model.lora_rank")
    else:
        builder.note("model.lora_rank absent: the builder requires it; lora_rank left to vramplan's default")
    dropout = block.get("lora_dropout")
    dropout = 0.0 if dropout is None else dropout  # torchtune/models/*/_model_builders.py: lora_dropout=0.0
    builder.set("lora_dropout", as_float("model.lora_dropout", dropout, 0.0, 1.0), "model.lora_dropout", dropout)
    attn = [str(m) for m in as_list("model.lora_attn_modules", block.get("lora_attn_modules"))]
    unknown = [m for m in attn if m not in TORCHTUNE_ATTN_MODULES]
    names = [TORCHTUNE_ATTN_MODULES[m] for m in attn if m in TORCHTUNE_ATTN_MODULES]
    mlp = truthy(block.get("apply_lora_to_mlp", False))  # _model_builders.py: apply_lora_to_mlp=False
    output = truthy(block.get("apply_lora_to_output", False))  # _model_builders.py: apply_lora_to_output=False
    names += list(MLP_MODULES) if mlp else []
    names = list(dict.fromkeys(names))
    if set(names) == set(TORCHTUNE_ATTN_MODULES.values()) | set(MLP_MODULES) and not output:
        targets = "all-linear"
    else:
        targets = ",".join(names + (["lm_head"] if output else []))
    written = f"lora_attn_modules {attn}, apply_lora_to_mlp {mlp}, apply_lora_to_output {output}"
    if targets:
        builder.set("lora_targets", targets, "model", written)
    if unknown:
        builder.not_modelled("model.lora_attn_modules", unknown, "unknown torchtune LoRA module names")
    if truthy(block.get("use_dora", False)):
        builder.not_modelled("model.use_dora", True, "DoRA adds a magnitude vector and a weight-norm pass")
    if builder.method == "qlora":
        builder.options["double_quant"] = True
        builder.note("qlora builder -> double_quant True (torchao NF4Tensor quantizes its block scales to 8 bits)")


def _recipe_name(builder: RunBuilder, raw: dict[str, Any]) -> str:
    distributed = any(key in raw for key in ("fsdp_cpu_offload", "fsdp_reshard_after_forward",
                                             "tensor_parallel_dim", "custom_sharded_layers"))
    kind = "full_finetune" if builder.method == "full" else "lora_finetune"
    return f"{kind}_{'distributed' if distributed else 'single_device'}"


def _shape(builder: RunBuilder, raw: dict[str, Any]) -> None:
    if builder.has("batch_size"):
        builder.set("batch_size", builder.get_int("batch_size"), "batch_size")
    else:
        builder.note("batch_size absent: the recipe requires it; batch_size left to vramplan's default")
    tokenizer = as_mapping("tokenizer", raw.get("tokenizer"))
    if tokenizer.get("max_seq_len") is not None:
        builder.set("seq_len", as_int("tokenizer.max_seq_len", tokenizer["max_seq_len"]), "tokenizer.max_seq_len")
    else:
        builder.note("tokenizer.max_seq_len: null -> no truncation: seq_len is the longest sample; not set")
    datasets = builder.get("dataset") or {}
    datasets = datasets if isinstance(datasets, list) else [datasets]
    packed = any(truthy(d.get("packed", False)) for d in datasets if isinstance(d, dict))
    builder.set("packing", packed, "dataset.packed", packed)  # torchtune/datasets/*: packed=False


def _precision(builder: RunBuilder) -> None:
    dtype = builder.get("dtype")
    if dtype in ("bf16", "bfloat16"):
        builder.set("precision", "bf16", "dtype", dtype)
        builder.note("dtype bf16: torchtune trains in pure bf16 (no autocast)")
    elif dtype in ("fp32", "float32"):
        builder.set("precision", "fp32", "dtype", dtype)
    elif dtype is None:
        builder.default("precision", "fp32", "dtype", "torchtune/training/precision.py get_dtype(None) = fp32")
    else:
        builder.not_modelled("dtype", dtype, "fp16 training is refused by torchtune recipes")


def _optimizer(builder: RunBuilder, recipe: str) -> None:
    block = builder.get_mapping("optimizer")
    component = str(block.get("_component_", ""))
    mapped = COMPONENT_OPTIMIZERS.get(component)
    if mapped == "adamw" and truthy(block.get("fused", False)):
        mapped = "adamw-fused"
    if mapped is None:
        builder.not_modelled("optimizer._component_", component, "optimizer not modelled")
    else:
        builder.set("optimizer", mapped, "optimizer._component_",
                    component + (" fused" if mapped == "adamw-fused" else ""))
    in_backward = truthy(builder.get("optimizer_in_bwd", False))
    if "optimizer_in_bwd" in builder.raw:
        builder.set("optimizer_in_backward", in_backward, "optimizer_in_bwd")
    else:
        builder.default("optimizer_in_backward", False, "optimizer_in_bwd", RECIPE.format(recipe))


def _memory_flags(builder: RunBuilder, recipe: str) -> None:
    for key, option in (("enable_activation_checkpointing", "gradient_checkpointing"),
                        ("enable_activation_offloading", "activation_offload")):
        if key in builder.raw:
            builder.set(option, truthy(builder.get(key)), key, builder.raw[key])
        else:
            builder.default(option, False, key, RECIPE.format(recipe))
    for key, why in (("compile", "torch.compile changes activation memory: not modelled"),
                     ("ac_mode", "selective activation checkpointing: not modelled"),
                     ("ac_option", "selective activation checkpointing: not modelled")):
        if builder.get(key) not in (None, False, ""):
            builder.not_modelled(key, builder.raw[key], why)


def _loss(builder: RunBuilder) -> None:
    component = str(builder.get_mapping("loss").get("_component_", ""))
    if component in LOSSES:
        builder.set("loss", LOSSES[component], "loss._component_", component)
    elif component:
        builder.not_modelled("loss._component_", component, "loss not modelled")
    else:
        builder.note("loss absent: the recipe requires it; loss left to vramplan's default")


def _distributed(builder: RunBuilder) -> None:
    if not any(k in builder.raw for k in ("fsdp_cpu_offload", "fsdp_reshard_after_forward", "tensor_parallel_dim")):
        return
    builder.options["strategy"] = "fsdp"
    builder.note("distributed recipe keys (fsdp_*) -> strategy fsdp (FSDP2 fully_shard); gpus from the launcher")
    if truthy(builder.get("fsdp_cpu_offload", False)):
        builder.set("offload", "params", "fsdp_cpu_offload", True)
    if not truthy(builder.get("fsdp_reshard_after_forward", True)):
        builder.not_modelled("fsdp_reshard_after_forward", False, "parameters stay gathered: not modelled")
    for key in ("tensor_parallel_dim", "context_parallel_dim"):
        if isinstance(builder.get(key), int) and builder.raw[key] > 1:
            builder.not_modelled(key, builder.raw[key], "tensor/context parallelism: not modelled")
    if builder.get("custom_sharded_layers"):
        builder.not_modelled("custom_sharded_layers", builder.raw["custom_sharded_layers"],
                             "extra sharding units (embeddings, output): not modelled")


"""Framework names for optimizers, attention and LoRA targets, translated to vramplan's options."""

from __future__ import annotations

from typing import Any

from vramplan.importers.run import RunBuilder

# transformers OptimizerNames (transformers/training_args.py, also used by axolotl and LLaMA-Factory) -> vramplan.
HF_OPTIMIZERS = {
    "adamw_torch": "adamw",
    "adamw_hf": "adamw",
    "adamw_torch_fused": "adamw-fused",
    "adamw_bnb_8bit": "adamw-8bit",
    "adamw_8bit": "adamw-8bit",
    "paged_adamw_8bit": "paged-adamw-8bit",
    "paged_adamw_32bit": "paged-adamw",
    "paged_adamw": "paged-adamw",
    "sgd": "sgd",
    "adafactor": "adafactor",
}
# transformers/training_args.py: default_optim = "adamw_torch", "adamw_torch_fused" when torch >= 2.8.
HF_DEFAULT_OPTIM = "adamw_torch_fused"

# torchtune configs name an optimizer class by its import path (recipes/configs/*/*.yaml `optimizer._component_`).
COMPONENT_OPTIMIZERS = {
    "torch.optim.AdamW": "adamw",
    "torch.optim.Adam": "adamw",  # same two fp32 states per parameter as AdamW
    "torch.optim.SGD": "sgd",
    "bitsandbytes.optim.AdamW8bit": "adamw-8bit",
    "bitsandbytes.optim.PagedAdamW8bit": "paged-adamw-8bit",
    "bitsandbytes.optim.PagedAdamW": "paged-adamw",
    "bitsandbytes.optim.PagedAdamW32bit": "paged-adamw",
}

# transformers attn_implementation values -> vramplan --attn.
HF_ATTENTION = {
    "sdpa": "sdpa",
    "eager": "eager",
    "flash_attention_2": "flash",
    "flash_attention_3": "flash",
    "kernels-community/flash-attn": "flash",
    "kernels-community/flash-attn3": "flash",
    "kernels-community/vllm-flash-attn3": "flash",
}

# torchtune's LoRA module names (torchtune/models/llama3_1/_component_builders.py) -> the HF names peft uses.
TORCHTUNE_ATTN_MODULES = {"q_proj": "q_proj", "k_proj": "k_proj", "v_proj": "v_proj", "output_proj": "o_proj"}
MLP_MODULES = ("gate_proj", "up_proj", "down_proj")  # torchtune w1, w3, w2
ALL_LINEAR = "all-linear"
# HF TrainingArguments / peft spell "every linear layer but the head" this way.
ALL_LINEAR_SPELLINGS = {"all-linear", "all_linear", "all"}


def hf_optimizer(builder: RunBuilder, key: str, name: str, written: Any = None) -> None:
    """A transformers/axolotl optimizer name -> `optimizer`, or an unmodelled entry."""
    mapped = HF_OPTIMIZERS.get(str(name).lower())
    if mapped is None:
        builder.not_modelled(key, name, "optimizer not modelled; vramplan knows " + ", ".join(sorted(HF_OPTIMIZERS)))
        return
    builder.set("optimizer", mapped, key, written if written is not None else name)


def hf_attention(builder: RunBuilder, key: str, name: str) -> None:
    mapped = HF_ATTENTION.get(str(name))
    if mapped is None:
        builder.not_modelled(key, name, "attention implementation not modelled (sdpa, flash, eager are)")
        return
    builder.set("attn", mapped, key, name)


def lora_targets(builder: RunBuilder, key: str, targets: Any) -> None:
    """A list or comma string of module names, or an all-linear spelling -> `lora_targets`."""
    if isinstance(targets, str):
        names = [name.strip() for name in targets.split(",") if name.strip()]
    elif isinstance(targets, (list, tuple)):
        names = [str(name) for name in targets]
    else:
        builder.not_modelled(key, targets, "LoRA targets given as a pattern or mapping: not modelled")
        return
    if len(names) == 1 and names[0] in ALL_LINEAR_SPELLINGS:
        builder.set("lora_targets", ALL_LINEAR, key, targets)
    elif names:
        builder.set("lora_targets", ",".join(dict.fromkeys(names)), key, targets)


def truthy(value: Any) -> bool:
    """YAML/JSON booleans, also written as strings ("true", "auto" counts as true)."""
    if isinstance(value, str):
        return value.strip().lower() in {"true", "yes", "1", "auto"}
    return bool(value)

"""An axolotl YAML config -> vramplan options (option names and defaults from axolotl/utils/schemas/)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vramplan.importers.axolotl_keys import PARALLEL_DEGREES, QUIET, UNMODELLED_FLAGS
from vramplan.importers.names import hf_optimizer, lora_targets, truthy
from vramplan.importers.parallel import load_deepspeed_reference, read_deepspeed_block, read_fsdp
from vramplan.importers.run import RunBuilder

CONFIG = "axolotl default: src/axolotl/utils/schemas/config.py"
TRAINING = "axolotl default: src/axolotl/utils/schemas/training.py"
PEFT = "axolotl default: src/axolotl/utils/schemas/peft.py"
LIGER = "axolotl.integrations.liger"


# axolotl keys that change the training objective (src/axolotl/utils/schemas/config.py: `rl` is an RLType, dpo /
# ipo / orpo / kto / simpo / grpo; `reward_model` and `process_reward_model` train a reward head).
OBJECTIVE_KEYS = {
    "rl": "preference or RL training through axolotl's own trainers on the TRL version axolotl pins (rl: dpo, ipo, "
          "orpo, kto, simpo, grpo; vramplan models TRL 1.16's DPOTrainer and GRPOTrainer: a TRL config or "
          "--objective dpo|grpo)",
    "reward_model": "reward-model training (a value head, paired batches)",
    "process_reward_model": "process-reward-model training (a token-classification head)",
}


def read_axolotl(raw: dict[str, Any], path: Path) -> RunBuilder:
    builder = RunBuilder.for_stack("axolotl", raw, "base_model")
    for key, objective in OBJECTIVE_KEYS.items():
        if builder.get(key) not in (None, False, "", [], {}):
            builder.refuse_objective(key, builder.raw[key], objective)
    _method(builder)
    _shape(builder)
    _precision(builder)
    _checkpointing(builder)
    if builder.has("optimizer"):
        hf_optimizer(builder, "optimizer", builder.get("optimizer"))
    else:
        builder.default("optimizer", "adamw-fused", "optimizer", f"adamw_torch_fused; {TRAINING}")
    _attention(builder)
    _kernels(builder)
    _parallel(builder, path.parent)
    for key, why in UNMODELLED_FLAGS.items():
        if builder.get(key) not in (None, False, "", [], {}):
            builder.not_modelled(key, builder.raw[key], why)
    for key in PARALLEL_DEGREES:
        if isinstance(builder.get(key), int) and builder.raw[key] > 1:
            builder.not_modelled(key, builder.raw[key], "sequence/context/tensor parallelism: not modelled")
    builder.leftovers(QUIET)
    return builder


def _method(builder: RunBuilder) -> None:
    adapter = builder.get("adapter")
    four_bit, eight_bit = truthy(builder.get("load_in_4bit", False)), truthy(builder.get("load_in_8bit", False))
    if adapter in (None, ""):
        builder.method = "full"
        builder.note("adapter absent -> method full (every parameter trained)")
        return
    if adapter not in ("lora", "qlora"):
        builder.not_modelled("adapter", adapter, "only lora and qlora adapters are modelled")
        return
    builder.method = "qlora" if adapter == "qlora" or four_bit else "lora"
    builder.note(f"adapter: {adapter}" + (", load_in_4bit: true" if four_bit else "") + f" -> method {builder.method}")
    if eight_bit:
        builder.not_modelled("load_in_8bit", True, "8-bit base model (LLM.int8): not modelled; read as lora")
    if builder.has("lora_r"):
        builder.set("lora_rank", builder.get_int("lora_r"), "lora_r")
    else:
        builder.default("lora_rank", 8, "lora_r", "axolotl passes None, so peft's LoraConfig.r default applies")
    if truthy(builder.get("lora_target_linear", False)):
        builder.set("lora_targets", "all-linear", "lora_target_linear", True)
    elif builder.has("lora_target_modules"):
        lora_targets(builder, "lora_target_modules", builder.get("lora_target_modules"))
    else:
        builder.note("lora_target_modules/lora_target_linear absent -> peft's per-architecture default; "
                     "lora_targets left to vramplan's default")
    dropout = builder.get_float("lora_dropout", 0.0, 1.0)
    if dropout is None:
        builder.default("lora_dropout", 0.0, "lora_dropout", PEFT)
    else:
        builder.set("lora_dropout", dropout, "lora_dropout")
    if builder.method == "qlora":
        kwargs = builder.get_mapping("bnb_config_kwargs")
        if "bnb_4bit_use_double_quant" in kwargs:
            builder.set("double_quant", truthy(kwargs["bnb_4bit_use_double_quant"]),
                        "bnb_config_kwargs.bnb_4bit_use_double_quant")
        else:
            builder.default("double_quant", True, "bnb_config_kwargs.bnb_4bit_use_double_quant",
                            "axolotl default: src/axolotl/loaders/model.py BitsAndBytesConfig")
        if kwargs.get("bnb_4bit_quant_type", "nf4") != "nf4":
            builder.not_modelled("bnb_config_kwargs.bnb_4bit_quant_type", kwargs["bnb_4bit_quant_type"],
                                 "vramplan models NF4")


def _shape(builder: RunBuilder) -> None:
    builder.int_or_default("batch_size", "micro_batch_size", 1, TRAINING)
    builder.int_or_default("seq_len", "sequence_len", 512, CONFIG)
    if "sample_packing" in builder.raw:
        builder.set("packing", truthy(builder.get("sample_packing")), "sample_packing")
    else:
        builder.default("packing", False, "sample_packing", CONFIG)
    if not builder.options["packing"] and not truthy(builder.get("pad_to_sequence_len", False)):
        builder.note("pad_to_sequence_len off: batches are padded to their longest sample; seq_len is the worst case")


def _precision(builder: RunBuilder) -> None:
    bf16, fp16 = builder.get("bf16"), builder.get("fp16")
    float32 = builder.get("float32")
    builder.used |= {"bfloat16", "float16", "tf32"}  # load dtypes implied by bf16/fp16; tf32 changes no memory
    if truthy(fp16 or False):
        builder.set("precision", "fp16-mixed", "fp16", fp16)
    elif truthy(float32 or False):
        builder.set("precision", "fp32", "float32", float32)
    elif bf16 is None or bf16 == "auto":
        # config.py: bf16 "auto" -> bf16 on a GPU that supports it; the model then loads in bf16.
        if bf16 is None:
            builder.default("precision", "bf16", "bf16", f"auto: bf16 where the GPU supports it; {CONFIG}")
        else:
            builder.set("precision", "bf16", "bf16", "auto")
    elif truthy(bf16):
        builder.set("precision", "bf16", "bf16", bf16)
    else:
        builder.set("precision", "fp32", "bf16", bf16)


def _checkpointing(builder: RunBuilder) -> None:
    value = builder.get("gradient_checkpointing")
    if value is None:
        builder.default("gradient_checkpointing", False, "gradient_checkpointing", CONFIG)
    elif value in ("offload", "unsloth"):
        builder.set("gradient_checkpointing", True, "gradient_checkpointing", value)
        builder.set("activation_offload", True, "gradient_checkpointing", value)
    else:
        builder.set("gradient_checkpointing", truthy(value), "gradient_checkpointing", value)
    offload = builder.get("activation_offloading")
    if offload is not None and "activation_offload" not in builder.options:
        # config.py activation_offloading: true | "legacy" | "disk"; disk offload is not host memory.
        if offload == "disk":
            builder.not_modelled("activation_offloading", offload, "activations offloaded to disk: not modelled")
        builder.set("activation_offload", truthy(offload) or offload in ("legacy", "disk"), "activation_offloading",
                    offload)
    elif "activation_offload" not in builder.options:
        builder.default("activation_offload", False, "activation_offloading", CONFIG)
    kwargs = builder.get_mapping("gradient_checkpointing_kwargs")
    if builder.options["gradient_checkpointing"] and truthy(kwargs.get("use_reentrant", False)):
        builder.not_modelled("gradient_checkpointing_kwargs.use_reentrant", kwargs["use_reentrant"],
                             "reentrant checkpointing: vramplan models the non-reentrant kind")


def _attention(builder: RunBuilder) -> None:
    for key, attn in (("flash_attention", "flash"), ("sdp_attention", "sdpa"), ("eager_attention", "eager")):
        if truthy(builder.get(key, False)):
            builder.set("attn", attn, key, True)
    for key in ("xformers_attention", "flex_attention", "s2_attention", "flash_attn_cross_entropy",
                "flash_attn_rms_norm", "flash_attn_fuse_qkv", "flash_attn_fuse_mlp"):
        if truthy(builder.get(key, False)):
            builder.not_modelled(key, True, "attention/fused kernel not modelled")
    if "attn" not in builder.options:
        builder.note("no attention key -> transformers' default (sdpa); attn not set")

# axolotl's chunked_cross_entropy (axolotl/monkeypatch/loss/chunked.py) splits the fp32 cross-entropy over chunks of
# the full logits; vramplan has no rule for it yet, so the whole fp32 upcast of the standard loss is counted.
AXOLOTL_CHUNKED_CE_UPPER_BOUND = ("chunked_cross_entropy: axolotl's chunked cross-entropy is not modelled yet; the "
                                  "estimate counts the standard cross-entropy's full fp32 upcast, an upper bound "
                                  "(OOM-safe)")


def _kernels(builder: RunBuilder) -> None:
    plugins = [str(p) for p in builder.get_list("plugins")]
    liger_plugin = any(LIGER in p for p in plugins)
    liger_keys = ("liger_rope", "liger_rms_norm", "liger_glu_activation", "liger_layer_norm")
    liger_on = [truthy(builder.get(key, False)) for key in liger_keys]
    if liger_plugin and any(liger_on):
        builder.set("liger", True, "plugins + liger_rope/liger_rms_norm/liger_glu_activation", True)
    else:
        builder.default("liger", False, "plugins", f"no {LIGER}.LigerPlugin with its kernels on")
    if liger_plugin and truthy(builder.get("liger_fused_linear_cross_entropy", False)):
        builder.set("loss", "fused", "liger_fused_linear_cross_entropy", True)
    elif any("cut_cross_entropy" in p for p in plugins) and truthy(builder.get("cut_cross_entropy", False)):
        builder.set("loss", "fused", "cut_cross_entropy", True)
    elif truthy(builder.get("chunked_cross_entropy", False)):
        builder.set("loss", "standard", "chunked_cross_entropy", True)
        builder.assume(AXOLOTL_CHUNKED_CE_UPPER_BOUND)
    else:
        builder.default("loss", "standard", "loss plugins", "the model's own cross-entropy")
    builder.used |= {"liger_cross_entropy", "chunked_cross_entropy_num_chunks"}
    other = [p for p in plugins if LIGER not in p and "cut_cross_entropy" not in p]
    if other:
        builder.not_modelled("plugins", other, "plugins not modelled")


def _parallel(builder: RunBuilder, base: Path) -> None:
    if builder.has("deepspeed"):
        ds = load_deepspeed_reference(builder, "deepspeed", builder.get("deepspeed"), base)
        if ds is not None:
            read_deepspeed_block(builder, ds, "deepspeed.")
    fsdp, config = builder.get("fsdp"), builder.get_mapping("fsdp_config")
    if fsdp or config:
        config = dict(config)
        if builder.has("fsdp_version"):
            config["fsdp_version"] = builder.get("fsdp_version")
        read_fsdp(builder, "fsdp" if fsdp else "fsdp_config", fsdp or [], config, "fsdp_config")

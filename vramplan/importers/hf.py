"""transformers TrainingArguments / TRL SFTConfig (+ TRL ModelConfig, + a peft adapter_config.json) -> options."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vramplan.errors import UsageError
from vramplan.importers.hf_keys import MODEL_CONFIG_QUIET, SFT_KEYS, SFT_QUIET, TRAINING_ARGS_QUIET
from vramplan.importers.names import HF_DEFAULT_OPTIM, hf_attention, hf_optimizer, lora_targets, truthy
from vramplan.importers.parallel import load_deepspeed_reference, read_deepspeed_block, read_fsdp
from vramplan.importers.peft import read_adapter_file
from vramplan.importers.run import RunBuilder, as_mapping
from vramplan.importers.trl_objectives import OBJECTIVE_QUIET, read_dpo, read_grpo, read_kto, read_orpo, trl_objective

TA = "transformers TrainingArguments default: transformers/training_args.py"
SFT = "TRL SFTConfig default: trl/trainer/sft_config.py"
MC = "TRL ModelConfig default: trl/trainer/model_config.py"
# SFTConfig.loss_type: "nll" (default) or "dft"; "chunked_nll" is a deprecated alias of "nll" (trl/trainer/sft_config.py,
# TRL 1.x). TRL 1.x's SFTTrainer computes "nll" through its fused LM head (trl/trainer/sft_trainer.py: add_fused_lm_head,
# per-token log-probs in chunks, no full logits); TRL 0.x took the model's own cross-entropy over full logits.
TRL_NLL_LOSS_TYPES = ("nll", "chunked_nll")
# vramplan has no rule for TRL's fused LM head yet: the full-logits cross-entropy is counted, the larger of the two.
TRL_NLL_UPPER_BOUND = ("TRL SFT loss (nll): TRL 1.x computes it in chunks through its fused LM head, which vramplan does "
                       "not model yet; the estimate counts the full logits of the standard cross-entropy (TRL 0.x), "
                       "an upper bound (OOM-safe)")


def read_trl(raw: dict[str, Any], path: Path) -> RunBuilder:
    builder = RunBuilder("trl", raw)
    objective = trl_objective(builder)  # refuses the objectives vramplan does not model
    sft = objective is None and any(key in raw for key in SFT_KEYS)
    kind = {"grpo": "TRL GRPOConfig (GRPO fields present)", "dpo": "TRL DPOConfig (DPO fields present)",
            "kto": "TRL KTOConfig (KTO fields present)", "orpo": "TRL ORPOConfig (ORPO fields present)"}.get(
        objective, "TRL SFTConfig (SFT keys present)" if sft else "transformers TrainingArguments")
    builder.set("stack", "hf", "format", kind)
    builder.model = builder.get_str("model_name_or_path")
    if builder.model:
        builder.note(f"model_name_or_path: {builder.model} -> model")
    if objective == "grpo":
        read_grpo(builder)
    elif objective == "dpo":
        read_dpo(builder)
    elif objective == "kto":
        read_kto(builder)
    elif objective == "orpo":
        read_orpo(builder)
    else:
        _batch_and_length(builder, sft)
    trl = sft or objective is not None  # bf16 and gradient_checkpointing default True in every TRL config
    _precision(builder, trl)
    _checkpointing(builder, trl)
    optim = builder.get("optim")
    if truthy(builder.get("adafactor", False)):
        builder.set("optimizer", "adafactor", "adafactor", True)
    elif optim is not None:
        hf_optimizer(builder, "optim", optim)
    else:
        builder.default("optimizer", "adamw-fused", "optim", f"{HF_DEFAULT_OPTIM} with torch >= 2.8; {TA}")
    _kernels_and_loss(builder, sft, loss=objective is None)
    _parallel(builder, path.parent)
    _method(builder, path)
    _unmodelled_flags(builder)
    builder.leftovers(TRAINING_ARGS_QUIET | SFT_QUIET | MODEL_CONFIG_QUIET | OBJECTIVE_QUIET)
    return builder


def _batch_and_length(builder: RunBuilder, sft: bool) -> None:
    builder.int_or_default("batch_size", "per_device_train_batch_size", 8, TA)
    key = "max_length" if "max_length" in builder.raw else "max_seq_length"
    if builder.has(key):
        builder.set("seq_len", builder.get_int(key), key)
    elif key in builder.raw:
        builder.get(key)
        builder.note(f"{key}: null -> no truncation: seq_len is the longest sample, left to vramplan's default")
    elif sft:
        builder.default("seq_len", 1024, "max_length", SFT)
    else:
        builder.note("no sequence length in TrainingArguments (the tokenizer/collator decides): seq_len not set")
    if sft:
        packing = truthy(builder.get("packing", False))
        builder.set("packing", packing, "packing") if "packing" in builder.raw else builder.default(
            "packing", False, "packing", SFT)
        if truthy(builder.get("padding_free", False)) and not packing:
            builder.not_modelled("padding_free", True, "padding-free batches without packing: not modelled")


def _precision(builder: RunBuilder, sft: bool) -> None:
    bf16, fp16 = builder.get("bf16"), builder.get("fp16")
    dtype = _model_dtype(builder)
    if truthy(fp16):
        builder.set("precision", "fp16-mixed", "fp16", fp16)
    elif truthy(bf16) or (bf16 is None and sft):
        precision = "bf16-mixed" if dtype in ("float32", "fp32") else "bf16"
        if bf16 is None:
            builder.default("precision", precision, "bf16", f"{SFT}: True unless fp16")
        else:
            builder.set("precision", precision, "bf16", bf16)
    elif bf16 is None:
        builder.default("precision", "fp32", "bf16/fp16", f"{TA}: both False, no autocast")
    else:
        builder.set("precision", "fp32", "bf16", bf16)
    if dtype is not None:
        stored = "fp32 under autocast" if dtype in ("float32", "fp32") else "as loaded"
        builder.note(f"model dtype {dtype}: weights stored in it ({stored})")


def _model_dtype(builder: RunBuilder) -> str | None:
    kwargs = as_mapping("model_init_kwargs", builder.raw.get("model_init_kwargs"))
    for source in (kwargs, builder.raw):
        for key in ("dtype", "torch_dtype"):
            if source.get(key) not in (None, "auto"):
                if source is builder.raw:
                    builder.used.add(key)
                return str(source[key]).replace("torch.", "")
    return None


def _checkpointing(builder: RunBuilder, sft: bool) -> None:
    if builder.has("gradient_checkpointing"):
        on = truthy(builder.get("gradient_checkpointing"))
        builder.set("gradient_checkpointing", on, "gradient_checkpointing")
    else:
        builder.default("gradient_checkpointing", sft, "gradient_checkpointing", SFT if sft else TA)
    kwargs = builder.get_mapping("gradient_checkpointing_kwargs")
    reentrant = kwargs.get("use_reentrant", builder.get("gradient_checkpointing_use_reentrant"))
    if builder.options.get("gradient_checkpointing") and truthy(reentrant or False):
        builder.not_modelled("gradient_checkpointing_kwargs.use_reentrant", reentrant,
                             "reentrant checkpointing: vramplan models the non-reentrant kind")


def _kernels_and_loss(builder: RunBuilder, sft: bool, loss: bool = True) -> None:
    """Liger, the loss (`loss` False: a DPO or GRPO config, whose trainer computes its own through TRL's fused head),
    the attention implementation and activation offloading."""
    liger = truthy(builder.get("use_liger_kernel", False))
    builder.set("liger", liger, "use_liger_kernel") if "use_liger_kernel" in builder.raw else builder.default(
        "liger", False, "use_liger_kernel", TA)
    loss_type = builder.get("loss_type") if loss else None
    if not loss:
        pass
    elif liger and loss_type in (None, "nll"):
        builder.options["loss"] = "fused"
        builder.note("use_liger_kernel: true -> loss fused (Liger's fused linear cross-entropy replaces the logits)")
    elif loss_type is not None:
        if loss_type in TRL_NLL_LOSS_TYPES:
            builder.set("loss", "standard", "loss_type", loss_type)
            builder.assume(TRL_NLL_UPPER_BOUND)
        else:
            builder.not_modelled("loss_type", loss_type, "loss not modelled (nll, chunked_nll are)")
    elif sft:
        builder.default("loss", "standard", "loss_type", f"nll; {SFT}")
        builder.assume(TRL_NLL_UPPER_BOUND)
    else:
        builder.default("loss", "standard", "loss", f"model's own cross-entropy; {TA}")
    attn = (builder.raw.get("model_init_kwargs") or {}).get("attn_implementation") or builder.get("attn_implementation")
    if attn:
        hf_attention(builder, "attn_implementation", attn)
    if sft or not loss:  # SFTConfig and DPOConfig have activation_offloading
        offload = truthy(builder.get("activation_offloading", False))
        builder.set("activation_offload", offload, "activation_offloading") if (
            "activation_offloading" in builder.raw) else builder.default(
            "activation_offload", False, "activation_offloading", SFT)


def _parallel(builder: RunBuilder, base: Path) -> None:
    if builder.has("deepspeed"):
        ds = load_deepspeed_reference(builder, "deepspeed", builder.get("deepspeed"), base)
        if ds is not None:
            read_deepspeed_block(builder, ds, "deepspeed.")
            micro = ds.get("train_micro_batch_size_per_gpu")
            if isinstance(micro, int) and micro != builder.options.get("batch_size"):
                builder.not_modelled("deepspeed.train_micro_batch_size_per_gpu", micro,
                                     "differs from per_device_train_batch_size: the Trainer refuses it")
    fsdp, config = builder.get("fsdp"), builder.get("fsdp_config")  # fsdp_config alone does nothing
    if fsdp not in (None, "", [], False):
        read_fsdp(builder, "fsdp", fsdp, config, "fsdp_config")


def _method(builder: RunBuilder, path: Path) -> None:
    """peft adapter (adapter_config.json, or TRL ModelConfig use_peft) -> lora; 4-bit base -> qlora."""
    adapter, key = _adapter_path(builder, path)
    use_peft = truthy(builder.get("use_peft", False))
    if adapter is not None:
        read_adapter_file(builder, adapter, key)
    elif use_peft:
        _model_config_lora(builder)
    quant = as_mapping("model_init_kwargs.quantization_config",
                       as_mapping("model_init_kwargs", builder.raw.get("model_init_kwargs")).get("quantization_config"))
    four_bit = truthy(builder.get("load_in_4bit", False)) or truthy(quant.get("load_in_4bit", False))
    eight_bit = truthy(builder.get("load_in_8bit", False)) or truthy(quant.get("load_in_8bit", False))
    if adapter is None and not use_peft:
        builder.method = "full"
        builder.note("no peft adapter (no adapter_config.json, use_peft false) -> method full")
        if four_bit or eight_bit:
            builder.not_modelled("load_in_4bit" if four_bit else "load_in_8bit", True, "quantized base without LoRA")
        return
    builder.method = "qlora" if four_bit else "lora"
    if eight_bit:
        builder.not_modelled("load_in_8bit", True, "8-bit base model: not modelled; read as lora")
    if four_bit:
        builder.note("load_in_4bit: true -> method qlora")
        nested = builder.get("use_bnb_nested_quant", quant.get("bnb_4bit_use_double_quant"))
        if nested is None:
            builder.default("double_quant", False, "use_bnb_nested_quant", MC)
        else:
            builder.set("double_quant", truthy(nested), "use_bnb_nested_quant", nested)
        quant_type = builder.get("bnb_4bit_quant_type", quant.get("bnb_4bit_quant_type", "nf4"))
        if quant_type != "nf4":
            builder.not_modelled("bnb_4bit_quant_type", quant_type, "vramplan models NF4")


def _adapter_path(builder: RunBuilder, path: Path) -> tuple[Path | None, str]:
    """The peft adapter_config.json a key names (relative to this file), or the one next to this file."""
    from vramplan.importers.references import reads_references

    for key in ("adapter_config", "peft_config"):
        value = builder.get(key)
        if isinstance(value, str) and not reads_references():
            raise UsageError(f"{key}: {value[:80]}: an uploaded config cannot name another file; give the LoRA "
                             "settings as options instead")
        if isinstance(value, str):
            candidate = Path(value).expanduser()
            candidate = candidate if candidate.is_absolute() else path.parent / candidate
            return (candidate / "adapter_config.json" if _is_dir(candidate) else candidate), key
    sibling = path.parent / "adapter_config.json"
    if reads_references() and sibling.is_file() and sibling != path:
        return sibling, "adapter_config.json next to this file"
    return None, ""


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:  # a name too long for the file system: reading it then fails with one line
        return False


def _model_config_lora(builder: RunBuilder) -> None:
    """TRL ModelConfig's LoRA keys (trl/trainer/model_config.py) when use_peft is true."""
    if builder.has("lora_r"):
        builder.set("lora_rank", builder.get_int("lora_r"), "lora_r")
    else:
        builder.default("lora_rank", 16, "lora_r", MC)
    if builder.has("lora_target_modules"):
        lora_targets(builder, "lora_target_modules", builder.get("lora_target_modules"))
    else:
        builder.note("lora_target_modules absent -> peft's per-architecture default (q_proj,v_proj for Llama); "
                     "lora_targets left to vramplan's default")
    if builder.has("lora_dropout"):
        builder.set("lora_dropout", builder.get_float("lora_dropout", 0.0, 1.0), "lora_dropout")
    else:
        builder.default("lora_dropout", 0.05, "lora_dropout", MC)
    for key, why in (("lora_modules_to_save", "trains full copies of these modules: not modelled"),
                     ("use_dora", "DoRA: not modelled"),
                     ("lora_target_parameters", "LoRA on parameters: not modelled")):
        if builder.get(key) not in (None, False, []):
            builder.not_modelled(key, builder.raw[key], why)


def _unmodelled_flags(builder: RunBuilder) -> None:
    for key, why in (
        ("torch_compile", "torch.compile changes activation memory: not modelled"),
        ("auto_find_batch_size", "the Trainer halves the batch on OOM: batch size not fixed"),
        ("optim_target_modules", "GaLore/APOLLO-style projected optimizer: not modelled"),
        ("ddp_bucket_cap_mb", "DDP bucket size: vramplan keeps torch's 25 MB default"),
        ("parallelism_config", "tensor/context parallelism: not modelled"),
        ("torchdynamo", "torch.compile backend: not modelled"),
        ("use_cpu", "trains on the CPU"),
        ("no_cuda", "trains on the CPU"),
    ):
        if builder.get(key) not in (None, False, "", [], {}):
            builder.not_modelled(key, builder.raw[key], why)
    smoothing = builder.get("label_smoothing_factor", 0.0)
    if smoothing:
        builder.not_modelled("label_smoothing_factor", smoothing,
                             "Trainer's LabelSmoother takes log_softmax of the full logits: not modelled")

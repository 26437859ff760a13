"""A LLaMA-Factory YAML (llamafactory-cli train) -> options (names and defaults: src/llamafactory/hparams/)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vramplan.importers.hf_keys import TRAINING_ARGS_QUIET
from vramplan.importers.names import HF_DEFAULT_OPTIM, hf_optimizer, lora_targets, truthy
from vramplan.importers.parallel import load_deepspeed_reference, read_deepspeed_block
from vramplan.importers.run import RunBuilder

FT = "LLaMA-Factory default: src/llamafactory/hparams/finetuning_args.py"
MODEL = "LLaMA-Factory default: src/llamafactory/hparams/model_args.py"
DATA = "LLaMA-Factory default: src/llamafactory/hparams/data_args.py"
TA = "transformers TrainingArguments default: transformers/training_args.py"
# model_args.py flash_attn: AttentionFunction auto | disabled | sdpa | fa2 (auto leaves transformers' choice).
ATTENTION = {"fa2": "flash", "sdpa": "sdpa", "disabled": "eager"}

QUIET = TRAINING_ARGS_QUIET | frozenset({
    "template", "dataset", "eval_dataset", "dataset_dir", "media_dir", "train_on_prompt", "mask_history",
    "streaming", "buffer_size", "mix_strategy", "interleave_probs", "overwrite_cache", "preprocessing_batch_size",
    "preprocessing_num_workers", "max_samples", "eval_num_beams", "ignore_pad_token_for_loss", "val_size",
    "eval_on_each_dataset", "tool_format", "tokenized_path", "lora_alpha", "use_rslora", "loraplus_lr_ratio",
    "loraplus_lr_embedding", "pissa_init", "pissa_iter", "pissa_convert", "create_new_adapter", "plot_loss",
    "compute_accuracy", "disable_shuffling", "include_effective_tokens_per_second", "adapter_name_or_path",
    "adapter_folder", "cache_dir", "use_fast_tokenizer", "resize_vocab", "split_special_tokens", "new_special_tokens",
    "model_revision", "low_cpu_mem_usage", "rope_scaling", "moe_aux_loss_coef", "upcast_layernorm", "hf_hub_token",
    "ms_hub_token", "om_hub_token", "print_param_status", "trust_remote_code", "use_swanlab", "swanlab_project",
    "swanlab_workspace", "swanlab_run_name", "swanlab_mode", "swanlab_api_key", "freeze_vision_tower",
    "freeze_multi_modal_projector", "infer_backend", "infer_dtype", "export_dir", "image_max_pixels",
    "image_min_pixels", "video_max_pixels", "video_fps", "offload_folder", "use_cache", "pref_beta", "pref_ftx",
    "pref_loss", "do_sample", "temperature", "top_p", "top_k", "max_new_tokens", "default_system", "enable_thinking",
    "quantization_device_map", "ddp_timeout", "freeze_trainable_layers", "freeze_trainable_modules",
    "freeze_extra_modules",  # used only with finetuning_type freeze, which is reported
    # read only with finetuning_type lora / quantization_bit 4
    "lora_rank", "lora_dropout", "lora_target", "double_quantization", "quantization_type", "quantization_method",
})
# Keys that change memory in ways vramplan does not model: reported when set (truthy).
UNMODELLED_FLAGS = {
    "additional_target": "trains full copies of these modules: not modelled",
    "use_dora": "DoRA adds a magnitude vector and a weight-norm pass: not modelled",
    "use_galore": "GaLore projected optimizer: not modelled",
    "use_apollo": "APOLLO optimizer: not modelled",
    "use_badam": "BAdam block-wise training: not modelled",
    "use_adam_mini": "Adam-mini optimizer: not modelled",
    "use_llama_pro": "LLaMA Pro block expansion: not modelled",
    "use_unsloth": "unsloth kernels and checkpointing: not modelled",
    "use_unsloth_gc": "unsloth gradient checkpointing (offloads to CPU): not modelled",
    "shift_attn": "shift short attention (S^2-Attn): not modelled",
    "mixture_of_depths": "mixture of depths: not modelled",
    "upcast_lmhead_output": "fp32 lm_head output: not modelled",
    "torch_compile": "torch.compile changes activation memory: not modelled",
    "train_mm_proj_only": "multimodal projector training: not modelled",
    "ref_model": "a reference model: not modelled",
    "reward_model": "a reward model: not modelled",
}


# LLaMA-Factory's training stages other than sft/pt, as its hparams/finetuning_args.py names them.
LF_STAGES = {"rm": "reward-model training (a value head, paired batches)",
             "ppo": "PPO (a reward model, a value head, generation)",
             # src/llamafactory/train/dpo/trainer.py CustomDPOTrainer.concatenated_forward: full fp32 logits
             # (`model(**batch).logits.to(torch.float32)`), not TRL 1.16's fused head that --objective dpo models
             "dpo": "LLaMA-Factory's own DPO trainer (CustomDPOTrainer: a reference model, paired batches and the "
                    "full fp32 logits of both rows; vramplan models TRL 1.16's DPOTrainer, --objective dpo)",
             "kto": "KTO preference training (a reference model, a KL batch)"}


def read_llama_factory(raw: dict[str, Any], path: Path) -> RunBuilder:
    builder = RunBuilder.for_stack("llama-factory", raw, "model_name_or_path")
    stage = builder.get("stage", "sft")
    if stage not in ("sft", "pt"):
        # LLaMA-Factory's stages (hparams/finetuning_args.py): pt, sft, rm, ppo, dpo, kto
        builder.refuse_objective("stage", stage, LF_STAGES.get(str(stage), "a training stage other than sft or pt"))
    _method(builder)
    _shape(builder, stage)
    _precision(builder)
    disabled = truthy(builder.get("disable_gradient_checkpointing", False))
    if "disable_gradient_checkpointing" in raw:
        builder.set("gradient_checkpointing", not disabled, "disable_gradient_checkpointing", disabled)
    else:
        builder.default("gradient_checkpointing", True, "disable_gradient_checkpointing", f"False; {MODEL}")
    if builder.options["gradient_checkpointing"] and truthy(builder.get("use_reentrant_gc", True)):
        builder.note("use_reentrant_gc: true (LLaMA-Factory default, model_args.py) -> reentrant checkpointing; "
                     "vramplan models the non-reentrant kind")
    if builder.has("optim"):
        hf_optimizer(builder, "optim", builder.get("optim"))
    else:
        builder.default("optimizer", "adamw-fused", "optim", f"{HF_DEFAULT_OPTIM} with torch >= 2.8; {TA}")
    _kernels(builder)
    if builder.has("deepspeed"):
        ds = load_deepspeed_reference(builder, "deepspeed", builder.get("deepspeed"), path.parent)
        if ds is not None:
            read_deepspeed_block(builder, ds, "deepspeed.")
    for key, why in UNMODELLED_FLAGS.items():
        if builder.get(key) not in (None, False, "", [], {}):
            builder.not_modelled(key, builder.raw[key], why)
    builder.leftovers(QUIET)
    return builder


def _method(builder: RunBuilder) -> None:
    kind = builder.get("finetuning_type", "lora")
    if "finetuning_type" not in builder.raw:
        builder.note(f"finetuning_type absent -> lora ({FT})")
    if kind == "full":
        builder.method = "full"
        return
    if kind != "lora":
        builder.not_modelled("finetuning_type", kind, "partial freezing: not modelled")
        return
    bits = builder.get("quantization_bit")
    method = builder.get("quantization_method", "bnb")
    builder.method = "qlora" if bits == 4 else "lora"
    if bits == 4:
        builder.note("quantization_bit: 4 -> method qlora")
    elif bits is not None:
        builder.not_modelled("quantization_bit", bits, f"{bits}-bit base model: not modelled; read as lora")
    if bits is not None and method not in ("bnb", "bitsandbytes"):
        builder.not_modelled("quantization_method", method, "vramplan models bitsandbytes 4-bit only")
    if builder.has("lora_rank"):
        builder.set("lora_rank", builder.get_int("lora_rank"), "lora_rank")
    else:
        builder.default("lora_rank", 8, "lora_rank", FT)
    if builder.has("lora_dropout"):
        builder.set("lora_dropout", builder.get_float("lora_dropout", 0.0, 1.0), "lora_dropout")
    else:
        builder.default("lora_dropout", 0.0, "lora_dropout", FT)
    if builder.has("lora_target"):
        lora_targets(builder, "lora_target", builder.get("lora_target"))
    else:
        builder.default("lora_targets", "all-linear", "lora_target", f"all; {FT}")
    if builder.method == "qlora":
        double = builder.get("double_quantization")
        if double is None:
            builder.default("double_quant", True, "double_quantization", MODEL)
        else:
            builder.set("double_quant", truthy(double), "double_quantization", double)
        if builder.get("quantization_type", "nf4") != "nf4":
            builder.not_modelled("quantization_type", builder.raw["quantization_type"], "vramplan models NF4")


def _shape(builder: RunBuilder, stage: str) -> None:
    builder.int_or_default("batch_size", "per_device_train_batch_size", 8, TA)
    builder.int_or_default("seq_len", "cutoff_len", 2048, DATA)
    packing, neat = builder.get("packing"), truthy(builder.get("neat_packing", False))
    if neat:
        builder.set("packing", True, "neat_packing", True)
    elif packing is not None:
        builder.set("packing", truthy(packing), "packing", packing)
    else:
        builder.default("packing", stage == "pt", "packing", f"on for stage pt only; {DATA}")


def _precision(builder: RunBuilder) -> None:
    bf16, fp16, pure = builder.get("bf16"), builder.get("fp16"), truthy(builder.get("pure_bf16", False))
    if pure:
        builder.set("precision", "bf16", "pure_bf16", True)
        builder.note("pure_bf16: bf16 weights without autocast; vramplan's bf16 also counts autocast copies")
    elif truthy(bf16 or False):
        builder.set("precision", "bf16", "bf16", bf16)
    elif truthy(fp16 or False):
        builder.set("precision", "fp16-mixed", "fp16", fp16)
    else:
        builder.note("bf16/fp16 absent: LLaMA-Factory loads in its inferred compute dtype (bf16 where supported) "
                     "without autocast; precision not set")


def _kernels(builder: RunBuilder) -> None:
    flash = builder.get("flash_attn", "auto")
    if isinstance(flash, str) and flash in ATTENTION:
        builder.set("attn", ATTENTION[flash], "flash_attn", flash)
    elif flash != "auto":
        builder.not_modelled("flash_attn", flash, "attention implementation not modelled")
    else:
        builder.note(f"flash_attn absent or auto -> transformers' default (sdpa) ({MODEL}); attn not set")
    liger = truthy(builder.get("enable_liger_kernel", False))
    if "enable_liger_kernel" in builder.raw:
        builder.set("liger", liger, "enable_liger_kernel", liger)
    else:
        builder.default("liger", False, "enable_liger_kernel", MODEL)
    if liger:
        # src/llamafactory/model/model_utils/liger_kernel.py: fused linear cross-entropy unless logits are needed.
        builder.set("loss", "fused", "enable_liger_kernel", True)
    else:
        builder.default("loss", "standard", "loss", "the model's own cross-entropy")

"""Which axolotl config keys leave GPU memory alone, and which change it in ways vramplan does not model."""

from __future__ import annotations

# axolotl/utils/schemas/{config,training,peft,integrations,model}.py fields that do not change the training
# step's GPU memory: data, schedules, logging, saving, evaluation, hub and tokenizer settings.
QUIET = frozenset({
    "base_model_config", "base_model_ignore_patterns", "model_type", "tokenizer_type", "tokenizer_config",
    "tokenizer_use_fast", "tokenizer_legacy", "tokenizer_save_jinja_files", "trust_remote_code", "revision_of_model",
    "processor_type", "datasets", "test_datasets", "dataset_prepared_path", "dataset_processes",
    "dataset_num_proc", "dataset_exact_deduplication", "dataset_keep_in_memory", "shuffle_merged_datasets",
    "shuffle_before_merging_datasets", "skip_prepare_dataset", "val_set_size", "output_dir", "hub_model_id",
    "hub_strategy", "push_dataset_to_hub", "hf_use_auth_token", "learning_rate", "lr_scheduler",
    "lr_scheduler_kwargs", "warmup_steps", "warmup_ratio", "num_epochs", "max_steps", "logging_steps",
    "eval_steps", "evals_per_epoch", "eval_strategy", "save_steps", "saves_per_epoch", "save_strategy",
    "save_total_limit", "save_safetensors", "save_only_model", "save_first_step", "weight_decay", "max_grad_norm",
    "gradient_accumulation_steps", "seed", "train_on_inputs", "group_by_length", "special_tokens", "tokens",
    "added_tokens_overrides", "chat_template", "chat_template_jinja", "default_system_message", "strict",
    "debug", "local_rank", "resume_from_checkpoint", "auto_resume_from_checkpoints", "early_stopping_patience",
    "load_best_model_at_end", "metric_for_best_model", "greater_is_better", "lora_alpha", "lora_fan_in_fan_out",
    "peft_use_rslora", "loraplus_lr_ratio", "loraplus_lr_embedding", "lora_model_dir", "merge_lora",
    "merge_method", "lora_on_cpu", "adam_beta1", "adam_beta2", "adam_beta3", "adam_epsilon", "adam_epsilon2",
    "optim_args", "cosine_min_lr_ratio", "cosine_constant_lr_ratio", "lr_quadratic_warmup", "lr_div_factor",
    "embedding_lr", "embedding_lr_scale", "eval_table_size", "eval_max_new_tokens", "eval_batch_size",
    "eval_sample_packing", "eval_causal_lm_metrics", "do_causal_lm_eval", "do_bench_eval", "bench_dataset",
    "bench_split", "use_tensorboard", "profiler_steps", "include_tokens_per_second", "include_tkps",
    "neftune_noise_alpha", "wandb_project", "wandb_entity", "wandb_watch", "wandb_name", "wandb_run_id",
    "wandb_log_model", "wandb_mode", "mlflow_tracking_uri", "mlflow_experiment_name", "mlflow_run_name",
    "hf_mlflow_log_artifacts", "use_mlflow", "comet_api_key", "comet_workspace", "comet_project_name",
    "use_comet", "use_wandb", "logging_dir", "dataloader_pin_memory", "dataloader_num_workers",
    "dataloader_prefetch_factor", "dataloader_drop_last", "remove_unused_columns", "pad_to_sequence_len",
    "min_sample_len", "sample_packing_group_size", "sample_packing_bin_size", "sample_packing_sequentially",
    "sample_packing_eff_est", "multipack_real_batches", "curriculum_sampling", "is_llama_derived_model",
    "is_mistral_derived_model", "is_qwen_derived_model", "is_falcon_derived_model", "gc_steps",
    "fsdp_final_state_dict_type", "loss_watchdog_threshold", "loss_watchdog_patience", "ddp_timeout",
    "ddp_find_unused_parameters", "ddp_broadcast_buffers", "torch_compile_backend", "torch_compile_mode",
    "resize_token_embeddings_to_32x", "mean_resizing_embeddings", "shrink_embeddings", "fix_untrained_tokens",
    "tf32", "bfloat16", "float16", "max_prompt_len", "ddp", "world_size", "device", "flash_optimum",
    "use_ray", "ray_num_workers", "ray_run_name", "llama4_linearized_experts",
    "low_cpu_mem_usage", "pretraining_dataset",
    # read only when an adapter is set (a full fine-tune ignores them)
    "lora_r", "lora_target_modules", "lora_target_linear", "lora_dropout", "bnb_config_kwargs", "pretrain_multipack_buffer_size", "pretrain_multipack_attn",
})

# Keys that change memory in ways vramplan does not model: reported when set (truthy).
UNMODELLED_FLAGS = {
    "lora_modules_to_save": "trains full copies of these modules (e.g. the embedding): not modelled",
    "peft_use_dora": "DoRA adds a magnitude vector and a weight-norm pass: not modelled",
    "peft_layers_to_transform": "LoRA on some layers only: not modelled",
    "peft_trainable_token_indices": "trains embedding rows: not modelled",
    "lora_target_parameters": "LoRA on parameters (MoE experts): not modelled",
    "peft_layer_replication": "replicated layers: not modelled",
    "unfrozen_parameters": "trains a subset of parameters: not modelled",
    "gptq": "GPTQ-quantized base model: not modelled",
    "relora": "ReLoRA restarts: not modelled",
    "torch_compile": "torch.compile changes activation memory: not modelled",
    "auto_find_batch_size": "the Trainer halves the batch on OOM: batch size not fixed",
    "unsloth_cross_entropy_loss": "unsloth kernel not modelled",
    "unsloth_lora_mlp": "unsloth kernel not modelled",
    "unsloth_lora_qkv": "unsloth kernel not modelled",
    "unsloth_lora_o": "unsloth kernel not modelled",
    "unsloth_rms_norm": "unsloth kernel not modelled",
    "unsloth_rope": "unsloth kernel not modelled",
    "lora_mlp_kernel": "axolotl's fused LoRA kernels change activation memory: not modelled",
    "lora_qkv_kernel": "axolotl's fused LoRA kernels change activation memory: not modelled",
    "lora_o_kernel": "axolotl's fused LoRA kernels change activation memory: not modelled",
    "max_memory": "per-device memory caps (device_map placement): not modelled",
    "gpu_memory_limit": "per-device memory caps (device_map placement): not modelled",
    "device_map": "device_map placement: use --strategy device-map",
    "ddp_bucket_cap_mb": "DDP bucket size: vramplan keeps torch's 25 MB default",
    "fp8": "fp8 training: not modelled",
    "qat": "quantization-aware training: not modelled",
    "lisa_n_layers": "LISA layer sampling: not modelled",
    "use_pose": "PoSE context extension: not modelled",
    "batch_flattening": "padding-free batches: not modelled",
}

# Degrees of parallelism besides data parallelism; reported when > 1.
PARALLEL_DEGREES = ("sequence_parallel_degree", "context_parallel_size", "tensor_parallel_size")

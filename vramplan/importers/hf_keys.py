"""Which TrainingArguments / SFTConfig / TRL ModelConfig keys leave GPU memory alone (read quietly)."""

from __future__ import annotations

# Keys that only SFTConfig (trl/trainer/sft_config.py; max_seq_length before TRL 0.20) or TRL's CLI argument
# classes have: their presence says the file is an SFTConfig, with SFTConfig's defaults.
SFT_KEYS = frozenset({
    "max_length", "max_seq_length", "packing", "dataset_text_field", "padding_free", "completion_only_loss",
    "assistant_only_loss", "loss_type", "activation_offloading", "packing_strategy", "eval_packing",
    "dataset_kwargs", "model_init_kwargs", "chat_template_path", "use_peft", "dataset_name", "model_name_or_path",
})

# transformers/training_args.py TrainingArguments fields that do not change the training step's GPU memory
# (logging, saving, evaluation, schedules, hub, data loading on the host).
TRAINING_ARGS_QUIET = frozenset({
    "output_dir", "overwrite_output_dir", "do_train", "do_eval", "do_predict", "eval_strategy", "evaluation_strategy",
    "prediction_loss_only", "per_device_eval_batch_size", "per_gpu_eval_batch_size", "gradient_accumulation_steps",
    "eval_accumulation_steps", "eval_delay", "torch_empty_cache_steps", "learning_rate", "weight_decay",
    "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm", "num_train_epochs", "max_steps",
    "lr_scheduler_type", "lr_scheduler_kwargs", "warmup_ratio", "warmup_steps", "log_level", "log_level_replica",
    "log_on_each_node", "logging_dir", "logging_strategy", "logging_first_step", "logging_steps",
    "logging_nan_inf_filter", "save_strategy", "save_steps", "save_total_limit", "save_safetensors",
    "save_on_each_node", "save_only_model", "restore_callback_states_from_checkpoint", "use_mps_device", "seed",
    "data_seed", "jit_mode_eval", "use_ipex", "fp16_opt_level", "half_precision_backend", "bf16_full_eval",
    "fp16_full_eval", "tf32", "local_rank", "ddp_backend", "tpu_num_cores", "tpu_metrics_debug", "debug",
    "dataloader_drop_last", "eval_steps", "dataloader_num_workers", "dataloader_prefetch_factor", "past_index",
    "run_name", "disable_tqdm", "remove_unused_columns", "label_names", "load_best_model_at_end",
    "metric_for_best_model", "greater_is_better", "ignore_data_skip", "fsdp_min_num_params",
    "fsdp_transformer_layer_cls_to_wrap", "accelerator_config", "optim_args", "group_by_length",
    "length_column_name", "report_to", "ddp_find_unused_parameters", "ddp_broadcast_buffers",
    "dataloader_pin_memory", "dataloader_persistent_workers", "skip_memory_metrics", "use_legacy_prediction_loop",
    "push_to_hub", "resume_from_checkpoint", "hub_model_id", "hub_strategy", "hub_token", "hub_private_repo",
    "hub_always_push", "hub_revision", "include_inputs_for_metrics", "include_for_metrics",
    "eval_do_concat_batches", "fp16_backend", "push_to_hub_model_id", "push_to_hub_organization",
    "push_to_hub_token", "mp_parameters", "full_determinism", "ray_scope", "ddp_timeout", "torch_compile_backend",
    "torch_compile_mode", "include_tokens_per_second", "include_num_input_tokens_seen", "neftune_noise_alpha",
    "batch_eval_metrics", "eval_on_start", "eval_use_gather_object", "average_tokens_across_devices",
    "liger_kernel_config", "project", "trackio_space_id", "trackio_bucket_id", "hub_private", "_n_gpu",
    "per_gpu_train_batch_size", "logging_strategy", "split_batches", "dispatch_batches", "use_liger",
})

# SFTConfig fields (trl/trainer/sft_config.py) that shape the data, not the step's memory.
SFT_QUIET = frozenset({
    "chat_template_path", "dataset_text_field", "dataset_kwargs", "dataset_num_proc", "eos_token", "pad_token",
    "truncation_mode", "shuffle_dataset", "packing_strategy", "pad_to_multiple_of", "eval_packing",
    "completion_only_loss", "assistant_only_loss", "dataset_batch_size", "num_of_sequences", "chars_per_token",
    "dataset_name", "dataset_config", "dataset_train_split", "dataset_test_split", "dataset_streaming",
    "ignore_bias_buffers", "model_init_kwargs",
})

# TRL ModelConfig fields (trl/trainer/model_config.py) that leave memory alone, or that the reader reads only where
# they apply (the LoRA and 4-bit keys when use_peft / load_in_4bit is on, a dtype of "auto").
MODEL_CONFIG_QUIET = frozenset({
    "model_revision", "trust_remote_code", "lora_alpha", "use_rslora", "lora_task_type", "dtype", "torch_dtype",
    "attn_implementation", "lora_r", "lora_dropout", "lora_target_modules", "use_bnb_nested_quant",
    "bnb_4bit_quant_type",
})

"""Launcher configs that run the layout the estimate modelled; pure functions returning dicts.

- `deepspeed_config`: a DeepSpeed JSON for ZeRO stage 1/2/3 with HF-Trainer "auto" values
  (transformers/integrations/deepspeed.py HfTrainerDeepSpeedConfig fills them from TrainingArguments and the
  model's hidden size: the bucket sizes the estimate assumes, estimate/strategies/zero.py HF_* constants).
- `accelerate_config`: an `accelerate launch --config_file` YAML (accelerate/commands/config/config_args.py
  ClusterConfig) for FSDP2, DeepSpeed, DDP (MULTI_GPU) or one GPU.
- `trainer_fsdp_arguments`: TrainingArguments keywords for FSDP2 (transformers/training_args.py
  _process_fsdp_args; `fsdp` as a string is deprecated there, so `fsdp=True` plus `fsdp_config`).
Writing them to files is the CLI's job.
"""

from __future__ import annotations

from vramplan.errors import UsageError
from vramplan.models.spec import ModelSpec
from vramplan.training import DEEPSPEED_STRATEGIES, FSDP_STRATEGIES, Offload, Precision, Strategy, TrainingSetup

EMIT_FORMATS = ("deepspeed", "fsdp", "accelerate")

# The decoder layer class of each family: transformers/models/<family>/modeling_<family>.py (5.x); FSDP wraps
# each one (TRANSFORMER_BASED_WRAP), as estimate/strategies/fsdp.py models.
DECODER_LAYER_CLASS = {
    "llama": "LlamaDecoderLayer",
    "mistral": "MistralDecoderLayer",
    "qwen2": "Qwen2DecoderLayer",
    "qwen3": "Qwen3DecoderLayer",
    "gemma2": "Gemma2DecoderLayer",
    "gemma3_text": "Gemma3DecoderLayer",
    "phi3": "Phi3DecoderLayer",
    "mixtral": "MixtralDecoderLayer",
    "qwen2_moe": "Qwen2MoeDecoderLayer",
    "qwen3_moe": "Qwen3MoeDecoderLayer",
    "deepseek_v3": "DeepseekV3DecoderLayer",
    "gpt_oss": "GptOssDecoderLayer",
}
# accelerate launch's default rendezvous port (accelerate/utils/launch.py prepare_multi_gpu_env: 29500).
MAIN_PROCESS_PORT = 29500


def check_emit(fmt: str, setup: TrainingSetup) -> None:
    """A UsageError when `fmt` cannot launch the setup's strategy."""
    strategy = setup.strategy
    if fmt not in EMIT_FORMATS:
        raise UsageError(f"--emit {fmt!r}: choose one of {'|'.join(EMIT_FORMATS)}")
    if fmt == "deepspeed" and strategy not in DEEPSPEED_STRATEGIES:
        raise UsageError(f"--emit deepspeed needs --strategy zero1|zero2|zero3; got {strategy.value} "
                         "(--emit fsdp or accelerate for FSDP, accelerate for ddp)")
    if fmt == "fsdp" and strategy not in (*FSDP_STRATEGIES, Strategy.FSDP1):
        raise UsageError(f"--emit fsdp needs --strategy fsdp1|fsdp2|fsdp-hybrid; got {strategy.value}")
    if fmt == "accelerate" and strategy is Strategy.DEVICE_MAP:
        raise UsageError("--strategy device-map runs as one process (from_pretrained(device_map='auto'), then "
                         "python train.py); there is no launcher config to emit")


def decoder_layer_class(spec: ModelSpec) -> str:
    return DECODER_LAYER_CLASS[spec.family]


def deepspeed_config(setup: TrainingSetup) -> dict:
    """DeepSpeed JSON for the setup's ZeRO stage and offload, as HF Trainer or accelerate launches it."""
    check_emit("deepspeed", setup)
    stage = {Strategy.ZERO1: 1, Strategy.ZERO2: 2, Strategy.ZERO3: 3}[setup.strategy]
    zero: dict = {"stage": stage, "reduce_bucket_size": "auto"}
    if stage == 3:
        zero.update({
            "stage3_prefetch_bucket_size": "auto",
            "stage3_param_persistence_threshold": "auto",
            "stage3_gather_16bit_weights_on_model_save": True,
        })
    if setup.offload in (Offload.OPTIMIZER, Offload.PARAMS):
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if setup.offload is Offload.PARAMS:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    config: dict = {
        "bf16": {"enabled": setup.precision in (Precision.BF16, Precision.BF16_MIXED)},
        "fp16": {"enabled": setup.precision is Precision.FP16_MIXED},
        "zero_optimization": zero,
        # AdamW with fp32 master weights and states, as estimate/strategies/zero.py models; under
        # offload_optimizer DeepSpeed runs it as DeepSpeedCPUAdam.
        "optimizer": {"type": "AdamW",
                      "params": {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto"}},
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
    }
    return config


def _fsdp_options(setup: TrainingSetup, spec: ModelSpec) -> dict:
    """The FSDP settings the estimate models, with accelerate's `fsdp_` key names: FSDP2, or FSDP1 with the
    Trainer's FSDP1 settings that vramplan traces (measure/fsdp/flat.py: the sharding, use_orig_params, prefetch)."""
    if setup.strategy is Strategy.FSDP1:
        return {
            "fsdp_version": 1,
            "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "fsdp_transformer_layer_cls_to_wrap": decoder_layer_class(spec),
            "fsdp_sharding_strategy": setup.fsdp1_sharding.upper().replace("-", "_"),
            "fsdp_use_orig_params": True,
            "fsdp_backward_prefetch": setup.backward_prefetch.upper().replace("-", "_").replace("NONE", "NO_PREFETCH"),
            "fsdp_forward_prefetch": setup.forward_prefetch,
            "fsdp_state_dict_type": "SHARDED_STATE_DICT",
            "fsdp_cpu_ram_efficient_loading": True,
            # the Trainer's gradient checkpointing, as traced (TrainingArguments.gradient_checkpointing)
            "fsdp_activation_checkpointing": False,
        }
    return {
        "fsdp_version": 2,
        "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "fsdp_transformer_layer_cls_to_wrap": decoder_layer_class(spec),
        "fsdp_reshard_after_forward": True,
        "fsdp_state_dict_type": "SHARDED_STATE_DICT",
        "fsdp_cpu_ram_efficient_loading": True,
        # FSDP's own per-layer activation checkpointing (non-reentrant checkpoint_wrapper) instead of the
        # Trainer's gradient_checkpointing: same granularity, no second all-gather in backward.
        "fsdp_activation_checkpointing": setup.gradient_checkpointing,
    }


def trainer_fsdp_arguments(setup: TrainingSetup, spec: ModelSpec) -> dict:
    """TrainingArguments keywords: fsdp=True and fsdp_config; HSDP adds parallelism_config (accelerate
    ParallelismConfig keywords: replicate across nodes, shard within one)."""
    check_emit("fsdp", setup)
    options = _fsdp_options(setup, spec)
    if setup.strategy is Strategy.FSDP1:
        fsdp_config = {key.removeprefix("fsdp_"): value for key, value in options.items()}
        fsdp_config["version"] = 1
        fsdp_config["transformer_layer_cls_to_wrap"] = [options["fsdp_transformer_layer_cls_to_wrap"]]
        fsdp_config["reshard_after_forward"] = options["fsdp_sharding_strategy"]  # FSDP1 strategy, as read
        del fsdp_config["sharding_strategy"]
    else:
        fsdp_config = {
            "fsdp_version": options["fsdp_version"],
            "fsdp_auto_wrap_policy": options["fsdp_auto_wrap_policy"],
            "fsdp_transformer_layer_cls_to_wrap": [options["fsdp_transformer_layer_cls_to_wrap"]],
            "fsdp_reshard_after_forward": True,
            "fsdp_cpu_offload": setup.offload is Offload.PARAMS,  # transformers reads `cpu_offload`
            "fsdp_state_dict_type": options["fsdp_state_dict_type"],
            "fsdp_cpu_ram_efficient_loading": True,
            "fsdp_activation_checkpointing": setup.gradient_checkpointing,
        }
    flat = setup.strategy is Strategy.FSDP1
    arguments: dict = {
        "fsdp": True,
        "fsdp_config": fsdp_config,
        # FSDP2 checkpoints the layers itself (fsdp_activation_checkpointing); FSDP1 as traced uses the Trainer's
        "gradient_checkpointing": setup.gradient_checkpointing if flat else False,
        "bf16": setup.precision in (Precision.BF16, Precision.BF16_MIXED),
        "fp16": setup.precision is Precision.FP16_MIXED,
        "per_device_train_batch_size": setup.batch_size,
    }
    if setup.strategy is Strategy.FSDP_HYBRID:
        arguments["parallelism_config"] = {"dp_replicate_size": setup.nodes, "dp_shard_size": setup.gpus}
    return arguments


def _mixed_precision(setup: TrainingSetup) -> str:
    return {Precision.BF16: "bf16", Precision.BF16_PURE: "no", Precision.BF16_MIXED: "bf16",
            Precision.FP16_MIXED: "fp16", Precision.FP32: "no"}[setup.precision]


def accelerate_config(setup: TrainingSetup, spec: ModelSpec, deepspeed_config_file: str | None = None) -> dict:
    """An accelerate config for the setup. DeepSpeed strategies need the path of the DeepSpeed JSON."""
    check_emit("accelerate", setup)
    strategy = setup.strategy
    config: dict = {
        "compute_environment": "LOCAL_MACHINE",
        "mixed_precision": _mixed_precision(setup),
        "num_machines": setup.nodes,
        "num_processes": setup.world_size,  # every process of every machine
        "machine_rank": 0,
        "main_process_port": MAIN_PROCESS_PORT,
        "rdzv_backend": "static",
        "same_network": True,
        "use_cpu": False,
    }
    if setup.nodes > 1:
        config["main_process_ip"] = None  # the first node's address: set it, and machine_rank, on each node
    if strategy in (*FSDP_STRATEGIES, Strategy.FSDP1):
        options = _fsdp_options(setup, spec)
        config["distributed_type"] = "FSDP"
        # accelerate requires sync_module_states with cpu_ram_efficient_loading (utils/launch.py)
        config["fsdp_config"] = {**options, "fsdp_offload_params": setup.offload is Offload.PARAMS,
                                 "fsdp_sync_module_states": True}
        if strategy is Strategy.FSDP_HYBRID:
            config["parallelism_config"] = {"parallelism_config_dp_replicate_size": setup.nodes,
                                            "parallelism_config_dp_shard_size": setup.gpus}
    elif strategy in DEEPSPEED_STRATEGIES:
        if deepspeed_config_file is None:
            raise UsageError("an accelerate config for DeepSpeed names its DeepSpeed JSON: give its path")
        config["distributed_type"] = "DEEPSPEED"
        config["deepspeed_config"] = {"deepspeed_config_file": deepspeed_config_file,
                                      "zero3_init_flag": strategy is Strategy.ZERO3}
    elif strategy is Strategy.DDP:
        config["distributed_type"] = "MULTI_GPU"
    else:
        config["distributed_type"] = "NO"
    return dict(sorted(config.items()))

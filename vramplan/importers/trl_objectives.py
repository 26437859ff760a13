"""TRL's preference and RL configs (DPOConfig, KTOConfig, ORPOConfig, GRPOConfig at TRL 1.16) -> the objective
options: which trainer a file configures, and the fields of it that change memory. CPO and reward configs are
refused (exit 2): an SFT estimate of them would be another job's memory."""

from __future__ import annotations

from vramplan.importers.names import truthy
from vramplan.importers.run import RunBuilder

DPO = "TRL DPOConfig default: trl/trainer/dpo_config.py"
GRPO = "TRL GRPOConfig default: trl/trainer/grpo_config.py"

# Fields only GRPOConfig (and RLOOConfig) have, beyond TrainingArguments (trl/trainer/grpo_config.py, TRL 1.16).
GRPO_KEYS = ("num_generations", "max_completion_length", "use_vllm", "vllm_mode", "vllm_gpu_memory_utilization",
             "steps_per_generation", "generation_batch_size", "reward_weights", "num_iterations", "epsilon_high",
             "scale_rewards", "mask_truncated_completions")
# Fields only DPOConfig has (trl/trainer/dpo_config.py, TRL 1.16).
DPO_KEYS = ("precompute_ref_log_probs", "precompute_ref_batch_size", "f_divergence_type", "sync_ref_model",
            "ld_alpha", "use_weighting", "ref_model_init_kwargs", "rpo_alpha", "loss_weights", "discopop_tau")
# Configs of objectives not modelled, by a field only they have.
REFUSED = (
    ("reward-model training (a value head, paired batches)", ("center_rewards_coefficient",)),
    # trl/experimental/cpo/cpo_config.py: CPO's and SimPO's own fields
    ("CPO/SimPO preference training (trl/experimental/cpo)", ("cpo_alpha", "simpo_gamma")),
)
# Fields ORPOConfig (trl/experimental/orpo/orpo_config.py, TRL 1.16) shares only with CPOConfig, refused above.
ORPO_KEYS = ("generate_during_eval", "is_encoder_decoder")
ORPO = "TRL ORPOConfig default: trl/experimental/orpo/orpo_config.py"
# ORPOTrainer.__init__'s length when ORPOConfig's max_length is None.
ORPO_NULL_MAX_LENGTH = 512
# Fields only KTOConfig has (trl/trainer/kto_config.py, TRL 1.16).
KTO_KEYS = ("desirable_weight", "undesirable_weight", "train_sampling_strategy")
KTO = "TRL KTOConfig default: trl/trainer/kto_config.py"
# A `beta` alone names no trainer: DPO, ORPO, KTO and GRPO all have one.
AMBIGUOUS_BETA = ("a preference objective (DPO, ORPO, KTO or GRPO: `beta` weighs a reference or odds-ratio term; "
                  "add a field only its config has, or give --objective with the other flags instead of --from)")
# DPOConfig/GRPOConfig fields that leave memory alone (the loss's coefficients, sampling, logging).
OBJECTIVE_QUIET = frozenset({
    "beta", "epsilon", "epsilon_high", "delta", "temperature", "top_p", "top_k", "min_p", "repetition_penalty",
    "reward_weights", "scale_rewards", "loss_type", "mask_truncated_completions", "log_completions",
    "num_completions_to_print", "importance_sampling_level", "label_smoothing", "f_divergence_type", "use_weighting",
    "discopop_tau", "ld_alpha", "rpo_alpha", "loss_weights", "truncation_mode", "precompute_ref_batch_size",
    "shuffle_dataset", "ds3_gather_for_generation", "disable_dropout", "top_entropy_quantile", "generation_kwargs",
    "use_vllm", "vllm_mode", "vllm_gpu_memory_utilization", "generation_batch_size", "steps_per_generation",
    "num_generations", "max_completion_length", "max_prompt_length", "padding_free", "f_alpha_divergence_coef",
    "multi_objective_aggregation", "log_unique_prompts", "chat_template_kwargs", "pad_to_multiple_of",
    "vllm_enable_sleep_mode", "vllm_max_model_length", "vllm_model_impl", "vllm_importance_sampling_correction",
    "desirable_weight", "undesirable_weight", "train_sampling_strategy", "vllm_server_base_url", "vllm_server_host",
    "vllm_server_port", "vllm_server_timeout", "vllm_group_port", "generate_during_eval", "is_encoder_decoder",
    "padding_value",
})
# GRPOConfig fields whose memory is not modelled yet, with what they add.
GRPO_UNMODELLED = {
    "num_iterations": "num_iterations > 1: the old policy's log-probs, a no_grad forward per generation batch",
    "use_transformers_continuous_batching": "transformers' continuous batching (a paged KV cache)",
    "cast_lm_head_to_fp32": "an fp32 lm_head",
    "sync_ref_model": "a synced reference model",
}


def trl_objective(builder: RunBuilder) -> str | None:
    """"grpo", "dpo", "kto", "orpo", or None (SFT or plain TrainingArguments); refuses the objectives vramplan does
    not model."""
    raw = builder.raw
    for objective, keys in REFUSED:
        present = [key for key in keys if raw.get(key) is not None]
        if present:
            builder.refuse_objective(present[0], raw[present[0]], objective)
    orpo = any(raw.get(key) is not None for key in ORPO_KEYS)
    # max_completion_length is ORPOConfig's too: with ORPO's own keys it names no GRPO run
    grpo_keys = [key for key in GRPO_KEYS if not (orpo and key == "max_completion_length")]
    if any(raw.get(key) is not None for key in grpo_keys):
        return "grpo"
    if any(raw.get(key) is not None for key in KTO_KEYS):
        return "kto"
    if any(raw.get(key) is not None for key in DPO_KEYS):  # before ORPO's: TRL 0.x's DPOConfig had its keys too
        return "dpo"
    if orpo:
        return "orpo"
    if raw.get("beta") is not None:
        builder.refuse_objective("beta", raw["beta"], AMBIGUOUS_BETA)
    return None


def read_grpo(builder: RunBuilder) -> None:
    """GRPOConfig's shape: completions per micro-batch, prompt and completion lengths, the generation batch, beta."""
    builder.set("objective", "grpo", "format", "GRPOConfig fields")
    if truthy(builder.get("use_vllm", False)):
        _vllm(builder)
    builder.int_or_default("batch_size", "per_device_train_batch_size", 8,
                           "transformers TrainingArguments default: transformers/training_args.py")
    builder.int_or_default("completion_len", "max_completion_length", 512, GRPO)
    if builder.has("max_prompt_length"):  # TRL 0.x's field; TRL 1.16 truncates no prompt
        builder.set("prompt_len", builder.get_int("max_prompt_length"), "max_prompt_length")
        builder.note("max_prompt_length: TRL 0.x truncated prompts to it; TRL 1.16 has no such field")
    else:
        builder.assume("prompt length: not in GRPOConfig (TRL 1.16 truncates no prompt): 512 tokens assumed; "
                       "give --prompt-len with your longest prompt")
    builder.int_or_default("num_generations", "num_generations", 8, GRPO)
    _generation_steps(builder)
    beta = builder.get("beta")
    if beta is not None:
        builder.set("beta", float(beta), "beta", beta)
    else:
        builder.default("beta", 0.0, "beta", GRPO)
    for key, why in GRPO_UNMODELLED.items():
        value = builder.get(key)
        if value not in (None, False, 1) or (key == "num_iterations" and value not in (None, 1)):
            builder.not_modelled(key, value, why)


def _vllm(builder: RunBuilder) -> None:
    """use_vllm: colocate (GRPOConfig's default vllm_mode) is modelled; a server on GPUs of its own is refused."""
    mode = builder.get("vllm_mode") or "colocate"
    if mode == "server":
        builder.set("generation", "vllm-server", "vllm_mode", mode)
        builder.assume("vLLM server: `trl vllm-serve`'s own arguments are not in this file: one GPU, "
                       "gpu_memory_utilization 0.9 (trl/scripts/vllm_serve.py defaults) assumed")
        return
    if mode != "colocate":
        builder.not_modelled("vllm_mode", mode, "an unknown vLLM mode")
    builder.set("generation", "vllm-colocate", "use_vllm", True)
    utilization = builder.get("vllm_gpu_memory_utilization")
    if utilization is not None:
        builder.set("vllm_gpu_memory_utilization", float(utilization), "vllm_gpu_memory_utilization", utilization)
    else:
        builder.default("vllm_gpu_memory_utilization", 0.3, "vllm_gpu_memory_utilization", GRPO)
    if builder.has("vllm_enable_sleep_mode"):
        builder.set("vllm_sleep", truthy(builder.get("vllm_enable_sleep_mode")), "vllm_enable_sleep_mode")
    if builder.has("vllm_max_model_length"):
        builder.set("vllm_max_model_len", builder.get_int("vllm_max_model_length"), "vllm_max_model_length")
    if builder.get("vllm_tensor_parallel_size") not in (None, 1):
        builder.not_modelled("vllm_tensor_parallel_size", builder.get("vllm_tensor_parallel_size"),
                             "vLLM split over several GPUs")


def _generation_steps(builder: RunBuilder) -> None:
    """steps_per_generation, or generation_batch_size over the micro-batch, or gradient_accumulation_steps
    (grpo_config.py __post_init__, one process)."""
    if builder.has("steps_per_generation"):
        builder.set("steps_per_generation", builder.get_int("steps_per_generation"), "steps_per_generation")
    elif builder.has("generation_batch_size"):
        batch = builder.options["batch_size"]
        size = builder.get_int("generation_batch_size")
        builder.set("steps_per_generation", max(1, size // batch), "generation_batch_size", size)
    elif builder.has("gradient_accumulation_steps"):
        steps = builder.get_int("gradient_accumulation_steps")
        builder.set("steps_per_generation", steps, "gradient_accumulation_steps", steps)
        builder.note("steps_per_generation unset: GRPOConfig takes gradient_accumulation_steps")
    else:
        builder.default("steps_per_generation", 1, "steps_per_generation", f"gradient_accumulation_steps 1; {GRPO}")


def read_kto(builder: RunBuilder) -> None:
    """KTOConfig's shape: rows per micro-batch, max_length, precompute_ref_log_probs."""
    builder.set("objective", "kto", "format", "KTOConfig fields")
    _kept_dropout(builder)
    builder.int_or_default("batch_size", "per_device_train_batch_size", 8,
                           "transformers TrainingArguments default: transformers/training_args.py")
    if builder.get("max_length", 1024) is None:
        builder.not_modelled("max_length", None, "no truncation: rows as long as the data (give --seq-len)")
    else:
        builder.int_or_default("seq_len", "max_length", 1024, KTO)
    if builder.has("max_prompt_length"):  # TRL 0.x's field
        builder.set("prompt_len", builder.get_int("max_prompt_length"), "max_prompt_length")
    if builder.has("precompute_ref_log_probs"):
        builder.set("precompute_ref", truthy(builder.get("precompute_ref_log_probs")), "precompute_ref_log_probs")
    if builder.get("loss_type") == "apo_zero_unpaired":
        builder.assume("loss_type apo_zero_unpaired computes no KL rows; the estimate counts them (the upper end)")
    if builder.get("sync_ref_model") not in (None, False):
        builder.not_modelled("sync_ref_model", builder.get("sync_ref_model"), "a synced reference model")


def read_orpo(builder: RunBuilder) -> None:
    """ORPOConfig's shape: pairs per micro-batch and max_length (every position is scored; no reference)."""
    builder.set("objective", "orpo", "format", "ORPOConfig fields")
    builder.int_or_default("batch_size", "per_device_train_batch_size", 8,
                           "transformers TrainingArguments default: transformers/training_args.py")
    if "max_length" in builder.raw and builder.get("max_length") is None:
        # orpo_trainer.py __init__: `if args.max_length is None: ... max_length = 512`
        builder.set("seq_len", ORPO_NULL_MAX_LENGTH, "max_length", None)
        builder.note(f"max_length: null; ORPOTrainer then truncates to {ORPO_NULL_MAX_LENGTH} (orpo_trainer.py)")
    else:
        builder.int_or_default("seq_len", "max_length", 1024, ORPO)
    if truthy(builder.get("is_encoder_decoder", False)):
        builder.not_modelled("is_encoder_decoder", True, "an encoder-decoder model")
    _kept_dropout(builder)


def _kept_dropout(builder: RunBuilder) -> None:
    """disable_dropout False keeps LoRA's dropout, which the estimate (TRL's default, dropout off) does not count."""
    if builder.get("disable_dropout") is False:
        builder.not_modelled("disable_dropout", False, "dropout kept in the model (TRL's default disables it)")


def read_dpo(builder: RunBuilder) -> None:
    """DPOConfig's shape: pairs per micro-batch, max_length, the prompt, precompute_ref_log_probs."""
    builder.set("objective", "dpo", "format", "DPOConfig fields")
    _kept_dropout(builder)
    builder.int_or_default("batch_size", "per_device_train_batch_size", 8,
                           "transformers TrainingArguments default: transformers/training_args.py")
    if builder.get("max_length", 1024) is None:
        builder.not_modelled("max_length", None, "no truncation: rows as long as the data (give --seq-len)")
    else:
        builder.int_or_default("seq_len", "max_length", 1024, DPO)
    if builder.has("max_prompt_length"):  # TRL 0.x's field; TRL 1.16 keeps the prompt whole
        builder.set("prompt_len", builder.get_int("max_prompt_length"), "max_prompt_length")
    if builder.has("precompute_ref_log_probs"):
        builder.set("precompute_ref", truthy(builder.get("precompute_ref_log_probs")), "precompute_ref_log_probs")
    if truthy(builder.get("padding_free", False)):
        builder.note("padding_free: TRL 1.16's DPOTrainer warns and falls back to padded rows (dpo_config.py)")
    loss = builder.get("loss_type")
    if loss is not None:
        builder.note(f"loss_type {loss}: DPO's losses share the policy and reference log-probs; the sigmoid "
                     "loss's memory is modelled")
    if builder.get("rpo_alpha") is not None:
        builder.note("rpo_alpha: an NLL term over the chosen rows' log-probs the head already returns")
    for key in ("sync_ref_model", "ref_model_init_kwargs"):
        if builder.get(key) not in (None, False, {}):
            builder.not_modelled(key, builder.get(key), "a reference model loaded or synced differently")

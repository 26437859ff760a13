"""RunOptions: every option of a training run, declared once.

The CLI's flags are generated from these fields (vramplan/cli/run_options.py), the config importers return them,
the Python API takes them as keyword arguments, and `training.resolve_setup` turns them into a TrainingSetup. `None`
means "not given": the stack's preset (vramplan/presets.py) decides. Adding an option is one field here plus its rule.
Values are checked once, by resolve_setup, with one-line messages that name the flag.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

# Defaults that are not the stack's to choose (resolve_setup applies them; the help texts quote them).
DEFAULT_BATCH_SIZE = 1
DEFAULT_SEQ_LEN = 2048


def _option(help_text: str, *, layout: bool = False, flag: str | None = None, switch: str | None = None) -> Any:
    """A field of RunOptions: not given by default, with its help text and how the CLI spells it."""
    extra = {"layout": layout}
    if flag is not None:
        extra["flag"] = flag
    if switch is not None:
        extra["switch"] = switch  # a boolean as --name/--no-name
    return Field(None, description=help_text, json_schema_extra=extra)


class RunOptions(BaseModel):
    """The options of one training run as the user gave them; `None` = the stack's preset decides."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    batch_size: int | None = _option(f"Per-GPU micro-batch. [default: {DEFAULT_BATCH_SIZE}]")
    seq_len: int | None = _option(f"Tokens per sequence. [default: {DEFAULT_SEQ_LEN}]")
    precision: str | None = _option("bf16 | bf16-pure | bf16-mixed | fp16-mixed | fp32 [default: bf16]")
    optimizer: str | None = _option(
        "adamw | adamw-fused | adamw-8bit | paged-adamw | paged-adamw-8bit | sgd | adafactor [default: the stack's: "
        "adamw-fused for every stack (TrainingArguments on torch >= 2.8, torchtune's fused AdamW)]")
    gradient_checkpointing: bool | None = _option(
        "[default: the stack's: hf on for lora/qlora, off for full; axolotl, llama-factory, torchtune on]",
        switch="--gradient-checkpointing/--no-gradient-checkpointing")
    lora_rank: int | None = _option("[default: the stack's: hf 16, axolotl 32, llama-factory 8, torchtune 8]")
    lora_targets: str | tuple[str, ...] | None = _option(
        "all-linear or names such as q_proj,v_proj [default: the stack's: all-linear; torchtune its recipe's seven; "
        "MoE models the attention projections]")
    lora_dropout: float | None = _option(
        "[default: the stack's: hf and axolotl 0.05, llama-factory and torchtune 0]")
    double_quant: bool | None = _option("qlora [default: on]", switch="--double-quant/--no-double-quant")
    kbit_prep: bool | None = _option("qlora: peft prepare_model_for_kbit_training [default: on]",
                                     switch="--kbit-prep/--no-kbit-prep")
    stack: str | None = _option(
        "hf | torchtune | axolotl | llama-factory: whose defaults fill unset options [default: hf]")
    loss: str | None = _option("standard | chunked (torchtune) | fused (Liger/CCE) [default: the stack's]")
    liger: bool | None = _option("Liger fused RMSNorm/SwiGLU/RoPE", switch="--liger/--no-liger")
    packing: bool | None = _option("several sequences per row", switch="--packing/--no-packing")
    attn: str | None = _option("sdpa | flash | eager [default: sdpa]")
    optimizer_in_backward: bool | None = _option(
        "torchtune optimizer_in_bwd", switch="--optimizer-in-backward/--no-optimizer-in-backward")
    activation_offload: bool | None = _option(
        "saved activations in host memory", switch="--activation-offload/--no-activation-offload")
    transformers: str | None = _option(
        "4 | 5: the transformers major whose model code the run uses. 4 builds MoE experts as nn.Linear each "
        "(modelled for Mixtral and Qwen3-MoE with LoRA/QLoRA on the attention) [default: 5]")
    alloc_conf: str | None = _option(
        "The job's PYTORCH_ALLOC_CONF, e.g. expandable_segments:True [default: $PYTORCH_ALLOC_CONF or "
        "$PYTORCH_CUDA_ALLOC_CONF, else torch's defaults]")
    objective: str | None = _option(
        "sft | dpo | orpo | kto | grpo: the training objective; dpo is TRL 1.16's DPOTrainer (sigmoid loss, a reference "
        "forward, chosen and rejected rows; --batch-size counts pairs; DPOConfig's defaults for unset options: 8 "
        "pairs, max_length 1024, checkpointing on); orpo is TRL 1.16's experimental ORPOTrainer (pairs as DPO's, no "
        "reference, the full logits; full and LoRA); grpo is TRL 1.16's GRPOTrainer with transformers generate "
        "(--batch-size counts completions; GRPOConfig's defaults: 8 per device, 8 generations, 512 completion tokens, "
        "beta 0, checkpointing on); kto is TRL 1.16's KTOTrainer (loss kto: each row with a KL row, a reference "
        "forward; KTOConfig's defaults: 8 rows, max_length 1024, checkpointing on) [default: sft]")
    prompt_len: int | None = _option(
        "dpo | kto | grpo: prompt tokens of each row (dpo, kto: the rest, to --seq-len, is the completion the loss "
        "scores) [default: dpo and kto 1, every position scored: the upper end; grpo 512]")
    completion_len: int | None = _option(
        "grpo: GRPOConfig max_completion_length, tokens generated per completion (the sequence is --prompt-len + "
        "this) [default: 512]")
    num_generations: int | None = _option("grpo: GRPOConfig num_generations, completions per prompt [default: 8]")
    steps_per_generation: int | None = _option(
        "grpo: GRPOConfig steps_per_generation, micro-batches per generation batch: each GPU generates --batch-size "
        "x this many completions at once [default: 1, gradient_accumulation_steps']")
    beta: float | None = _option(
        "grpo: GRPOConfig beta, the KL weight: above 0 a reference model (full fine-tuning: a frozen copy) and its "
        "log-probs [default: 0.0, GRPOConfig's]")
    generation: str | None = _option(
        "grpo: transformers (generate on the training GPU, a KV cache) | vllm-colocate (vLLM in the training "
        "process, its gpu_memory_utilization share of the GPU) | vllm-server (refused: GPUs of its own) "
        "[default: transformers, GRPOConfig use_vllm False]")
    vllm_gpu_memory_utilization: float | None = _option(
        "grpo, vllm-colocate: GRPOConfig vllm_gpu_memory_utilization, vLLM's share of each GPU's total memory "
        "[default: 0.3]")
    vllm_sleep: bool | None = _option(
        "grpo, vllm-colocate: GRPOConfig vllm_enable_sleep_mode, vLLM's memory released while the step trains "
        "[default: off]", switch="--vllm-sleep/--no-vllm-sleep")
    vllm_max_model_len: int | None = _option(
        "grpo, vllm-colocate: GRPOConfig vllm_max_model_length; vLLM must hold one sequence this long [default: the "
        "model's max_position_embeddings]")
    precompute_ref: bool | None = _option(
        "dpo | kto: precompute_ref_log_probs: the reference log-probs computed before training, so the step holds "
        "no reference model and runs no reference forward [default: off, DPOConfig's]",
        switch="--precompute-ref/--no-precompute-ref")
    gpus: int | None = _option("The job's GPUs per node (one rank each). [default: 1]", layout=True)
    nodes: int | None = _option("Machines, each with --gpus GPUs. [default: 1]", layout=True)
    strategy: str | None = _option(
        "single | ddp | zero1 | zero2 | zero3 | fsdp2 | fsdp1 | fsdp (the stack's: fsdp2 on transformers 5 and "
        "torchtune, fsdp1 on transformers 4) | fsdp-hybrid | device-map [default: single; needed with several GPUs]",
        layout=True)
    offload: str | None = _option("none | optimizer (DeepSpeed) | params (zero3, fsdp) [default: none]",
                                  layout=True)
    fsdp1_sharding: str | None = _option(
        "fsdp1: full-shard | shard-grad-op | hybrid-shard (sharded within a node) | no-shard, accelerate's "
        "fsdp_sharding_strategy [default: full-shard]")
    backward_prefetch: str | None = _option(
        "fsdp1: none | backward-pre | backward-post, accelerate's fsdp_backward_prefetch [default: none, the "
        "Trainer's NO_PREFETCH]")
    forward_prefetch: bool | None = _option(
        "fsdp1: the next unit's all-gather issued in each pre-forward, accelerate's fsdp_forward_prefetch "
        "[default: off, the Trainer's]", switch="--forward-prefetch/--no-forward-prefetch")

    @classmethod
    def of(cls, **values: Any) -> RunOptions:
        """RunOptions from keyword arguments, or a one-line UsageError naming the option (never pydantic's
        multi-line report)."""
        from pydantic import ValidationError

        from vramplan.errors import UsageError

        try:
            return cls(**values)
        except ValidationError as err:
            first = err.errors()[0]
            name = str(first["loc"][0]) if first["loc"] else "?"
            if first["type"] == "extra_forbidden":
                raise UsageError(f"unknown option {name!r} (the options are: {', '.join(cls.model_fields)})") from None
            flag = "--" + name.replace("_", "-")
            raise UsageError(f"{flag} {first.get('input')!r}: {first['msg'].lower()}") from None

    def given(self) -> dict[str, Any]:
        """The options the user gave, as keyword arguments (unset ones left out)."""
        return self.model_dump(exclude_none=True)

    def over(self, base: RunOptions) -> RunOptions:
        """These options, with `base`'s filling the ones not given (flags over a --from file)."""
        return RunOptions.of(**{**base.given(), **self.given()})

    def replace(self, **changes: Any) -> RunOptions:
        return RunOptions.of(**{**self.given(), **changes})


def layout_fields() -> tuple[str, ...]:
    """The options that spread a run over GPUs (--gpus, --nodes, --strategy, --offload)."""
    return tuple(name for name, field in RunOptions.model_fields.items() if field.json_schema_extra["layout"])

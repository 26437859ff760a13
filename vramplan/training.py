"""TrainingSetup: everything about a run, besides the model, that decides its memory."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from vramplan.choices import (  # noqa: F401 - the choices are part of this module's interface
    ALL_LINEAR,
    DEEPSPEED_STRATEGIES,
    FSDP_STRATEGIES,
    SHARDED_STRATEGIES,
    Attention,
    Loss,
    Method,
    Offload,
    Optimizer,
    Precision,
    Stack,
    Strategy,
)
from vramplan.allocator.caching import AllocatorConfig
from vramplan.allocator.config import parse_alloc_conf
from vramplan.errors import NotModelledError, UsageError
from vramplan.options import DEFAULT_BATCH_SIZE, DEFAULT_SEQ_LEN, RunOptions
from vramplan.presets import preset_for


class LoraSettings(BaseModel):
    """peft LoraConfig fields that change memory."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rank: int = Field(16, gt=0)
    targets: tuple[str, ...] | Literal["all-linear"] = ALL_LINEAR
    dropout: float = Field(0.05, ge=0.0, lt=1.0)


class QuantSettings(BaseModel):
    """bitsandbytes 4-bit settings of a QLoRA run."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True
    kbit_prep: bool = True


class GrpoSettings(BaseModel):
    """TRL 1.16 GRPOConfig fields that change memory (trl/trainer/grpo_config.py); generation by transformers'
    `generate` on the training GPU (GRPOConfig use_vllm False, its default)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    num_generations: int = Field(8, ge=2)  # completions per prompt (GRPOConfig num_generations)
    # steps_per_generation: micro-batches per generation batch (GRPOConfig: gradient_accumulation_steps when unset);
    # the generation batch is per_device_train_batch_size x steps_per_generation rows on each GPU
    steps_per_generation: int = Field(1, gt=0)
    beta: float = Field(0.0, ge=0.0)  # the KL weight: a reference model (or its log-probs) only when beta > 0
    # who generates: transformers' generate on the training GPU, or vLLM colocated on it (use_vllm, vllm_mode)
    # vllm-server: `trl vllm-serve` on GPUs of its own (one here: tensor and data parallel 1)
    generation: Literal["transformers", "vllm-colocate", "vllm-server"] = "transformers"
    # GRPOConfig's default for colocate; `trl vllm-serve`'s (trl/scripts/vllm_serve.py) 0.9 for a server
    vllm_gpu_memory_utilization: float = Field(0.3, gt=0.0, le=1.0)
    vllm_sleep: bool = False  # vllm_enable_sleep_mode (level 2 between generations)
    vllm_max_model_len: int | None = Field(None, gt=0)  # vllm_max_model_length; None: the model's own maximum


class TrainingSetup(BaseModel):
    """One GPU's share of a training run: the knobs that move peak memory."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    method: Method
    precision: Precision = Precision.BF16
    optimizer: Optimizer = Optimizer.ADAMW
    batch_size: int = Field(DEFAULT_BATCH_SIZE, gt=0)
    seq_len: int = Field(DEFAULT_SEQ_LEN, gt=0)
    gradient_checkpointing: bool
    lora: LoraSettings | None = None
    quant: QuantSettings | None = None
    gpus: int = Field(1, gt=0)  # GPUs per node
    nodes: int = Field(1, gt=0)
    strategy: Strategy = Strategy.SINGLE
    offload: Offload = Offload.NONE
    stack: Stack = Stack.HF
    loss: Loss = Loss.STANDARD
    liger: bool = False  # Liger's fused RMSNorm, SwiGLU and RoPE kernels
    packing: bool = False  # several sequences per row, attention kept within each
    attn: Attention = Attention.SDPA
    optimizer_in_backward: bool = False  # each parameter stepped (and its gradient freed) as its gradient arrives
    activation_offload: bool = False  # saved activations moved to host memory during forward
    allocator: AllocatorConfig = AllocatorConfig()  # the job's PYTORCH_ALLOC_CONF
    transformers: Literal[4, 5] = 5  # the transformers major whose modelling code builds the model
    backward_prefetch: Literal["none", "backward-pre", "backward-post"] = "none"  # FSDP1's BackwardPrefetch
    fsdp1_sharding: Literal["full-shard", "shard-grad-op", "hybrid-shard", "no-shard"] = "full-shard"  # FSDP1's
    forward_prefetch: bool = False  # FSDP1's forward_prefetch: the next unit's all-gather issued in each pre-forward
    # The training objective: "dpo" is TRL's DPOTrainer (batch_size counts pairs: 2 x batch_size rows per step);
    # "grpo" is TRL's GRPOTrainer (batch_size counts completions; seq_len is prompt + max_completion_length);
    # "kto" is TRL's KTOTrainer (batch_size counts rows, each with a mismatched KL row); "orpo" is TRL's
    # experimental ORPOTrainer (batch_size counts pairs, as DPO's)
    objective: Literal["sft", "dpo", "grpo", "kto", "orpo"] = "sft"
    prompt_len: int | None = None  # dpo/grpo: prompt tokens per row; None (dpo): 1, every position scored
    precompute_ref: bool = False  # dpo/kto: precompute_ref_log_probs (no reference model or forward in the step)
    grpo: GrpoSettings | None = None  # grpo: what GRPOConfig adds

    @model_validator(mode="after")
    def _method_matches_settings(self) -> TrainingSetup:
        if self.method is Method.FULL and (self.lora is not None or self.quant is not None):
            raise ValueError("LoRA/QLoRA options were given with --method full")
        if self.method is not Method.FULL and self.lora is None:
            raise ValueError(f"--method {self.method.value} needs LoRA settings")
        if self.method is Method.LORA and self.quant is not None:
            raise ValueError("4-bit options (--double-quant, --kbit-prep) need --method qlora")
        if self.method is Method.QLORA and self.quant is None:
            raise ValueError("--method qlora needs 4-bit settings")
        return self

    @property
    def world_size(self) -> int:
        return self.gpus * self.nodes

    @property
    def rows(self) -> int:
        """Sequences per micro-batch: a DPO or ORPO pair is its chosen and its rejected row (TRL concatenates them)."""
        return 2 * self.batch_size if self.objective in PAIRED_OBJECTIVES else self.batch_size

    @property
    def labelled_tokens(self) -> int:
        """DPO and GRPO: the positions the loss scores, the completion tokens of every row (next-token labels)."""
        return self.rows * (self.seq_len - (self.prompt_len or 1))

    @property
    def completion_len(self) -> int:
        """GRPO: max_completion_length, the tokens each row generates (the rest of seq_len after the prompt)."""
        return self.seq_len - (self.prompt_len or 1)

    @property
    def generation_rows(self) -> int:
        """GRPO: the rows one GPU generates at once, per_device_train_batch_size x steps_per_generation
        (grpo_config.py __post_init__: generation_batch_size over the processes)."""
        return self.batch_size * (self.grpo.steps_per_generation if self.grpo else 1)

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    @property
    def autocast(self) -> bool:
        return self.precision not in (Precision.FP32, Precision.BF16_PURE)


def resolve_setup(method: Method | str, options: RunOptions | None = None, /, **values) -> TrainingSetup:
    """The TrainingSetup of `options` (or keyword arguments with RunOptions' names; both: the keywords win): every
    option not given filled from the stack's preset (vramplan/presets.py), contradictions rejected with a
    UsageError."""
    given = RunOptions.of(**values) if values else RunOptions()
    run = given.over(options) if options is not None else given
    return _resolve(method, run)


def _resolve(method: Method | str, run: RunOptions) -> TrainingSetup:
    method = _enum(Method, method, "method")
    stack = _enum(Stack, run.stack, "stack") if run.stack is not None else Stack.HF
    preset = preset_for(stack)
    gpus = 1 if run.gpus is None else _positive(run.gpus, "--gpus")
    nodes = 1 if run.nodes is None else _positive(run.nodes, "--nodes")
    transformers = _transformers_major(run.transformers)
    strategy = _strategy(run.strategy, transformers, stack) if run.strategy is not None else None
    lora, quant = _adapters(method, run, preset, fsdp1=strategy is Strategy.FSDP1)
    offload = _enum(Offload, run.offload, "offload") if run.offload is not None else Offload.NONE
    optimizer = _enum(Optimizer, run.optimizer, "optimizer") if run.optimizer is not None else preset.optimizer
    strategy = _check_strategy(strategy, gpus, nodes, offload, optimizer)
    switches = _check_stack_switches(
        stack,
        strategy,
        loss=_enum(Loss, run.loss, "loss") if run.loss is not None else preset.loss,
        attn=_enum(Attention, run.attn, "attn") if run.attn is not None else preset.attn,
        liger=bool(run.liger),
        packing=preset.packing if run.packing is None else run.packing,
        optimizer_in_backward=bool(run.optimizer_in_backward),
        activation_offload=bool(run.activation_offload),
    )
    objective = (run.objective or "sft").strip().lower()
    if objective in TRL_DISABLES_DROPOUT and lora is not None and lora.dropout:
        # dpo/kto/orpo trainers' __init__: `if args.disable_dropout: disable_dropout_in_model(model)` (default True)
        # sets every nn.Dropout's p to 0, peft's lora_dropout included; torch's dropout returns its input at p = 0
        lora = lora.model_copy(update={"dropout": 0.0})
    if run.gradient_checkpointing is None and objective in ("dpo", "grpo", "kto", "orpo"):
        checkpointing = True  # TRL's configs (trl/trainer/base_config.py): gradient_checkpointing True
    elif run.gradient_checkpointing is None:
        checkpointing = preset.checkpointing_full if method is Method.FULL else preset.checkpointing_adapters
    else:
        checkpointing = run.gradient_checkpointing
    precision = _enum(Precision, run.precision, "precision") if run.precision is not None else Precision.BF16
    return TrainingSetup(
        method=method, precision=precision, optimizer=optimizer,
        batch_size=_positive(run.batch_size, "--batch-size") if run.batch_size is not None else (
            OBJECTIVE_BATCH_SIZE.get(objective, DEFAULT_BATCH_SIZE)),
        seq_len=_seq_len(run, objective),
        gradient_checkpointing=checkpointing, lora=lora, quant=quant, gpus=gpus, nodes=nodes, strategy=strategy,
        offload=offload, stack=stack, allocator=parse_alloc_conf(run.alloc_conf),
        transformers=transformers, backward_prefetch=_backward_prefetch(run.backward_prefetch, strategy),
        fsdp1_sharding=_fsdp1_sharding(run.fsdp1_sharding, strategy),
        forward_prefetch=_forward_prefetch(run.forward_prefetch, strategy),
        **_objective(run, stack, strategy, switches, method),
        **switches,
    )


# DPOConfig's defaults (trl/trainer/dpo_config.py, TRL 1.16) for options not given with --objective dpo:
# per_device_train_batch_size 8 (pairs), max_length 1024, gradient_checkpointing True.
DPO_DEFAULTS = {"batch_size": 8, "seq_len": 1024, "gradient_checkpointing": True}
# GRPOConfig's (trl/trainer/grpo_config.py, TRL 1.16): per_device_train_batch_size 8 (TrainingArguments'),
# max_completion_length 512. TRL 1.16 has no max_prompt_length (prompts are not truncated): 512 prompt tokens are
# assumed when --prompt-len is not given (TRL 0.x's max_prompt_length default) and said so.
GRPO_DEFAULTS = {"batch_size": 8, "completion_len": 512, "prompt_len": 512}
# KTOConfig's (trl/trainer/kto_config.py): per_device_train_batch_size 8 (rows), max_length 1024, as DPOConfig's.
# ORPOConfig's (trl/experimental/orpo/orpo_config.py): TrainingArguments' 8 per device (pairs), max_length 1024.
OBJECTIVE_BATCH_SIZE = {"dpo": DPO_DEFAULTS["batch_size"], "grpo": GRPO_DEFAULTS["batch_size"],
                        "kto": DPO_DEFAULTS["batch_size"], "orpo": DPO_DEFAULTS["batch_size"]}
# The objectives whose batch_size counts chosen/rejected pairs, concatenated into 2 x batch_size rows.
PAIRED_OBJECTIVES = ("dpo", "orpo")
# The trainers whose config defaults to disable_dropout=True (dpo_config.py, kto_config.py, orpo_config.py; GRPO's
# is False).
TRL_DISABLES_DROPOUT = ("dpo", "kto", "orpo")
# What each generation engine is, for GRPO: only transformers' generate on the training GPU is modelled so far.
GRPO_GENERATION = ("transformers", "vllm-colocate", "vllm-server")

# Objectives issue 18 names that are not modelled yet, with what they add.
UNMODELLED_OBJECTIVES: dict[str, str] = {}
# ORPOTrainer.__init__ with a 4-bit model under bf16 calls peft_module_casting_to_bf16 (trl/experimental/utils.py):
# lm_head and the embeddings back to bf16 after k-bit preparation, which changes the residual stream's dtype.
ORPO_QLORA = ("--objective orpo with --method qlora: TRL's ORPOTrainer casts the k-bit-prepared model's lm_head and "
              "embeddings back to bf16 (peft_module_casting_to_bf16), which is not modelled; use --method lora or full")
VLLM_ONLY = ("vllm_gpu_memory_utilization", "vllm_sleep", "vllm_max_model_len")
# trl/scripts/vllm_serve.py ScriptArguments.gpu_memory_utilization: `trl vllm-serve`'s default share.
VLLM_SERVE_UTILIZATION = 0.9
GRPO_ONLY = ("completion_len", "num_generations", "steps_per_generation", "beta", "generation", *VLLM_ONLY)


def objective_options(setup: TrainingSetup) -> dict:
    """The RunOptions fields that give `setup`'s objective back (a layout or a fit re-resolving the run): DPO's
    prompt and precompute_ref; GRPO's prompt, completion and GRPOConfig fields in place of seq_len."""
    if setup.objective == "orpo":
        return {"objective": "orpo", "seq_len": setup.seq_len}
    if setup.objective in ("dpo", "kto"):
        return {"objective": setup.objective, "seq_len": setup.seq_len, "prompt_len": setup.prompt_len,
                "precompute_ref": setup.precompute_ref}
    if setup.objective == "grpo":
        return {"objective": "grpo", "prompt_len": setup.prompt_len, "completion_len": setup.completion_len,
                "num_generations": setup.grpo.num_generations,
                "steps_per_generation": setup.grpo.steps_per_generation, "beta": setup.grpo.beta,
                "generation": setup.grpo.generation,
                **({"vllm_gpu_memory_utilization": setup.grpo.vllm_gpu_memory_utilization,
                    "vllm_sleep": setup.grpo.vllm_sleep, "vllm_max_model_len": setup.grpo.vllm_max_model_len}
                   if setup.grpo.generation != "transformers" else {})}
    return {"seq_len": setup.seq_len}


def _seq_len(run: RunOptions, objective: str) -> int:
    if objective == "grpo":  # prompt + max_completion_length: the longest row the step sees
        if run.seq_len is not None:
            raise UsageError("--objective grpo sizes rows as --prompt-len + --completion-len; --seq-len does not apply")
        prompt = GRPO_DEFAULTS["prompt_len"] if run.prompt_len is None else _positive(run.prompt_len, "--prompt-len")
        completion = GRPO_DEFAULTS["completion_len"] if run.completion_len is None else _positive(
            run.completion_len, "--completion-len")
        return prompt + completion
    if run.seq_len is not None:
        return _positive(run.seq_len, "--seq-len")
    return DPO_DEFAULTS["seq_len"] if objective in ("dpo", "kto", "orpo") else DEFAULT_SEQ_LEN


def _objective(run: RunOptions, stack: Stack, strategy: Strategy, switches: dict, method: Method) -> dict:
    """objective and prompt_len, or a UsageError/NotModelledError naming what is not modelled."""
    objective = (run.objective or "sft").strip().lower()
    if objective in UNMODELLED_OBJECTIVES:
        raise NotModelledError(f"--objective {objective}: {UNMODELLED_OBJECTIVES[objective]} is not modelled yet")
    if objective not in ("sft", "dpo", "grpo", "kto", "orpo"):
        raise UsageError(f"--objective {run.objective}: choose sft, dpo, orpo, kto or grpo")
    grpo_given = [name for name in GRPO_ONLY if getattr(run, name) is not None]
    if objective != "grpo" and grpo_given:
        raise UsageError(f"--{grpo_given[0].replace('_', '-')} applies to --objective grpo")
    if objective == "sft":
        if run.prompt_len is not None or run.precompute_ref is not None:
            raise UsageError("--prompt-len and --precompute-ref apply to --objective dpo, kto or grpo")
        return {"objective": "sft", "prompt_len": None, "precompute_ref": False}
    if stack is not Stack.HF or strategy is not Strategy.SINGLE:
        raise NotModelledError(f"--objective {objective} is modelled for TRL's trainer on one GPU (--stack hf, no "
                               "--strategy) so far")
    if switches["packing"] or switches["liger"] or switches["loss"] is not Loss.STANDARD or switches["attn"] is \
            Attention.EAGER or switches["activation_offload"] or switches["optimizer_in_backward"]:
        raise NotModelledError(f"--objective {objective} is modelled with TRL's defaults so far: no packing, Liger, "
                               "fused loss, eager attention, activation offload or optimizer in backward")
    if objective == "grpo":
        return _grpo(run)
    if objective == "orpo":
        if run.prompt_len is not None or run.precompute_ref is not None:
            # concatenated_forward scores every position (its NLL over prompt and response, the log-softmax over all
            # of them); ORPO has no reference model
            raise UsageError("--prompt-len and --precompute-ref do not apply to --objective orpo (every position is "
                             "scored; there is no reference model)")
        if method is Method.QLORA:
            raise NotModelledError(ORPO_QLORA)
        return {"objective": "orpo", "prompt_len": None, "precompute_ref": False}
    prompt = None
    if run.prompt_len is not None:
        prompt = _positive(run.prompt_len, "--prompt-len")
        seq_len = run.seq_len if run.seq_len is not None else DPO_DEFAULTS["seq_len"]
        if prompt >= seq_len:
            raise UsageError(f"--prompt-len {prompt} leaves no completion in --seq-len {seq_len}")
    return {"objective": objective, "prompt_len": prompt, "precompute_ref": bool(run.precompute_ref)}


def _grpo(run: RunOptions) -> dict:
    """GRPO's settings at GRPOConfig's defaults, TRL's own checks applied (grpo_config.py __post_init__)."""
    if run.precompute_ref is not None:
        raise UsageError("--precompute-ref applies to --objective dpo (GRPO scores its reference per generation)")
    generation = (run.generation or "transformers").strip().lower()
    if generation not in GRPO_GENERATION:
        raise UsageError(f"--generation {run.generation}: choose {', '.join(GRPO_GENERATION)}")
    vllm = {name: getattr(run, name) for name in VLLM_ONLY if getattr(run, name) is not None}
    if vllm and not generation.startswith("vllm"):
        raise UsageError(f"--{next(iter(vllm)).replace('_', '-')} applies to --generation vllm-colocate or "
                         "vllm-server")
    if generation == "vllm-server":
        if vllm.get("vllm_sleep"):
            raise UsageError("--vllm-sleep applies to --generation vllm-colocate (a server keeps its GPU)")
        vllm.setdefault("vllm_gpu_memory_utilization", VLLM_SERVE_UTILIZATION)
    utilization = vllm.get("vllm_gpu_memory_utilization")
    if utilization is not None and not 0 < utilization <= 1:
        raise UsageError(f"--vllm-gpu-memory-utilization {utilization}: a share of the GPU, in (0, 1]")
    if vllm.get("vllm_max_model_len") is not None:
        _positive(vllm["vllm_max_model_len"], "--vllm-max-model-len")
    if run.num_generations is not None and run.num_generations < 2:
        raise UsageError(f"--num-generations {run.num_generations}: GRPO needs at least 2 (grpo_config.py)")
    if run.beta is not None and run.beta < 0:
        raise UsageError(f"--beta {run.beta}: must be >= 0")
    settings = GrpoSettings(
        num_generations=GrpoSettings().num_generations if run.num_generations is None else run.num_generations,
        steps_per_generation=1 if run.steps_per_generation is None else _positive(
            run.steps_per_generation, "--steps-per-generation"),
        beta=0.0 if run.beta is None else float(run.beta), generation=generation,
        **vllm)
    batch = run.batch_size if run.batch_size is not None else GRPO_DEFAULTS["batch_size"]
    rows = batch * settings.steps_per_generation
    if rows % settings.num_generations:
        # grpo_config.py __post_init__: the generation batch holds whole prompt groups
        raise UsageError(f"the generation batch ({batch} x {settings.steps_per_generation} steps per generation = "
                         f"{rows} completions) must be divisible by --num-generations {settings.num_generations}")
    prompt = GRPO_DEFAULTS["prompt_len"] if run.prompt_len is None else _positive(run.prompt_len, "--prompt-len")
    return {"objective": "grpo", "prompt_len": prompt, "precompute_ref": False, "grpo": settings}


def _adapters(method: Method, run: RunOptions, preset, fsdp1: bool = False
              ) -> tuple[LoraSettings | None, QuantSettings | None]:
    """The LoRA and 4-bit settings of the run (preset defaults for the ones not given), or a UsageError for LoRA or
    QLoRA options given to a method that has none."""
    lora_given = any(v is not None for v in (run.lora_rank, run.lora_targets, run.lora_dropout))
    quant_given = any(v is not None for v in (run.double_quant, run.kbit_prep))
    if method is Method.FULL and (lora_given or quant_given):
        raise UsageError("LoRA/QLoRA options (--lora-*, --double-quant, --kbit-prep) need --method lora or qlora")
    if method is Method.LORA and quant_given:
        raise UsageError("--double-quant/--kbit-prep apply to --method qlora only")
    lora = None
    if method is not Method.FULL:
        lora = LoraSettings(
            rank=_positive(run.lora_rank, "--lora-rank") if run.lora_rank is not None else preset.lora_rank,
            targets=parse_lora_targets(run.lora_targets if run.lora_targets is not None else preset.lora_targets),
            dropout=_dropout(run.lora_dropout) if run.lora_dropout is not None else preset.lora_dropout,
        )
    quant = None
    if method is Method.QLORA:
        if fsdp1 and run.kbit_prep:
            raise NotModelledError(FSDP1_KBIT_PREP)
        quant = QuantSettings(double_quant=True if run.double_quant is None else run.double_quant,
                              kbit_prep=not fsdp1 if run.kbit_prep is None else run.kbit_prep)
    return lora, quant


def _check_strategy(
    strategy: Strategy | None, gpus: int, nodes: int, offload: Offload, optimizer: Optimizer
) -> Strategy:
    """The strategy to model, or a UsageError/NotModelledError for a combination its engine does not run."""
    world = gpus * nodes
    if strategy is None:
        if world > 1:
            choices = "|".join(s.value for s in Strategy if s is not Strategy.SINGLE)
            raise UsageError(f"--gpus {gpus} --nodes {nodes}: say how the run is spread, --strategy {choices}")
        strategy = Strategy.SINGLE
    if strategy is Strategy.SINGLE and world > 1:
        raise UsageError(f"--strategy single runs on one GPU; got --gpus {gpus} --nodes {nodes}")
    if strategy is Strategy.DEVICE_MAP and nodes > 1:
        raise UsageError("--strategy device-map splits the layers over one machine's GPUs; use --nodes 1")
    if offload is Offload.OPTIMIZER and strategy not in DEEPSPEED_STRATEGIES:
        hint = " (FSDP2 offloads parameters, gradients and optimizer together: --offload params)" if (
            strategy in FSDP_STRATEGIES) else ""
        raise UsageError(f"--offload optimizer needs --strategy zero1|zero2|zero3{hint}")
    if offload is Offload.PARAMS and strategy not in SHARDED_STRATEGIES:
        raise UsageError("--offload params needs a strategy that shards parameters: zero3, fsdp or fsdp-hybrid")
    chosen = optimizer
    if strategy in DEEPSPEED_STRATEGIES and chosen not in (Optimizer.ADAMW, Optimizer.ADAMW_FUSED):
        raise NotModelledError(
            f"--optimizer {chosen.value} under DeepSpeed is not modelled (ZeRO keeps fp32 master weights and "
            "Adam states in its own partitions); use adamw or adamw-fused"
        )
    if world > 1 and chosen in (Optimizer.PAGED_ADAMW, Optimizer.PAGED_ADAMW_8BIT):
        raise NotModelledError(f"--optimizer {chosen.value} with several GPUs is not modelled")
    return strategy


# Which stacks expose each switch (their config key), for the error that names where a switch exists.
_SWITCH_STACKS = {
    "liger": ({Stack.HF, Stack.AXOLOTL, Stack.LLAMA_FACTORY}, "use_liger_kernel / liger plugin / enable_liger_kernel"),
    "optimizer_in_backward": ({Stack.TORCHTUNE}, "torchtune optimizer_in_bwd"),
    "activation_offload": ({Stack.TORCHTUNE, Stack.AXOLOTL},
                           "torchtune enable_activation_offloading / axolotl activation_offloading"),
}
# Loss implementations each stack can run: torchtune's recipes chunk the output; the HF-based stacks fuse it through
# Liger's fused linear cross-entropy or cut-cross-entropy.
_STACK_LOSSES = {
    Stack.HF: {Loss.STANDARD, Loss.FUSED},
    Stack.AXOLOTL: {Loss.STANDARD, Loss.FUSED},
    Stack.LLAMA_FACTORY: {Loss.STANDARD, Loss.FUSED},
    Stack.TORCHTUNE: {Loss.STANDARD, Loss.CHUNKED},
}


def _check_stack_switches(stack: Stack, strategy: Strategy, **switches) -> dict:
    """The switches, or a UsageError for one the chosen stack does not offer."""
    for name, (stacks, where) in _SWITCH_STACKS.items():
        if switches[name] and stack not in stacks:
            flag = "--" + name.replace("_", "-")
            offered = ", ".join(sorted(s.value for s in stacks))
            raise UsageError(f"{flag} is not offered by --stack {stack.value}; it exists in {offered} ({where})")
    if switches["loss"] not in _STACK_LOSSES[stack]:
        offered = "|".join(sorted(loss.value for loss in _STACK_LOSSES[stack]))
        raise UsageError(f"--loss {switches['loss'].value} is not offered by --stack {stack.value}; use {offered}")
    if stack is Stack.TORCHTUNE and strategy not in (Strategy.SINGLE, Strategy.FSDP, Strategy.FSDP_HYBRID):
        raise UsageError(f"torchtune's distributed recipes shard with FSDP2; --strategy {strategy.value} is not one")
    if switches["optimizer_in_backward"] and strategy is not Strategy.SINGLE:
        raise UsageError("--optimizer-in-backward runs in torchtune's single-device recipes only")
    return switches


def parse_lora_targets(targets: str | tuple[str, ...]) -> tuple[str, ...] | Literal["all-linear"]:
    """`all-linear` or a comma list of module names such as `q_proj,v_proj`."""
    if isinstance(targets, tuple):
        names = targets
    elif targets.strip() == ALL_LINEAR:
        return ALL_LINEAR
    else:
        names = tuple(name.strip() for name in targets.split(",") if name.strip())
    if not names:
        raise UsageError("--lora-targets is empty; give all-linear or names such as q_proj,v_proj")
    return tuple(dict.fromkeys(names))


# FSDP1 (torch.distributed.fsdp.FullyShardedDataParallel: a flat parameter per wrapped unit) as accelerate wraps it
# with the Trainer's defaults (use_orig_params, limit_all_gathers): every ShardingStrategy but HYBRID_SHARD_ZERO2,
# forward and backward prefetch, CPUOffload (--offload params).
# kbit preparation casts norms to fp32 next to the bf16-stored 4-bit weights, and FSDP1 flattens one dtype per unit
# (torch/distributed/fsdp/_flat_param.py _validate_tensors_to_flatten); TRL's SFTTrainer skips the preparation for
# sharded QLoRA (trl/trainer/sft_trainer.py, is_sharded_qlora), as the FSDP-QLoRA recipes run.
FSDP1_KBIT_PREP = ("--strategy fsdp1 with --kbit-prep: FSDP1 cannot flatten kbit preparation's fp32 norms with the "
                   "bf16-stored 4-bit weights (ValueError: Must flatten tensors with uniform dtype); FSDP-QLoRA "
                   "runs without it (--no-kbit-prep)")


FSDP1_SHARDINGS = ("full-shard", "shard-grad-op", "hybrid-shard", "no-shard")  # torch's ShardingStrategy names


def _fsdp1_sharding(value: str | None, strategy: Strategy) -> str:
    """FSDP1's ShardingStrategy: FULL_SHARD, SHARD_GRAD_OP, HYBRID_SHARD (sharded within a node, replicated across
    nodes) or NO_SHARD."""
    if value is None:
        return "full-shard"
    choice = value.strip().lower().replace("_", "-")
    if choice not in FSDP1_SHARDINGS:
        raise UsageError(f"unknown --fsdp1-sharding {value!r}; choose one of {'|'.join(FSDP1_SHARDINGS)}")
    if strategy is not Strategy.FSDP1:
        raise UsageError("--fsdp1-sharding applies to --strategy fsdp1")
    return choice


def _backward_prefetch(value: str | None, strategy: Strategy) -> str:
    """FSDP1's backward prefetch; FSDP2 prefetches one unit in backward by its own rule (always modelled)."""
    if value is None:
        return "none"
    choice = value.strip().lower().replace("_", "-")
    if choice not in ("none", "no-prefetch", "backward-pre", "backward-post"):
        raise UsageError(f"unknown --backward-prefetch {value!r}; choose one of none|backward-pre|backward-post")
    if strategy is not Strategy.FSDP1:
        raise UsageError("--backward-prefetch applies to --strategy fsdp1 (FSDP2 prefetches one unit itself)")
    return "none" if choice == "no-prefetch" else choice


def _forward_prefetch(value: bool | None, strategy: Strategy) -> bool:
    """FSDP1's forward_prefetch; FSDP2 prefetches in forward by its own rule (always modelled)."""
    if value and strategy is not Strategy.FSDP1:
        raise UsageError("--forward-prefetch applies to --strategy fsdp1 (FSDP2 prefetches one unit itself)")
    return bool(value)


def _transformers_major(value: str | None) -> int:
    """--transformers 4, 5 or a version such as 4.46.3: its major; 5 when not given."""
    if value is None:
        return 5
    major = value.strip().split(".")[0]
    if major not in ("4", "5"):
        raise UsageError(f"--transformers {value!r}: give 4 or 5 (the major version)")
    return int(major)


def _strategy(value: str, transformers: int, stack: Stack) -> Strategy:
    """`fsdp1`, `fsdp2`, or `fsdp`: the stack's default engine (stack_default_fsdp)."""
    if value == "fsdp":
        return stack_default_fsdp(transformers, stack)
    if value == "fsdp2":
        return Strategy.FSDP
    try:
        return Strategy(value)
    except ValueError:
        choices = "|".join(["fsdp2" if s is Strategy.FSDP else s.value for s in Strategy] + ["fsdp"])
        raise UsageError(f"unknown --strategy {value!r}; choose one of {choices}") from None


def stack_default_fsdp(transformers: int, stack: Stack) -> Strategy:
    """The FSDP engine `--strategy fsdp` means: FSDP1 under transformers 4.x's Trainer (training_args.py reads
    fsdp_config["version"] with default 1), FSDP2 under 5.x's (default 2) and torchtune's recipes (fully_shard)."""
    if stack is not Stack.TORCHTUNE and transformers == 4:
        return Strategy.FSDP1
    return Strategy.FSDP


def _enum(kind, value, option: str):
    try:
        return kind(value)
    except ValueError:
        choices = "|".join(member.value for member in kind)
        raise UsageError(f"unknown --{option} {value!r}; choose one of {choices}") from None


# Largest value each count option takes: far above any real run (a million-token context, 64k-GPU clusters), small
# enough that every byte count stays an exact integer and every figure derived from it finite.
OPTION_LIMITS = {"--batch-size": 2**20, "--seq-len": 2**24, "--lora-rank": 2**16, "--gpus": 2**10, "--nodes": 2**16}


def _positive(value: int, option: str) -> int:
    import operator

    try:
        if isinstance(value, bool):
            raise TypeError
        value = operator.index(value)  # ints and integer-like numbers (numpy), never floats or strings
    except TypeError:
        raise UsageError(f"{option} must be a positive integer, got {value!r}") from None
    if value <= 0:
        raise UsageError(f"{option} must be a positive integer, got {value}")
    limit = OPTION_LIMITS.get(option)
    if limit is not None and value > limit:
        raise UsageError(f"{option} {value}: at most {limit:,}")
    return value


def _dropout(value: float) -> float:
    if not 0.0 <= value < 1.0:
        raise UsageError(f"--lora-dropout must be in [0, 1), got {value}")
    return value

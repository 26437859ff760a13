"""TrainingSetup: everything about a run, besides the model, that decides its memory."""

from __future__ import annotations

from enum import Enum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from vramplan.errors import NotModelledError, UsageError


class Method(str, Enum):
    FULL = "full"
    LORA = "lora"
    QLORA = "qlora"


class Precision(str, Enum):
    """How weights are stored and whether Trainer's autocast runs.

    bf16: weights, gradients and optimizer states in bf16 (transformers v5 loads the checkpoint dtype), with
    Trainer's `bf16=True` autocast. bf16-mixed / fp16-mixed: fp32 weights under bf16 / fp16 autocast. fp32: no
    autocast at all.
    """

    BF16 = "bf16"
    BF16_MIXED = "bf16-mixed"
    FP16_MIXED = "fp16-mixed"
    FP32 = "fp32"


class Optimizer(str, Enum):
    ADAMW = "adamw"
    ADAMW_FUSED = "adamw-fused"
    ADAMW_8BIT = "adamw-8bit"
    PAGED_ADAMW = "paged-adamw"
    PAGED_ADAMW_8BIT = "paged-adamw-8bit"
    SGD = "sgd"
    ADAFACTOR = "adafactor"


ALL_LINEAR = "all-linear"


class Strategy(str, Enum):
    """How the run is spread over GPUs (per-GPU memory is what every strategy reports)."""

    SINGLE = "single"
    DDP = "ddp"  # torch DistributedDataParallel: a full replica per GPU
    ZERO1 = "zero1"  # DeepSpeed ZeRO stage 1: optimizer states partitioned
    ZERO2 = "zero2"  # ... stage 2: optimizer states and gradients partitioned
    ZERO3 = "zero3"  # ... stage 3: parameters too
    FSDP = "fsdp"  # FSDP2 fully_shard over every GPU of every node
    FSDP_HYBRID = "fsdp-hybrid"  # FSDP2 HSDP: sharded within a node, replicated across nodes
    DEVICE_MAP = "device-map"  # transformers device_map="auto": layers split over the GPUs of one process


class Offload(str, Enum):
    """What lives in host RAM instead of GPU memory."""

    NONE = "none"
    OPTIMIZER = "optimizer"  # DeepSpeed offload_optimizer: fp32 master weights, states and the step on the CPU
    PARAMS = "params"  # DeepSpeed offload_param (+ offload_optimizer) / FSDP2 CPUOffloadPolicy


class Stack(str, Enum):
    """The training framework, which decides dtypes, modules and loss (defaults in vramplan/presets.py)."""

    HF = "hf"  # transformers Trainer / TRL SFTTrainer + peft + bitsandbytes
    TORCHTUNE = "torchtune"  # torchtune recipes: pure bf16, its LoRA modules, NF4 from torchao, chunked loss
    AXOLOTL = "axolotl"  # HF stack with axolotl's defaults
    LLAMA_FACTORY = "llama-factory"  # HF stack with LLaMA-Factory's defaults


class Loss(str, Enum):
    STANDARD = "standard"  # full logits, fp32 upcast, cross_entropy
    CHUNKED = "chunked"  # logits upcast and cross-entropy one chunk at a time (torchtune CEWithChunkedOutputLoss)
    FUSED = "fused"  # lm_head + cross-entropy fused, no full logits (Liger FLCE, cut-cross-entropy)


class Attention(str, Enum):
    SDPA = "sdpa"
    FLASH = "flash"  # flash_attention_2 / varlen
    EAGER = "eager"  # materialises the s x s scores


SHARDED_STRATEGIES = (Strategy.ZERO3, Strategy.FSDP, Strategy.FSDP_HYBRID)
DEEPSPEED_STRATEGIES = (Strategy.ZERO1, Strategy.ZERO2, Strategy.ZERO3)
FSDP_STRATEGIES = (Strategy.FSDP, Strategy.FSDP_HYBRID)


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


class TrainingSetup(BaseModel):
    """One GPU's share of a training run: the knobs that move peak memory."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    method: Method
    precision: Precision = Precision.BF16
    optimizer: Optimizer = Optimizer.ADAMW
    batch_size: int = Field(1, gt=0)
    seq_len: int = Field(2048, gt=0)
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
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    @property
    def autocast(self) -> bool:
        return self.precision is not Precision.FP32


def resolve_setup(
    method: Method | str,
    *,
    precision: Precision | str | None = None,
    optimizer: Optimizer | str | None = None,
    batch_size: int | None = None,
    seq_len: int | None = None,
    gradient_checkpointing: bool | None = None,
    lora_rank: int | None = None,
    lora_targets: str | tuple[str, ...] | None = None,
    lora_dropout: float | None = None,
    double_quant: bool | None = None,
    kbit_prep: bool | None = None,
    gpus: int | None = None,
    nodes: int | None = None,
    strategy: Strategy | str | None = None,
    offload: Offload | str | None = None,
    stack: Stack | str | None = None,
    loss: Loss | str | None = None,
    liger: bool | None = None,
    packing: bool | None = None,
    attn: Attention | str | None = None,
    optimizer_in_backward: bool | None = None,
    activation_offload: bool | None = None,
) -> TrainingSetup:
    """Fill the defaults of the stack's preset (vramplan/presets.py) for every option not given, and reject
    contradictions with a UsageError."""
    from vramplan.presets import preset_for

    method = _enum(Method, method, "method")
    stack = _enum(Stack, stack, "stack") if stack is not None else Stack.HF
    preset = preset_for(stack)
    lora_given = any(v is not None for v in (lora_rank, lora_targets, lora_dropout))
    quant_given = any(v is not None for v in (double_quant, kbit_prep))
    if method is Method.FULL and (lora_given or quant_given):
        raise UsageError("LoRA/QLoRA options (--lora-*, --double-quant, --kbit-prep) need --method lora or qlora")
    if method is Method.LORA and quant_given:
        raise UsageError("--double-quant/--kbit-prep apply to --method qlora only")
    lora = None
    if method is not Method.FULL:
        lora = LoraSettings(
            rank=_positive(lora_rank, "--lora-rank") if lora_rank is not None else preset.lora_rank,
            targets=parse_lora_targets(lora_targets if lora_targets is not None else preset.lora_targets),
            dropout=_dropout(lora_dropout) if lora_dropout is not None else preset.lora_dropout,
        )
    quant = None
    if method is Method.QLORA:
        quant = QuantSettings(
            double_quant=True if double_quant is None else double_quant,
            kbit_prep=True if kbit_prep is None else kbit_prep,
        )
    gpus = 1 if gpus is None else _positive(gpus, "--gpus")
    nodes = 1 if nodes is None else _positive(nodes, "--nodes")
    strategy = _enum(Strategy, strategy, "strategy") if strategy is not None else None
    offload = _enum(Offload, offload, "offload") if offload is not None else Offload.NONE
    optimizer = _enum(Optimizer, optimizer, "optimizer") if optimizer is not None else preset.optimizer
    strategy = _check_strategy(strategy, gpus, nodes, offload, optimizer)
    switches = _check_stack_switches(
        stack,
        strategy,
        loss=_enum(Loss, loss, "loss") if loss is not None else preset.loss,
        attn=_enum(Attention, attn, "attn") if attn is not None else preset.attn,
        liger=bool(liger),
        packing=preset.packing if packing is None else packing,
        optimizer_in_backward=bool(optimizer_in_backward),
        activation_offload=bool(activation_offload),
    )
    if gradient_checkpointing is None:
        full = method is Method.FULL
        checkpointing = preset.checkpointing_full if full else preset.checkpointing_adapters
    else:
        checkpointing = gradient_checkpointing
    return TrainingSetup(
        method=method,
        precision=_enum(Precision, precision, "precision") if precision is not None else Precision.BF16,
        optimizer=optimizer,
        batch_size=_positive(batch_size, "--batch-size") if batch_size is not None else 1,
        seq_len=_positive(seq_len, "--seq-len") if seq_len is not None else 2048,
        gradient_checkpointing=checkpointing,
        lora=lora,
        quant=quant,
        gpus=gpus,
        nodes=nodes,
        strategy=strategy,
        offload=offload,
        stack=stack,
        **switches,
    )


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

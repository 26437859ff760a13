"""The named choices of a run (method, precision, optimizer, strategy, offload, stack, loss, attention)."""

from __future__ import annotations

from enum import Enum


class Method(str, Enum):
    FULL = "full"
    LORA = "lora"
    QLORA = "qlora"


class Precision(str, Enum):
    """How weights are stored and whether Trainer's autocast runs.

    bf16: weights, gradients and optimizer states in bf16 (transformers v5 loads the checkpoint dtype), with
    Trainer's `bf16=True` autocast. bf16-pure: the same bf16 weights with Trainer's bf16/fp16 flags off (no
    autocast; accelerate's mixed_precision "no", so FSDP neither upcasts nor casts). bf16-mixed / fp16-mixed: fp32
    weights under bf16 / fp16 autocast. fp32: no autocast at all.
    """

    BF16 = "bf16"
    BF16_PURE = "bf16-pure"
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
    FSDP1 = "fsdp1"  # FSDP1 FullyShardedDataParallel (a flat parameter per unit), FULL_SHARD, as accelerate wraps it
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


SHARDED_STRATEGIES = (Strategy.ZERO3, Strategy.FSDP, Strategy.FSDP_HYBRID, Strategy.FSDP1)
DEEPSPEED_STRATEGIES = (Strategy.ZERO1, Strategy.ZERO2, Strategy.ZERO3)
FSDP_STRATEGIES = (Strategy.FSDP, Strategy.FSDP_HYBRID)

# The run options (RunOptions' fields) whose value is one of a set: the CLI completes them, the web page lists them.
OPTION_CHOICES = {"precision": Precision, "optimizer": Optimizer, "stack": Stack, "loss": Loss, "attn": Attention,
                  "strategy": Strategy, "offload": Offload}

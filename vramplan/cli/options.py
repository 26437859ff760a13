"""Training options shared by every command that sizes a run (estimate now; trace, check, plan later)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from vramplan.units import parse_count, parse_fraction  # noqa: F401 - the commands parse options with these

Model = Annotated[
    str, typer.Option("--model", "-m", help="Catalog name, size alias (8b, 70b, ...) or path to config.json/folder.")
]
MethodOpt = Annotated[str, typer.Option("--method", help="full | lora | qlora")]
ModelOrFile = Annotated[
    Optional[str],
    typer.Option("--model", "-m", help="Catalog name, size alias (8b, 70b, ...), Hub id (org/name) or path to "
                                       "config.json/folder. [default: the --from file's model]"),
]
MethodOrFile = Annotated[
    Optional[str], typer.Option("--method", help="full | lora | qlora [default: the --from file's, else lora]")
]
FromFile = Annotated[
    Optional[str],
    typer.Option("--from", help="A training config to read: axolotl or LLaMA-Factory YAML, torchtune recipe YAML, "
                                "TRL/TrainingArguments JSON/YAML (+ adapter_config.json beside it), DeepSpeed "
                                "JSON. Flags given override it."),
]
BatchSize = Annotated[Optional[int], typer.Option("--batch-size", help="Per-GPU micro-batch. [default: 1]")]
SeqLen = Annotated[Optional[int], typer.Option("--seq-len", help="Tokens per sequence. [default: 2048]")]
PrecisionOpt = Annotated[
    Optional[str], typer.Option("--precision", help="bf16 | bf16-mixed | fp16-mixed | fp32 [default: bf16]")
]
OptimizerOpt = Annotated[
    Optional[str],
    typer.Option(
        "--optimizer",
        help="adamw | adamw-fused | adamw-8bit | paged-adamw | paged-adamw-8bit | sgd | adafactor [default: adamw]",
    ),
]
Checkpointing = Annotated[
    Optional[bool],
    typer.Option(
        "--gradient-checkpointing/--no-gradient-checkpointing",
        help="[default: on for lora/qlora, off for full]",
        show_default=False,
    ),
]
LoraRank = Annotated[Optional[int], typer.Option("--lora-rank", help="[default: 16]")]
LoraTargets = Annotated[
    Optional[str], typer.Option("--lora-targets", help="all-linear or names such as q_proj,v_proj [default: all-linear]")
]
LoraDropout = Annotated[Optional[float], typer.Option("--lora-dropout", help="[default: 0.05]")]
DoubleQuant = Annotated[
    Optional[bool], typer.Option("--double-quant/--no-double-quant", help="qlora [default: on]", show_default=False)
]
KbitPrep = Annotated[
    Optional[bool],
    typer.Option("--kbit-prep/--no-kbit-prep", help="qlora: peft prepare_model_for_kbit_training [default: on]",
                 show_default=False),
]
Gpus = Annotated[Optional[int], typer.Option("--gpus", help="GPUs per node. [default: 1]")]
Nodes = Annotated[Optional[int], typer.Option("--nodes", help="Machines, each with --gpus GPUs. [default: 1]")]
Strategy = Annotated[
    Optional[str],
    typer.Option("--strategy", help="single | ddp | zero1 | zero2 | zero3 | fsdp | fsdp-hybrid | device-map "
                                    "[default: single; needed with several GPUs]"),
]
OffloadOpt = Annotated[
    Optional[str],
    typer.Option("--offload", help="none | optimizer (DeepSpeed) | params (zero3, fsdp) [default: none]"),
]
StackOpt = Annotated[
    Optional[str],
    typer.Option("--stack", help="hf | torchtune | axolotl | llama-factory: whose defaults fill unset options "
                                 "[default: hf]"),
]
LossOpt = Annotated[
    Optional[str], typer.Option("--loss", help="standard | chunked (torchtune) | fused (Liger/CCE) [default: stack's]")
]
LigerOpt = Annotated[
    Optional[bool], typer.Option("--liger/--no-liger", help="Liger fused RMSNorm/SwiGLU/RoPE", show_default=False)
]
PackingOpt = Annotated[
    Optional[bool], typer.Option("--packing/--no-packing", help="several sequences per row", show_default=False)
]
AttnOpt = Annotated[Optional[str], typer.Option("--attn", help="sdpa | flash | eager [default: sdpa]")]
OptimizerInBackward = Annotated[
    Optional[bool],
    typer.Option("--optimizer-in-backward/--no-optimizer-in-backward", help="torchtune optimizer_in_bwd",
                 show_default=False),
]
ActivationOffload = Annotated[
    Optional[bool],
    typer.Option("--activation-offload/--no-activation-offload", help="saved activations in host memory",
                 show_default=False),
]
Format = Annotated[str, typer.Option("--format", help="table | json")]
Emit = Annotated[
    Optional[str],
    typer.Option("--emit", help="deepspeed | fsdp | accelerate: the launcher config for this setup (printed, or "
                                "written to --emit-to)"),
]
EmitTo = Annotated[Optional[str], typer.Option("--emit-to", help="File for --emit (stdout without it).")]


# The training options every sizing command declares (estimate and trace add the multi-GPU ones).
SETUP_OPTIONS = ("batch_size", "seq_len", "precision", "optimizer", "gradient_checkpointing", "lora_rank",
                 "lora_targets", "lora_dropout", "double_quant", "kbit_prep", "stack", "loss", "liger", "packing",
                 "attn", "optimizer_in_backward", "activation_offload")
SETUP_AND_GPU_OPTIONS = SETUP_OPTIONS + ("gpus", "nodes", "strategy", "offload")


def training_options(values: dict, names: tuple[str, ...] = SETUP_OPTIONS) -> dict:
    """The library call's options among a command's parameters (`locals()`), unset ones dropped so their
    defaults apply."""
    return {name: values[name] for name in names if values.get(name) is not None}

CatalogDir = Annotated[
    Optional[str],
    typer.Option("--catalog", help="Folder of your own gpus/ and systems/ TOML files, layered over ours "
                                   "(or set VRAMPLAN_CATALOG)."),
]
Headroom = Annotated[str, typer.Option("--headroom", help="GPU memory to keep free, e.g. 10% or 0.1.")]


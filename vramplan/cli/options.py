"""Training options shared by every command that sizes a run (estimate now; trace, check, plan later)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

Model = Annotated[
    str, typer.Option("--model", "-m", help="Catalog name, size alias (8b, 70b, ...) or path to config.json/folder.")
]
MethodOpt = Annotated[str, typer.Option("--method", help="full | lora | qlora")]
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
Gpus = Annotated[Optional[int], typer.Option("--gpus", help="GPUs (only 1 is modelled so far). [default: 1]")]
Strategy = Annotated[Optional[str], typer.Option("--strategy", help="single (multi-GPU strategies: not yet)")]
Format = Annotated[str, typer.Option("--format", help="table | json")]


def training_options(**values) -> dict:
    """The options a library call takes, with the ones left unset dropped so their defaults apply."""
    return {name: value for name, value in values.items() if value is not None}

CatalogDir = Annotated[
    Optional[str],
    typer.Option("--catalog", help="Folder of your own gpus/ and systems/ TOML files, layered over ours "
                                   "(or set VRAMPLAN_CATALOG)."),
]
Headroom = Annotated[str, typer.Option("--headroom", help="GPU memory to keep free, e.g. 10% or 0.1.")]


def parse_fraction(text: str, option: str) -> float:
    """'10%' or '0.1' -> 0.1."""
    from vramplan.errors import UsageError

    try:
        value = float(text[:-1]) / 100 if text.strip().endswith("%") else float(text)
    except ValueError:
        raise UsageError(f"{option} {text!r}: write a percentage like 10% or a fraction like 0.1") from None
    if not 0 <= value < 1:
        raise UsageError(f"{option} {text!r}: must be at least 0% and under 100%")
    return value


def parse_count(text: str, option: str) -> int:
    """'50M' -> 50_000_000; '2B', '500k' and plain integers too."""
    from vramplan.errors import UsageError

    scale = {"k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9, "t": 10**12}
    cleaned = text.strip().lower().replace("_", "").replace(",", "")
    try:
        if cleaned and cleaned[-1] in scale:
            return round(float(cleaned[:-1]) * scale[cleaned[-1]])
        return int(cleaned)
    except ValueError:
        raise UsageError(f"{option} {text!r}: write a count like 50M, 2B or 500000") from None

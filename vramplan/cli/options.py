"""Training options shared by every command that sizes a run (estimate now; trace, check, plan later)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

# the commands parse with these
from vramplan.units import DEFAULT_HEADROOM, MAX_EPOCHS, parse_count, parse_fraction  # noqa: F401


def complete_models(incomplete: str) -> list[str]:
    """Shell completion for --model: catalog ids and size aliases (from the catalog's index)."""
    from vramplan.models.catalog import catalog_index

    index = catalog_index()
    return sorted(name for name in {*index["ids"], *index["aliases"]} if name.startswith(incomplete))


def complete_gpus(incomplete: str) -> list[str]:
    """Shell completion for --gpu: catalog GPU ids."""
    from vramplan.hardware.catalog import load_hardware

    return sorted(gpu for gpu in load_hardware(None).gpus if gpu.startswith(incomplete))


def _choices(*values: str):
    return lambda incomplete: [value for value in values if value.startswith(incomplete)]


Model = Annotated[
    str, typer.Option("--model", "-m", help="Catalog name, size alias (8b, 70b, ...) or path to config.json/folder.")
]
MethodOpt = Annotated[str, typer.Option("--method", help="full | lora | qlora")]
ModelOrFile = Annotated[
    Optional[str],
    typer.Option("--model", "-m", help="Catalog name, size alias (8b, 70b, ...), Hub id (org/name) or path to "
                                       "config.json/folder. [default: the --from file's model]",
                 autocompletion=complete_models),
]
MethodOrFile = Annotated[
    Optional[str], typer.Option("--method", help="full | lora | qlora [default: the --from file's, else lora]",
                                autocompletion=_choices("full", "lora", "qlora"))
]
FromFile = Annotated[
    Optional[str],
    typer.Option("--from", help="A training config to read: axolotl or LLaMA-Factory YAML, torchtune recipe YAML, "
                                "TRL/TrainingArguments JSON/YAML (+ adapter_config.json beside it), DeepSpeed "
                                "JSON. Flags given override it."),
]


Devices = Annotated[
    Optional[str],
    typer.Option("--devices", help="Local GPUs the job's ranks use, as indices among the visible ones, e.g. 0,1. "
                                   "[default: the first --gpus visible GPUs; LOCAL_RANK's own under torchrun]"),
]
AcceptUnmodelled = Annotated[
    bool,
    typer.Option("--accept-unmodelled", help="Give a verdict even when the --from file sets something vramplan does "
                                             "not model (listed as NOT MODELLED in the answer).", show_default=False),
]
Format = Annotated[str, typer.Option("--format", help="table | json")]
Emit = Annotated[
    Optional[str],
    typer.Option("--emit", help="deepspeed | fsdp | accelerate: the launcher config for this setup (printed, or "
                                "written to --emit-to)"),
]
EmitTo = Annotated[Optional[str], typer.Option("--emit-to", help="File for --emit (stdout without it).")]


CatalogDir = Annotated[
    Optional[str],
    typer.Option("--catalog", help="Folder of your own gpus/ and systems/ TOML files, layered over ours "
                                   "(or set VRAMPLAN_CATALOG)."),
]
Headroom = Annotated[str, typer.Option("--headroom", help="GPU memory to keep free, e.g. 10% or 0.1 (of each GPU's "
                                                         "total).")]
HEADROOM_DEFAULT = f"{DEFAULT_HEADROOM:.0%}"


def parse_devices(text: Optional[str]) -> Optional[list[int]]:
    """--devices 0,1 -> [0, 1]."""
    from vramplan.errors import UsageError

    if text is None:
        return None
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts or not all(part.isdigit() for part in parts):
        raise UsageError(f"--devices {text!r}: write GPU indices like 0,1")
    return [int(part) for part in parts]



def _finite(option: str, low: float, high: float, low_open: bool = False):
    """A typer callback: a finite float within [low, high] ((low, high] with low_open), else a usage error."""
    import math

    def check(value: Optional[float]) -> Optional[float]:
        if value is None:
            return value
        below = value <= low if low_open else value < low
        if not math.isfinite(value) or below or value > high:
            bracket = "(" if low_open else "["
            raise typer.BadParameter(f"{value!r} is not a finite number in {bracket}{low:g}, {high:g}]",
                                     param_hint=f"'{option}'")
        return value

    return check


# Bounds of the planner's numbers: wide enough for any real plan, finite so no answer holds inf or nan.
Tokens = Annotated[str, typer.Option("--tokens", help="Training tokens per epoch, e.g. 50M.")]
Epochs = Annotated[float, typer.Option("--epochs", help="Passes over the tokens (at most 10,000).",
                                       callback=_finite("--epochs", 0, MAX_EPOCHS, low_open=True))]
Utilisation = Annotated[Optional[float], typer.Option(
    "--mfu", help="Replace the step model with one model FLOPs utilisation of dense BF16 for every GPU (0.01 to 1). "
                  "[default: the step model, validated against published runs]", callback=_finite("--mfu", 0.01, 1))]
BusyShare = Annotated[float, typer.Option("--busy-share", help="Share of the year a bought machine runs jobs "
                                          "(0.01 to 1): amortisation and yearly energy.",
                                          callback=_finite("--busy-share", 0.01, 1))]
AllowRocm = Annotated[bool, typer.Option("--allow-rocm", help="Let ROCm parts lead the cheapest/fastest marks "
                                         "(the estimate models the CUDA stack).")]
Years = Annotated[float, typer.Option("--amortise-years", help="Years a purchase is spread over (at most 50).",
                                      callback=_finite("--amortise-years", 0, 50, low_open=True))]
Kwh = Annotated[float, typer.Option("--kwh-price", help="Energy price in USD per kWh (0 to 100).",
                                    callback=_finite("--kwh-price", 0, 100))]
Top = Annotated[int, typer.Option("--top", help="Rows of the table.", min=1, max=10_000)]
MaxNodes = Annotated[int, typer.Option("--max-nodes", help="Most nodes of one system a multi-node layout may use.",
                                       min=1, max=1024)]

GpuTarget = Annotated[
    Optional[str],
    typer.Option("--gpu", help="An idle catalog GPU (rtx-4090, \"RTX 4090\", 4090, h100-sxm5-80gb; vramplan catalog "
                               "gpus) or a memory size (24GB = 24x10^9 bytes, 80GiB = 80x2^30 bytes), one per rank. "
                               "[default: the local GPUs' free memory, through NVML]", autocompletion=complete_gpus),
]
NvmlRecording = Annotated[
    Optional[str],
    typer.Option("--nvml-recording", hidden=True, help="Replay recorded NVML answers (tests, demos)."),
]
Exact = Annotated[
    bool,
    typer.Option("--exact", help="Trace the step (CPU, fake tensors; needs vramplan[probe]) and replay its "
                                 "allocations through the CUDA caching allocator at each GPU's free memory, instead "
                                 "of the closed-form reserve rule."),
]

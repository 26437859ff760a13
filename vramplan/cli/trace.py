"""`vramplan trace`: count the bytes of the real training step on CPU (fake tensors), for any model size."""

from __future__ import annotations

from typing import Annotated

import typer

from vramplan.cli import options as o
from vramplan.cli.render import check_format, emit_json, emit_trace

ByModule = Annotated[bool, typer.Option("--by-module", help="Show which modules hold the peak's bytes.")]
Top = Annotated[int, typer.Option("--top", help="Rows of --by-module to show.", min=1)]


def trace_command(
    model: o.Model,
    method: o.MethodOpt = "lora",
    batch_size: o.BatchSize = None,
    seq_len: o.SeqLen = None,
    precision: o.PrecisionOpt = None,
    optimizer: o.OptimizerOpt = None,
    gradient_checkpointing: o.Checkpointing = None,
    lora_rank: o.LoraRank = None,
    lora_targets: o.LoraTargets = None,
    lora_dropout: o.LoraDropout = None,
    double_quant: o.DoubleQuant = None,
    kbit_prep: o.KbitPrep = None,
    gpus: o.Gpus = None,
    nodes: o.Nodes = None,
    strategy: o.Strategy = None,
    offload: o.OffloadOpt = None,
    by_module: ByModule = False,
    top: Top = 12,
    fmt: o.Format = "table",
) -> None:
    """Run one real training step on CPU under fake tensors and report its peak, like `estimate` does."""
    from vramplan.api import trace

    options = locals()
    check_format(fmt)
    result = trace(
        model,
        method,
        **o.training_options(options, o.SETUP_AND_GPU_OPTIONS),
    )
    if fmt == "json":
        emit_json(result)
    else:
        emit_trace(result, top if by_module else 0)

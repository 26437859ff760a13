"""`vramplan trace`: count the bytes of the real training step on CPU (fake tensors), for any model size."""

from __future__ import annotations

from typing import Annotated

import typer

from vramplan.cli import options as o
from vramplan.cli.render import check_format, emit_json, emit_trace

ByModule = Annotated[bool, typer.Option("--by-module", help="Show which modules hold the peak's bytes.")]
Top = Annotated[int, typer.Option("--top", help="Rows of --by-module to show.", min=1)]


def trace_command(
    model: o.ModelOrFile = None,
    method: o.MethodOrFile = None,
    from_file: o.FromFile = None,
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
    stack: o.StackOpt = None,
    loss: o.LossOpt = None,
    liger: o.LigerOpt = None,
    packing: o.PackingOpt = None,
    attn: o.AttnOpt = None,
    optimizer_in_backward: o.OptimizerInBackward = None,
    activation_offload: o.ActivationOffload = None,
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

    from vramplan.cli.imported import merge_config_file

    options = locals()
    check_format(fmt)
    run = merge_config_file(from_file, model, method, o.training_options(options, o.SETUP_AND_GPU_OPTIONS))
    result = trace(run.model, run.method, **run.options)
    if fmt == "json":
        emit_json(result, "trace")
    else:
        emit_trace(result, top if by_module else 0)

"""`vramplan estimate`: the rule-based estimate of one GPU's memory."""

from __future__ import annotations

from vramplan.cli import options as o
from vramplan.cli.render import check_format, emit_estimate, emit_json


def estimate_command(
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
    fmt: o.Format = "table",
) -> None:
    """Estimate per-GPU memory for a fine-tuning run, component by component."""
    from vramplan.api import estimate

    options = locals()
    check_format(fmt)
    result = estimate(
        model,
        method,
        **o.training_options(options, o.SETUP_AND_GPU_OPTIONS),
    )
    if fmt == "json":
        emit_json(result)
    else:
        emit_estimate(result)

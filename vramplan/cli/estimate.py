"""`vramplan estimate`: the rule-based estimate of one GPU's memory."""

from __future__ import annotations

from vramplan.cli import options as o
from vramplan.cli.render import check_format, emit_estimate, emit_json


def estimate_command(
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
    emit: o.Emit = None,
    emit_to: o.EmitTo = None,
    fmt: o.Format = "table",
) -> None:
    """Estimate per-GPU memory for a fine-tuning run, component by component; --emit writes its launcher config."""
    from vramplan.api import estimate

    from vramplan.cli.imported import merge_config_file

    options = locals()
    check_format(fmt)
    run = merge_config_file(from_file, model, method, o.training_options(options, o.SETUP_AND_GPU_OPTIONS))
    result = estimate(run.model, run.method, notes=run.notes, **run.options)
    if emit is not None:
        from vramplan.cli.emit import emit_configs

        if emit_configs(emit, result.setup, result.model.spec, emit_to):
            return  # the config went to stdout, in place of the estimate
    elif emit_to is not None:
        from vramplan.errors import UsageError

        raise UsageError("--emit-to needs --emit deepspeed|fsdp|accelerate")
    if fmt == "json":
        emit_json(result, "estimate")
    else:
        emit_estimate(result)

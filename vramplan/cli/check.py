"""`vramplan check`: the pre-flight verdict on the local GPUs (NVML) or on idle catalog GPUs."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from vramplan.cli import options as o
from vramplan.cli.render import check_format, emit_json_document


def check_command(
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
    devices: o.Devices = None,
    gpu: Annotated[Optional[str], typer.Option(
        "--gpu", help="Check against idle catalog GPUs instead (rtx-4090, \"RTX 4090\", 4090, or a size like "
                      "24GB), one per rank.", autocompletion=o.complete_gpus)] = None,
    headroom: o.Headroom = o.HEADROOM_DEFAULT,
    accept_unmodelled: o.AcceptUnmodelled = False,
    nvml_recording: Annotated[Optional[str], typer.Option("--nvml-recording", hidden=True,
                                                          help="Replay recorded NVML answers (tests, demos).")] = None,
    catalog: o.CatalogDir = None,
    fmt: o.Format = "table",
) -> None:
    """Pre-flight: does the job fit on the local GPUs (NVML) or on catalog GPUs? Exit 0 fits, 3 not, 4 cannot check,
    2 bad input or a --from setting that is not modelled."""
    options = locals()
    from pathlib import Path

    from vramplan.api import estimate
    from vramplan.check.nvml import RecordedNvml
    from vramplan.check.preflight import check_catalog, check_local
    from vramplan.cli.imported import merge_config_file
    from vramplan.cli.paste import paste_command
    from vramplan.cli.render_hardware import emit_verdict
    from vramplan.errors import UsageError
    from vramplan.hardware.suggest import RunRequest

    check_format(fmt)
    fraction = o.parse_fraction(headroom, "--headroom")
    indices = o.parse_devices(devices)
    if gpu is not None and devices is not None:
        raise UsageError("--devices picks local GPUs and --gpu a catalog GPU: give one of them")
    run = merge_config_file(from_file, model, method, o.training_options(options, o.SETUP_AND_GPU_OPTIONS),
                            refuse_unmodelled=not accept_unmodelled)
    if indices is not None and gpus is None:
        run.options["gpus"] = len(indices)  # the job's ranks are the GPUs named
        if len(indices) > 1 and run.options.get("strategy") is None:
            raise UsageError(f"--devices {devices} runs {len(indices)} ranks: say how the run is spread, "
                             "--strategy ddp|zero1|zero2|zero3|fsdp|fsdp-hybrid|device-map")
    result = estimate(run.model, run.method, notes=run.notes, **run.options)
    request = RunRequest(model=run.model, method=run.method, options=run.options)
    if gpu is not None:
        verdict = check_catalog(result, gpu, fraction, catalog, request=request)
    else:
        nvml = RecordedNvml.from_file(Path(nvml_recording)) if nvml_recording else None
        verdict = check_local(result, indices, fraction, nvml, request=request)
    commands = [paste_command("check", s.flags) for s in verdict.suggestions]
    if fmt == "json":
        document = verdict.model_dump(mode="json")
        document["exit_code"] = verdict.exit_code
        document["commands"] = commands
        emit_json_document(document, "check")
    else:
        emit_verdict(verdict, commands)
    if verdict.exit_code:
        raise typer.Exit(verdict.exit_code)

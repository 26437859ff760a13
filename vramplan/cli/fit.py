"""`vramplan fit`: the largest batch size, sequence length or LoRA rank that fits a GPU."""

from __future__ import annotations

from typing import Annotated

import typer

from vramplan.cli import options as o
from vramplan.cli.run_options import RunInput, with_run_options
from vramplan.cli.render import check_format, emit_answer

SolveOpt = Annotated[str, typer.Option(
    "--solve", help="batch-size | seq-len | lora-rank | num-generations | completion-len (the last two: --objective "
    "grpo; num-generations sizes one prompt's group per micro-batch)")]
@with_run_options(layout=True, verdict=True)
def fit_command(
    *,
    run: RunInput,
    gpu: o.GpuTarget = None,
    solve: SolveOpt = "batch-size",
    nvml_recording: o.NvmlRecording = None,
    fmt: o.Format = "table",
) -> None:
    """The largest per-GPU batch size (or sequence length, or LoRA rank) that fits a GPU, alone or under
    --gpus/--nodes/--strategy/--offload; rounded to a value people use, with the exact limit beside it.
    Exit 3 when not even the smallest value fits."""
    from vramplan.answers import fit_result
    from vramplan.cli.imported import merge_config_file
    from vramplan.cli.paste import paste_command
    from vramplan.cli.render_hardware import emit_fit
    from vramplan.errors import UsageError
    from vramplan.hardware.fit import SEARCH_LIMITS

    check_format(fmt)
    if solve not in SEARCH_LIMITS:
        raise UsageError(f"--solve {solve!r}: choose {', '.join(SEARCH_LIMITS)}")
    request = merge_config_file(run)
    target, usable = _target(gpu, run.headroom, run.catalog, nvml_recording)
    result, suggestions = fit_result(request, solve, target, usable)
    if fmt == "json":
        from vramplan.answers import fit_document

        emit_answer(fit_document(result, target, suggestions, paste_command))
    else:
        emit_fit(result, target, [(s, paste_command("fit", s.flags)) for s in suggestions])
    if result.value is None:
        raise typer.Exit(3)


def _target(gpu: str | None, headroom: float, catalog: str | None, nvml_recording: str | None):
    """(GpuTarget, usable bytes): a catalog GPU or a size, less the headroom; or the local GPU's free memory."""
    if gpu is not None:
        from vramplan.hardware.catalog import load_hardware
        from vramplan.hardware.targets import resolve_gpu_target

        target = resolve_gpu_target(gpu, load_hardware(catalog).gpus)
        return target, int(target.memory_bytes * (1 - headroom))
    from pathlib import Path

    from vramplan.check.local_target import local_gpu_target
    from vramplan.check.nvml import RecordedNvml

    nvml = RecordedNvml.from_file(Path(nvml_recording)) if nvml_recording else None
    return local_gpu_target(headroom, nvml)

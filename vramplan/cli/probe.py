"""`vramplan probe`: real training steps on the local GPU, their measured peaks appended as one JSON line."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from vramplan.cli import options as o
from vramplan.cli.run_options import RunInput, with_run_options
from vramplan.cli.render import check_format, emit_json


@with_run_options(layout=False)
def probe_command(
    *,
    run: RunInput,
    steps: Annotated[int, typer.Option("--steps", help="Measured steps after one warm-up step.", min=1, max=1000)] = 3,
    device: Annotated[str, typer.Option("--device", help="auto | cuda | cpu. auto and cuda need a CUDA GPU (exit 4 "
                                                         "without one); cpu runs small configs on the CPU.")] = "auto",
    out: Annotated[str, typer.Option("--out", help="Folder for <gpu>-<date>.jsonl.")] = "validation/measurements",
    snapshot: Annotated[Optional[str], typer.Option(
        "--snapshot", help="Record the CUDA caching allocator's history (torch.cuda.memory._record_memory_history) "
                           "to this pickle and replay it through vramplan's allocator model, segment by segment."
    )] = None,
    fmt: o.Format = "table",
) -> None:
    """Run a few real training steps (random weights) on the GPU and append the measured peaks as one JSON line.
    Exit 4 without a CUDA GPU (unless --device cpu) or without the probe extra."""
    import sys
    from pathlib import Path

    from vramplan.cli.imported import merge_config_file
    from vramplan.request import resolve_request
    from vramplan.errors import UsageError, require_extra

    check_format(fmt)
    if device not in ("auto", "cuda", "cpu"):
        raise UsageError(f"--device {device!r}: choose auto, cuda or cpu")
    request = merge_config_file(run)
    resolved, setup, _ = resolve_request(request)  # bad input is exit 2 before anything
    require_extra("probe", "torch", "transformers", "peft", "accelerate")
    from vramplan.measure.probe import append_jsonl, measurement_file, run_probe

    def progress(stage: str) -> None:
        sys.stderr.write(f"vramplan: probe: {stage}\n")
        sys.stderr.flush()

    if snapshot is not None and device == "cpu":
        raise UsageError("--snapshot records the CUDA caching allocator: it needs --device cuda")
    if setup.objective != "sft":  # TRL's own DPO, KTO, ORPO or GRPO trainer, run for real
        if snapshot is not None:
            raise UsageError("--snapshot is recorded for SFT probes only")
        require_extra("trl", "trl")
        from vramplan.measure.probe_trl import run_trl_probe

        record = run_trl_probe(resolved, setup, steps=steps, device=device, options=request.options.given(),
                               progress=progress)
    else:
        record = run_probe(resolved, setup, steps=steps, device=device, options=request.options.given(),
                           progress=progress, snapshot=Path(snapshot) if snapshot else None)
    path = measurement_file(Path(out), record.gpu)
    append_jsonl(path, record)
    if fmt == "json":
        emit_json(record, "probe")
    else:
        measured = record.max_memory_allocated
        sys.stdout.write(
            f"{record.id} on {record.gpu}: {record.status}; peak allocated "
            f"{'?' if measured is None else f'{measured / 2**30:.2f} GiB'} ({record.peak_phase}) against "
            f"{record.estimate['peak_allocated_bytes'] / 2**30:.2f} GiB estimated; appended to {path}\n")

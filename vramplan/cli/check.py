"""`vramplan check`: the pre-flight verdict on the local GPUs (NVML) or on idle catalog GPUs."""

from __future__ import annotations


import typer

from vramplan.cli import options as o
from vramplan.cli.run_options import RunInput, with_run_options
from vramplan.cli.render import check_format, emit_answer


@with_run_options(layout=True, verdict=True)
def check_command(
    *,
    run: RunInput,
    devices: o.Devices = None,
    gpu: o.GpuTarget = None,
    nvml_recording: o.NvmlRecording = None,
    exact: o.Exact = False,
    fmt: o.Format = "table",
) -> None:
    """Pre-flight: does the job fit on the local GPUs (NVML) or on catalog GPUs? Exit 0 fits, 3 not, 4 cannot check,
    2 bad input or a --from setting that is not modelled."""
    from pathlib import Path

    from vramplan.check.nvml import RecordedNvml
    from vramplan.check.preflight import check_catalog, check_local
    from vramplan.cli.imported import merge_config_file
    from vramplan.cli.paste import paste_command
    from vramplan.cli.render_hardware import emit_verdict
    from vramplan.errors import UsageError
    from vramplan.request import estimate_request

    check_format(fmt)
    indices = o.parse_devices(devices)
    if gpu is not None and devices is not None:
        raise UsageError("--devices picks local GPUs and --gpu a catalog GPU: give one of them")
    request = merge_config_file(run)
    if indices is not None and request.options.gpus is None:
        request = request.changed({"gpus": len(indices)})  # the job's ranks are the GPUs named
        if len(indices) > 1 and request.options.strategy is None:
            raise UsageError(f"--devices {devices} runs {len(indices)} ranks: say how the run is spread, "
                             "--strategy ddp|zero1|zero2|zero3|fsdp|fsdp-hybrid|device-map")
    result = estimate_request(request)
    if gpu is None and not run.accept_unmodelled:  # this machine launches the job: its stack is the job's
        from vramplan.errors import NotModelledError
        from vramplan.estimate.stack_versions import installed_layout_mismatch

        mismatch = installed_layout_mismatch(result.model.spec, result.setup)
        if mismatch:
            raise NotModelledError(f"{mismatch}: the verdict would be a guess; pass --accept-unmodelled to get it "
                                   "anyway")
    if gpu is not None:
        verdict = check_catalog(result, gpu, run.headroom, run.catalog, request=request)
    else:
        nvml = RecordedNvml.from_file(Path(nvml_recording)) if nvml_recording else None
        verdict = check_local(result, indices, run.headroom, nvml, request=request)
    if exact:
        from vramplan.check.exact import exact_verdict
        from vramplan.request import trace_request

        verdict = exact_verdict(verdict, trace_request(request))
    if fmt == "json":
        from vramplan.answers import check_document

        emit_answer(check_document(verdict, paste_command))
    else:
        emit_verdict(verdict, [paste_command("check", s.flags) for s in verdict.suggestions])
    if verdict.exit_code:
        raise typer.Exit(verdict.exit_code)

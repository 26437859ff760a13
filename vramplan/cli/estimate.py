"""`vramplan estimate`: the rule-based estimate of one GPU's memory."""

from __future__ import annotations

from vramplan.cli import options as o
from vramplan.cli.run_options import RunInput, with_run_options
from vramplan.cli.render import check_format, emit_estimate, emit_json


@with_run_options(layout=True)
def estimate_command(
    *,
    run: RunInput,
    emit: o.Emit = None,
    emit_to: o.EmitTo = None,
    fmt: o.Format = "table",
) -> None:
    """Estimate per-GPU memory for a fine-tuning run, component by component; --emit writes its launcher config."""
    from vramplan.cli.imported import merge_config_file
    from vramplan.request import estimate_request

    check_format(fmt)
    result = estimate_request(merge_config_file(run))
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

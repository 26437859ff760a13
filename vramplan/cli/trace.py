"""`vramplan trace`: count the bytes of the real training step on CPU (fake tensors), for any model size."""

from __future__ import annotations

from typing import Annotated

import typer

from vramplan.cli import options as o
from vramplan.cli.run_options import RunInput, with_run_options
from vramplan.cli.render import check_format, emit_json, emit_trace

ByModule = Annotated[bool, typer.Option("--by-module", help="Show which modules hold the peak's bytes.")]
Top = Annotated[int, typer.Option("--top", help="Rows of --by-module to show.", min=1)]


@with_run_options(layout=True)
def trace_command(
    *,
    run: RunInput,
    by_module: ByModule = False,
    top: Top = 12,
    fmt: o.Format = "table",
) -> None:
    """Run one real training step on CPU under fake tensors and report its peak, like `estimate` does."""
    from vramplan.cli.imported import merge_config_file
    from vramplan.measure.trace import trace_memory
    from vramplan.request import resolve_request

    check_format(fmt)
    resolved, setup, _ = resolve_request(merge_config_file(run))
    result = trace_memory(resolved, setup)
    if fmt == "json":
        emit_json(result, "trace")
    else:
        emit_trace(result, top if by_module else 0)

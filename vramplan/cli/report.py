"""`vramplan report`: the procurement report (HTML and Markdown) for a team's planned jobs."""

from __future__ import annotations

from typing import Annotated

import typer

from vramplan.cli import options as o


def report_command(
    jobs: Annotated[str, typer.Argument(help="TOML file of planned jobs (see examples/jobs.toml).")],
    out: Annotated[str, typer.Option("--out", help="Folder for report.html, report.md and the charts.")] = "report",
    catalog: o.CatalogDir = None,
) -> None:
    """Write a procurement report (HTML and Markdown) for a team's planned jobs. Exit 2 on a bad jobs file, 4 when
    the report extra (matplotlib) is missing."""
    import sys
    from pathlib import Path

    from vramplan.errors import require_extra
    from vramplan.hardware.catalog import load_hardware
    from vramplan.report.jobs import load_jobs

    planned = load_jobs(Path(jobs))  # the user's file first: a bad one is exit 2 whatever is installed
    hardware = load_hardware(catalog)
    require_extra("report", "matplotlib")
    from vramplan.report.build import build_report
    from vramplan.report.render import write_report

    report = build_report(planned, hardware)
    written = write_report(report, Path(out))
    if report.recommended is not None:
        sys.stdout.write(f"recommended: {report.recommended.id} ({report.recommended.name})\n")
    sys.stdout.write("wrote " + ", ".join(str(path) for path in written) + "\n")

"""`vramplan report`: the procurement report (HTML and Markdown) for a team's planned jobs."""

from __future__ import annotations

from typing import Annotated

import typer

from vramplan.cli import options as o


def report_command(
    jobs: Annotated[str, typer.Argument(help="TOML file of planned jobs (see examples/jobs.toml).")],
    out: Annotated[str, typer.Option("--out", help="Folder for report.html, report.md and the charts.")] = "report",
    catalog: o.CatalogDir = None,
    allow_rocm: o.AllowRocm = False,
) -> None:
    """Write a procurement report (HTML and Markdown) for a team's planned jobs. Exit 2 on a bad jobs file, 4 when
    the report extra (matplotlib) is missing."""
    import sys
    from pathlib import Path

    from vramplan.errors import require_extra
    from vramplan.hardware.catalog import load_hardware
    from vramplan.report.jobs import load_jobs

    planned = load_jobs(Path(jobs))  # the user's file first: a bad one is exit 2 whatever is installed
    if allow_rocm:
        planned = planned.model_copy(update={"assumptions": planned.assumptions.model_copy(
            update={"allow_rocm": True})})
    hardware = load_hardware(catalog)
    require_extra("report", "matplotlib")
    from vramplan.report.build import build_report
    from vramplan.report.render import write_report

    report = build_report(planned, hardware)
    written = write_report(report, Path(out))
    buy, rent, even = report.cheapest_buy, report.cheapest_rent, report.break_even
    if buy is not None:
        parts = " (estimated from parts)" if buy.estimated_price else ""
        sys.stdout.write(f"buy: {buy.id} ({buy.name}), {buy.upfront_usd:,.0f} USD upfront{parts}\n")
    if rent is not None:
        sys.stdout.write(f"rent: {rent.id} ({rent.name}), {rent.rent_usd:,.0f} USD in rent for all the jobs\n")
    if buy is not None and rent is not None and even is not None:
        years = report.assumptions.amortisation_years
        if even.gpu_hours_per_month is None:
            sys.stdout.write("break-even: none; renting costs less than the bought machine's electricity\n")
        elif not even.within_reach:
            sys.stdout.write(f"break-even: none within {years:g} years, even busy every hour\n")
        else:
            sys.stdout.write(f"break-even: buying {buy.id} beats renting {rent.id} above "
                             f"{even.gpu_hours_per_month:,.0f} {buy.gpu} GPU-hours a month\n")
    for pick in report.serving:
        rent = "none" if pick.rent is None else (f"{pick.rent.system} {pick.rent.rent_usd_per_hour:,.2f} USD/h "
                                                 f"(TP {pick.rent.tensor_parallel} x {pick.rent.replicas})")
        buy = "none" if pick.buy is None else (f"{pick.buy.system} {pick.buy.buy_usd:,.0f} USD "
                                               f"(TP {pick.buy.tensor_parallel} x {pick.buy.replicas})")
        sys.stdout.write(f"serve {pick.name}: rent {rent}; buy {buy}\n")
    sys.stdout.write("wrote " + ", ".join(str(path) for path in written) + "\n")

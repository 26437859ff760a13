"""`vramplan models`: the named-model catalog."""

from __future__ import annotations

from vramplan.cli import options as o
from vramplan.cli.render import check_format


def models_command(fmt: o.Format = "table") -> None:
    """List the catalog's models, their size aliases and parameter counts."""
    import json
    import sys

    from vramplan.models.catalog import load_catalog

    check_format(fmt)
    rows = [
        {
            "id": r.id,
            "name": r.name,
            "hf_repo": r.hf_repo,
            "size_alias": r.size_alias,
            "family": r.spec.family,
            "total_params": r.spec.total_params,
        }
        for r in load_catalog().values()
    ]
    if fmt == "json":
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="model catalog")
    for column in ("id", "alias", "family", "parameters", "hf_repo"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["id"], row["size_alias"] or "", row["family"], f"{row['total_params'] / 1e9:.2f}B",
                      row["hf_repo"])
    Console().print(table)

"""`vramplan models`: the named-model catalog."""

from __future__ import annotations

from vramplan.cli import options as o
from vramplan.cli.render import check_format


def models_command(fmt: o.Format = "table") -> None:
    """List the catalog's models, their size aliases and parameter counts; those `estimate` cannot answer yet are
    marked, with the reason."""
    from vramplan.models.listing import model_rows

    check_format(fmt)
    rows = model_rows()
    if fmt == "json":
        from vramplan.cli.render import emit_json_document

        emit_json_document([row.model_dump(mode="json") for row in rows], "models")
        return
    from vramplan.cli.render import make_console
    from vramplan.cli.tables import Column, whole_cell_table

    console = make_console()
    columns = [Column("id", 100), Column("alias", 60), Column("family", 40), Column("parameters", 70, "right"),
               Column("hf_repo", 20)]
    table_rows = [[row.id + ("" if row.estimable else " *"), row.size_alias or "", row.family,
                   f"{row.total_params / 1e9:.2f}B", row.hf_repo] for row in rows]
    console.print(whole_cell_table(console, columns, table_rows, title="model catalog"))
    refused = [row for row in rows if not row.estimable]
    if refused:
        console.print("* not estimable yet (estimate refuses rather than guesses):", highlight=False)
        for row in refused:
            console.print(f"  {row.id}: {row.refusal}", highlight=False, soft_wrap=True)

"""Tables that never cut a value: at a narrow terminal whole columns are left out, by priority, and the table says so.

rich squeezes a table wider than the terminal by cutting cells to `12,0...`; a user who types an id or reads a cost
from it cannot use a cut value. Here every cell is kept whole (no wrap, no ellipsis) and, while the table is still
wider than the console, the column of lowest priority is dropped; the caption names what was left out.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Column:
    header: str
    priority: int  # higher stays longer; the first column a user needs (an id) gets the highest
    justify: str = "left"


def whole_cell_table(console, columns: list[Column], rows: list[list[str]], **table_options):
    """A rich Table of `rows` (one string per column) that fits `console.width` without cutting any cell."""
    from rich.table import Table

    kept = list(range(len(columns)))
    while True:
        table = Table(**table_options)
        for index in kept:
            column = columns[index]
            table.add_column(column.header, justify=column.justify, no_wrap=True, overflow="fold")
        for row in rows:
            table.add_row(*(row[index] for index in kept))
        needed = _natural_width(table)
        if needed <= console.width or len(kept) == 1:
            break
        kept.remove(min(kept, key=lambda index: columns[index].priority))
    left_out = [columns[index].header for index in range(len(columns)) if index not in kept]
    if left_out:
        table.caption = (f"left out at {console.width} columns: {', '.join(left_out)} "
                         "(a wider terminal or --format json shows them)")
    return table


def _natural_width(table) -> int:
    """The width `table` takes when nothing limits it (rendered off-screen)."""
    import io

    from rich.cells import cell_len
    from rich.console import Console

    scratch = Console(width=100_000, file=io.StringIO(), color_system=None, legacy_windows=False)
    scratch.print(table)
    return max((cell_len(line) for line in scratch.file.getvalue().splitlines()), default=0)

"""A boxed table in plain text, drawn as rich's default (heavy head) box draws it.

`vramplan estimate` prints one such table on every run; drawing it here spares that cold start the import of rich
(about 20 ms here), which the other commands' larger tables still use.
"""

from __future__ import annotations


def box_table(title: str, headers: list[str], sections: list[list[list[str]]], right: set[int] = frozenset()) -> str:
    """The table's text: `title` centred above, `headers`, then `sections` of rows split by rules; the columns in
    `right` right-aligned. Cells are never cut."""
    widths = [len(h) for h in headers]
    for rows in sections:
        for row in rows:
            widths = [max(w, len(cell)) for w, cell in zip(widths, row)]

    def line(left: str, fill: str, middle: str, right_end: str) -> str:
        return left + middle.join(fill * (w + 2) for w in widths) + right_end

    def row_text(cells: list[str], bar: str) -> str:
        parts = [cell.rjust(w) if i in right else cell.ljust(w) for i, (cell, w) in enumerate(zip(cells, widths))]
        return bar + bar.join(f" {part} " for part in parts) + bar

    total = sum(w + 3 for w in widths) + 1
    out = [title.center(total).rstrip() if len(title) < total else title,
           line("┏", "━", "┳", "┓"), row_text(headers, "┃"), line("┡", "━", "╇", "┩")]
    for index, rows in enumerate(sections):
        if index:
            out.append(line("├", "─", "┼", "┤"))
        out.extend(row_text(row, "│") for row in rows)
    out.append(line("└", "─", "┴", "┘"))
    return "\n".join(out) + "\n"

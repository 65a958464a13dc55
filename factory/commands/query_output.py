"""``factory query``'s output: the columns asked for, as a table, CSV or JSON.

A table keeps one column per field while the fields fit the console (about 14 characters
each); a wider result prints one block per row (field, value), so no column is squeezed to
"…". CSV and JSON print every row and every value whole (a list as a JSON array).
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import pyarrow as pa
from rich.console import Console
from rich.table import Table

from manifests.errors import UserError

__all__ = ["FORMATS", "QueryOutputError", "check_format", "render", "select_columns"]

FORMATS = ("table", "csv", "json")
CELL = 40  # characters a table cell shows
MIN_COLUMN = 14  # a column narrower than this is unreadable
TABLE_ROWS = 20  # rows a table shows unless --limit says otherwise


class QueryOutputError(UserError, ValueError):
    """A bad --columns or --format."""


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise QueryOutputError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")


def select_columns(table: pa.Table, columns: str | None) -> pa.Table:
    """``"key,emotion"`` -> those columns of the result, in that order."""
    if not columns:
        return table
    names = [c.strip() for c in columns.split(",") if c.strip()]
    unknown = [n for n in names if n not in table.column_names]
    if unknown:
        raise QueryOutputError(
            f"--columns: the result has no column {unknown[0]!r}; it has {', '.join(table.column_names)}"
        )
    return table.select(names)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    text = json.dumps(value) if isinstance(value, list) else str(value)
    return text if len(text) <= CELL else text[: CELL - 1] + "…"


def _plain(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, list | dict) else value


def render(console: Console, table: pa.Table, fmt: str, limit: int | None) -> None:
    """Print ``table`` (its first ``limit`` rows) as ``fmt``."""
    check_format(fmt)
    shown = table if limit is None and fmt != "table" else table.slice(0, TABLE_ROWS if limit is None else limit)
    rows = shown.to_pylist()
    if fmt == "json":
        console.out(json.dumps(rows, default=str), highlight=False)
        return
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(table.column_names)
        writer.writerows([_plain(v) for v in row.values()] for row in rows)
        console.out(buffer.getvalue(), end="", highlight=False)
        return
    if len(table.column_names) * MIN_COLUMN <= console.width:
        grid = Table(show_lines=False)
        for name in table.column_names:
            grid.add_column(name, overflow="fold", max_width=CELL)
        for row in rows:
            grid.add_row(*(_cell(v) for v in row.values()))
        console.print(grid)
    else:  # too wide for one line per row: one block per row
        for number, row in enumerate(rows, 1):
            block = Table(title=f"row {number}", show_header=False, title_justify="left")
            block.add_column("column", style="bold")
            block.add_column("value", overflow="fold")
            for name, value in row.items():
                block.add_row(name, _cell(value))
            console.print(block)
    console.print(f"{table.num_rows} rows" + (f" ({len(rows)} shown)" if len(rows) < table.num_rows else ""))

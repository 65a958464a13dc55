"""`factory query`: SQL over a dataset (or a subset)."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from factory.cli.common import RunArg, out
from manifests.query import query as run_query


def query(
    run_dir: RunArg,
    sql: Annotated[
        str | None, typer.Argument(help='SQL over the view `samples`, e.g. "SELECT count(*) FROM samples".')
    ] = None,
    where: Annotated[
        str | None, typer.Option("--where", help='Filter instead of full SQL, e.g. "au_occ(12) = 1".')
    ] = None,
    include_rejected: Annotated[bool, typer.Option("--include-rejected")] = False,
    limit: Annotated[int, typer.Option("--limit", help="Rows to print.")] = 20,
) -> None:
    """Query a built dataset's labels with SQL (DuckDB over the Parquet manifests)."""

    table = run_query(run_dir, sql=sql, where=where, include_rejected=include_rejected)
    shown = Table(show_lines=False)
    for name in table.column_names:
        shown.add_column(name, overflow="ellipsis", max_width=40)
    for row in table.slice(0, limit).to_pylist():
        shown.add_row(*(_cell(v) for v in row.values()))
    out.print(shown)
    out.print(f"{table.num_rows} rows")


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value)
    return text if len(text) <= 40 else text[:39] + "…"

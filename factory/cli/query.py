"""`factory query`: SQL over a dataset (or a subset), printed as a table, CSV or JSON."""

from __future__ import annotations

from typing import Annotated

import typer

from factory.cli.common import RunArg, out
from factory.commands.query_output import FORMATS, check_format, render, select_columns
from manifests.query import query as run_query


def query(
    run_dir: RunArg,
    sql: Annotated[
        str | None, typer.Argument(help='SQL over the view `samples`, e.g. "SELECT count(*) FROM samples".')
    ] = None,
    where: Annotated[
        str | None, typer.Option("--where", help='Filter instead of full SQL, e.g. "au_occ(12) = 1".')
    ] = None,
    columns: Annotated[
        str | None, typer.Option("--columns", help="Comma-separated columns to show, e.g. key,emotion,realism_score.")
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help=f"One of: {', '.join(FORMATS)}.")] = "table",
    include_rejected: Annotated[bool, typer.Option("--include-rejected")] = False,
    limit: Annotated[
        int | None, typer.Option("--limit", help="Rows to print (a table: 20 unless given; csv / json: all).")
    ] = None,
) -> None:
    """Query a built dataset's labels with SQL (DuckDB over the Parquet manifests)."""
    check_format(fmt)  # before the query runs
    table = select_columns(run_query(run_dir, sql=sql, where=where, include_rejected=include_rejected), columns)
    render(out, table, fmt, limit)

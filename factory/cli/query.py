"""`factory query` and `factory export`: SQL over a dataset, and subsets of it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from factory.cli.common import RunArg, fail, out
from factory.commands.bank import export_identity_bank
from factory.commands.identities import BankIndexError
from manifests.export import export as run_export
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

    try:
        table = run_query(run_dir, sql=sql, where=where, include_rejected=include_rejected)
    except Exception as exc:  # DuckDB and IO errors carry the useful message
        fail(f"query failed: {exc}", code=2)
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


def export(
    run_dir: RunArg,
    dest: Annotated[Path, typer.Argument(help="Output directory for the subset.")],
    where: Annotated[str | None, typer.Option("--where", help="SQL filter over `samples`.")] = None,
    limit: Annotated[int | None, typer.Option("--limit")] = None,
    fmt: Annotated[str, typer.Option("--format", help="webdataset, folder or identity-bank.")] = "webdataset",
    shard_size: Annotated[int, typer.Option("--shard-size")] = 1000,
    overwrite: Annotated[bool, typer.Option("--overwrite")] = False,
) -> None:
    """Export a filtered subset as new WebDataset shards or a folder of images + labels.csv,
    or an identity-bank build as a bank folder (indexed, ready for identities.bank)."""

    if fmt == "identity-bank":
        _export_bank(run_dir, dest, where, limit, overwrite)
        return
    try:
        result = run_export(
            run_dir, dest, where=where, limit=limit, format=fmt, shard_size=shard_size, overwrite=overwrite
        )
    except (ValueError, FileExistsError, OSError) as exc:
        fail(str(exc), code=2)
    out.print_json(json.dumps(result, default=str))


def _export_bank(run_dir: Path, dest: Path, where: str | None, limit: int | None, overwrite: bool) -> None:
    try:
        bank = export_identity_bank(run_dir, dest, where=where, limit=limit, overwrite=overwrite)
    except (ValueError, FileExistsError, OSError, BankIndexError) as exc:
        fail(str(exc), code=2)
    for line in bank.balance_lines():
        out.print(line, highlight=False)
    out.print(bank.index.summary(), highlight=False)

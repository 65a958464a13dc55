"""`factory verify`: every file of a dataset against its manifests and stats; --repair."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from factory.cli.common import RunArg, fail, out
from factory.commands.verify import RepairError, run_verify, summary_lines


def verify(
    run_dir: RunArg,
    repair: Annotated[
        bool,
        typer.Option("--repair", help="Move bad shards aside so the next `factory build` redoes exactly those."),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Check every indexed tar and manifest (members, sizes, sha256); list missing, corrupt and extra shards.

    Exits 1 when anything is wrong (also after a repair: the dataset is whole again only once rebuilt).
    """
    if not run_dir.exists():
        fail(f"{run_dir} does not exist; pass a dataset folder (a build's --out, an export or a subset)", code=2)
    try:
        report, result = run_verify(run_dir, fix=repair)
    except RepairError as exc:
        fail(str(exc), code=2)
    if as_json:
        out.print_json(json.dumps({**report.to_dict(), "repair": result.to_dict() if result else None}))
    else:
        for line in summary_lines(report, result):
            out.print(line, highlight=False, soft_wrap=True)
    if not report.ok:
        raise typer.Exit(1)

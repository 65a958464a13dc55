"""`factory verify`: every file of a dataset against its manifests and stats; --repair."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from factory.cli.common import RunArg, out
from factory.commands.verify import run_verify, summary_lines
from manifests.errors import UserError


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
        raise UserError(
            f"{run_dir} does not exist", fix="pass a dataset folder (a build's --out, an export or a subset)"
        )
    report, result = run_verify(run_dir, fix=repair)
    if as_json:
        out.print_json(json.dumps({**report.to_dict(), "repair": result.to_dict() if result else None}))
    else:
        for line in summary_lines(report, result):
            out.print(line, highlight=False, soft_wrap=True)
    if not report.ok:
        raise typer.Exit(1)

"""`factory filter`: cut a subset (an index of selected keys over the source's shards)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from factory.cli.common import RunArg, out
from factory.commands.subset import run_filter


def filter_subset(
    run_dir: RunArg,
    subset: Annotated[Path, typer.Argument(help="Folder for the subset (new or empty; --overwrite replaces one).")],
    where: Annotated[str | None, typer.Option("--where", help='SQL over `samples`, e.g. "au_occ(12) = 1".')] = None,
    consensus: Annotated[
        str | None,
        typer.Option("--consensus", help="full (all detectors agreed, no AU uncertain), certain, or a minimum score."),
    ] = None,
    min_intensity: Annotated[
        list[str] | None, typer.Option("--min-intensity", help="AU12=3: final intensity at least 3 (repeatable).")
    ] = None,
    emotion: Annotated[list[str] | None, typer.Option("--emotion", help="Keep this emotion (repeatable).")] = None,
    accepted_only: Annotated[
        bool, typer.Option("--accepted-only", help="Leave out rejected samples whose image a build kept.")
    ] = False,
    balance: Annotated[
        str | None, typer.Option("--balance", help="Column(s) to balance over, e.g. ethnicity or ethnicity,gender.")
    ] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="Samples in the subset (a seeded sample).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the --limit / --balance draw.")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a subset already in SUBSET.")] = False,
    include_surplus: Annotated[
        bool,
        typer.Option(
            "--include-surplus", help="Bring back a balanced build's surplus (accepted samples its index left out)."
        ),
    ] = False,
) -> None:
    """Select samples into a subset: no image is copied and the source is never modified.

    The subset is a dataset of its own for `query`, `report`, `eval`, `export`, `show` and `verify`.
    """
    index = run_filter(
        run_dir,
        subset,
        where=where,
        consensus=consensus,
        min_intensity=min_intensity,
        emotions=emotion,
        accepted_only=accepted_only,
        balance=balance,
        limit=limit,
        seed=seed,
        overwrite=overwrite,
        include_surplus=include_surplus,
    )
    out.print(
        f"[bold green]subset[/] {subset}: {index['samples']} samples ({index['accepted']} accepted) "
        f"from {len(index['shards'])} shards of {index['subset']['source']}",
        highlight=False,
    )
    if limit is not None and index["samples"] < limit:
        out.print(f"note: only {index['samples']} samples matched the selection, fewer than --limit {limit}")

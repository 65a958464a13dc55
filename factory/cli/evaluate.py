"""`factory eval` and `factory calibrate`: label fidelity, and the offline detectors' calibration."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from factory.cli.common import RecipeArg, RunArg, SeedOpt, err, load, out
from factory.commands.calibrate import calibrate_offline_detectors, parse_shards
from factory.commands.evaluate import evaluate as run_eval
from factory.commands.evaluate import print_report


def evaluate(
    run_dir: RunArg,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Where to save CSV/JSON (default: RUN/eval).")] = None,
    include_rejected: Annotated[bool, typer.Option("--include-rejected")] = False,
) -> None:
    """Label fidelity: per-AU F1 of each detector and the consensus, intensity ICC(3,1) and MAE."""

    report = run_eval(run_dir, out_dir=out_dir or run_dir / "eval", include_rejected=include_rejected)
    print_report(report, console=out)


def calibrate(
    recipe: RecipeArg,
    fit_shards: Annotated[str, typer.Option("--fit-shards", help="Shards to fit on, e.g. 0-5.")] = "0-2",
    test_shards: Annotated[str, typer.Option("--test-shards", help="Held-out shards, e.g. 6-7.")] = "3",
    out_dir: Annotated[
        Path, typer.Option("--out", help="Folder for geometric.json, appearance.json, calibration.md.")
    ] = Path("calibration"),
    seed: SeedOpt = None,
    shard_size: Annotated[int | None, typer.Option("--shard-size", help="Overrides dataset.shard_size.")] = None,
) -> None:
    """Refit the offline AU detectors' calibration on exact warp renders; score it on held-out shards."""

    r = load(recipe, seed=seed, shard_size=shard_size)
    report = calibrate_offline_detectors(
        r,
        fit_shards=parse_shards(fit_shards),
        test_shards=parse_shards(test_shards),
        out_dir=out_dir,
        log=lambda line: err.print(line, highlight=False),
    )
    out.print(report.to_markdown(), highlight=False)

"""`factory build` and `factory retry`: run (or resume) a build on a Ray cluster."""

from __future__ import annotations

from typing import Annotated

import typer

from cluster.ray_cluster import check_request, stop_on_sigterm
from factory.cli.common import OutOpt, RecipeArg, RunArg, SeedOpt, TargetOpt, check_reachable, load, out
from factory.engine.rundir import open_run
from factory.recipe import Recipe, recipe_from_dict
from manifests.errors import FailedError

QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Plain log lines instead of a live bar (CI).")]
LocalGpusOpt = Annotated[
    int | None,
    typer.Option(
        "--local-gpus",
        help="Give the local Ray cluster this many logical GPU slots (testing placement without GPUs).",
    ),
]


def build(
    recipe: RecipeArg,
    target: TargetOpt = None,
    gpus: Annotated[int | None, typer.Option("--gpus", help="GPU workers, one per GPU (0: CPU workers).")] = None,
    out_dir: OutOpt = None,
    seed: SeedOpt = None,
    address: Annotated[
        str | None, typer.Option("--address", help="Join this Ray cluster instead of a local one.")
    ] = None,
    local_gpus: LocalGpusOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Build the dataset, or resume it: run the same command again after a crash.

    Committed shards are kept, unfinished ones are redone, and the index is written last.
    """
    r = load(recipe, target=target, gpus=gpus, out=out_dir, seed=seed, address=address)
    _run_build(r, local_gpus=local_gpus, quiet=quiet, retry_failed=False)


def retry(run_dir: RunArg, quiet: QuietOpt = False, local_gpus: LocalGpusOpt = None) -> None:
    """Rerun the failed shards of a build (with its recorded recipe) and re-index, in RUN_DIR
    wherever the command runs from (not the recipe's recorded, maybe relative, dataset.out)."""
    run, info = open_run(run_dir)
    recorded = info["recipe"]
    here = {**recorded, "dataset": {**recorded.get("dataset", {}), "out": str(run_dir)}}
    r = recipe_from_dict(here, source=str(run.run_json))
    _run_build(r, local_gpus=local_gpus, quiet=quiet, retry_failed=True)


def _run_build(r: Recipe, *, local_gpus: int | None, quiet: bool, retry_failed: bool) -> None:
    from factory.engine.build import build as run_build  # deferred: imports ray (~0.5 s)

    stop_on_sigterm()  # SIGTERM stops a build as Ctrl-C does: Ray shut down, the lock released
    # Before anything is written: an --address nothing answers at, GPUs the machine lacks.
    check_request(r.engine.address, gpus=r.engine.gpus, local_gpus=local_gpus)
    check_reachable(r.dataset.out)
    # Its errors (a bad --out, a failed build, a full disk...) reach the CLI's error edge,
    # which prints them and exits 2 for input to fix, 1 for a failed build.
    summary = run_build(r, local_gpus=local_gpus, quiet=quiet, retry_failed=retry_failed)
    counted = (
        f"{summary.accepted} accepted of"
        if summary.selected_from is None
        else f"{summary.accepted} kept of {summary.selected_from} accepted,"
    )
    out.print(
        f"[bold green]dataset[/] {summary.run_dir}: {counted} {summary.planned_samples} generated "
        f"(target {summary.target}) in {len(summary.indexed_shards)} shards, {summary.seconds:.0f} s"
    )
    if summary.stage_rates:
        out.print("per-stage samples/s: " + ", ".join(f"{k} {v:.1f}" for k, v in summary.stage_rates.items()))
    if summary.surplus_shards:
        out.print(f"surplus shards kept aside (not indexed): {summary.surplus_shards}")
    if summary.short:  # the balance could keep no more: finished, with what it could not fill named
        out.print(f"[yellow]ended short of the target[/]: {summary.short}", highlight=False)
    if summary.failed_shards:
        raise FailedError(
            f"{len(summary.failed_shards)} shard(s) failed and were skipped: {sorted(summary.failed_shards)}; "
            f"see {summary.run_dir}/failed/ and run `factory retry {summary.run_dir}`"
        )

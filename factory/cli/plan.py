"""`factory plan`: the balance statistics of a recipe's plan (nothing is written)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from factory.cli.common import RecipeArg, SeedOpt, load, out
from factory.commands.chain_estimate import estimate_chain
from factory.commands.coverage import bank_coverage
from factory.commands.estimate import estimate, measure_batch_seconds
from factory.commands.gpu_estimate import estimate_lines, gpu_estimates, read_bench
from factory.engine.balance import balance_targets, bank_infeasible, unshowable_emotions
from factory.plan import PlanStats, plan_statistics
from factory.recipe import Recipe
from manifests.bank import IdentityRecord, open_bank
from manifests.vocab import DISFA_AUS


def plan(
    recipe: RecipeArg,
    target: Annotated[int | None, typer.Option("--target", help="Samples to plan (default: dataset.target).")] = None,
    seed: SeedOpt = None,
    estimate_: Annotated[
        bool, typer.Option("--estimate", help="Also print GPU-hours and wall time for the target.")
    ] = False,
    gpus: Annotated[
        int | None, typer.Option("--gpus", min=1, max=4096, help="Estimate: GPUs (default: engine.gpus).")
    ] = None,
    batch_seconds: Annotated[
        float | None,
        typer.Option("--batch-seconds", min=0.0, help="Estimate: stated seconds per engine.batch_size batch."),
    ] = None,
    acceptance: Annotated[
        float | None,
        typer.Option(
            "--acceptance",
            min=0.0,
            max=1.0,
            help="Estimate: stated acceptance rate (default: the run's).",
        ),
    ] = None,
    measure: Annotated[
        bool, typer.Option("--measure", help="Estimate: time one batch of the recipe's pipeline on this machine.")
    ] = False,
    bank_batch_seconds: Annotated[
        float | None,
        typer.Option(
            "--bank-batch-seconds",
            min=0.0,
            help="Estimate, with identities.bank_recipe: stated seconds per batch of the bank build.",
        ),
    ] = None,
    from_bench: Annotated[
        Path | None,
        typer.Option(
            "--from-bench",
            help="Estimate with --measure: per-GPU rates from a `python -m bench.bench_gpu --out FILE` result "
            "(GPU-hours per generator and for 50/30/20 steps; --gpus default 8).",
        ),
    ] = None,
) -> None:
    """Plan samples and print their balance: AU shares, intensities, emotions, demographics.

    Nothing is written; `factory build` writes each shard's plan before running it.
    """
    r = load(recipe, target=target, seed=seed)
    identities, note = _bank_identities(r)
    stats = plan_statistics(r, r.dataset.target, identities)
    _print_stats(r, stats)
    if note:
        out.print(f"[bold]identity bank[/]: {note}")
    per_identity = r.identities.expressions_per_identity
    if per_identity:
        planned = -(-r.dataset.target // per_identity)
        bank = f"of {len(identities)} in the bank" if identities else "(bank not there yet)"
        if identities and planned > len(identities):
            bank += f"; the plan wraps round the bank, {-(-planned // len(identities))} rounds"
        out.print(
            f"[bold]multi-identity[/]: {planned} identities {bank} x {per_identity} expressions per identity "
            f"= {planned * per_identity} samples planned for target {r.dataset.target}"
        )
    if identities:
        _print_coverage(r, identities)
    if from_bench is not None:  # a bench file is only read for an estimate: it implies --estimate
        _print_bench_estimate(r, from_bench, gpus, acceptance)
    elif estimate_ and r.identities.bank_recipe:
        chain = estimate_chain(
            r, workers=gpus, batch_seconds=batch_seconds, bank_batch_seconds=bank_batch_seconds,
            acceptance=acceptance, measure=measure,
        )  # fmt: skip
        for line in chain.lines():
            out.print(f"[bold]estimate[/] {line}", highlight=False)
    elif estimate_:
        _print_estimate(r, gpus, batch_seconds, acceptance, measure)


def _bank_identities(r: Recipe) -> tuple[list[IdentityRecord] | None, str | None]:
    """The bank's identities; a recipe whose bank folder is not there yet plans its demographic
    cells without one (the statistics do not depend on the bank) and says so."""
    spec = r.identities.bank
    if spec not in ("builtin", "none") and not Path(spec).exists():
        return None, (
            f"{spec} is not there, so these are the planned demographic cells with a new identity per sample; "
            "create the bank (identities.csv + images, then `factory identities index`) before building, "
            "or set identities.bank = 'none' for text-to-image identities"
        )
    bank = open_bank(spec)
    return (bank.records() if bank else None), None


def _print_estimate(
    r: Recipe, gpus: int | None, batch_seconds: float | None, acceptance: float | None, measure: bool
) -> None:
    measured = measure_batch_seconds(r) if measure and batch_seconds is None else None
    result = estimate(
        r, workers=gpus, batch_seconds=batch_seconds, acceptance=acceptance,
        run_dir=Path(r.dataset.out), measured=measured,
    )  # fmt: skip
    for line in result.lines():
        out.print(f"[bold]estimate[/] {line}")


def _print_bench_estimate(r: Recipe, path: Path, gpus: int | None, acceptance: float | None) -> None:
    bench = read_bench(path)
    found = gpu_estimates(r, bench, gpus=gpus or 8, acceptance=acceptance, run_dir=Path(r.dataset.out))
    for line in estimate_lines(r, bench, path, found):
        out.print(f"[bold]estimate[/] {line}", highlight=False)


def _print_stats(r: Recipe, stats: PlanStats) -> None:
    table = Table(title=f"{stats.n} planned samples ({r.dataset.shard_size} per shard)")
    table.add_column("AU")
    table.add_column("active share", justify="right")
    table.add_column("target", justify="right")
    for level in range(1, 6):
        table.add_column(f"i={level}", justify="right")
    for i, au in enumerate(DISFA_AUS):
        active = max(int(stats.au_active[i]), 1)
        table.add_row(
            f"AU{au}",
            f"{stats.au_active[i] / stats.n:.3f}",
            f"{r.aus.share(au):.3f}" if au in r.aus.units else "off",
            *[f"{stats.intensity_hist[i, lv] / active:.2f}" for lv in range(1, 6)],
        )
    out.print(table)
    for name, counts in (
        ("emotion", stats.emotions),
        ("ethnicity", stats.ethnicity),
        ("age band", stats.age_band),
        ("gender", stats.gender),
        ("identity match", stats.identity_match),
    ):
        shares = ", ".join(f"{k} {v / stats.n:.3f}" for k, v in sorted(counts.items()))
        out.print(f"[bold]{name}[/]: {shares}")
    out.print(f"[bold]constraint violations[/]: {stats.violations}")


def _print_coverage(r: Recipe, records: list[IdentityRecord]) -> None:
    """Per planned cell: bank identities and how its samples are matched; the cells it cannot fill."""
    cells = bank_coverage(r, records)
    table = Table(title=f"identity bank coverage: {len(records)} identities, {len(cells)} planned cells")
    for col in ("ethnicity", "age band", "gender", "share", "samples", "identities", "match"):
        table.add_column(col, justify="right" if col in ("share", "samples", "identities") else "left")
    for c in cells:
        table.add_row(*c.cell, f"{c.share:.3f}", str(c.samples), str(c.identities), c.match)
    out.print(table)
    unfilled = [c for c in cells if not c.filled]
    share = sum(c.share for c in unfilled)
    out.print(f"[bold]cells the bank cannot fill[/]: {len(unfilled)} of {len(cells)} ({share:.1%} of the samples)")
    for level in ("ethnicity_gender", "ethnicity", "any"):
        names = ["/".join(c.cell) for c in unfilled if c.match == level]
        if names:
            out.print(f"  matched at level {level}: {', '.join(names)}", highlight=False)
    groups, emotions = bank_infeasible(records), unshowable_emotions(r, records)
    out.print(f"[bold]groups no identity belongs to[/] (\\[balance]: infeasible): {', '.join(groups) or 'none'}")
    out.print(f"[bold]emotions no identity can show[/] (its own expression): {', '.join(emotions) or 'none'}")
    limited = balance_targets(r, records).limits
    shown = ", ".join(f"{cell} at most {share:.3f} of the samples" for cell, share in limited.items())
    out.print(f"[bold]groups whose identities all show their own AUs[/] (\\[balance]: limited): {shown or 'none'}")

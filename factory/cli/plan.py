"""`factory plan`: the balance statistics of a recipe's plan (nothing is written)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from factory.cli.common import RecipeArg, SeedOpt, fail, load, out
from factory.plan import PlanStats, plan_statistics
from factory.recipe import Recipe, RecipeError
from manifests.bank import IdentityBankError, open_bank
from manifests.vocab import DISFA_AUS


def plan(
    recipe: RecipeArg,
    target: Annotated[int | None, typer.Option("--target", help="Samples to plan (default: dataset.target).")] = None,
    seed: SeedOpt = None,
) -> None:
    """Plan samples and print their balance: AU shares, intensities, emotions, demographics.

    Nothing is written; `factory build` writes each shard's plan before running it.
    """
    r = load(recipe, target=target, seed=seed)
    try:
        bank = open_bank(r.identities.bank)
        stats = plan_statistics(r, r.dataset.target, bank.records() if bank else None)
    except (RecipeError, IdentityBankError) as exc:
        fail(str(exc), code=2)
    _print_stats(r, stats)


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

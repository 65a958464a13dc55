"""`factory plan --estimate` of a recipe chain: the identity-bank build, then the build over that bank.

A recipe whose ``identities.bank_recipe`` names the recipe that makes its bank (the public
multi-identity chain: ``recipes/identity-bank.toml`` -> ``factory export --format
identity-bank`` -> ``recipes/mifa-1m-multi-identity.toml``) is priced in two steps, each by
:func:`factory.commands.estimate.estimate` with its own inputs: the bank step's seconds per
batch from ``--bank-batch-seconds``, the bank run's done shards, or ``--measure``; its
acceptance from the bank run or its recipe. A bank folder already there with enough
identities costs nothing more. The steps run one after the other, so the chain's wall time is
the sum of theirs. The export between them is file copying (minutes, not GPU-hours).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from factory.commands.estimate import Estimate, EstimateError, estimate, measure_batch_seconds
from factory.recipe import Recipe, load_recipe
from manifests.bank import IdentityBankError, open_bank

__all__ = ["ChainEstimate", "estimate_chain"]


@dataclass(frozen=True)
class ChainEstimate:
    bank_recipe: str
    identities_needed: int
    bank_note: str  # why step 1 costs what it does
    bank: Estimate | None  # None: the bank folder is there, nothing to build
    build: Estimate

    @property
    def gpu_hours(self) -> float:
        return self.build.gpu_hours + (self.bank.gpu_hours if self.bank else 0.0)

    @property
    def wall_hours(self) -> float:
        return self.build.wall_hours + (self.bank.wall_hours if self.bank else 0.0)

    def lines(self) -> list[str]:
        out = [f"step 1, the identity bank ({self.bank_recipe}): {self.bank_note}"]
        out += [f"  {line}" for line in (self.bank.lines() if self.bank else [])]
        out += ["step 2, the build over the bank:"] + [f"  {line}" for line in self.build.lines()]
        out.append(
            f"chain: {self.gpu_hours:,.1f} {self.build.unit}-hours, wall {self.wall_hours:,.1f} h "
            f"({self.wall_hours / 24:,.2f} days), the steps one after the other"
        )
        return out


def _bank_size(spec: str) -> int | None:
    """Identities in the bank folder, or None when it is not there (or not a bank yet)."""
    if spec in ("builtin", "none") or not Path(spec).exists():
        return None
    try:
        bank = open_bank(spec)
    except IdentityBankError:
        return None
    return len(bank) if bank is not None else None


def estimate_chain(
    recipe: Recipe,
    *,
    workers: int | None = None,
    batch_seconds: float | None = None,
    bank_batch_seconds: float | None = None,
    acceptance: float | None = None,
    measure: bool = False,
) -> ChainEstimate:
    """Both steps of ``recipe``'s chain (``identities.bank_recipe`` must be set)."""
    path = recipe.identities.bank_recipe
    if path is None:
        raise EstimateError("identities.bank_recipe is not set: there is no bank step to estimate")
    if not Path(path).is_file():
        raise EstimateError(
            f"identities.bank_recipe = {path!r}: no such file (paths are relative to the working directory); "
            "run from the repository root or give its path"
        )
    per_identity = recipe.identities.expressions_per_identity or 1
    needed = -(-recipe.dataset.target // per_identity)
    measured = measure_batch_seconds(recipe) if measure and batch_seconds is None else None
    build = estimate(
        recipe, workers=workers, batch_seconds=batch_seconds, acceptance=acceptance,
        run_dir=Path(recipe.dataset.out), measured=measured,
    )  # fmt: skip
    have = _bank_size(recipe.identities.bank)
    if have is not None and have >= needed:
        note = f"{recipe.identities.bank} is there with {have:,} identities (>= {needed:,} needed): nothing to build"
        return ChainEstimate(path, needed, note, None, build)
    bank_recipe = load_recipe(path)
    bank_measured = measure_batch_seconds(bank_recipe) if measure and bank_batch_seconds is None else None
    try:
        bank = estimate(
            bank_recipe, workers=workers, batch_seconds=bank_batch_seconds,
            run_dir=Path(bank_recipe.dataset.out), measured=bank_measured,
        )  # fmt: skip
    except EstimateError as exc:
        raise EstimateError(f"the bank step ({path}): {exc}; for this step give --bank-batch-seconds S") from None
    target = bank_recipe.dataset.target
    note = f"{target:,} identities to build ({needed:,} needed by step 2"
    note += "; fewer, so step 2's plan wraps round the bank)" if target < needed else ")"
    return ChainEstimate(path, needed, note, bank, build)

"""How well an identity bank covers a recipe's demographic plan (``factory plan`` with a bank).

Per planned cell (ethnicity x age band x gender): its share of the plan, the samples that
share makes at the recipe's target, how many bank identities are in it, and how the planner
will match those samples (:meth:`factory.plan.Planner._identities`): ``exact`` when the bank
has the cell, else the first fallback level that has identities (``ethnicity_gender``,
``ethnicity``, ``any``). Cells that are not ``exact`` are the ones the bank cannot fill: their
samples take an identity of another age (or ethnicity), and carry that identity's metadata.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from factory.plan import Planner
from factory.recipe import Recipe
from manifests.bank import IdentityRecord

__all__ = ["CellCoverage", "bank_coverage"]


@dataclass(frozen=True)
class CellCoverage:
    cell: tuple[str, str, str]  # ethnicity, age band, gender
    share: float  # of the planned samples
    samples: int  # at dataset.target
    identities: int  # bank identities in the cell
    match: str  # exact | ethnicity_gender | ethnicity | any

    @property
    def filled(self) -> bool:
        return self.match == "exact"


def bank_coverage(recipe: Recipe, records: Sequence[IdentityRecord]) -> list[CellCoverage]:
    """Coverage of every planned cell by the bank ``records``, in the planner's cell order."""
    exact = Counter((r.ethnicity, r.age_band, r.gender) for r in records)
    by_eth_gender = Counter((r.ethnicity, r.gender) for r in records)
    by_eth = Counter(r.ethnicity for r in records)
    out = []
    for (eth, age, gen), share in Planner(recipe).cells():
        if exact[(eth, age, gen)]:
            match = "exact"
        elif by_eth_gender[(eth, gen)]:
            match = "ethnicity_gender"
        else:
            match = "ethnicity" if by_eth[eth] else "any"
        out.append(
            CellCoverage((eth, age, gen), share, round(share * recipe.dataset.target), exact[(eth, age, gen)], match)
        )
    return out

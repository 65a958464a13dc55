"""Planner and bank meet: a bank with every planned cell gives every sample an exact match;
`factory plan` reports per-cell coverage and the cells a bank cannot fill."""

from __future__ import annotations

from itertools import product
from pathlib import Path

from typer.testing import CliRunner

from factory.cli import app
from factory.commands.coverage import bank_coverage
from factory.plan import Planner
from factory.recipe import Recipe
from manifests.bank import IdentityRecord, open_bank
from manifests.vocab import AGE_BANDS, ETHNICITIES, GENDERS

REPO = Path(__file__).resolve().parents[2]


def _full_bank(per_cell: int = 2) -> list[IdentityRecord]:
    return [
        IdentityRecord(f"{e}-{a}-{g}-{i}", f"{e}-{a}-{g}-{i}.jpg", e, a, g, "test", "CC0", "neutral")
        for e, a, g in product(ETHNICITIES, AGE_BANDS, GENDERS)
        for i in range(per_cell)
    ]


def test_a_bank_with_every_cell_matches_every_sample_exactly() -> None:
    recipe, bank = Recipe(), _full_bank()
    planner = Planner(recipe, bank)
    by_id = {r.identity_id: r for r in bank}
    for shard in range(3):
        table = planner.shard(shard)
        assert set(table.column("identity_match").to_pylist()) == {"exact"}
        for row in table.select(["identity_id", "ethnicity", "age_band", "gender"]).to_pylist():
            rec = by_id[row["identity_id"]]
            assert (rec.ethnicity, rec.age_band, rec.gender) == (row["ethnicity"], row["age_band"], row["gender"])
    coverage = bank_coverage(recipe, bank)
    assert len(coverage) == 72 and all(c.filled and c.identities == 2 for c in coverage)
    assert abs(sum(c.share for c in coverage) - 1.0) < 1e-9


def test_coverage_names_the_cells_a_bank_cannot_fill() -> None:
    coverage = {c.cell: c for c in bank_coverage(Recipe(), open_bank("builtin").records())}
    assert coverage[("white", "adult", "female")].match == "exact"
    assert coverage[("white", "elderly", "female")].identities == 1
    assert coverage[("white", "child", "female")].match == "ethnicity_gender"
    assert coverage[("white", "child", "male")].match == "ethnicity"
    assert coverage[("black", "teen", "male")].match == "any"
    assert sum(c.filled for c in coverage.values()) == 2


def test_plan_command_prints_coverage() -> None:
    result = CliRunner().invoke(app, ["plan", str(REPO / "recipes" / "demo.toml")])
    assert result.exit_code == 0, result.output
    assert "identity bank coverage: 2 identities, 72 planned cells" in result.output
    assert "cells the bank cannot fill: 70 of 72" in result.output
    output = " ".join(result.output.split())  # rich wraps long lines
    assert "groups no identity belongs to ([balance]: infeasible): ethnicity=east_asian" in output
    # the astronaut, the bank's only adult, smiles with AU25 at 5 in every plan: at most AU25=5's share
    assert "([balance]: limited): age_band=adult at most 0.090 of the samples" in output

"""The planner's vectorised internals draw exactly what the per-sample definitions would
(plans are recorded before a shard runs, so a resumed build depends on this)."""

from __future__ import annotations

import numpy as np
import pytest

from factory.plan import Planner, _intensities
from factory.recipe import Recipe
from manifests.bank import IdentityRecord
from manifests.vocab import AGE_BANDS, ETHNICITIES, GENDERS


@pytest.mark.parametrize("seed", range(20))
def test_intensity_draws_equal_generator_choice(seed: int) -> None:
    weights = np.random.default_rng(seed).random(5)
    weights[seed % 5] = 0.0
    weights /= weights.sum()
    ours, reference = np.random.default_rng([seed, 1]), np.random.default_rng([seed, 1])
    for shape in [(7,), (13, 12), (0,)]:
        expected = reference.choice(np.arange(1, 6, dtype=np.int8), size=shape, p=weights)
        got = _intensities(ours, shape, weights)
        assert got.dtype == expected.dtype and (got == expected).all()
    assert ours.random() == reference.random()  # the stream advanced by the same amount


def _per_sample_identity(records: list[IdentityRecord], cell: tuple[str, str, str], u: float) -> tuple[str, str]:
    """The fallback rule as documented: same cell, ethnicity + gender, ethnicity, any."""
    eth, _age, gen = cell
    ordered = sorted(records, key=lambda r: r.identity_id)
    for level, match in (
        ("exact", lambda r: (r.ethnicity, r.age_band, r.gender) == cell),
        ("ethnicity_gender", lambda r: (r.ethnicity, r.gender) == (eth, gen)),
        ("ethnicity", lambda r: r.ethnicity == eth),
        ("any", lambda r: True),
    ):
        members = [r for r in ordered if match(r)]
        if members:
            return members[int(u * len(members))].identity_id, level
    raise AssertionError("no identity")


def test_bank_identities_follow_the_per_sample_fallback_rule() -> None:
    rnd = np.random.default_rng(3)
    records = [
        IdentityRecord(
            f"id{i:03d}",
            "x.jpg",
            str(rnd.choice(ETHNICITIES[:3])),
            str(rnd.choice(AGE_BANDS)),
            str(rnd.choice(GENDERS)),
            "s",
            "l",
        )
        for i in range(40)
    ]
    planner = Planner(Recipe(), records)
    cells = planner._cells
    cell_idx = rnd.integers(0, len(cells), size=500)
    pick = rnd.random(500)
    ids, eths, ages, gens, matches = planner._identities(cell_idx, pick, 0)
    by_id = {r.identity_id: r for r in records}
    assert {"exact", "any"} <= set(matches) and len(set(matches)) >= 3  # the fallback is exercised
    for i, (c, u) in enumerate(zip(cell_idx, pick, strict=True)):
        assert (ids[i], matches[i]) == _per_sample_identity(records, cells[c], float(u))
        rec = by_id[ids[i]]
        assert (eths[i], ages[i], gens[i]) == (rec.ethnicity, rec.age_band, rec.gender)

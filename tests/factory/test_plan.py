"""Planner: determinism, disjoint shards, balance within stated tolerances, constraints."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from factory.expressions import CONSTRAINTS, apply_constraints, fold_expression
from factory.plan import Planner, PlanStats, plan_shard, plan_statistics
from factory.recipe import Recipe, recipe_from_dict
from manifests.bank import open_bank
from manifests.vocab import AGE_BANDS, AU_INDEX, DISFA_AUS, ETHNICITIES, GENDERS

N_SHARDS = 20  # x 1000 = 20,000 samples


@pytest.fixture(scope="module")
def recipe() -> Recipe:
    return Recipe()


@pytest.fixture(scope="module")
def stats(recipe: Recipe) -> PlanStats:
    return plan_statistics(recipe, N_SHARDS * recipe.dataset.shard_size)


def _vectors(table: pa.Table) -> np.ndarray:
    return table.column("planned_intensity").combine_chunks().flatten().to_numpy().reshape(-1, 12)


def test_same_seed_same_shard_identical_plan(recipe: Recipe) -> None:
    assert plan_shard(recipe, 3).equals(plan_shard(recipe, 3))
    assert Planner(recipe).shard(7).equals(plan_shard(recipe, 7))


def test_other_seed_other_plan(recipe: Recipe) -> None:
    other = recipe_from_dict({"dataset": {"seed": 1}})
    assert _vectors(plan_shard(recipe, 0)).tolist() != _vectors(plan_shard(other, 0)).tolist()


def test_shards_have_disjoint_keys_and_seeds(recipe: Recipe) -> None:
    planner = Planner(recipe)
    keys: set[str] = set()
    seeds: set[int] = set()
    for shard in range(5):
        t = planner.shard(shard)
        k, s = set(t.column("key").to_pylist()), set(t.column("seed").to_pylist())
        assert len(k) == t.num_rows
        assert not (k & keys) and not (s & seeds)
        keys |= k
        seeds |= s


def test_shard_order_does_not_matter(recipe: Recipe) -> None:
    planner = Planner(recipe)
    late_first = planner.shard(9)
    planner.shard(0)
    assert planner.shard(9).equals(late_first)


def test_each_au_hits_its_share_within_0_02(recipe: Recipe, stats: PlanStats) -> None:
    for au, share in stats.shares().items():
        assert abs(share - recipe.aus.share(int(au[2:]))) <= 0.02, (au, share)


def test_active_intensities_spread_over_1_to_5(stats: PlanStats) -> None:
    # uniform weights: each level 20% of active samples; constraints move a little mass
    levels = stats.intensity_hist[:, 1:].sum(axis=0) / stats.intensity_hist[:, 1:].sum()
    assert np.all(np.abs(levels - 0.2) <= 0.04), levels


def test_emotions_and_strata_follow_recipe_proportions(recipe: Recipe, stats: PlanStats) -> None:
    mix = recipe.emotions.mix
    total = sum(mix.values())
    for emotion, weight in mix.items():
        assert abs(stats.emotions.get(emotion, 0) / stats.n - weight / total) <= 0.005, emotion
    for name, keys in (("ethnicity", ETHNICITIES), ("age_band", AGE_BANDS), ("gender", GENDERS)):
        counts = getattr(stats, name)
        for key in keys:
            assert abs(counts[key] / stats.n - 1 / len(keys)) <= 0.01, (name, key)


def test_recipe_proportions_are_followed_when_skewed() -> None:
    skewed = recipe_from_dict(
        {
            "demographics": {"gender": {"female": 3, "male": 1}},
            "emotions": {"mix": {"happiness": 0.5, "mixed": 0.5}},
            "aus": {"share_overrides": {"AU25": 0.6, "AU12": 0.6, "AU6": 0.6}},
        }
    )
    s = plan_statistics(skewed, 5000)
    assert abs(s.gender["female"] / s.n - 0.75) <= 0.01
    assert abs(s.emotions["happiness"] / s.n - 0.5) <= 0.005
    assert abs(s.shares()["AU12"] - 0.6) <= 0.02


def test_prototypes_carry_their_emfacs_aus(recipe: Recipe) -> None:
    t = Planner(recipe).shard(0)
    v = _vectors(t)
    emotions = np.asarray(t.column("emotion").to_pylist())
    happy = v[emotions == "happiness"]
    assert (happy[:, AU_INDEX[6]] > 0).all() and (happy[:, AU_INDEX[12]] > 0).all()
    surprise = v[emotions == "surprise"]
    for au in (1, 2, 5, 26, 25):
        assert (surprise[:, AU_INDEX[au]] > 0).all(), au
    assert (v[emotions == "neutral"] == 0).all()
    assert (v[emotions == "contempt"][:, AU_INDEX[12]] <= 2).all()


def test_every_planned_vector_satisfies_the_constraints(stats: PlanStats, recipe: Recipe) -> None:
    assert stats.violations == 0
    v = _vectors(Planner(recipe).shard(1))
    jaw, lips = v[:, AU_INDEX[26]], v[:, AU_INDEX[25]]
    assert np.all(lips[jaw > 0] > 0)
    assert not np.any((v[:, AU_INDEX[12]] >= 3) & (v[:, AU_INDEX[15]] >= 3))


@pytest.mark.parametrize("rule", CONSTRAINTS, ids=[f"{r[0]}-{r[1]}-{r[2]}" for r in CONSTRAINTS])
def test_constraint_table_fixes_violations(rule: tuple[str, int, int, int]) -> None:
    kind, a, b, limit = rule
    v = np.zeros((1, 12), np.int8)
    v[0, AU_INDEX[a]] = 5
    v[0, AU_INDEX[b]] = 0 if kind == "implies" else 4
    fixed = apply_constraints(v)
    if kind == "implies":
        assert fixed[0, AU_INDEX[b]] == 5
    else:
        assert fixed[0, AU_INDEX[a]] == 5 and fixed[0, AU_INDEX[b]] == limit
    assert (apply_constraints(fixed) == fixed).all()  # idempotent


def test_units_outside_the_recipe_set_are_never_active() -> None:
    r = recipe_from_dict({"aus": {"units": [1, 2, 4, 6, 12, 25, 26], "share_overrides": {"AU25": 0.45}}})
    v = _vectors(Planner(r).shard(0))
    for au in set(DISFA_AUS) - {1, 2, 4, 6, 12, 25, 26}:
        assert (v[:, AU_INDEX[au]] == 0).all(), au


def test_identities_come_from_the_bank_with_truthful_metadata(recipe: Recipe) -> None:
    bank = open_bank("builtin")
    t = Planner(recipe, bank.records()).shard(0)
    rows = t.select(["identity_id", "ethnicity", "age_band", "gender"]).to_pylist()
    assert {r["identity_id"] for r in rows} <= {r.identity_id for r in bank.records()}
    for row in rows:
        rec = bank.get(row["identity_id"])
        assert (row["ethnicity"], row["age_band"], row["gender"]) == (rec.ethnicity, rec.age_band, rec.gender)
    assert set(t.column("identity_match").to_pylist()) <= {"exact", "ethnicity_gender", "ethnicity", "any"}


def test_without_a_bank_each_sample_is_a_new_identity(recipe: Recipe) -> None:
    t = plan_shard(recipe, 2)
    ids = t.column("identity_id").to_pylist()
    assert len(set(ids)) == len(ids)
    assert set(t.column("identity_match").to_pylist()) == {"generated"}


def test_a_non_neutral_photo_is_folded_into_its_plans(recipe: Recipe) -> None:
    """The astronaut's photo smiles (AU12=3 AU25=5): every plan of hers holds at least that,
    and an emotion whose prototype lacks those AUs becomes mixed; Grace Hopper's are untouched."""
    bank = open_bank("builtin")
    with_bank = Planner(recipe, bank.records()).shard(0)
    without = plan_shard(recipe, 0)
    v, v0 = _vectors(with_bank), _vectors(without)
    ids, emotions = with_bank.column("identity_id").to_pylist(), with_bank.column("emotion").to_pylist()
    hers = np.array([i == "builtin-astronaut" for i in ids])
    assert hers.any() and (~hers).any()
    assert (v[hers, AU_INDEX[12]] >= 3).all() and (v[hers, AU_INDEX[25]] == 5).all()
    np.testing.assert_array_equal(v[~hers], v0[~hers])  # the rest of the plan is unchanged
    assert {e for e, h in zip(emotions, hers, strict=True) if h} <= {"happiness", "mixed"}
    assert (apply_constraints(v[hers]) == v[hers]).all()


def test_fold_keeps_the_photos_au_and_caps_the_planned_partner() -> None:
    own = np.zeros(12, np.int8)
    own[AU_INDEX[12]] = 3
    planned = np.zeros(12, np.int8)
    planned[AU_INDEX[15]] = 4  # AU12 and AU15 may not both be >= 3
    folded = fold_expression(planned, own)
    assert folded[AU_INDEX[12]] == 3 and folded[AU_INDEX[15]] == 2


IDENTITY_BANK_RECIPE = {
    "dataset": {"kind": "identity-bank", "shard_size": 500},
    "identities": {"bank": "none"},
    "filters": {"name": "portrait-filters"},
    "bank": {"licence": "test"},
}


def test_an_identity_bank_plans_one_neutral_portrait_per_new_identity() -> None:
    """Balance of the planned bank: each of the 72 cells within one identity per shard of
    its recipe share (per-shard largest-remainder quotas), every plan neutral."""
    recipe = recipe_from_dict(IDENTITY_BANK_RECIPE)
    planner = Planner(recipe)
    tables = [planner.shard(s) for s in range(8)]
    v = np.concatenate([_vectors(t) for t in tables])
    assert not v.any()
    assert {e for t in tables for e in t.column("emotion").to_pylist()} == {"neutral"}
    ids = [i for t in tables for i in t.column("identity_id").to_pylist()]
    assert len(set(ids)) == len(ids) == 4000
    cells: dict[tuple[str, str, str], int] = {}
    for t in tables:
        for row in t.select(["ethnicity", "age_band", "gender"]).to_pylist():
            key = (row["ethnicity"], row["age_band"], row["gender"])
            cells[key] = cells.get(key, 0) + 1
    assert len(cells) == len(ETHNICITIES) * len(AGE_BANDS) * len(GENDERS)
    expected = 4000 / len(cells)
    assert all(abs(n - expected) <= len(tables) for n in cells.values()), cells
    skewed = recipe_from_dict({**IDENTITY_BANK_RECIPE, "demographics": {"gender": {"female": 3, "male": 1}}})
    genders = Planner(skewed).shard(0).column("gender").to_pylist()
    assert abs(genders.count("female") - 375) <= 36  # 3/4 of 500, within one per female cell

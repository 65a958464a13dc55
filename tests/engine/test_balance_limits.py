"""What the closed loop learnt from the demo: a bank group limited by its identities' own AUs,
the room a short cell needs kept for it, and rounds that plan no sample selection would hold
back (``factory.engine.balance``, ``manifests.balance``, ``factory.engine.rounds``). In process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from factory.cli.status import _round_line
from factory.commands.rounds_status import round_summary
from factory.engine.balance import balance_targets, bank_limits
from factory.engine.rounds import choose_plan, round_weights
from factory.plan import Planner
from factory.recipe import recipe_from_dict
from manifests.balance import BALANCE_SCHEMA, Tally, balance_path, refusal, sample_cells
from manifests.balance_targets import BalanceTargets
from manifests.bank import IdentityRecord
from manifests.layout import RunLayout, sample_key
from manifests.schema import N_AUS
from manifests.vocab import DISFA_AUS

SMILING = IdentityRecord("smiling", "s.png", "white", "adult", "female", "test", "CC0", "AU12=3 AU25=5")
NEUTRAL = IdentityRecord("plain", "p.png", "white", "elderly", "female", "test", "CC0")


def _recipe(target: int = 300) -> object:
    return recipe_from_dict(
        {"dataset": {"name": "lim", "target": target, "shard_size": 20}, "balance": {"enabled": True}}
    )


def test_a_group_whose_only_identity_smiles_is_limited_to_the_share_of_its_smile() -> None:
    targets = balance_targets(_recipe(), [SMILING, NEUTRAL])
    au25_at_5 = targets.shares["AU25=5"]  # every sample of hers holds AU25 at 5
    assert targets.limits == pytest.approx({"age_band=adult": au25_at_5})
    assert au25_at_5 == pytest.approx(0.45 / 5)
    assert targets.shares["age_band=adult"] == pytest.approx(au25_at_5)
    assert targets.shares["age_band=elderly"] == pytest.approx(1 - au25_at_5)
    assert "age_band=adult" in targets.infeasible and targets.cap("age_band=adult") is None
    assert targets.floor("age_band=elderly") == int(np.ceil((1 - au25_at_5 - 0.01) * 300 - 1e-9))
    again = targets.with_infeasible(["emotion=neutral"])  # limits hold as more cells are given up
    assert again.shares["age_band=adult"] == pytest.approx(au25_at_5)
    assert BalanceTargets.from_json(again.to_json()).limits == again.limits


def test_no_limit_where_a_neutral_identity_shares_the_group_or_the_share_fits() -> None:
    shares = balance_targets(_recipe()).shares
    plain_adult = IdentityRecord("plain-adult", "q.png", "white", "adult", "female", "test", "CC0")
    assert bank_limits([SMILING, plain_adult, NEUTRAL], shares) == {}
    assert "age_band=adult" not in bank_limits([SMILING], {**shares, "age_band=adult": 0.05})  # under 0.09
    assert bank_limits([SMILING], shares)["gender=female"] == pytest.approx(0.09)  # she is every woman too
    assert bank_limits(None, shares) == {}


def _vector(**levels: int) -> list[int]:

    v = [0] * N_AUS
    for au, level in levels.items():
        v[DISFA_AUS.index(int(au.removeprefix("AU")))] = level
    return v


def test_the_room_a_short_cell_needs_is_kept_for_it() -> None:
    strata = {"emotion": "neutral", "ethnicity": "white", "age_band": "adult", "gender": "female"}
    targets = BalanceTargets(
        10,
        (12,),
        {"AU12+": 0.5, "AU12-": 0.5, "emotion=neutral": 0.3, "emotion=happiness": 0.7},
        {"AU12+": 0.1, "AU12-": 0.1, "emotion=neutral": 0.1, "emotion=happiness": 0.1},
    )
    neutral = sample_cells(_vector(), strata, (12,))
    happy_plain = sample_cells(_vector(), {**strata, "emotion": "happiness"}, (12,))
    happy_smile = sample_cells(_vector(AU12=2), {**strata, "emotion": "happiness"}, (12,))
    tally = Tally(kept_total=5)
    tally.kept.update({"AU12-": 4, "AU12+": 1, "emotion=happiness": 5})
    tally.together["emotion=neutral"] = frozenset(neutral)  # every neutral sample so far: AU12 inactive
    # AU12- may hold 6: two more; neutral needs two (its floor) and every neutral sample is AU12-
    assert refusal(happy_plain, tally, targets) == "the room left is kept for the short cell emotion=neutral"
    assert refusal(neutral, tally, targets) is None
    assert refusal(happy_smile, tally, targets) is None  # takes no room neutral needs


def test_a_round_plans_no_candidate_in_a_full_cell() -> None:
    recipe = _recipe(40)
    planner = Planner(recipe)
    targets = balance_targets(recipe)
    pool = planner.pool(3, 200)
    tally = Tally(generated=20, accepted_total=12, kept_total=12)
    tally.kept.update({"AU12+": targets.cap("AU12+") or 0})  # AU12 active is full
    weights = round_weights(tally, targets)
    assert "AU12+" in weights.full and weights.prefix is None  # not near the target yet
    plan = choose_plan(pool, weights, targets.units, 20, 3, recipe.dataset.seed)
    assert plan.num_rows == 20
    assert not (np.asarray(plan["planned_intensity"].to_pylist())[:, 6] > 0).any()  # AU12: DISFA's 7th
    assert (np.asarray(pool["planned_intensity"].to_pylist())[:, 6] > 0).sum() > 20  # the pool had plenty


def test_near_the_target_a_round_plans_what_selection_would_keep() -> None:
    recipe = _recipe(40)
    planner = Planner(recipe)
    targets = balance_targets(recipe)
    pool = planner.pool(4, 400)
    tally = Tally(generated=60, accepted_total=40, kept_total=25)
    for row in planner.shard(0).to_pylist() + planner.shard(1).to_pylist()[:5]:  # 25 kept samples
        tally.kept.update(sample_cells(row["planned_intensity"], row, targets.units))
    weights = round_weights(tally, targets)
    assert weights.prefix is not None
    plan = choose_plan(pool, weights, targets.units, 20, 4, recipe.dataset.seed)
    kept = [refusal(sample_cells(r["planned_intensity"], r, targets.units), tally, targets) for r in plan.to_pylist()]
    in_pool = [
        refusal(sample_cells(r["planned_intensity"], r, targets.units), tally, targets) for r in pool.to_pylist()
    ]
    keepable = sum(r is None for r in in_pool)
    assert 0 < keepable < 20 < pool.num_rows
    # every planned sample is one selection would keep: with fewer of them in the pool than the
    # shard's samples, some are planned again, each copy with a seed of its own
    assert all(r is None for r in kept)
    strata = ("emotion", "ethnicity", "age_band", "gender")  # a generated identity is renumbered per sample
    labels = {(tuple(r["planned_intensity"]), *(r[k] for k in strata)) for r in plan.to_pylist()}
    assert len(labels) <= keepable < 20 and len(set(plan["seed"].to_pylist())) == 20
    assert plan["key"].to_pylist() == [sample_key(4, i) for i in range(20)]


def test_status_shows_each_round_planned_and_delivered(tmp_path: Path) -> None:

    layout = RunLayout(tmp_path, "r")
    layout.shards.mkdir(parents=True)
    layout.plans.mkdir(parents=True)
    for shard, emotions in enumerate([["fear", "fear", "anger"], ["neutral", "fear", "anger"], ["neutral"] * 3]):
        keys = [f"{shard}-{i}" for i in range(3)]
        pq.write_table(pa.table({"emotion": emotions}), layout.plan_path(shard))
        pq.write_table(
            pa.table({"key": keys, "emotion": emotions, "accepted": [True, True, False]}),
            layout.shards / f"r-{shard:06d}.parquet",
        )
        decisions = pa.table(
            {"key": keys[:2], "dropped_by": ["balance", None], "reason": ["full", None]}, schema=BALANCE_SCHEMA
        )
        pq.write_table(decisions, balance_path(layout.shard_paths(shard)))
    info = {"recipe": {"balance": {"enabled": True, "round_shards": 2}}}
    rounds = round_summary(layout, info, [0, 1, 2])  # type: ignore[arg-type]
    assert [r["shards"] for r in rounds] == [[0, 1], [2]]
    assert rounds[0] | {"planned_mix": None, "kept_mix": None} == {
        "round": 0,
        "shards": [0, 1],
        "planned": 6,
        "accepted": 4,
        "kept": 2,
        "planned_mix": None,
        "kept_mix": None,
    }
    assert rounds[0]["planned_mix"] == {"fear": 3, "anger": 2, "neutral": 1}
    assert rounds[0]["kept_mix"] == {"fear": 2}  # the first of each shard is surplus, the third rejected
    assert (
        _round_line(rounds[1])
        == "  round 1 (shards 2): planned 3, accepted 2, kept 1; emotions planned->kept: neutral 3->1"
    )
    assert round_summary(layout, {"recipe": {"balance": {"enabled": False, "round_shards": 2}}}, [0]) == []  # type: ignore[arg-type]

"""Closed-loop planning rounds (``factory.engine.rounds``) and the balance policy that plans them:
pure functions of the committed prefix, in-process, no Ray."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.bench_balance import simulate
from factory.engine.balance import balance_policy, balance_targets
from factory.engine.ledger import Ledger, LedgerError
from factory.engine.policy import CommittedPrefix, PolicyDecision
from factory.engine.rounds import KEEP_BASE, Rounds, choose_plan, rake, round_weights
from factory.engine.rules import LedgerRules
from factory.plan import Planner
from factory.recipe import RecipeError, recipe_from_dict
from manifests.balance import Tally
from manifests.schema import PLAN_SCHEMA


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 32), st.integers(0, 31), st.integers(0, 500))
def test_a_round_is_sent_only_once_its_boundary_is_resolved(size: int, lag: int, resolved: int) -> None:
    lag = lag % size
    rounds = Rounds(size, lag)
    below = rounds.send_below(resolved)
    assert below is not None and below > resolved
    for shard in range(below):  # everything sent is plannable from the resolved prefix
        assert rounds.boundary(rounds.round_of(shard)) <= resolved
    assert rounds.boundary(rounds.round_of(below)) > resolved  # the next one is not
    assert below >= resolved + lag  # the lag: shards up to `lag` past the resolved prefix are sendable


def test_no_rounds_hold_nothing_back() -> None:
    assert Rounds(0, 0).send_below(7) is None and Rounds(0, 0).round_of(99) == 0


def test_lag_must_be_inside_a_round() -> None:
    with pytest.raises(RecipeError, match="round_lag_shards"):
        recipe_from_dict({"balance": {"enabled": True, "round_shards": 4, "round_lag_shards": 4}})


def _recipe(**balance: object):
    doc = {
        "dataset": {"name": "t", "target": 200, "shard_size": 20, "seed": 3},
        "aus": {"units": [9, 12], "active_share": 0.3},
        "emotions": {"mix": {"neutral": 1.0, "mixed": 3.0}},  # the planner's calibration: as _skewed's
        "identities": {"bank": "none"},
        "balance": {"enabled": True, **balance},
    }
    return recipe_from_dict(doc)


def test_a_cell_in_deficit_with_a_low_yield_is_over_sampled() -> None:
    targets = balance_targets(_recipe())
    tally = Tally(generated=100, accepted_total=60, kept_total=60)
    tally.planned.update({"emotion=neutral": 50, "emotion=mixed": 50})
    tally.accepted.update({"emotion=neutral": 50, "emotion=mixed": 10})
    tally.kept.update({"emotion=neutral": 50, "emotion=mixed": 10})
    mix = round_weights(tally, targets).shares["emotion"]
    assert mix["emotion=mixed"] > 10 * mix["emotion=neutral"]  # short, and a fifth of the yield
    full = Tally(generated=100, accepted_total=100, kept_total=100)
    full.planned.update({"emotion=neutral": 100})
    full.accepted.update({"emotion=neutral": 100})
    full.kept.update({"emotion=neutral": 100})  # neutral holds its whole share already
    mix = round_weights(full, targets).shares["emotion"]
    assert mix["emotion=neutral"] == pytest.approx(KEEP_BASE * 0.25)


def test_raking_meets_every_variable_it_can() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 2, 4000), rng.integers(0, 3, 4000)
    categories = {"a": (["a0", "a1"], a), "b": (["b0", "b1", "b2"], b)}
    goals = {"a": {"a0": 0.8, "a1": 0.2}, "b": {"b0": 0.1, "b1": 0.1, "b2": 0.8}}
    weights = rake(categories, goals, np.ones(4000))
    assert weights[a == 0].sum() / weights.sum() == pytest.approx(0.8, abs=0.01)
    assert weights[b == 2].sum() / weights.sum() == pytest.approx(0.8, abs=0.01)


def test_a_round_plan_is_a_plan_picked_from_the_pool_by_its_mix() -> None:
    recipe = _recipe()
    planner = Planner(recipe)
    pool = planner.pool(5, 160)
    targets = balance_targets(recipe)
    tally = Tally(generated=100, accepted_total=50, kept_total=50)
    tally.planned.update({"emotion=neutral": 25, "emotion=mixed": 25})
    tally.kept.update({"emotion=mixed": 25})  # neutral never delivered: plan much more of it
    weights = round_weights(tally, targets)
    plan = choose_plan(pool, weights, targets.units, 20, 5, recipe.dataset.seed)
    assert plan.schema.equals(PLAN_SCHEMA, check_metadata=False) and plan.num_rows == 20
    assert plan["key"].to_pylist() == [f"000005_{i:05d}" for i in range(20)]
    assert plan["identity_id"].to_pylist() == [f"gen-000005-{i:05d}" for i in range(20)]
    assert set(plan["seed"].to_pylist()) <= set(pool["seed"].to_pylist())  # every sample a pool candidate
    emotions = Counter(plan["emotion"].to_pylist())
    assert emotions["neutral"] > 1.5 * Counter(planner.shard(5)["emotion"].to_pylist())["neutral"]
    assert choose_plan(pool, weights, targets.units, 20, 5, recipe.dataset.seed).equals(plan)


def _shard(n: int) -> pa.Table:
    return pa.table({"key": [f"k{i}" for i in range(n)]})


def test_the_policy_holds_back_an_unplanned_round_and_plans_the_first_open_loop(tmp_path: Path) -> None:
    recipe = _recipe(round_shards=4, round_lag_shards=2)
    policy = balance_policy(recipe, tmp_path, None, Planner(recipe))
    assert policy is not None
    assert policy.review(CommittedPrefix((), {}, 200, 0)).send_below == 4
    assert policy.shard(3).equals(Planner(recipe).shard(3))  # round 0: the open loop's plan
    with pytest.raises(LedgerError, match="round 1 is not planned yet"):
        policy.shard(4)


def _skewed(out: Path, rounds: int = 4):
    """Two AUs of unlike yields in the benchmark's model (AU9 0.1, AU12 1.0); rounds of 4 shards."""
    doc = {
        "dataset": {"name": "bench", "target": 1000, "shard_size": 20, "seed": 3, "out": str(out)},
        "aus": {"units": [9, 12], "active_share": 0.3},
        "emotions": {"mix": {"neutral": 1.0, "mixed": 3.0}},
        "identities": {"bank": "none"},
        "balance": {"enabled": True, "round_shards": rounds, "round_lag_shards": 2},
    }
    return recipe_from_dict(doc)


def _active(plans: list[pa.Table], column: int) -> float:
    return float(np.mean([v[column] > 0 for p in plans for v in p["planned_intensity"].to_pylist()]))


def test_rounds_plan_from_the_committed_prefix_alone_and_chase_the_low_yield(tmp_path: Path) -> None:
    """A closed-loop build simulated shard by shard, and resumed (a fresh policy reviewing the
    whole committed prefix at once): the same round mixes and plans. AU9 (yield 0.1) is planned
    far more often in round 2 (planned from 6 committed shards) than in the open-loop round 0."""
    one = simulate(_skewed(tmp_path), max_shards=12)
    recipe = _skewed(tmp_path)
    fresh = balance_policy(recipe, recipe.dataset.out, None, Planner(recipe))
    assert fresh is not None
    fresh.review(CommittedPrefix(tuple(range(12)), {}, recipe.dataset.target, 12))
    assert sorted(fresh.weights) == [1, 2, 3] and fresh.weights == one["policy"].weights
    plans = [fresh.shard(s) for s in range(16)]
    assert all(p.equals(one["policy"].shard(s)) for s, p in enumerate(plans))
    au9 = 5  # DISFA order
    assert _active(plans[8:12], au9) > 1.5 * _active(plans[:4], au9)
    recipe = _skewed(tmp_path / "open", rounds=0)  # without rounds: the open loop's plans
    still = balance_policy(recipe, recipe.dataset.out, None, Planner(recipe))
    assert still is not None and still.shard(6).equals(Planner(recipe).shard(6))


class _HoldBack:
    """A policy holding back frontier shards from ``below`` (what a closed-loop round asks)."""

    def __init__(self, rounds: Rounds) -> None:
        self.rounds = rounds
        self.resolved: list[int] = []

    def review(self, prefix: CommittedPrefix) -> PolicyDecision:
        self.resolved.append(prefix.resolved)
        return PolicyDecision(send_below=self.rounds.send_below(prefix.resolved))


def test_the_ledger_sends_no_shard_of_a_round_not_planned_yet() -> None:
    ledger = Ledger.resume(LedgerRules(target=1000, shard_size=10, max_attempts=1, run_dir="/r"), {}, {})
    policy = _HoldBack(Rounds(4, 2))
    ledger.consult(policy)
    for shard in range(4):
        assert ledger.next_shard() == shard
        ledger.start(shard, 0, 0.0, planned=10)
    assert not ledger.wants_more() and ledger.next_shard() is None  # round 1 waits for shards 0-1
    copy = ledger.copies(1)[0]
    ledger.fail(copy.id, "boom")  # failed for good: resolved, though not done
    ledger.finish(ledger.copies(0)[0].id, {"planned": 10, "accepted": 10})
    ledger.consult(policy)
    assert policy.resolved[-1] == 2 and ledger.next_shard() == 4


def test_a_policy_cannot_hold_back_a_resolved_shard() -> None:
    ledger = Ledger.resume(
        LedgerRules(target=100, shard_size=10, max_attempts=1, run_dir="/r"), {0: {"planned": 10, "accepted": 1}}, {}
    )

    class Late:
        def review(self, prefix: CommittedPrefix) -> PolicyDecision:
            return PolicyDecision(send_below=0)

    with pytest.raises(LedgerError, match="inside the resolved prefix"):
        ledger.consult(Late())


def test_a_cell_is_given_up_when_its_yield_is_surely_below_the_floor() -> None:
    targets = balance_targets(_recipe())
    tally = Tally()
    tally.planned.update({"AU9=5": 60, "AU9=4": 60, "AU9=3": 300, "AU9=2": 40, "AU9=1": 2000})
    tally.accepted.update({"AU9=4": 6, "AU9=3": 1, "AU9=1": 60})
    # upper bounds: 0 of 60 4.9 %, 1 of 300 1.6 %, 60 of 2000 3.7 %, 6 of 60 18.8 %; 0 of 40: too few tries
    assert tally.infeasible(targets, 50, 0.05) == ["AU9=1", "AU9=3", "AU9=5"]
    assert tally.infeasible(targets, 50, 0.02) == ["AU9=3"]
    assert tally.infeasible(targets, 50, 0.0) == ["AU9=5"]  # no floor: never accepted, as before

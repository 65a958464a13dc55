"""Identity-aware planning ([balance] enabled): a bank identity whose photo shows AUs only gets
plans that already hold them, so folding changes no plan; open loop plans as before."""

from __future__ import annotations

import numpy as np

from factory.plan import Planner
from factory.recipe import recipe_from_dict
from manifests.bank import IdentityRecord
from manifests.schema import N_AUS
from manifests.vocab import AU_INDEX

SMILING = IdentityRecord("a-smiling", "a.png", "white", "adult", "female", "test", "CC0", "AU12=3 AU25=5")
NEUTRAL = IdentityRecord("b-neutral", "b.png", "white", "adult", "female", "test", "CC0", "neutral")


def _plans(enabled: bool) -> list[dict]:
    recipe = recipe_from_dict({"dataset": {"shard_size": 200, "seed": 3}, "balance": {"enabled": enabled}})
    planner = Planner(recipe, [SMILING, NEUTRAL])
    return [row for shard in range(3) for row in planner.shard(shard).to_pylist()]


def test_smiling_identity_gets_only_plans_that_hold_its_smile() -> None:
    plans = _plans(enabled=True)
    smiling = [p for p in plans if p["identity_id"] == "a-smiling"]
    assert smiling, "the smiling identity still gets the plans that fit it"
    for p in smiling:
        v = np.asarray(p["planned_intensity"])
        assert v[AU_INDEX[12]] >= 3 and v[AU_INDEX[25]] >= 5
    # the plans were not bent by folding: AU12's planned share stays near the recipe's 0.30
    au12 = np.mean([p["planned_intensity"][AU_INDEX[12]] > 0 for p in plans])
    assert abs(au12 - 0.30) < 0.05


def test_open_loop_folds_as_before() -> None:
    plans = _plans(enabled=False)
    smiling = [p for p in plans if p["identity_id"] == "a-smiling"]
    assert len(smiling) > len(plans) / 3  # half the picks, folded
    au12 = np.mean([p["planned_intensity"][AU_INDEX[12]] > 0 for p in plans])
    assert au12 > 0.5
    assert all(len(p["planned_intensity"]) == N_AUS for p in plans)

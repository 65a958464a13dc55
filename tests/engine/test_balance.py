"""Balanced selection on synthetic committed prefixes: what is kept, what is surplus and why,
infeasible cells, the waste bound, and that decisions depend only on the prefix in order."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from factory.commands.status import delivered_balance
from factory.engine.balance import BalancePolicy, balance_policy, balance_targets, bank_infeasible, unshowable_emotions
from factory.engine.policy import CommittedPrefix
from factory.engine.rundir import RunDir, recipe_differences
from factory.recipe import RecipeError, recipe_from_dict
from manifests.balance import (
    balance_path,
    read_surplus,
    sample_cells,
)
from manifests.balance_report import balance_report, delivered_cells
from manifests.balance_targets import BalanceTargets
from manifests.bank import IdentityRecord
from manifests.layout import RunLayout, sample_key
from manifests.schema import MANIFEST_SCHEMA, N_AUS

NAME = "bal"


def _identity(name: str, gender: str) -> IdentityRecord:
    return IdentityRecord(name, f"{name}.png", "white", "adult", gender, "test", "CC0")


def _recipe(target: int = 40, **balance: object):
    return recipe_from_dict(
        {
            "dataset": {"name": NAME, "target": target, "shard_size": 20},
            "aus": {"units": [12, 25], "share_overrides": {"AU25": 0.5}, "active_share": 0.5},
            "emotions": {"mix": {"happiness": 1.0, "neutral": 1.0}},
            "demographics": {"gender": {"female": 1.0, "male": 1.0}},
            "balance": {"enabled": True, **balance},
        }
    )


def _vector(au12: int, au25: int) -> list[int]:
    v = [0] * N_AUS
    v[6], v[10] = au12, au25  # AU12 and AU25 in DISFA order
    return v


def _write_shard(layout: RunLayout, shard: int, rows: list[tuple[bool, int, str, str]]) -> list[str]:
    """Rows (accepted, AU12 level, emotion, gender); AU25 follows AU12, planned = delivered."""
    keys = [sample_key(shard, i) for i in range(len(rows))]
    vectors = [_vector(level, level) for _, level, _, _ in rows]
    columns = {
        "key": keys,
        "accepted": [r[0] for r in rows],
        "identity_id": ["a" if r[3] == "female" else "b" for r in rows],
        "emotion": [r[2] for r in rows],
        "ethnicity": ["white"] * len(rows),
        "age_band": ["adult"] * len(rows),
        "gender": [r[3] for r in rows],
        "planned_intensity": vectors,
        "au_intensity": vectors,
    }
    schema = pa.schema([MANIFEST_SCHEMA.field(c) for c in columns])
    layout.shards.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns, schema=schema), layout.shard_paths(shard).parquet)
    return keys


def _skewed_shard(seed: int, n: int = 20) -> list[tuple[bool, int, str, str]]:
    """Mostly smiling women: AU12 active in 80 %, happiness in 80 %, female in 70 %."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        smiling = bool(rng.random() < 0.8)
        level = int(rng.integers(1, 6)) if smiling else 0
        rows.append((bool(rng.random() < 0.9), level, "happiness" if smiling else "neutral", "female"))
    for i in range(0, n, 3):
        rows[i] = (rows[i][0], rows[i][1], rows[i][2], "male")
    return rows


def _policy(tmp_path: Path, target: int = 40, **balance: object) -> tuple[BalancePolicy, RunLayout]:
    recipe = _recipe(target, **balance)
    bank = [
        _identity("a", "female"),
        _identity("b", "male"),
    ]
    policy = balance_policy(recipe, tmp_path, bank)
    assert policy is not None
    return policy, RunLayout(tmp_path, NAME)


def _prefix(shards: list[int]) -> CommittedPrefix:
    return CommittedPrefix(tuple(shards), {}, 40)


def _kept_cells(layout: RunLayout, shards: list[int], units: tuple[int, ...]) -> Counter[str]:
    kept: Counter[str] = Counter()
    for shard in shards:
        paths = layout.shard_paths(shard)
        table = pq.read_table(paths.parquet)
        surplus = read_surplus(paths)
        for row in table.to_pylist():
            if row["accepted"] and row["key"] not in surplus:
                kept.update(sample_cells(row["au_intensity"], row, units))
    return kept


def test_targets_from_recipe_and_bank() -> None:
    targets = balance_targets(_recipe(), [_identity("a", "female")])
    assert targets.shares["AU12+"] == 0.5 and targets.shares["AU12-"] == 0.5
    assert targets.shares["emotion=happiness"] == 0.5 and targets.shares["emotion=anger"] == 0.0
    # one white adult woman: the other groups are infeasible, hers takes the whole share
    assert targets.shares["ethnicity=white"] == pytest.approx(1.0)
    assert targets.shares["gender=female"] == pytest.approx(1.0)
    assert "gender=male" in targets.infeasible and "ethnicity=black" in targets.infeasible
    assert targets.cap("AU12+") == 20  # floor((0.5 + 0.02) x 40)
    assert targets.cap("AU12=3") == 4  # floor((0.1 + 0.03 x 0.5) x 40)


def test_bank_infeasible_without_bank_is_empty() -> None:
    assert bank_infeasible(None) == []


def test_selection_keeps_shares_within_tolerance(tmp_path: Path) -> None:
    policy, layout = _policy(tmp_path, max_generated_per_accepted=100.0)  # no waste bound here
    shards = list(range(8))
    for shard in shards:
        _write_shard(layout, shard, _skewed_shard(shard))
    decision = policy.review(_prefix(shards))
    kept = sum(decision.counted.values())
    assert kept == 40  # the target, exactly: the rest is surplus
    cells = _kept_cells(layout, shards, (12, 25))
    targets = policy.targets
    for cell in ("AU12+", "AU12-", "emotion=happiness", "emotion=neutral", "gender=female", "gender=male"):
        assert cells[cell] <= targets.cap(cell), cell
        assert abs(cells[cell] / kept - targets.shares[cell]) <= targets.tolerances[cell] + 1e-9, cell


def test_surplus_is_recorded_with_the_full_cell(tmp_path: Path) -> None:
    policy, layout = _policy(tmp_path)
    keys = _write_shard(layout, 0, [(True, 3, "happiness", "female")] * 20)
    decision = policy.review(_prefix([0]))
    # AU12 at level 3: 0.2 +- 0.03 of AU12's active samples, at least its floor ceil(0.48 x 40) = 20:
    # floor(0.23 x 20) = 4 (and 4 of 4 active kept so far)
    table = pq.read_table(balance_path(layout.shard_paths(0))).to_pylist()
    assert [r["key"] for r in table] == keys
    assert [r["dropped_by"] for r in table[:4]] == [None] * 4
    assert {r["dropped_by"] for r in table[4:]} == {"balance"}
    assert decision.counted == {0: 4}
    assert table[4]["reason"] == "cell AU12=3 full (4 of its AU's 4 active)"
    assert read_surplus(layout.shard_paths(0)) == set(keys[4:])


def test_rejected_samples_are_not_decided(tmp_path: Path) -> None:
    policy, layout = _policy(tmp_path)
    _write_shard(layout, 0, [(False, 0, "neutral", "male")] * 5 + [(True, 0, "neutral", "male")])
    assert policy.review(_prefix([0])).counted == {0: 1}
    assert len(pq.read_table(balance_path(layout.shard_paths(0)))) == 1


def test_decisions_depend_only_on_the_prefix(tmp_path: Path) -> None:
    """In one review or shard by shard, fresh or after a restart: the same files."""
    rows = {s: _skewed_shard(100 + s) for s in range(6)}
    outcomes = []
    for run, steps in enumerate(([6], [1, 2, 3, 4, 5, 6], [3, 6])):
        policy, layout = _policy(tmp_path / str(run))
        for shard, shard_rows in rows.items():
            _write_shard(layout, shard, shard_rows)
        counted: dict[int, int] = {}
        for n in steps:
            counted.update(policy.review(_prefix(list(range(n)))).counted)
        files = [balance_path(layout.shard_paths(s)).read_bytes() for s in range(6)]
        outcomes.append((counted, files))
    assert outcomes[0] == outcomes[1] == outcomes[2]


def test_a_prefix_that_changes_is_decided_again(tmp_path: Path) -> None:
    policy, layout = _policy(tmp_path)
    for shard in range(3):
        _write_shard(layout, shard, _skewed_shard(shard))
    policy.review(_prefix([0, 2]))  # shard 1 had failed
    again = policy.review(_prefix([0, 1, 2]))  # retried: every decision taken again, in order
    assert set(again.counted) == {0, 1, 2}
    fresh, fresh_layout = _policy(tmp_path / "fresh")
    for shard in range(3):
        _write_shard(fresh_layout, shard, _skewed_shard(shard))
    assert fresh.review(_prefix([0, 1, 2])).counted == again.counted


def test_never_accepted_cell_becomes_infeasible(tmp_path: Path) -> None:
    """Neutral faces are planned but never accepted: after `infeasible_after` tries neutral is
    infeasible and happiness may take the whole emotion share."""
    policy, layout = _policy(tmp_path, target=20, infeasible_after=5)
    rows = [(False, 0, "neutral", "female")] * 10 + [(True, 1, "happiness", "female")] * 10
    for shard in range(4):
        _write_shard(layout, shard, rows)
    policy.review(_prefix([0, 1, 2, 3]))
    assert "emotion=neutral" in policy.targets.infeasible
    assert policy.targets.shares["emotion=happiness"] == pytest.approx(1.0)


def test_waste_bound_gives_up_on_short_cells_then_ends_the_dataset_short(tmp_path: Path) -> None:
    """Only smiling women at AU12 level 3: past the bound (one shard) the cells still short are
    infeasible and AU12=3 may fill all of AU12's active share; at twice it the dataset ends at
    that shard, short of the target, and no sample that passes a full cell is kept."""
    policy, layout = _policy(tmp_path, target=20, max_generated_per_accepted=1.0)
    for shard in range(3):
        _write_shard(layout, shard, [(True, 3, "happiness", "female")] * 20)
    decision = policy.review(_prefix([0, 1, 2]))
    assert decision.counted == {0: 2, 1: 8}  # AU12=3 holds 2, then AU12+ its 10 of 20 ...
    assert decision.finish_at == 1  # ... and 40 generated is twice the bound of 20: it ends there
    assert {"emotion=neutral", "gender=male", "AU12=1"} <= policy.targets.infeasible
    assert "AU12+" not in policy.targets.infeasible  # over its share, not short
    assert policy.short is not None and policy.short.startswith("10 of 20 slots unfilled: 40 samples generated")
    assert "AU12+" in policy.short  # the full cell that held back the rest
    assert not balance_path(layout.shard_paths(2)).exists()  # nothing decided past the end
    # a resumed build's fresh policy, shown the same prefix, ends at the same shard
    again, _ = _policy(tmp_path, target=20, max_generated_per_accepted=1.0)
    assert again.review(_prefix([0, 1, 2])).finish_at == 1 and again.short == policy.short


def test_infeasible_au_moves_its_share_to_inactive() -> None:
    targets = BalanceTargets(
        10, (12,), {"AU12+": 0.3, "AU12-": 0.7, "AU12=1": 0.3}, dict.fromkeys(["AU12+", "AU12-", "AU12=1"], 0.0)
    )
    dead = targets.with_infeasible(["AU12+"])
    assert dead.shares["AU12-"] == pytest.approx(1.0) and dead.shares["AU12=1"] == 0.0


def test_balance_section_validation() -> None:
    with pytest.raises(RecipeError, match=r"balance\.au_share_tolerance"):
        recipe_from_dict({"balance": {"au_share_tolerance": -0.1}})
    with pytest.raises(RecipeError, match=r"unknown field 'balance\.tolerance'"):
        recipe_from_dict({"balance": {"tolerance": 0.1}})
    with pytest.raises(RecipeError, match="identity bank"):
        recipe_from_dict({"dataset": {"kind": "identity-bank"}, "balance": {"enabled": True}})
    assert balance_policy(recipe_from_dict({}), Path("."), None) is None  # open loop by default


def test_untouched_balance_keeps_the_fingerprint() -> None:
    base = recipe_from_dict({})
    assert base.fingerprint() == recipe_from_dict({"balance": {"enabled": False}}).fingerprint()
    assert base.fingerprint() != recipe_from_dict({"balance": {"enabled": True}}).fingerprint()


def test_report_measures_delivered_shares() -> None:
    rows = pa.table(
        {
            "au_intensity": pa.array([_vector(3, 3), _vector(0, 0), _vector(3, 0), None], pa.list_(pa.int8(), N_AUS)),
            "emotion": ["happiness", "neutral", "happiness", "neutral"],
            "ethnicity": ["white"] * 4,
            "age_band": ["adult"] * 4,
            "gender": ["female", "male", "female", "male"],
        }
    )
    targets = balance_targets(_recipe(target=4), [_identity("a", "female"), _identity("b", "male")])
    cells = delivered_cells(rows, targets.units)
    assert cells["AU12+"] == 2 and cells["AU12-"] == 2 and cells["AU12=3"] == 2 and cells["AU25+"] == 1
    report = {r.cell: r for r in balance_report(cells, rows.num_rows, targets)}
    assert report["AU12+"].share == 0.5 and report["AU12+"].met
    assert report["AU25+"].share == 0.25 and not report["AU25+"].met  # 0.5 wanted, within 0.02
    assert report["AU12=3"].share == 1.0 and report["AU12=3"].target == pytest.approx(0.2)  # of the active ones
    assert report["ethnicity=black"].infeasible and "AU12-" not in report


def test_status_reports_the_kept_samples_while_running(tmp_path: Path) -> None:
    policy, layout = _policy(tmp_path)
    for shard in range(4):
        _write_shard(layout, shard, _skewed_shard(shard))
    counted = policy.review(_prefix([0, 1, 3]))  # shard 2 not done: the prefix stops at 1
    run = RunDir(tmp_path, NAME)
    info = {"recipe": _recipe().model_dump(mode="json")}
    balance = delivered_balance(run, info, {}, [0, 1, 3])
    assert balance is not None
    assert balance["samples"] == counted.counted[0] + counted.counted[1]
    cells = {c["cell"]: c for c in balance["cells"]}
    assert cells["gender=female"]["target"] == 0.5 and "gender=male" in cells


def test_emotions_a_smiling_bank_cannot_show() -> None:
    smiling = IdentityRecord("s", "s.png", "white", "adult", "female", "test", "CC0", "AU12=3 AU25=5")
    recipe = recipe_from_dict({"emotions": {"mix": {"happiness": 1.0, "sadness": 1.0, "neutral": 1.0, "mixed": 1.0}}})
    assert unshowable_emotions(recipe, [smiling]) == ["sadness", "neutral"]  # happiness holds 12 and 25
    neutral = IdentityRecord("n", "n.png", "white", "adult", "male", "test", "CC0", "neutral")
    assert unshowable_emotions(recipe, [smiling, neutral]) == []


def test_a_run_recorded_before_balance_resumes() -> None:
    current = recipe_from_dict({}).model_dump(mode="json")
    recorded = {k: v for k, v in current.items() if k != "balance"}
    assert recipe_differences(recorded, current) == []
    balanced = recipe_from_dict({"balance": {"enabled": True}}).model_dump(mode="json")
    assert recipe_differences(recorded, balanced) == ["balance.enabled"]


def test_an_au_levels_window_is_of_the_aus_active_samples_whatever_their_count() -> None:
    """AU15 active in 0.3 +- 0.02 of 300 (84..96 samples), each level 0.2 +- 0.03 of those: a
    level may hold 0.23 of the AU's floor (19 of 84), more as more AU15 samples are kept, and
    needs 0.17 of the AU's cap (17 of 96), so its share holds wherever AU15 ends in its window
    (the demo missed 9 level windows when their caps were of the AU's target count, 90)."""
    cells = {"AU15+": 0.3, "AU15-": 0.7, **{f"AU15={k}": 0.2 * 0.3 for k in range(1, 6)}}
    tolerances = {"AU15+": 0.02, "AU15-": 0.02, **{f"AU15={k}": 0.03 * 0.3 for k in range(1, 6)}}
    targets = BalanceTargets(300, (15,), cells, tolerances)
    assert (targets.floor("AU15+"), targets.cap("AU15+")) == (84, 96)
    assert targets.cap("AU15=2") == 19 and targets.floor("AU15=2") == 17
    assert targets.cap("AU15=2", Counter({"AU15+": 99})) == 23  # 0.23 x (99 + the one joining)
    for active in (84, 90, 96):  # any count in AU15's window: 17..floor(0.23 x active) is in 0.2 +- 0.03
        for level in range(17, targets.cap("AU15=2", Counter({"AU15+": active - 1})) + 1):
            assert abs(level / active - 0.2) <= 0.03 + 1e-9, (level, active)
    assert targets.full_cell(("AU15+", "AU15=2"), Counter({"AU15+": 83, "AU15=2": 19})) == "AU15=2"
    assert targets.full_cell(("AU15+", "AU15=2"), Counter({"AU15+": 90, "AU15=2": 19})) is None


def test_a_cell_given_up_keeps_the_share_its_kept_samples_hold() -> None:
    """Three emotions at a third each; neutral, given up holding 4 of 30 kept samples, keeps
    4/30 and the other two share only the rest (with a share of 0 each would need 15 of the
    26 slots its 4 samples leave: every later sample held back for the other, the demo's stall)."""
    cells = ["emotion=happiness", "emotion=sadness", "emotion=neutral"]
    targets = BalanceTargets(30, (), dict.fromkeys(cells, 1 / 3), dict.fromkeys(cells, 0.01))
    given_up = targets.with_infeasible(["emotion=neutral"], {"emotion=neutral": 4 / 30})
    assert given_up.shares["emotion=neutral"] == pytest.approx(4 / 30)
    assert given_up.shares["emotion=happiness"] == pytest.approx(13 / 30)
    assert given_up.floor("emotion=happiness") == 13 and given_up.floor("emotion=neutral") == 0
    # its floor is given up, not its cap: it never grows past what the recipe asked of it
    assert given_up.cap("emotion=neutral") == 10  # floor((1/3 + 0.01) x 30)
    assert targets.with_infeasible(["emotion=neutral"]).cap("emotion=neutral") is None  # nobody can fill it
    again = given_up.with_infeasible(["emotion=sadness"], {"emotion=sadness": 0.3})  # held shares stay
    assert again.shares["emotion=neutral"] == pytest.approx(4 / 30)
    assert again.shares["emotion=happiness"] == pytest.approx(1 - 4 / 30 - 0.3)
    assert BalanceTargets.from_json(again.to_json()) == again
    assert targets.with_infeasible(["emotion=neutral"]).shares["emotion=happiness"] == pytest.approx(0.5)

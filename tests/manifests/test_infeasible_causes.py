"""Why each infeasible cell is (``manifests.balance_report.infeasible_causes``): the bank, a
limit, or given up during the build with the stage and reason that dropped most of its
planned samples, counted from the manifests."""

from __future__ import annotations

import pyarrow as pa
import pytest

from manifests.balance_report import CAUSE_COLUMNS, DropTally, causes_from, given_up, infeasible_causes
from manifests.balance_targets import BalanceTargets
from manifests.schema import N_AUS
from manifests.vocab import DISFA_AUS

CELLS = ["AU20+", "AU20-", "AU20=1", "emotion=fear", "emotion=neutral", "gender=female", "gender=male"]


def _manifest(rows: list[tuple[int, str, bool, str | None, str | None]]) -> pa.Table:
    """Rows of (AU20 level planned, emotion, accepted, dropped_by, drop_reason), all women."""
    vectors = []
    for level, *_ in rows:
        v = [0] * N_AUS
        v[DISFA_AUS.index(20)] = level
        vectors.append(v)
    columns = {
        "planned_intensity": pa.array(vectors, pa.list_(pa.int8(), N_AUS)),
        "emotion": [r[1] for r in rows],
        "ethnicity": ["white"] * len(rows),
        "age_band": ["adult"] * len(rows),
        "gender": ["female"] * len(rows),
        "accepted": [r[2] for r in rows],
        "dropped_by": pa.array([r[3] for r in rows], pa.string()),
        "drop_reason": pa.array([r[4] for r in rows], pa.string()),
    }
    return pa.table(columns).select(CAUSE_COLUMNS)


def _targets() -> BalanceTargets:
    shares = {"AU20+": 0.3, "AU20-": 0.7, "AU20=1": 0.3, "emotion=fear": 0.5, "emotion=neutral": 0.5}
    shares |= {"gender=female": 0.5, "gender=male": 0.5}
    targets = BalanceTargets(100, (20,), shares, dict.fromkeys(CELLS, 0.01))
    targets = targets.with_infeasible(["gender=male"])  # no identity of the bank
    return targets.with_infeasible(["AU20+", "emotion=neutral"], {"AU20+": 0.05, "emotion=neutral": 0.2})


def test_each_infeasible_cell_names_its_cause_and_the_stage_that_dropped_it() -> None:
    jaccard = "label-prompt jaccard 0.333 < 0.500"
    first = _manifest(
        [
            (3, "fear", False, "filters", jaccard),
            (1, "fear", False, "filters", "label-prompt jaccard 0.250 < 0.500"),
            (2, "fear", False, "face", "no face found"),
            (1, "neutral", True, None, None),
            (0, "neutral", False, "filters", "realism 0.100 < 0.500"),
        ]
    )
    second = _manifest([(4, "fear", True, None, None), (0, "fear", True, None, None)])
    targets = _targets()
    assert given_up(targets) == ["AU20+", "emotion=neutral"]
    causes = causes_from([first, second], targets)
    assert causes["gender=male"] == "no identity of the bank belongs to it"
    assert causes["AU20=1"] == "AU20+ is infeasible"  # an AU's levels go with it
    # AU20 planned active in 5 samples, 2 accepted; of the 3 dropped, 2 by the Jaccard filter
    # (its numbers left out, so both count as one reason) and 1 by the face stage
    assert causes["AU20+"] == (
        "given up during the build: 5 planned, 40% accepted; "
        "most of the rest dropped by filters (label-prompt jaccard # < #: 67%)"
    )
    assert causes["emotion=neutral"].startswith("given up during the build: 2 planned, 50% accepted")
    assert "realism # < #: 100%" in causes["emotion=neutral"]
    assert set(causes) == set(targets.infeasible)


def test_a_limited_group_and_a_cell_never_planned() -> None:
    targets = BalanceTargets(10, (), {"age_band=adult": 0.5, "age_band=elderly": 0.5}, {}, limits={})
    limited = BalanceTargets(
        10,
        (),
        {"age_band=adult": 0.5, "age_band=elderly": 0.5},
        dict.fromkeys(["age_band=adult", "age_band=elderly"], 0.01),
        limits={"age_band=adult": 0.09},
    ).with_infeasible(["age_band=adult"])
    assert infeasible_causes(targets, None) == {}
    assert infeasible_causes(limited, None) == {"age_band=adult": "limited by the bank: at most 0.090 of the samples"}
    given = _targets()
    tally = DropTally()
    assert infeasible_causes(given, tally)["AU20+"] == "given up during the build"  # nothing counted
    with pytest.raises(KeyError):
        _ = infeasible_causes(given, tally)["emotion=fear"]  # feasible: no cause

"""The driver's scheduling rules, without Ray: prefix, gaps, over-provisioning, retries."""

from __future__ import annotations

from pathlib import Path

import pytest

from factory.engine.rundir import RunDir
from factory.engine.scheduler import BuildError, Scheduler, drop_reason_summary, prefix
from factory.recipe import recipe_from_dict


def _stats(planned: int, accepted: int, reasons: dict | None = None) -> dict:
    return {"planned": planned, "accepted": accepted, "drop_reasons": reasons or {}}


def _sched(tmp_path: Path, done: dict, target: int = 20, **engine) -> Scheduler:
    recipe = recipe_from_dict(
        {"dataset": {"target": target, "shard_size": 10, "out": str(tmp_path)}, "engine": {"max_retries": 1, **engine}}
    )
    run = RunDir(tmp_path, "mifa")
    run.failed.mkdir(parents=True, exist_ok=True)
    return Scheduler(recipe, run, done)


def test_prefix_is_the_shortest_run_of_shards_reaching_the_target() -> None:
    done = {0: _stats(10, 6), 1: _stats(10, 6), 2: _stats(10, 9), 3: _stats(10, 10)}
    assert prefix(done, set(), 20) == (2, 21)
    assert prefix(done, set(), 100) == (None, 31)
    # a gap stops the prefix even when later shards would reach the target
    assert prefix({0: _stats(10, 10), 2: _stats(10, 10)}, set(), 20) == (None, 10)
    # permanently failed shards are skipped
    assert prefix({0: _stats(10, 10), 2: _stats(10, 10)}, {1}, 20) == (2, 20)


def test_a_gap_left_by_a_crash_is_scheduled_first(tmp_path: Path) -> None:
    sched = _sched(tmp_path, {0: _stats(10, 10), 1: _stats(10, 5), 3: _stats(10, 10)})
    assert sched.want_more()
    assert sched.take() == 2


def test_over_provisioning_follows_the_running_acceptance_rate(tmp_path: Path) -> None:
    sched = _sched(tmp_path, {0: _stats(10, 5)}, target=20)  # rate 0.5
    sched.in_flight = {1: 10}
    assert sched.want_more()  # 5 + 0.5 * 10 = 10 < 20
    sched.in_flight = {1: 10, 2: 10, 3: 10}
    assert not sched.want_more()  # 5 + 15 = 20
    assert sched.take() is None and sched._frontier() == 4  # nothing is wanted beyond the projection


def test_failures_are_retried_up_to_the_limit_then_skipped(tmp_path: Path) -> None:
    sched = _sched(tmp_path, {})
    sched.in_flight = {0: 10}
    assert sched.failure(0, "boom")[0] is True
    assert sched.take() == 0
    assert sched.failure(0, "boom again")[0] is False
    assert 0 in sched.failed and sched.take() == 1
    assert len(RunDir(tmp_path, "mifa").failures()[0]["errors"]) == 2


def test_acceptance_floor_lists_drop_reasons(tmp_path: Path) -> None:
    done = {i: _stats(10, 0, {"filters": {"label jaccard 0.20 < 0.60": 7, "realism": 3}}) for i in range(3)}
    sched = _sched(tmp_path, done, rate_check_after_shards=3)
    with pytest.raises(BuildError, match=r"filters: label jaccard 0\.20 < 0\.60 \(21\)"):
        sched.check_floor()
    assert drop_reason_summary(list(done.values()), top=1) == [("filters", "label jaccard 0.20 < 0.60", 21)]

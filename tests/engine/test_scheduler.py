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


def test_the_same_error_on_every_worker_stops_the_build_once_grouped_by_cause(tmp_path: Path) -> None:
    sched = _sched(tmp_path, {}, target=1000, max_retries=2, fail_fast_shards=3)
    sched.workers = 8
    for shard, worker in ((0, 0), (1, 1)):
        sched.in_flight[shard] = 10
        sched.failure(shard, f"OSError: cannot read /bank/img{shard:04d}.jpg\n\ntraceback...", worker=worker)
    sched.in_flight[2] = 10
    with pytest.raises(BuildError) as info:
        sched.failure(2, "OSError: cannot read /bank/img0002.jpg\n\ntraceback...", worker=2)
    message = str(info.value)
    assert "the same error on 3 shards, on 3 worker(s), before any shard succeeded" in message
    # one line for the cause (numbers masked), naming the shards, the first error and the fix
    assert message.count("OSError: cannot read") == 1
    assert "3 shard(s) [0, 1, 2]: OSError: cannot read /bank/img0000.jpg" in message
    assert f"factory retry {tmp_path}" in message


def test_the_same_error_from_one_worker_only_is_not_yet_the_setup(tmp_path: Path) -> None:
    sched = _sched(tmp_path, {}, target=1000, max_retries=2)
    sched.workers = 8
    for shard in range(3):  # a bad GPU: worker 5 fails everything it gets
        sched.in_flight[shard] = 10
        assert sched.failure(shard, "RuntimeError: CUDA error: an illegal memory access", worker=5)[0]
    assert sched.take(5) == 3  # its retries go to other workers
    assert sched.take(4) == 0


def test_first_shards_failing_for_good_stop_before_any_success(tmp_path: Path) -> None:
    sched = _sched(tmp_path, {}, target=1000, max_retries=0, fail_fast_shards=2)
    sched.workers = 4
    sched.in_flight = {0: 10, 1: 10}
    sched.failure(0, "ActorDiedError: the worker died", worker=0, kind="lost")
    with pytest.raises(BuildError, match=r"the first 2 shards to finish all failed") as info:
        sched.failure(1, "ActorDiedError: the worker died", worker=1, kind="lost")
    assert "worker process or node died" in str(info.value)  # the hint for lost workers


def test_one_success_turns_the_fast_rules_off_and_the_share_rule_takes_over(tmp_path: Path) -> None:
    sched = _sched(
        tmp_path,
        {},
        target=10_000,
        max_retries=0,
        fail_fast_shards=2,
        max_failed_share=0.25,
        failure_check_after_shards=8,
    )
    sched.workers = 4
    sched.succeeded(0, _stats(10, 10))
    for shard in range(1, 4):
        sched.in_flight[shard] = 10
        sched.failure(shard, "ValueError: bad", worker=shard)  # 3 failed, 1 done: fewer than 8 finished
    for shard in range(4, 8):
        sched.succeeded(shard, _stats(10, 10))
    assert len(sched.failed) == 3  # 3 of 8 finished = 0.375 > 0.25, checked on the next failure
    sched.in_flight[8] = 10
    with pytest.raises(BuildError, match=r"4 of 9 finished shards failed, more than engine.max_failed_share=0.25"):
        sched.failure(8, "ValueError: bad", worker=0)


def test_no_build_schedules_shards_without_bound(tmp_path: Path) -> None:
    sched = _sched(
        tmp_path, {}, target=100, min_acceptance_rate=0.5, max_failed_share=0.0, failure_check_after_shards=1
    )
    assert sched.shard_limit() == 20 + 1  # 100 / (10 x 0.5) shards, plus the failure check's window
    sched.in_flight = {s: 10 for s in range(21)}
    sched.rate = lambda: 0.01  # type: ignore[method-assign]  # the projection still wants more
    with pytest.raises(BuildError, match=r"shard 21 would pass the limit of 21 shards"):
        sched.take(0)
    assert _sched(tmp_path, {}, max_shards=7).shard_limit() == 7


def test_a_requeued_shard_runs_again_without_counting_an_attempt(tmp_path: Path) -> None:
    sched = _sched(tmp_path, {})
    assert sched.take(0) == 0 and sched.started(0, 10) == 1
    sched.requeue(0)
    assert sched.take(1) == 0 and sched.started(0, 10) == 1
    assert not RunDir(tmp_path, "mifa").failures()

"""The build loop's decisions without Ray: spread dispatch, a worker stuck on a straggler,
which shard gets a backup, and what a timeout charges (a fake pool stands in for the actors)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from factory.engine.progress import BuildProgress
from factory.engine.rundir import RunDir
from factory.engine.runner import Runner
from factory.engine.scheduler import Scheduler
from factory.plan import Planner
from factory.recipe import recipe_from_dict


class FakePool:
    """Records what the runner sends; refs are plain tuples."""

    def __init__(self, workers: int) -> None:
        self.shard_workers = [f"actor-{w}" for w in range(workers)]
        self.sent: list[tuple[int, int]] = []  # (worker, shard)

    def describe(self, shard: int, plan: Any) -> tuple[str, int]:
        return ("described", shard)

    def run(self, worker: int, shard: int, described: Any, attempt: int, ticket: int) -> tuple[str, int]:
        self.sent.append((worker, shard))
        return ("ref", ticket)


def _runner(tmp_path: Path, shards: int, workers: int = 8, **engine: Any) -> Runner:
    recipe = recipe_from_dict(
        {
            "dataset": {"target": shards * 10, "shard_size": 10, "out": str(tmp_path)},
            "identities": {"bank": "none"},
            "engine": {"gpus": workers, "expected_acceptance_rate": 1.0, **engine},
        }
    )
    run = RunDir(tmp_path, "mifa")
    for folder in (run.plans, run.failed):
        folder.mkdir(parents=True, exist_ok=True)
    sched = Scheduler(recipe, run, {}, workers=workers)
    return Runner(sched, FakePool(workers), run, Planner(recipe), BuildProgress(shards * 10, quiet=True), workers)


def test_every_idle_worker_gets_a_shard_before_any_gets_a_second(tmp_path: Path) -> None:
    runner = _runner(tmp_path, shards=4)
    runner._dispatch()
    assert sorted(runner.pool.sent) == [(0, 0), (1, 1), (2, 2), (3, 3)]
    twelve = _runner(tmp_path / "b", shards=12)
    twelve._dispatch()
    assert twelve.load == [2, 2, 2, 2, 1, 1, 1, 1]


def test_a_worker_stuck_on_a_straggler_is_the_last_to_get_a_queued_shard(tmp_path: Path) -> None:
    runner = _runner(tmp_path, shards=40, workers=2, max_shards=100)
    runner.sched.target = 20  # two shards now: one each
    runner._dispatch()
    first = next(f for f in runner.flights.values() if f.worker == 0)
    first.started = time.monotonic() - 60  # running for a minute
    runner.durations.append(5.0)  # a shard usually takes 5 s
    runner.sched.target = 30
    runner._dispatch()
    assert runner.pool.sent[-1] == (1, 2)  # queued behind the healthy worker, not the stuck one


def test_a_backup_goes_to_an_idle_worker_for_the_most_overdue_shard(tmp_path: Path) -> None:
    runner = _runner(tmp_path, shards=3, workers=4)
    runner._dispatch()  # shards 0, 1, 2 on workers 0, 1, 2; worker 3 idle, nothing else to send
    now = time.monotonic()
    flights = {f.shard: f for f in runner.flights.values()}
    flights[0].started, flights[1].started, flights[2].started = now - 30, now - 2, now - 90
    runner.durations.extend([4.0, 5.0, 6.0])  # median 5 s: slow after 7.5 s
    runner._backups()
    assert runner.pool.sent[-1] == (3, 2)  # the longest-running one, on the idle worker
    runner._backups()
    assert len(runner.pool.sent) == 4  # one backup per shard, and no idle worker left


def test_a_silent_shard_is_charged_and_the_one_queued_behind_it_is_resent_free(tmp_path: Path, monkeypatch) -> None:
    restarted: list[str] = []
    monkeypatch.setattr("factory.engine.runner.restart", restarted.append)
    runner = _runner(tmp_path, shards=16, workers=8, shard_timeout_s=5, max_retries=2)
    runner._dispatch()
    on_zero = sorted((f for f in runner.flights.values() if f.worker == 0), key=lambda f: f.shard)
    hung, queued = on_zero
    now = time.monotonic()
    for f in runner.flights.values():
        f.seen = now
    hung.state, hung.started, hung.seen = "running", now - 60, now - 6  # silent for 6 s > 5 s
    runner._expire()
    assert restarted == ["actor-0"] and runner.load[0] == 0
    failures = runner.run.failures()
    assert list(failures) == [hung.shard]
    assert "ShardTimeout: no progress for 5 s" in failures[hung.shard]["errors"][0]["error"]
    assert runner.sched.retry == [hung.shard, queued.shard]
    assert runner.sched.attempts.get(queued.shard, 0) == 0  # resent without counting an attempt
    assert runner.sched.take(0) == queued.shard  # the hung shard is not sent back to worker 0 first


@pytest.mark.parametrize("backups", [True, False])
def test_no_backup_before_any_shard_is_done_or_when_switched_off(tmp_path: Path, backups: bool) -> None:
    runner = _runner(tmp_path, shards=1, workers=2, backups=backups)
    runner._dispatch()
    next(iter(runner.flights.values())).started = time.monotonic() - 1000
    runner._backups()
    assert len(runner.pool.sent) == 1  # median unknown yet
    runner.durations.append(1.0)
    runner._backups()
    assert len(runner.pool.sent) == (2 if backups else 1)

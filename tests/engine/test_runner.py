"""The build loop's decisions without Ray, through its public events (dispatch, progress
replies, results, backups, expiry) with the driver's time passed in: spread dispatch, a
worker stuck on a straggler, which shard gets a backup, and what a timeout charges (a fake
pool stands in for the actors)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import factory.engine.runner as runner_module
from cluster.actors import TaskFailed
from factory.engine.ledger import Ledger
from factory.engine.policy import CommittedPrefix, PolicyDecision
from factory.engine.progress import BuildProgress
from factory.engine.rules import LedgerRules
from factory.engine.rundir import RunDir
from factory.engine.runner import Runner
from factory.plan import Planner
from factory.recipe import recipe_from_dict


class FakePool:
    """Records what the runner sends; refs are plain tuples."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, int]] = []  # (worker, shard)
        self.refs: dict[int, tuple[str, int]] = {}  # shard -> ref of its last call
        self.restarted: list[int] = []
        self.abandoned: list[int] = []

    def describe(self, shard: int, plan: Any) -> tuple[str, int]:
        return ("described", shard)

    def run(self, worker: int, shard: int, described: Any, attempt: int, ticket: int) -> tuple[str, int]:
        self.sent.append((worker, shard))
        self.refs[shard] = ("ref", ticket)
        return ("ref", ticket)

    def progress(self, worker: int) -> tuple[str, int]:
        return ("progress", worker)

    def abandon(self, worker: int, ticket: int) -> None:
        self.abandoned.append(ticket)

    def restart(self, worker: int) -> None:
        self.restarted.append(worker)


def _runner(tmp_path: Path, target: int, workers: int, **engine: Any) -> Runner:
    recipe = recipe_from_dict(
        {
            "dataset": {"target": target, "shard_size": 10, "out": str(tmp_path)},
            "identities": {"bank": "none"},
            "engine": {"gpus": workers, "expected_acceptance_rate": 1.0, **engine},
        }
    )
    run = RunDir(tmp_path, "mifa")
    for folder in (run.plans, run.failed):
        folder.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(LedgerRules.from_recipe(recipe, workers, str(tmp_path)))
    return Runner(ledger, FakePool(), run, Planner(recipe), BuildProgress(target, quiet=True), recipe.engine)


def _report(runner: Runner, worker: int, now: float, **by_shard: dict[str, Any]) -> None:
    """A progress reply of ``worker``: per shard (``s<N>``) its call's state, steps, seconds."""
    calls = {}
    for flight in runner.flights.values():
        call = by_shard.get(f"s{flight.copy.shard}")
        if flight.copy.worker == worker and call is not None:
            calls[flight.copy.id] = {"steps": 1, "samples": 1, **call}
    runner.on_progress(worker, {"host": "h", "calls": calls}, now)


def _finish(runner: Runner, shard: int, seconds: float, now: float, accepted: int = 10) -> None:
    worker = next(f.copy.worker for f in runner.flights.values() if f.copy.shard == shard)
    _report(runner, worker, now, **{f"s{shard}": {"state": "running", "seconds": seconds}})
    stats = {"shard": shard, "planned": 10, "accepted": accepted, "drop_reasons": {}}
    runner.on_result(runner.pool.refs[shard], stats, now)


def test_every_idle_worker_gets_a_shard_before_any_gets_a_second(tmp_path: Path) -> None:
    runner = _runner(tmp_path, 40, workers=8)
    runner.dispatch(0.0)
    assert sorted(runner.pool.sent) == [(0, 0), (1, 1), (2, 2), (3, 3)]
    twelve = _runner(tmp_path / "b", 120, workers=8)
    twelve.dispatch(0.0)
    assert [twelve.ledger.load(w) for w in range(8)] == [2, 2, 2, 2, 1, 1, 1, 1]


def test_a_worker_stuck_on_a_straggler_is_the_last_to_get_a_queued_shard(tmp_path: Path) -> None:
    runner = _runner(tmp_path, 30, workers=3, max_shards=7)
    runner.dispatch(0.0)  # shards 0, 1, 2 on workers 0, 1, 2
    _report(runner, 0, 60.0, s0={"state": "running", "seconds": 60.0})  # running for a minute
    _report(runner, 1, 60.0, s1={"state": "running", "seconds": 5.0})
    _finish(runner, 2, 5.0, 60.0, accepted=0)  # a shard usually takes 5 s; none accepted: more wanted
    runner.dispatch(60.0)
    # the idle worker first, then the healthy busy one, the stuck one last
    assert runner.pool.sent[3:] == [(2, 3), (1, 4), (2, 5), (0, 6)]


def test_a_backup_goes_to_an_idle_worker_for_the_most_overdue_shard(tmp_path: Path) -> None:
    runner = _runner(tmp_path, 50, workers=6, inflight_per_actor=1)
    runner.dispatch(0.0)  # shards 0-4 on workers 0-4; worker 5 idle
    _finish(runner, 0, 4.0, 100.0)
    _finish(runner, 1, 6.0, 100.0)  # median 5 s: slow after 7.5 s; nothing else to send
    assert not runner.ledger.wants_more()
    for worker, seconds in ((2, 30.0), (3, 2.0), (4, 90.0)):
        _report(runner, worker, 100.0, **{f"s{worker}": {"state": "running", "seconds": seconds}})
    runner.send_backups(100.0)
    assert runner.pool.sent[5:] == [(0, 4), (1, 2)]  # the most overdue first; shard 3 is not slow
    runner.send_backups(100.0)
    assert len(runner.pool.sent) == 7  # one backup per shard
    # the backup of shard 4 commits first: the primary is told to stop, and its return counts nothing
    backup = next(r for r, f in runner.flights.items() if f.copy.shard == 4 and f.copy.backup)
    runner.on_result(backup, {"shard": 4, "planned": 10, "accepted": 10, "drop_reasons": {}}, 101.0)
    primary = next(f.copy for f in runner.flights.values() if f.copy.shard == 4)
    assert runner.pool.abandoned == [primary.id] and runner.ledger.state(4) == "done"


def test_a_silent_shard_is_charged_and_the_one_queued_behind_it_is_resent_free(tmp_path: Path) -> None:
    runner = _runner(tmp_path, 160, workers=8, shard_timeout_s=5, max_retries=2)
    runner.dispatch(0.0)  # two shards per worker: 0 and 8 on worker 0
    _report(runner, 0, 50.0, s0={"state": "running"}, s8={"state": "queued"})
    for worker in range(1, 8):
        _report(runner, worker, 58.0, **{f"s{worker}": {"state": "running"}})
    _report(runner, 0, 58.0, s0={"state": "running"}, s8={"state": "queued"})  # shard 0: no new step
    runner.expire(58.0)
    assert runner.pool.restarted == [0] and runner.ledger.load(0) == 0
    failures = runner.run.failures()
    assert list(failures) == [0]
    assert "ShardTimeout: no progress for 5 s" in failures[0]["errors"][0]["error"]
    assert runner.ledger.attempts(0) == 1 and runner.ledger.attempts(8) == 0  # resent without an attempt
    assert runner.ledger.next_shard(0) == 8  # the hung shard is not sent back to worker 0 first
    assert runner.ledger.next_shard(1) == 0


@pytest.mark.parametrize("backups", [True, False])
def test_no_backup_before_any_shard_is_done_or_when_switched_off(tmp_path: Path, backups: bool) -> None:
    runner = _runner(tmp_path, 20, workers=3, backups=backups, inflight_per_actor=1)
    runner.dispatch(0.0)  # shards 0 and 1; worker 2 idle
    _report(runner, 0, 1000.0, s0={"state": "running", "seconds": 1000.0})
    runner.send_backups(1000.0)
    assert len(runner.pool.sent) == 2  # median unknown yet
    _finish(runner, 1, 1.0, 1000.0)
    runner.send_backups(1000.0)
    assert runner.pool.sent[2:] == ([(1, 0)] if backups else [])


def test_a_restarting_worker_gets_no_shard_until_it_answers_and_its_failures_cost_no_attempt(tmp_path: Path) -> None:
    runner = _runner(tmp_path, 40, workers=2, shard_timeout_s=5, max_retries=1, inflight_per_actor=1)
    runner.dispatch(0.0)  # shard 0 on worker 0, shard 1 on worker 1
    _report(runner, 1, 9.0, s1={"state": "running"})
    runner.expire(9.0)  # shard 0 silent since 0 s: worker 0 restarts
    assert runner.pool.restarted == [0] and runner.ledger.attempts(0) == 1
    _finish(runner, 1, 1.0, 9.5)
    runner.dispatch(10.0)  # worker 1 takes the retry; worker 0, restarting, gets nothing
    assert runner.pool.sent[2:] == [(1, 0)] and runner.ledger.load(0) == 0
    # a call that fails on a worker while it restarts is sent out again without an attempt
    runner.restarting[1] = 10.0
    runner.on_result(runner.pool.refs[0], TaskFailed("ActorDiedError: restarting", "...", lost=True), 10.5)
    assert runner.ledger.attempts(0) == 1 and runner.ledger.state(0) == "planned"
    for worker in (0, 1):  # both answer: restarted, models loaded
        runner.on_progress(worker, {"host": "h", "calls": {}}, 11.0)
    runner.dispatch(11.0)
    assert sorted(runner.pool.sent[3:]) == [(0, 2), (1, 0)]  # worker 0 gets shards again
    # the timed-out shard finally commits: no failure record is left for `factory status` to count
    assert list(runner.run.failures()) == [0]
    runner.on_result(runner.pool.refs[0], {"shard": 0, "planned": 10, "accepted": 10, "drop_reasons": {}}, 13.0)
    assert runner.ledger.state(0) == "done" and runner.run.failures() == {}


def test_a_lost_worker_is_restarting_so_its_other_calls_cost_no_attempt(tmp_path: Path) -> None:
    runner = _runner(tmp_path, 160, workers=2, inflight_per_actor=2, max_retries=2)
    runner.dispatch(0.0)  # worker 0 holds two shards
    first, second = [r for r, f in runner.flights.items() if f.copy.worker == 0]
    shards = [runner.flights[r].copy.shard for r in (first, second)]
    runner.on_result(first, TaskFailed("ActorDiedError: the worker died", "...", lost=True), 1.0)
    runner.on_result(second, TaskFailed("ActorDiedError: the worker died", "...", lost=True), 1.1)
    assert [runner.ledger.attempts(s) for s in shards] == [1, 0]
    runner.dispatch(1.2)
    assert runner.ledger.load(0) == 0  # nothing sent to it until it answers


class _KeepsHalf:
    """A selecting policy (as balance and dedup are): half of each shard's accepted samples count."""

    def review(self, prefix: CommittedPrefix) -> PolicyDecision:
        return PolicyDecision(counted={s: int(prefix.stats[s]["accepted"]) // 2 for s in prefix.shards})


def test_progress_counts_what_a_policy_keeps_once_it_saw_the_shard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    runner = _runner(tmp_path, target=40, workers=2)
    runner.policy = _KeepsHalf()
    runner.progress.start(0, [], selects=True)
    runner.dispatch(0.0)
    finished: dict[Any, dict[str, Any]] = {}  # the FakePool's refs whose calls returned, and their stats
    monkeypatch.setattr(runner_module, "wait_any", lambda refs, timeout: list(finished))
    monkeypatch.setattr(runner_module, "ready", lambda refs: [r for r in refs if r in finished])
    monkeypatch.setattr(runner_module, "result", lambda ref: finished.pop(ref))
    for shard in (0, 1):
        finished[runner.pool.refs[shard]] = {"shard": shard, "planned": 10, "accepted": 10 - shard, "drop_reasons": {}}
    runner.collect()
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("shard")]
    assert lines == ["shard 0: 10/10 accepted; total 9/40 kept", "shard 1: 9/10 accepted; total 9/40 kept"]
    assert runner.progress.counted == runner.counted() == 5 + 4

"""The shard ledger's rules through its public transitions: prefix, gaps, over-provisioning,
retries, the failure rules, the floor, the shard limit and the policy hook."""

from __future__ import annotations

import pytest

from factory.engine.failures import BuildError, counted_errors
from factory.engine.ledger import Ledger, LedgerError
from factory.engine.policy import CommittedPrefix, PolicyDecision
from factory.engine.rules import LedgerRules, drop_reason_summary


def _stats(planned: int, accepted: int, reasons: dict | None = None) -> dict:
    return {"planned": planned, "accepted": accepted, "drop_reasons": reasons or {}}


def _rules(target: int = 20, **kw) -> LedgerRules:
    return LedgerRules(**{"target": target, "shard_size": 10, "max_attempts": 2, "run_dir": "/runs/x", **kw})


def _ledger(done: dict | None = None, target: int = 20, failures: dict | None = None, **kw) -> Ledger:
    return Ledger.resume(_rules(target, **kw), done or {}, failures or {})


def _fail(ledger: Ledger, shard: int, error: str, worker: int = 0, kind: str = "error"):
    copy = ledger.start(shard, worker, 0.0, planned=10)
    failure = ledger.fail(copy.id, error, kind)  # type: ignore[arg-type]
    ledger.check_stop()
    return failure


def test_the_complete_prefix_is_the_shortest_run_of_shards_reaching_the_target() -> None:
    done = {0: _stats(10, 6), 1: _stats(10, 6), 2: _stats(10, 9), 3: _stats(10, 10)}
    assert _ledger(done).complete_prefix() == (2, 21)
    assert _ledger(done, target=100).complete_prefix() == (None, 31)
    # a gap stops the prefix even when later shards would reach the target
    assert _ledger({0: _stats(10, 10), 2: _stats(10, 10)}).complete_prefix() == (None, 10)
    # permanently failed shards are skipped
    skipped = _ledger({0: _stats(10, 10), 2: _stats(10, 10)}, failures={1: ["a", "b"]})
    assert skipped.complete_prefix() == (2, 20)
    assert skipped.outcome() == ([0, 2], [], [1])
    assert _ledger(done).outcome() == ([0, 1, 2], [3], [])
    assert _ledger(done).state(3) == "surplus" and _ledger(done).state(2) == "done"


def test_a_gap_left_by_a_crash_is_sent_first() -> None:
    ledger = _ledger({0: _stats(10, 10), 1: _stats(10, 5), 3: _stats(10, 10)})
    assert ledger.wants_more() and ledger.next_shard() == 2


def test_over_provisioning_follows_the_running_acceptance_rate() -> None:
    ledger = _ledger({0: _stats(10, 5)})  # rate 0.5
    ledger.start(1, 0, 0.0, planned=10)
    assert ledger.wants_more()  # 5 + 0.5 * 10 = 10 < 20
    for shard in (2, 3):
        ledger.start(shard, 0, 0.0, planned=10)
    assert not ledger.wants_more()  # 5 + 15 = 20
    assert ledger.next_shard() is None


def test_failures_are_retried_up_to_the_limit_then_skipped() -> None:
    ledger = _ledger()
    assert _fail(ledger, 0, "boom").retry is True
    assert ledger.state(0) == "planned" and ledger.next_shard() == 0
    assert _fail(ledger, 0, "boom again").retry is False
    assert ledger.state(0) == "failed" and ledger.attempts(0) == 2 and ledger.next_shard() == 1
    with pytest.raises(LedgerError, match="only a planned shard starts"):
        ledger.start(0, 0, 0.0)


def test_acceptance_floor_lists_drop_reasons() -> None:
    done = {i: _stats(10, 0, {"filters": {"label jaccard 0.20 < 0.60": 7, "realism": 3}}) for i in range(3)}
    with pytest.raises(BuildError, match=r"filters: label jaccard 0\.20 < 0\.60 \(21\)"):
        _ledger(done, rate_check_after_shards=3).check_floor()
    _ledger(done, rate_check_after_shards=4).check_floor()  # too few shards to judge yet
    assert drop_reason_summary(list(done.values()), top=1) == [("filters", "label jaccard 0.20 < 0.60", 21)]


def test_the_same_error_on_every_worker_stops_the_build_once_grouped_by_cause() -> None:
    ledger = _ledger(target=1000, max_attempts=3, fail_fast_shards=3, workers=8)
    for shard in (0, 1):
        _fail(ledger, shard, f"OSError: cannot read /bank/img{shard:04d}.jpg\n\ntraceback...", worker=shard)
    with pytest.raises(BuildError) as info:
        _fail(ledger, 2, "OSError: cannot read /bank/img0002.jpg\n\ntraceback...", worker=2)
    message = str(info.value)
    assert "the same error on 3 shards, on 3 worker(s), before any shard succeeded" in message
    # one line for the cause (numbers masked), naming the shards, the first error and the fix
    assert message.count("OSError: cannot read") == 1
    assert "3 shard(s) [0, 1, 2]: OSError: cannot read /bank/img0000.jpg" in message
    assert "factory retry /runs/x" in message


def test_the_same_error_from_one_worker_only_is_not_yet_the_setup() -> None:
    ledger = _ledger(target=1000, max_attempts=3, workers=8)
    for shard in range(3):  # a bad GPU: worker 5 fails everything it gets
        assert _fail(ledger, shard, "RuntimeError: CUDA error: an illegal memory access", worker=5).retry
    assert ledger.next_shard(5) == 3  # its retries go to other workers
    assert ledger.next_shard(4) == 0


def test_first_shards_failing_for_good_stop_before_any_success() -> None:
    ledger = _ledger(target=1000, max_attempts=1, fail_fast_shards=2, workers=4)
    _fail(ledger, 0, "ActorDiedError: the worker died", worker=0, kind="lost")
    with pytest.raises(BuildError, match=r"the first 2 shards to finish all failed") as info:
        _fail(ledger, 1, "ActorDiedError: the worker died", worker=1, kind="lost")
    assert "worker process or node died" in str(info.value)  # the hint for lost workers


def test_one_success_turns_the_fast_rules_off_and_the_share_rule_takes_over() -> None:
    ledger = _ledger(
        target=10_000,
        max_attempts=1,
        fail_fast_shards=2,
        max_failed_share=0.25,
        failure_check_after_shards=8,
        workers=4,
    )
    ledger.finish(ledger.start(0, 0, 0.0).id, _stats(10, 10))
    for shard in range(1, 4):
        _fail(ledger, shard, "ValueError: bad", worker=shard)  # 3 failed, 1 done: fewer than 8 finished
    for shard in range(4, 8):
        ledger.finish(ledger.start(shard, 0, 0.0).id, _stats(10, 10))
    assert ledger.shards("failed") == [1, 2, 3]  # 3 of 8 = 0.375 > 0.25, checked on the next failure
    with pytest.raises(BuildError, match=r"4 of 9 finished shards failed, more than engine.max_failed_share=0.25"):
        _fail(ledger, 8, "ValueError: bad")


def test_no_build_sends_shards_without_bound() -> None:
    rules = _rules(100, min_acceptance_rate=0.5, max_failed_share=0.0, failure_check_after_shards=1)
    assert rules.shard_limit() == 20 + 1  # 100 / (10 x 0.5) shards, plus the failure check's window
    # every shard so far accepted 1 of 10: the projection still wants more at shard 21
    ledger = Ledger.resume(rules, {s: _stats(10, 1) for s in range(21)}, {})
    with pytest.raises(BuildError, match=r"shard 21 would pass the limit of 21 shards"):
        ledger.next_shard(0)
    with pytest.raises(LedgerError, match="beyond the limit"):
        ledger.start(21, 0, 0.0)
    assert _rules(max_shards=7).shard_limit() == 7


def test_a_requeued_shard_runs_again_without_counting_an_attempt() -> None:
    ledger = _ledger()
    copy = ledger.start(ledger.next_shard(0) or 0, 0, 0.0, planned=10)
    assert copy.attempt == 1 and ledger.requeue(copy.id)
    assert ledger.next_shard(1) == 0 and ledger.start(0, 1, 1.0).attempt == 1
    assert ledger.attempts(0) == 0


def test_a_backup_race_has_one_winner_and_the_loser_counts_nothing() -> None:
    ledger = _ledger()
    primary = ledger.start(0, 0, 0.0, planned=10)
    with pytest.raises(LedgerError, match="another worker"):
        ledger.start(0, 0, 1.0, backup=True)
    backup = ledger.start(0, 1, 1.0, planned=10, backup=True)
    with pytest.raises(LedgerError, match="exactly one live copy"):
        ledger.start(0, 2, 1.0, backup=True)
    assert ledger.fail(primary.id, "boom") is None  # the backup still runs and decides
    assert ledger.finish(backup.id, _stats(10, 10)) == []
    with pytest.raises(LedgerError, match="not out"):
        ledger.finish(backup.id, _stats(10, 10))
    assert ledger.state(0) == "done" and ledger.attempts(0) == 0 and ledger.load(0) == 0


def test_the_winner_drops_the_other_copy_which_still_holds_its_worker_until_it_returns() -> None:
    ledger = _ledger()
    primary = ledger.start(0, 0, 0.0, planned=10)
    backup = ledger.start(0, 1, 1.0, planned=10, backup=True)
    assert ledger.finish(primary.id, _stats(10, 10)) == [backup]
    assert not ledger.is_live(backup.id) and ledger.load(1) == 1
    assert ledger.superseded(backup.id, _stats(10, 10)) is False and ledger.load(1) == 0


def test_a_superseded_copy_alone_takes_the_commit_on_disk_or_plans_the_shard_again() -> None:
    ledger = _ledger()
    assert ledger.superseded(ledger.start(0, 0, 0.0).id, _stats(10, 7)) is True
    assert ledger.state(0) == "done" and ledger.counted(0) == 7 and ledger.session_done == 1
    assert ledger.superseded(ledger.start(1, 0, 0.0).id, None) is False
    assert ledger.state(1) == "planned" and ledger.next_shard() == 1


class _KeepHalf:
    """A policy: half of each shard's accepted samples count, and it wants one more shard once."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, ...]] = []

    def review(self, prefix: CommittedPrefix) -> PolicyDecision:
        self.seen.append(prefix.shards)
        more = 1 if len(self.seen) == 1 else 0
        return PolicyDecision({s: int(prefix.stats[s]["accepted"]) // 2 for s in prefix.shards}, more)


def test_a_policy_reads_the_committed_prefix_in_order_and_changes_what_counts() -> None:
    ledger = _ledger({0: _stats(10, 10), 1: _stats(10, 10), 3: _stats(10, 10)}, failures={2: ["x", "y"]})
    assert ledger.complete_prefix() == (1, 20)
    policy = _KeepHalf()
    ledger.consult(policy)
    assert policy.seen == [(0, 1, 3)]  # failed shard 2 skipped, shard order
    assert ledger.complete_prefix() == (None, 15) and ledger.rate() == 0.5
    ledger.start(4, 0, 0.0, planned=10)  # projected: 15 + 0.5 x 10 = 20, the target
    # it asked for one more shard: sent even though the projection is satisfied, once
    assert ledger.next_shard() == 5
    ledger.start(5, 0, 0.0, planned=10)
    ledger.consult(policy)
    assert not ledger.wants_more()


def test_a_policy_cannot_count_outside_the_prefix_or_more_than_was_accepted() -> None:
    ledger = _ledger({0: _stats(10, 4), 2: _stats(10, 10)})

    class Greedy:
        def __init__(self, counted: dict[int, int]) -> None:
            self.counted = counted

        def review(self, prefix: CommittedPrefix) -> PolicyDecision:
            return PolicyDecision(self.counted)

    for counted in ({0: 5}, {2: 1}, {0: -1}):
        with pytest.raises(LedgerError, match="outside the committed prefix"):
            ledger.consult(Greedy(counted))
    assert ledger.counted(0) == 4


class _FinishAt:
    """A policy that ends the dataset at one shard of the committed prefix, short of the target."""

    def __init__(self, shard: int) -> None:
        self.shard = shard

    def review(self, prefix: CommittedPrefix) -> PolicyDecision:
        return PolicyDecision(finish_at=self.shard)


def test_a_policy_can_end_the_dataset_short_of_the_target_inside_the_committed_prefix() -> None:
    ledger = _ledger({0: _stats(10, 5), 1: _stats(10, 5), 2: _stats(10, 5)}, target=100)
    assert ledger.complete_prefix() == (None, 15) and ledger.wants_more()
    ledger.consult(_FinishAt(1))
    assert ledger.complete_prefix() == (1, 10)  # complete at shard 1 with what it counted
    assert not ledger.wants_more() and ledger.next_shard() is None  # nothing more is sent
    assert ledger.outcome() == ([0, 1], [2], [])  # shard 2 is surplus, kept on disk
    with pytest.raises(LedgerError, match="finished the dataset at shard 5, outside the committed prefix"):
        ledger.consult(_FinishAt(5))


DISK_FULL = "WriteError: cannot write shard /runs/x/shards/x-000003.tar: no space left on device; free space"


@pytest.mark.parametrize("kind", ["error", "lost"])
def test_a_full_disk_stops_the_build_at_its_first_failure_after_successes_too(kind: str) -> None:
    ledger = _ledger({0: _stats(10, 10)}, target=1000, max_attempts=3, workers=8)
    ledger.session_done = 1  # a shard of this session succeeded: the fast rules are off
    with pytest.raises(BuildError) as info:
        _fail(ledger, 3, DISK_FULL, worker=2, kind=kind)
    message = str(info.value)
    assert message.startswith("build stopped: the disk is full (shard(s) [3] could not be written)")
    assert "free space on it" in message and "factory retry /runs/x" in message
    assert "worker process or node died" not in message  # a full disk is not blamed on the worker


def test_a_full_disks_recorded_failures_are_not_attempts_when_the_build_runs_again() -> None:
    errors = [DISK_FULL, "OSError: [Errno 28] No space left on device", "ValueError: a real bug"]
    assert counted_errors(errors) == ["ValueError: a real bug"]
    ledger = _ledger(
        target=1000, max_attempts=2, failures={3: counted_errors(errors[:2] * 2), 4: counted_errors(errors)}
    )
    assert ledger.state(3) == "planned" and ledger.attempts(3) == 0
    assert ledger.attempts(4) == 1 and ledger.state(4) == "planned"
    ledger.check_stop()  # nothing recorded says stop: the same build command retries them

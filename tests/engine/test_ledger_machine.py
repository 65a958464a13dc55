"""The shard ledger under random event sequences (hypothesis stateful): start, backup, finish,
fail, timeout, requeue, superseded, kill-and-resume and a policy that ends the dataset short
(as the balance does at twice its waste bound), against a model of what was committed (the
"disk": done shards' stats and failure records), checking its invariants."""

from __future__ import annotations

import re

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from factory.engine.failures import BuildError
from factory.engine.ledger import Copy, Ledger
from factory.engine.policy import CommittedPrefix, PolicyDecision
from factory.engine.rules import LedgerRules

RULES = LedgerRules(
    target=40,
    shard_size=10,
    workers=3,
    max_attempts=2,
    fail_fast_shards=3,
    max_failed_share=0.5,
    failure_check_after_shards=4,
    max_shards=12,
)
LIMIT = RULES.shard_limit()
ERRORS = ("OSError: cannot read /bank/img{n}.jpg", "ValueError: bad shard {n}", "CUDA error")


def _reference_prefix(
    done: dict[int, dict], failed: set[int], finish_at: int | None = None
) -> tuple[list[int], int | None, int]:
    """(committed prefix, last shard of the complete prefix or None, counted samples), by brute
    force; ``finish_at``: where a policy ended the dataset short."""
    prefix, total, last = [], 0, None
    for shard in range(LIMIT + 1):
        if shard not in done and shard not in failed:
            break
        if shard in done:
            prefix.append(shard)
            if last is None:
                total += done[shard]["accepted"]
                last = shard if total >= RULES.target or shard == finish_at else None
    return prefix, last, total


class _EndsAfter:
    """A policy that ends the dataset at the ``n``-th shard of the committed prefix (a pure
    function of the prefix, as the balance's waste bound is)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def finish_at(self, shards: tuple[int, ...]) -> int | None:
        return shards[self.n - 1] if len(shards) >= self.n else None

    def review(self, prefix: CommittedPrefix) -> PolicyDecision:
        return PolicyDecision(finish_at=self.finish_at(prefix.shards))


class LedgerMachine(RuleBasedStateMachine):
    @initialize(accepted=st.lists(st.integers(0, 10), min_size=LIMIT, max_size=LIMIT), ends_after=st.integers(1, LIMIT))
    def setup(self, accepted: list[int], ends_after: int) -> None:
        self.accepted = accepted  # what each shard accepts whenever it commits: the world is fixed
        self.policy = _EndsAfter(ends_after)
        self.consulted = False  # the build consults its policy from its first dispatch on
        self.finish_at: int | None = None  # what the ledger was last told
        self.ledger = Ledger(RULES)
        self.out: list[Copy] = []  # copies whose calls have not returned
        self.disk_done: dict[int, dict] = {}
        self.disk_failures: dict[int, list[str]] = {}
        self.session: list[tuple[int, str, int, str]] = []  # counted failures: shard, cause, worker, kind
        self.session_done = 0
        self.resolved = 0
        self.last: int | None = None

    def _stats(self, shard: int) -> dict:
        return {"planned": 10, "accepted": self.accepted[shard], "drop_reasons": {}}

    def _failed(self) -> set[int]:
        return {s for s, e in self.disk_failures.items() if len(e) >= RULES.max_attempts and s not in self.disk_done}

    def _committed(self, shard: int) -> None:
        self.disk_done[shard] = self._stats(shard)
        self.disk_failures.pop(shard, None)  # the runner clears a committed shard's failure record
        self.session_done += 1

    # -- events -----------------------------------------------------------------------------
    @rule(worker=st.integers(0, 2))
    def start(self, worker: int) -> None:
        try:
            shard = self.ledger.next_shard(worker)
        except BuildError as exc:
            assert f"would pass the limit of {LIMIT} shards" in str(exc)
            return
        if shard is not None:
            assert shard < LIMIT and self.ledger.state(shard) == "planned"
            self.out.append(self.ledger.start(shard, worker, 0.0, planned=10))

    @rule(data=st.data())
    def backup(self, data: st.DataObject) -> None:
        single = [c for c in self.out if self.ledger.is_live(c.id) and len(self.ledger.copies(c.shard)) == 1]
        if single:
            copy = data.draw(st.sampled_from(single))
            self.out.append(self.ledger.start(copy.shard, (copy.worker + 1) % 3, 1.0, planned=10, backup=True))

    @precondition(lambda self: self.out)
    @rule(data=st.data())
    def finish(self, data: st.DataObject) -> None:
        copy = self.out.pop(data.draw(st.integers(0, len(self.out) - 1)))
        if self.ledger.is_live(copy.id):
            dropped = self.ledger.finish(copy.id, self._stats(copy.shard))
            assert all(c.shard == copy.shard and c in self.out for c in dropped)
            self._committed(copy.shard)
        else:  # a dropped copy finds the shard committed (the writer refuses to replace it)
            committed = self.disk_done.get(copy.shard)
            if self.ledger.superseded(copy.id, committed):
                self._committed(copy.shard)

    @precondition(lambda self: self.out)
    @rule(data=st.data(), kind=st.sampled_from(["error", "lost", "timeout"]), error=st.sampled_from(ERRORS))
    def fail(self, data: st.DataObject, kind: str, error: str) -> None:
        copy = self.out.pop(data.draw(st.integers(0, len(self.out) - 1)))
        text = error.format(n=copy.shard) + "\n\ntraceback"
        decides = self.ledger.decides(copy.id)
        timeout = kind == "timeout"
        failure = self.ledger.timeout(copy.id, text) if timeout else self.ledger.fail(copy.id, text, kind)  # type: ignore[arg-type]
        assert (failure is not None) == decides
        if failure is not None:
            self.disk_failures.setdefault(copy.shard, []).append(text)
            self.session.append((copy.shard, re.sub(r"\d+", "#", error), copy.worker, kind))
            assert failure.retry == (copy.shard not in self._failed())

    @precondition(lambda self: self.out)
    @rule(data=st.data())
    def requeue(self, data: st.DataObject) -> None:
        copy = self.out.pop(data.draw(st.integers(0, len(self.out) - 1)))
        decides = self.ledger.decides(copy.id)
        assert self.ledger.requeue(copy.id) == decides
        if decides:
            assert self.ledger.state(copy.shard) == "planned"

    @precondition(lambda self: self.out)
    @rule(data=st.data())
    def superseded_after_a_lost_commit(self, data: st.DataObject) -> None:
        copy = self.out.pop(data.draw(st.integers(0, len(self.out) - 1)))
        if self.ledger.superseded(copy.id, self.disk_done.get(copy.shard)):
            self._committed(copy.shard)

    @rule()
    def consult_the_policy(self) -> None:
        decision = self.ledger.consult(self.policy)
        assert decision.finish_at == self.policy.finish_at(tuple(self.ledger.committed_prefix()))
        self.consulted, self.finish_at = True, decision.finish_at
        if decision.finish_at is not None:
            assert not self.ledger.wants_more() or self.ledger.complete_prefix()[0] is not None

    @rule()
    def kill_and_resume(self) -> None:
        resumed = Ledger.resume(RULES, self.disk_done, self.disk_failures)
        if self.consulted:  # the build consults its policy on the resumed ledger before anything else;
            # the killed one, consulted on the same committed prefix, decided the same
            self.finish_at = self.ledger.consult(self.policy).finish_at
            assert resumed.consult(self.policy).finish_at == self.finish_at
        assert resumed.complete_prefix() == self.ledger.complete_prefix()
        assert resumed.committed_prefix() == self.ledger.committed_prefix()
        for state in ("done", "failed", "surplus"):
            assert resumed.shards(state) == self.ledger.shards(state)  # type: ignore[arg-type]
        if self.ledger.complete_prefix()[0] is not None:
            assert resumed.outcome() == self.ledger.outcome()
        self.ledger, self.out, self.session, self.session_done = resumed, [], [], 0

    # -- invariants -------------------------------------------------------------------------
    @invariant()
    def each_shard_is_in_exactly_the_state_the_disk_says(self) -> None:
        failed = self._failed()
        for shard in range(LIMIT + 2):
            state = self.ledger.state(shard)
            if shard in self.disk_done:  # done shards never go back
                assert state in ("done", "surplus")
            elif shard in failed:
                assert state == "failed"
            else:
                live = {c.shard for c in self.out if self.ledger.is_live(c.id)}
                assert state == ("in_flight" if shard in live else "planned")
            assert self.ledger.attempts(shard) <= RULES.max_attempts
            assert len(self.ledger.copies(shard)) <= 2

    @invariant()
    def the_prefix_is_monotone_and_equals_a_brute_force_walk(self) -> None:
        failed = self._failed()
        prefix, last, total = _reference_prefix(self.disk_done, failed, self.finish_at)
        assert self.ledger.committed_prefix() == prefix
        assert self.ledger.complete_prefix() == (last, total)
        resolved = 0
        while resolved in self.disk_done or resolved in failed:
            resolved += 1
        assert resolved >= self.resolved
        self.resolved = resolved
        assert self.last is None or last == self.last
        self.last = last
        if last is not None:
            indexed, surplus, inside = self.ledger.outcome()
            assert indexed == [s for s in prefix if s <= last]
            assert surplus == sorted(s for s in self.disk_done if s > last)
            assert inside == sorted(s for s in failed if s < last)

    @invariant()
    def the_stop_decision_equals_a_reference(self) -> None:
        if not hasattr(self, "ledger"):
            return
        reason = None
        failed = self._failed()
        if self.session_done == 0:
            for cause in sorted({c for _, c, _, _ in self.session}):
                hits = [(s, w, k) for s, c, w, k in self.session if c == cause]
                shards, workers = {s for s, _, _ in hits}, {w for _, w, _ in hits}
                if hits[0][2] == "error" and len(shards) >= 3 and len(workers) >= 2:
                    reason = "the same error"
            session_failed = {s for s, _, _, _ in self.session if s in failed}
            if reason is None and len(session_failed) >= 3:
                reason = "the first"
        finished = len(self.disk_done) + len(failed)
        if reason is None and finished >= 4 and len(failed) / finished > 0.5:
            reason = "finished shards failed"
        got = self.ledger.stop_reason()
        assert (got is None) == (reason is None), (got, reason)
        assert reason is None or reason in str(got)


TestLedgerMachine = LedgerMachine.TestCase
TestLedgerMachine.settings = settings(
    max_examples=100, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

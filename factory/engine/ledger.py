"""The shard ledger: everything the driver knows about each shard, and the rules over it.

A pure state machine: no Ray, no disk, no clock (times are passed in). The runner turns
Ray events into its transitions and asks it what to send next; the build turns its answers
into the index. Per shard, one state:

* ``planned``: not sent yet, or waiting to be sent again (a retry, or a copy lost without
  counting an attempt); shards the ledger has never seen are planned too;
* ``in_flight``: one live copy on a worker, or two (a primary and at most one backup);
* ``done``: committed, with its stats (what the workers' writer reported);
* ``failed``: failed for good, after ``max_attempts`` counted attempts, with its last error;
* ``surplus``: done, but beyond the complete prefix (kept on disk, not indexed).

The dataset never depends on timing: it is the *complete prefix*, the shortest run of
shards from 0, in shard order, permanently failed shards skipped, whose counted samples
reach the target (or that ends where a policy ended the dataset short of it). A kill loses
only what was in flight: :meth:`Ledger.resume` rebuilds the ledger from what was committed
(done shards' stats, failure records), and the complete prefix and the index selection
follow from that alone.

Illegal transitions (starting a done shard, finishing a copy twice, a third copy) raise
:class:`LedgerError`; the stop rules (``factory.engine.rules``) raise ``BuildError``. Policies
change what counts, hold back shards and end the dataset through a declared hook (``policy``).
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal, NoReturn

from factory.engine.failures import BuildError, Cause, FailureKind, FailureLog, failure_report, first_line
from factory.engine.policy import CommittedPrefix, PolicyDecision, PrefixPolicy, Stats
from factory.engine.rules import LedgerRules

__all__ = ["Copy", "Failure", "Ledger", "LedgerError", "ShardState"]

ShardState = Literal["planned", "in_flight", "done", "failed", "surplus"]


class LedgerError(RuntimeError):
    """An illegal transition: the caller's picture of a shard is wrong (a bug, not bad luck)."""


@dataclass(frozen=True)
class Copy:
    """One call of one shard on one worker; ``id`` is the ticket the worker reports under."""

    id: int
    shard: int
    worker: int
    attempt: int
    started_at: float
    planned: int
    backup: bool


@dataclass(frozen=True)
class Failure:
    """A counted failed attempt: will the shard be sent again, its cause, is the cause new."""

    shard: int
    retry: bool
    cause: Cause
    new_cause: bool


@dataclass
class _Shard:
    state: ShardState = "planned"
    attempts: int = 0  # counted failed attempts
    queued: bool = False  # planned and waiting to be sent again, before the frontier
    failed_on: int | None = None  # the worker its last counted attempt failed on
    planned: int = 0  # samples of its plan (known once sent)
    stats: Stats | None = None
    counted: int | None = None  # a policy's count of its accepted samples
    copies: dict[int, Copy] = field(default_factory=dict)  # live copies, by id
    error: str | None = None  # first line of the last failed attempt


class Ledger:
    """The shards of one build session (see module docstring)."""

    def __init__(self, rules: LedgerRules) -> None:
        self.rules = rules
        self.log = FailureLog()
        self._shards: dict[int, _Shard] = {}
        self._out: dict[int, Copy] = {}  # every copy whose call has not returned (live or dropped)
        self._ids = itertools.count(1)
        self._queue: list[int] = []  # queued shards, sorted
        self._low = 0  # every shard below is done or failed
        self._more = 0  # frontier shards a policy asked for beyond the projection
        self._send_below: int | None = None  # a policy holds back frontier shards from here on
        self._finish_at: int | None = None  # a policy ends the dataset here, short of the target
        self.session_done = 0
        self.session_failed: set[int] = set()

    @classmethod
    def resume(cls, rules: LedgerRules, done: Mapping[int, Stats], failures: Mapping[int, list[str]]) -> Ledger:
        """The ledger of a build that starts (again) from what was committed: ``done`` the
        stats of every committed shard, ``failures`` every recorded failed attempt's error by
        shard. A shard both committed and recorded as failed (killed between the two) is done."""
        ledger = cls(rules)
        for shard, errors in failures.items():
            if shard in done or not errors:
                continue
            entry = ledger._entry(shard)
            entry.attempts, entry.error = len(errors), first_line(errors[-1])
            if entry.attempts >= rules.max_attempts:
                entry.state = "failed"
        for shard, stats in done.items():
            ledger._entry(shard).state, ledger._shards[shard].stats = "done", dict(stats)
        return ledger

    # -- reading --------------------------------------------------------------------------
    def state(self, shard: int) -> ShardState:
        return self._state(shard, self.complete_prefix()[0])

    def _state(self, shard: int, last: int | None) -> ShardState:
        entry = self._shards.get(shard)
        if entry is None:
            return "planned"
        if entry.state == "done" and last is not None and shard > last:
            return "surplus"
        return entry.state

    def shards(self, state: ShardState) -> list[int]:
        """Known shards in ``state``, sorted (never-seen planned shards are not listed)."""
        last = self.complete_prefix()[0]
        return sorted(s for s in self._shards if self._state(s, last) == state)

    def stats(self, shard: int) -> Stats:
        entry = self._shards.get(shard)
        if entry is None or entry.stats is None:
            raise LedgerError(f"shard {shard} is not done")
        return MappingProxyType(dict(entry.stats))

    def attempts(self, shard: int) -> int:
        return self._shards[shard].attempts if shard in self._shards else 0

    def counted(self, shard: int) -> int:
        """The samples of done ``shard`` that count toward the target."""
        entry = self._shards[shard]
        assert entry.stats is not None
        return int(entry.stats["accepted"]) if entry.counted is None else entry.counted

    def copies(self, shard: int) -> list[Copy]:
        entry = self._shards.get(shard)
        return list(entry.copies.values()) if entry else []

    def is_live(self, copy_id: int) -> bool:  # out, not dropped (only in-flight shards have copies)
        copy = self._out.get(copy_id)
        return copy is not None and copy_id in self._shards[copy.shard].copies

    def decides(self, copy_id: int) -> bool:
        """Is the copy its in-flight shard's only live copy (its outcome decides the shard)?"""
        return self.is_live(copy_id) and len(self._shards[self._out[copy_id].shard].copies) == 1

    def load(self, worker: int) -> int:
        """Calls out on ``worker``: live copies and dropped ones that have not returned."""
        return sum(c.worker == worker for c in self._out.values())

    def errors(self) -> dict[int, str]:  # the first line of each failed shard's last error
        return {s: e.error or "" for s, e in sorted(self._shards.items()) if e.state == "failed"}

    def _resolved(self) -> Iterator[tuple[int, _Shard]]:
        """The unbroken run of done or failed shards from shard 0, in order."""
        shard = 0
        while (entry := self._shards.get(shard)) is not None and entry.state in ("done", "failed"):
            yield shard, entry
            shard += 1

    def committed_prefix(self) -> list[int]:
        """Done shards of the unbroken run of done or failed shards from 0, in order."""
        return [s for s, e in self._resolved() if e.state == "done"]

    def complete_prefix(self) -> tuple[int | None, int]:
        """(last shard of the shortest prefix whose counted samples reach the target, or the
        shard a policy finished at short of it, or None; the counted samples of the committed
        prefix, up to that shard)."""
        total = 0
        for shard, entry in self._resolved():
            if entry.state == "done":
                total += self.counted(shard)
                if total >= self.rules.target or shard == self._finish_at:
                    return shard, total
        return None, total

    def rate(self) -> float:
        """Counted samples per planned sample over done shards (the recipe's guess before any)."""
        done = [s for s, e in self._shards.items() if e.state == "done"]
        planned = sum(int(self._shards[s].stats["planned"]) for s in done)  # type: ignore[index]
        if planned == 0:
            return self.rules.expected_acceptance_rate
        return sum(self.counted(s) for s in done) / planned

    def outcome(self) -> tuple[list[int], list[int], list[int]]:
        """(indexed shards, surplus shards, failed shards inside the prefix) of a complete prefix."""
        last = self.complete_prefix()[0]
        if last is None:
            raise LedgerError("the prefix is not complete: no outcome yet")
        done = sorted(s for s, e in self._shards.items() if e.state == "done")
        failed = sorted(s for s, e in self._shards.items() if e.state == "failed" and s < last)
        return [s for s in done if s <= last], [s for s in done if s > last], failed

    # -- what to send ---------------------------------------------------------------------
    def _frontier(self) -> int:
        """Lowest shard that is planned and not queued (nothing below it is waiting to be sent)."""
        while (e := self._shards.get(self._low)) is not None and e.state in ("done", "failed"):
            self._low += 1
        shard = self._low
        while (e := self._shards.get(shard)) is not None and (e.state != "planned" or e.queued):
            shard += 1
        return shard

    def _wants_frontier(self) -> bool:
        """Send the frontier while a policy asks for more shards, or while the projection
        falls short of the target; never one a policy holds back."""
        held = self._send_below is not None and self._frontier() >= self._send_below
        return not held and (self._more > 0 or self._projected_short())

    def _projected_short(self) -> bool:
        """Over-provision from the running rate: do the counted samples projected for the
        shards below the frontier (done ones counted, in-flight ones at the rate) fall short?
        Never once a policy finished the dataset short of the target."""
        if self._finish_at is not None:
            return False
        frontier = self._frontier()
        rate = self.rate()
        projected = 0.0
        for shard, entry in self._shards.items():
            if shard < frontier and entry.state == "done":
                projected += self.counted(shard)
            elif shard < frontier and entry.state == "in_flight":
                projected += rate * entry.planned
        return projected < self.rules.target

    def wants_more(self) -> bool:
        """Is there a shard to send (a queued one, or the frontier)?"""
        return bool(self._queue) or self._wants_frontier()

    def next_shard(self, worker: int | None = None) -> int | None:
        """The shard to send to ``worker`` next: a queued one (not the one that last failed on
        this worker, when there are other workers), else the frontier if wanted; None if
        nothing suits. Raises ``BuildError`` when the frontier would pass the shard limit."""
        for shard in self._queue:
            if self.rules.workers == 1 or worker is None or self._shards[shard].failed_on != worker:
                return shard
        if not self._wants_frontier():
            return None
        shard = self._frontier()
        if shard >= self.rules.shard_limit():
            self._stop(self.rules.limit_message(shard))
        return shard

    # -- transitions ----------------------------------------------------------------------
    def _entry(self, shard: int) -> _Shard:
        if shard < 0:
            raise LedgerError(f"no shard {shard}")
        return self._shards.setdefault(shard, _Shard())

    def start(self, shard: int, worker: int, now: float, *, planned: int = 0, backup: bool = False) -> Copy:
        """Send ``shard`` (``planned`` samples) to ``worker``: planned -> in flight, or, as a
        backup, a second copy of an in-flight shard on another worker."""
        entry = self._entry(shard)
        if backup:
            if entry.state != "in_flight" or len(entry.copies) != 1:
                raise LedgerError(f"shard {shard}: a backup needs exactly one live copy ({entry.state})")
            if next(iter(entry.copies.values())).worker == worker:
                raise LedgerError(f"shard {shard}: its backup must run on another worker than {worker}")
        else:
            if entry.state != "planned":
                raise LedgerError(f"shard {shard} is {entry.state}; only a planned shard starts")
            if shard >= self.rules.shard_limit():
                raise LedgerError(f"shard {shard} is beyond the limit of {self.rules.shard_limit()} shards")
            if self._more > 0 and not entry.queued and shard == self._frontier() and not self._projected_short():
                self._more -= 1  # sent because a policy asked for it
            self._dequeue(shard)
            entry.state, entry.planned = "in_flight", planned
        copy = Copy(next(self._ids), shard, worker, entry.attempts + 1, now, planned, backup)
        entry.copies[copy.id] = self._out[copy.id] = copy
        return copy

    def _dequeue(self, shard: int) -> None:
        if self._shards[shard].queued:
            self._shards[shard].queued = False
            self._queue.remove(shard)

    def _requeue(self, shard: int, entry: _Shard) -> None:
        entry.state, entry.queued = "planned", True
        bisect.insort(self._queue, shard)

    def _take(self, copy_id: int) -> tuple[Copy, _Shard, bool]:
        """Remove a copy whose call returned: (the copy, its shard, was it live)."""
        copy = self._out.pop(copy_id, None)
        if copy is None:
            raise LedgerError(f"copy {copy_id} is not out (never started, or already returned)")
        entry = self._shards[copy.shard]
        return copy, entry, entry.copies.pop(copy_id, None) is not None

    def finish(self, copy_id: int, stats: Stats) -> list[Copy]:
        """The copy committed its shard: in flight -> done. Returns the other live copies, now
        dropped (the caller tells them to stop; their calls still return)."""
        copy, entry, live = self._take(copy_id)
        if not live or entry.state != "in_flight":
            raise LedgerError(f"shard {copy.shard}: copy {copy_id} cannot commit a {entry.state} shard")
        return self._done(copy.shard, entry, stats)

    def _done(self, shard: int, entry: _Shard, stats: Stats) -> list[Copy]:
        dropped = list(entry.copies.values())
        entry.copies.clear()
        self._dequeue(shard)
        entry.state, entry.stats, entry.error = "done", dict(stats), None
        self.session_done += 1
        return dropped

    def superseded(self, copy_id: int, committed: Stats | None) -> bool:
        """The copy found its shard committed by another; ``committed`` is the shard's stats
        on disk (None: gone since). When no other copy decides, the shard is done with those
        stats, or planned again without counting an attempt. Returns whether it became done."""
        copy, entry, live = self._take(copy_id)
        if not live or entry.state != "in_flight" or entry.copies:
            return False
        if committed is not None:
            self._done(copy.shard, entry, committed)
            return True
        self._requeue(copy.shard, entry)
        return False

    def requeue(self, copy_id: int) -> bool:
        """The copy was lost through no fault of its shard (queued behind a hung one on a
        restarted worker): planned again, no attempt counted, unless another copy decides."""
        copy, entry, live = self._take(copy_id)
        if not live or entry.state != "in_flight" or entry.copies:
            return False
        self._requeue(copy.shard, entry)
        return True

    def fail(self, copy_id: int, error: str, kind: FailureKind = "error") -> Failure | None:
        """The copy failed. Counted only when it was the shard's last live copy: then the shard
        is planned again (queued), or failed for good after ``max_attempts`` attempts. None when
        not counted (the copy was dropped, or another copy still decides). Call
        :meth:`stop_reason` after recording it."""
        copy, entry, live = self._take(copy_id)
        if not live or entry.state != "in_flight" or entry.copies:
            return None
        entry.attempts += 1
        entry.error = first_line(error)
        cause, new = self.log.add(copy.shard, entry.error, worker=copy.worker, kind=kind)
        if entry.attempts >= self.rules.max_attempts:
            entry.state = "failed"
            self.session_failed.add(copy.shard)
            return Failure(copy.shard, False, cause, new)
        entry.failed_on = copy.worker
        self._requeue(copy.shard, entry)
        return Failure(copy.shard, True, cause, new)

    def timeout(self, copy_id: int, error: str) -> Failure | None:  # no progress: a counted failure
        return self.fail(copy_id, error, "timeout")

    # -- policies -------------------------------------------------------------------------
    def consult(self, policy: PrefixPolicy) -> PolicyDecision:
        """Show ``policy`` the committed prefix and apply its decision (``PolicyDecision.wrong_for``: checked)."""
        shards, resolved = tuple(self.committed_prefix()), len([*self._resolved()])
        stats = MappingProxyType({s: self.stats(s) for s in shards})
        decision = policy.review(prefix := CommittedPrefix(shards, stats, self.rules.target, resolved))
        if (wrong := decision.wrong_for(prefix)) is not None:
            raise LedgerError(wrong)
        for shard, n in decision.counted.items():
            self._shards[shard].counted = n
        self._more += decision.more_shards
        self._send_below, self._finish_at = decision.send_below, decision.finish_at
        return decision

    # -- stop rules -----------------------------------------------------------------------
    def stop_reason(self) -> str | None:
        """Why the failures so far say the target cannot be reached, or None (the rules are
        ``LedgerRules``'s, documented there)."""
        done = sum(e.state == "done" for e in self._shards.values())
        failed = sum(e.state == "failed" for e in self._shards.values())
        return self.rules.stop_reason(self.log, self.session_done, len(self.session_failed), done, failed)

    def check_stop(self) -> None:
        """Raise ``BuildError`` with the failure report when :meth:`stop_reason` says stop."""
        reason = self.stop_reason()
        if reason is not None:
            self._stop(reason)

    def _stop(self, reason: str) -> NoReturn:
        raise BuildError(failure_report(reason, self.errors(), self.log, self.rules.run_dir))

    def check_floor(self) -> None:
        """Raise ``BuildError`` when the acceptance rate is below the floor (see ``LedgerRules``)."""
        done = [e.stats for _, e in sorted(self._shards.items()) if e.state == "done" and e.stats is not None]
        message = self.rules.floor_message(self.rate(), done)
        if message is not None:
            raise BuildError(message)

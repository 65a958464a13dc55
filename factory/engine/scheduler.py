"""Driver-side bookkeeping of a build: which shard runs next, retries, and the stop rule.

The dataset never depends on timing: it is the shortest prefix of shards, in shard order
(permanently failed shards skipped), whose accepted count reaches the target. Shards that
finish beyond that prefix are kept on disk as surplus but not indexed, so an interrupted
and resumed build indexes exactly what an uninterrupted one would.

Nothing here talks to Ray or to the workers; ``factory.engine.build`` does, and asks the
:class:`Scheduler` what to do.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from typing import Any, NoReturn

from factory.engine.failures import Cause, FailureKind, FailureLog, failure_report
from factory.engine.rundir import RunDir
from factory.recipe import Recipe
from manifests.errors import ReportError

__all__ = ["BuildError", "Scheduler", "drop_reason_summary", "prefix"]


class BuildError(ReportError, RuntimeError):
    """The build cannot go on; the message says why and what to do."""


def drop_reason_summary(stats: list[dict[str, Any]], top: int = 5) -> list[tuple[str, str, int]]:
    """Most frequent (stage, reason, count) over shard stats."""
    counts: Counter[tuple[str, str]] = Counter()
    for s in stats:
        for stage, reasons in s.get("drop_reasons", {}).items():
            for reason, n in reasons.items():
                counts[(stage, reason)] += n
    return [(stage, reason, n) for (stage, reason), n in counts.most_common(top)]


def prefix(done: dict[int, dict[str, Any]], failed: set[int], target: int) -> tuple[int | None, int]:
    """(last shard of the shortest complete prefix or None, accepted count of done prefix)."""
    accepted, shard = 0, 0
    while shard in done or shard in failed:
        if shard in done:
            accepted += int(done[shard]["accepted"])
            if accepted >= target:
                return shard, accepted
        shard += 1
    return None, accepted


class Scheduler:
    """Which shard goes next, retries, the acceptance floor, the failure rules and the stop rule.

    Failure rules (``engine.*``; each stops the build with a report grouped by cause):

    * the same error on ``fail_fast_shards`` shards, from at least two workers, before any
      shard of this session succeeded: it is the setup, not bad luck; stop at once;
    * ``fail_fast_shards`` shards failed for good before any shard of this session succeeded;
    * after ``failure_check_after_shards`` finished shards, a failed share above
      ``max_failed_share``;
    * never a shard at or beyond :meth:`shard_limit`, so no build schedules shards without bound.
    """

    def __init__(self, recipe: Recipe, run: RunDir, done: dict[int, dict[str, Any]], workers: int = 1) -> None:
        self.recipe = recipe
        self.run = run
        self.done = done
        self.workers = workers
        self.target = recipe.dataset.target
        self.max_attempts = recipe.engine.max_retries + 1
        recorded = run.failures()
        self.attempts = {s: len(f["errors"]) for s, f in recorded.items()}
        self.failed = {s for s, n in self.attempts.items() if n >= self.max_attempts}
        self.errors = {s: _first_line(recorded[s]["errors"][-1]["error"]) for s in self.failed}
        self.retry: list[int] = []  # sorted; small (shards waiting for another attempt)
        self.failed_on: dict[int, int] = {}  # shard -> worker its last attempt failed on
        self.in_flight: dict[int, int] = {}  # shard -> planned samples
        self.log = FailureLog()
        self.session_done = 0
        self.session_failed: set[int] = set()
        self._low = 0  # every shard below is done or failed for good

    def rate(self) -> float:
        planned = sum(int(s["planned"]) for s in self.done.values())
        if planned == 0:
            return self.recipe.engine.expected_acceptance_rate
        return sum(int(s["accepted"]) for s in self.done.values()) / planned

    def _frontier(self) -> int:
        """Lowest shard that is neither done, failed, in flight nor waiting for a retry."""
        while self._low in self.done or self._low in self.failed:
            self._low += 1
        shard = self._low
        while shard in self.done or shard in self.failed or shard in self.in_flight or shard in self.retry:
            shard += 1
        return shard

    def finished(self) -> tuple[int | None, int]:
        """(last shard of the complete prefix or None, accepted in the done prefix)."""
        return prefix(self.done, self.failed, self.target)

    def _wants_frontier(self) -> bool:
        """Over-provision from the running acceptance rate: everything below the frontier is
        done, failed or in flight; schedule the frontier while the accepted count projected
        for that prefix falls short of the target."""
        frontier = self._frontier()
        projected = sum(int(s["accepted"]) for k, s in self.done.items() if k < frontier)
        projected += self.rate() * sum(n for k, n in self.in_flight.items() if k < frontier)
        return projected < self.target

    def want_more(self) -> bool:
        """Is there a shard to send out (a retry, or the frontier)?"""
        return bool(self.retry) or self._wants_frontier()

    def take(self, worker: int | None = None) -> int | None:
        """The next shard for ``worker``: a retry (one that did not last fail on this worker,
        when there are other workers), else the frontier if wanted; None if nothing suits."""
        for shard in self.retry:
            if self.workers == 1 or worker is None or self.failed_on.get(shard) != worker:
                self.retry.remove(shard)
                return shard
        if not self._wants_frontier():
            return None
        shard = self._frontier()
        if shard >= self.shard_limit():
            self._stop(
                f"build stopped: shard {shard} would pass the limit of {self.shard_limit()} shards "
                "(engine.max_shards, or what the target needs at engine.min_acceptance_rate with "
                "engine.max_failed_share of the shards failing)"
            )
        return shard

    def shard_limit(self) -> int:
        """The most shards a build may plan: ``engine.max_shards``, else what the target needs
        when every shard accepts ``min_acceptance_rate`` (at least 0.1%) and ``max_failed_share``
        of them fail, plus the shards the failure check waits for."""
        engine = self.recipe.engine
        if engine.max_shards is not None:
            return engine.max_shards
        per_shard = self.recipe.dataset.shard_size * max(engine.min_acceptance_rate, 0.001)
        needed = math.ceil(self.target / per_shard)
        return math.ceil(needed / max(1.0 - engine.max_failed_share, 0.1)) + engine.failure_check_after_shards

    def started(self, shard: int, planned: int) -> int:
        """Record that ``shard`` (``planned`` samples) was sent out; returns its attempt number."""
        self.in_flight[shard] = planned
        return self.attempts.get(shard, 0) + 1

    def requeue(self, shard: int) -> None:
        """Send ``shard`` out again without counting an attempt (its worker was restarted
        because another shard on it hung)."""
        self.in_flight.pop(shard, None)
        if shard not in self.done and shard not in self.retry:
            bisect.insort(self.retry, shard)

    def succeeded(self, shard: int, brief: dict[str, Any]) -> None:
        self.in_flight.pop(shard, None)
        if shard in self.retry:
            self.retry.remove(shard)
        self.done[shard] = brief
        self.session_done += 1
        self.run.clear_failure(shard)

    def failure(
        self, shard: int, error: str, *, worker: int | None = None, kind: FailureKind = "error"
    ) -> tuple[bool, Cause, bool]:
        """Record a failed attempt (``error``: its first line is the root cause); returns
        (will it be retried, its cause, is the cause new). Raises :class:`BuildError` when a
        failure rule says the build cannot succeed."""
        self.in_flight.pop(shard, None)
        root = _first_line(error)
        n = self.run.record_failure(shard, error)
        self.attempts[shard] = n
        cause, new = self.log.add(shard, root, worker=worker, kind=kind)
        if n >= self.max_attempts:
            self.failed.add(shard)
            self.session_failed.add(shard)
            self.errors[shard] = root
            retry = False
        else:
            if worker is not None:
                self.failed_on[shard] = worker
            bisect.insort(self.retry, shard)
            retry = True
        self.check_failures()
        return retry, cause, new

    def check_failures(self) -> None:
        """Stop (BuildError) when the failures so far say the target cannot be reached."""
        engine = self.recipe.engine
        k = engine.fail_fast_shards
        if self.session_done == 0:
            for cause in self.log.causes.values():
                if cause.kind == "error" and len(cause.shards) >= k and len(cause.workers) >= min(2, self.workers):
                    self._stop(
                        f"build stopped: the same error on {len(cause.shards)} shards, on {len(cause.workers)} "
                        "worker(s), before any shard succeeded (engine.fail_fast_shards)"
                    )
            if len(self.session_failed) >= k:
                self._stop(
                    f"build stopped: the first {len(self.session_failed)} shards to finish all failed, each "
                    f"after {self.max_attempts} attempt(s) (engine.fail_fast_shards)"
                )
        finished = len(self.done) + len(self.failed)
        if finished >= engine.failure_check_after_shards and len(self.failed) / finished > engine.max_failed_share:
            self._stop(
                f"build stopped: {len(self.failed)} of {finished} finished shards failed, more than "
                f"engine.max_failed_share={engine.max_failed_share}"
            )

    def _stop(self, reason: str) -> NoReturn:
        raise BuildError(failure_report(reason, self.errors, self.log, str(self.run.root)))

    def check_floor(self) -> None:
        engine = self.recipe.engine
        if len(self.done) < engine.rate_check_after_shards:
            return
        rate = self.rate()
        if rate < engine.min_acceptance_rate or rate == 0.0:
            reasons = drop_reason_summary(list(self.done.values()))
            lines = "\n".join(f"  {stage}: {reason} ({n})" for stage, reason, n in reasons) or "  (none recorded)"
            raise BuildError(
                f"acceptance rate {rate:.3f} after {len(self.done)} shards is below "
                f"engine.min_acceptance_rate={engine.min_acceptance_rate}; top drop reasons by stage:\n"
                f"{lines}\nLoosen the failing filter or fix the stage, then run the same command again."
            )

    def outcome(self, last: int) -> tuple[list[int], list[int], dict[int, str]]:
        """(indexed shards, surplus shards, failed shards inside the prefix with their last error)."""
        indexed = [s for s in range(last + 1) if s in self.done]
        surplus = sorted(s for s in self.done if s > last)
        failures = self.run.failures()
        failed = {s: failures[s]["errors"][-1]["error"] for s in sorted(self.failed) if s < last}
        return indexed, surplus, failed


def _first_line(error: str) -> str:
    lines = error.strip().splitlines()
    return lines[0] if lines else error

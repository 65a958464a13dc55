"""Driver-side bookkeeping of a build: which shard runs next, retries, and the stop rule.

The dataset never depends on timing: it is the shortest prefix of shards, in shard order
(permanently failed shards skipped), whose accepted count reaches the target. Shards that
finish beyond that prefix are kept on disk as surplus but not indexed, so an interrupted
and resumed build indexes exactly what an uninterrupted one would.

Nothing here talks to Ray or to the workers; ``factory.engine.build`` does, and asks the
:class:`Scheduler` what to do.
"""

from __future__ import annotations

import heapq
from collections import Counter
from typing import Any

from factory.engine.rundir import RunDir
from factory.recipe import Recipe

__all__ = ["BuildError", "Scheduler", "drop_reason_summary", "prefix"]


class BuildError(RuntimeError):
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
    """Which shard goes next, retries, the acceptance floor and the stop rule."""

    def __init__(self, recipe: Recipe, run: RunDir, done: dict[int, dict[str, Any]]) -> None:
        self.recipe = recipe
        self.run = run
        self.done = done
        self.target = recipe.dataset.target
        self.max_attempts = recipe.engine.max_retries + 1
        self.attempts = {s: len(f["errors"]) for s, f in run.failures().items()}
        self.failed = {s for s, n in self.attempts.items() if n >= self.max_attempts}
        self.retry: list[int] = []
        self.in_flight: dict[int, int] = {}  # shard -> planned samples

    def rate(self) -> float:
        planned = sum(int(s["planned"]) for s in self.done.values())
        if planned == 0:
            return self.recipe.engine.expected_acceptance_rate
        return sum(int(s["accepted"]) for s in self.done.values()) / planned

    def _frontier(self) -> int:
        """Lowest shard that is neither done, failed nor in flight."""
        shard = 0
        while shard in self.done or shard in self.failed or shard in self.in_flight:
            shard += 1
        return shard

    def finished(self) -> tuple[int | None, int]:
        """(last shard of the complete prefix or None, accepted in the done prefix)."""
        return prefix(self.done, self.failed, self.target)

    def want_more(self) -> bool:
        """Schedule another shard? Over-provision from the running acceptance rate.

        Everything below the frontier is done, failed or in flight; schedule the frontier
        while the accepted count projected for that prefix falls short of the target.
        """
        if self.retry:
            return True
        frontier = self._frontier()
        projected = sum(int(s["accepted"]) for k, s in self.done.items() if k < frontier)
        projected += self.rate() * sum(n for k, n in self.in_flight.items() if k < frontier)
        return projected < self.target

    def take(self) -> int:
        return heapq.heappop(self.retry) if self.retry else self._frontier()

    def started(self, shard: int, planned: int) -> int:
        """Record that ``shard`` (``planned`` samples) was sent out; returns its attempt number."""
        self.in_flight[shard] = planned
        return self.attempts.get(shard, 0) + 1

    def succeeded(self, shard: int, brief: dict[str, Any]) -> None:
        self.in_flight.pop(shard, None)
        self.done[shard] = brief
        self.run.clear_failure(shard)

    def failure(self, shard: int, error: str) -> bool:
        """Record a failed attempt; True when the shard will be retried."""
        self.in_flight.pop(shard, None)
        n = self.run.record_failure(shard, error)
        self.attempts[shard] = n
        if n >= self.max_attempts:
            self.failed.add(shard)
            return False
        heapq.heappush(self.retry, shard)
        return True

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

"""The numbers the shard ledger's rules read (``dataset.*`` and ``engine.*``), and the rules
that stop a build: the failure rules, the acceptance floor and the shard limit.

Failure rules (each stops the build with a report grouped by cause):

* a full disk (``failures.is_environmental``), on the first attempt that meets it;
* the same error on ``fail_fast_shards`` shards, from at least two workers, before any shard
  of this session succeeded: it is the setup, not bad luck; stop at once;
* ``fail_fast_shards`` shards failed for good before any shard of this session succeeded;
* after ``failure_check_after_shards`` finished shards, a failed share above
  ``max_failed_share``;
* never a shard at or beyond :meth:`LedgerRules.shard_limit`, so no build schedules shards
  without bound.

The acceptance floor: after ``rate_check_after_shards`` done shards, a rate below
``min_acceptance_rate`` (or zero) stops the build, naming the most frequent drop reasons.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from factory.engine.failures import FailureLog
from factory.recipe import Recipe

__all__ = ["LedgerRules", "drop_reason_summary"]


def drop_reason_summary(stats: Sequence[Mapping[str, Any]], top: int = 5) -> list[tuple[str, str, int]]:
    """Most frequent (stage, reason, count) over shard stats."""
    counts: Counter[tuple[str, str]] = Counter()
    for s in stats:
        for stage, reasons in s.get("drop_reasons", {}).items():
            for reason, n in reasons.items():
                counts[(stage, reason)] += n
    return [(stage, reason, n) for (stage, reason), n in counts.most_common(top)]


@dataclass(frozen=True)
class LedgerRules:
    """What the ledger's rules read; ``run_dir`` is only named in the stop report."""

    target: int
    shard_size: int
    workers: int = 1
    max_attempts: int = 3
    fail_fast_shards: int = 3
    max_failed_share: float = 0.1
    failure_check_after_shards: int = 20
    max_shards: int | None = None
    min_acceptance_rate: float = 0.01
    rate_check_after_shards: int = 3
    expected_acceptance_rate: float = 0.5
    run_dir: str = "."

    @classmethod
    def from_recipe(cls, recipe: Recipe, workers: int, run_dir: str) -> LedgerRules:
        engine = recipe.engine
        return cls(
            target=recipe.dataset.target,
            shard_size=recipe.dataset.shard_size,
            workers=workers,
            max_attempts=engine.max_retries + 1,
            fail_fast_shards=engine.fail_fast_shards,
            max_failed_share=engine.max_failed_share,
            failure_check_after_shards=engine.failure_check_after_shards,
            max_shards=engine.max_shards,
            min_acceptance_rate=engine.min_acceptance_rate,
            rate_check_after_shards=engine.rate_check_after_shards,
            expected_acceptance_rate=engine.expected_acceptance_rate,
            run_dir=run_dir,
        )

    def shard_limit(self) -> int:
        """The most shards a build may plan: ``max_shards``, else what the target needs when
        every shard accepts ``min_acceptance_rate`` (at least 0.1%) and ``max_failed_share``
        of them fail, plus the shards the failure check waits for."""
        if self.max_shards is not None:
            return self.max_shards
        needed = math.ceil(self.target / (self.shard_size * max(self.min_acceptance_rate, 0.001)))
        return math.ceil(needed / max(1.0 - self.max_failed_share, 0.1)) + self.failure_check_after_shards

    def limit_message(self, shard: int) -> str:
        return (
            f"build stopped: shard {shard} would pass the limit of {self.shard_limit()} shards "
            "(engine.max_shards, or what the target needs at engine.min_acceptance_rate with "
            "engine.max_failed_share of the shards failing)"
        )

    def stop_reason(
        self, log: FailureLog, session_done: int, session_failed: int, done: int, failed: int
    ) -> str | None:
        """Why the build must stop, or None: ``log`` holds this session's failed attempts,
        ``session_*`` count this session's done and failed-for-good shards, ``done`` and
        ``failed`` all of them."""
        k = self.fail_fast_shards
        for cause in log.causes.values():
            if cause.kind == "disk_full":  # every shard would fail the same way: stop at the first
                return f"build stopped: the disk is full (shard(s) {sorted(cause.shards)} could not be written)"
        if session_done == 0:
            for cause in log.causes.values():
                if cause.kind == "error" and len(cause.shards) >= k and len(cause.workers) >= min(2, self.workers):
                    return (
                        f"build stopped: the same error on {len(cause.shards)} shards, on {len(cause.workers)} "
                        "worker(s), before any shard succeeded (engine.fail_fast_shards)"
                    )
            if session_failed >= k:
                return (
                    f"build stopped: the first {session_failed} shards to finish all failed, each "
                    f"after {self.max_attempts} attempt(s) (engine.fail_fast_shards)"
                )
        finished = done + failed
        if finished >= self.failure_check_after_shards and failed / finished > self.max_failed_share:
            return (
                f"build stopped: {failed} of {finished} finished shards failed, more than "
                f"engine.max_failed_share={self.max_failed_share}"
            )
        return None

    def floor_message(self, rate: float, done: Sequence[Mapping[str, Any]]) -> str | None:
        """The acceptance floor's stop message for ``rate`` over the ``done`` shards' stats, or None."""
        if len(done) < self.rate_check_after_shards or (rate >= self.min_acceptance_rate and rate != 0.0):
            return None
        reasons = drop_reason_summary(done)
        lines = "\n".join(f"  {stage}: {reason} ({n})" for stage, reason, n in reasons) or "  (none recorded)"
        return (
            f"acceptance rate {rate:.3f} after {len(done)} shards is below "
            f"engine.min_acceptance_rate={self.min_acceptance_rate}; top drop reasons by stage:\n"
            f"{lines}\nLoosen the failing filter or fix the stage, then run the same command again."
        )

"""The ledger's declared hook: policies that read the committed prefix and say what counts.

A :class:`PrefixPolicy` reads the *committed prefix* (the done shards
of the unbroken run from shard 0, failed ones skipped, in shard order, each with its stats)
and answers with a :class:`PolicyDecision`: how many of each listed shard's accepted samples
count toward the target (never more than it accepted), and how many more shards it wants
sent beyond what the projection from the acceptance rate asks for. The ledger validates the
decision and applies it; a policy never writes into the ledger. The identity bank's
deduplication (``factory.engine.dedup``) counts only distinct identities this way. A
closed-loop planner builds on the same hook: it reads the committed prefix in order,
measures yields from the shards' stats, lowers what counts (samples it holds back as
surplus), plans later rounds from what it measured and holds back the shards of a round not
planned yet (``send_below``); the prefix and stop rules then follow its counts, so the
dataset still depends only on what was committed.

The ledger (``factory.engine.ledger.Ledger.consult``) refuses a decision that counts a shard
outside the committed prefix, counts more than a shard accepted, asks for fewer than zero
shards, holds back a shard of the resolved prefix, or finishes at a shard outside the committed
prefix.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["CommittedPrefix", "PolicyDecision", "PrefixPolicy", "Stats"]

Stats = Mapping[str, Any]


@dataclass(frozen=True)
class CommittedPrefix:
    """What a policy sees: the committed prefix in shard order, each shard's stats (read-only)."""

    shards: tuple[int, ...]
    stats: Mapping[int, Stats]
    target: int
    resolved: int = 0  # shards 0 .. resolved-1 are all done or failed (the prefix's extent)


@dataclass(frozen=True)
class PolicyDecision:
    """A policy's answer: ``counted`` maps a prefix shard to the samples of it that count
    (at most what it accepted; shards not named keep their count); ``more_shards`` asks for
    that many frontier shards beyond what the projection wants (within the shard limit);
    ``send_below``, when set, holds back frontier shards from it on (their plans depend on
    shards not committed yet: a closed-loop planning round); ``finish_at``, when set, ends the
    dataset at that shard of the committed prefix, short of the target (the policy will count no
    more: a closed loop past its waste bound), so the prefix is complete there."""

    counted: Mapping[int, int] = field(default_factory=dict)
    more_shards: int = 0
    send_below: int | None = None
    finish_at: int | None = None

    def wrong_for(self, prefix: CommittedPrefix) -> str | None:
        """What makes this decision illegal for ``prefix`` (the ledger refuses it), or None."""
        for shard, n in self.counted.items():
            if shard not in prefix.stats or not 0 <= n <= int(prefix.stats[shard]["accepted"]):
                return f"a policy counted {n} samples of shard {shard}, outside the committed prefix"
        if self.more_shards < 0:
            return "a policy asked for a negative number of shards"
        if self.send_below is not None and self.send_below < prefix.resolved:
            return f"a policy held back shard {self.send_below}, inside the resolved prefix"
        if self.finish_at is not None and self.finish_at not in prefix.stats:
            return f"a policy finished the dataset at shard {self.finish_at}, outside the committed prefix"
        return None


class PrefixPolicy(Protocol):
    def review(self, prefix: CommittedPrefix) -> PolicyDecision:
        """Called by the ledger after every batch of outcomes; must not change ``prefix``."""
        ...

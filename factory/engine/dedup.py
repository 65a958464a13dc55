"""The bank-wide deduplication of an identity-bank build, as the build runs.

Why here, at the commit side of the build: whether a portrait repeats an identity depends
on every portrait kept before it, so no shard worker can decide it alone, and deciding it
as shards finish (in whatever order) would make the bank depend on timing. Instead the
decisions are made in dataset order, shard by shard, as soon as a shard and every shard
before it are done (:func:`manifests.dedup.dedup_shard`; failed shards are skipped, as
the prefix rule skips them). :class:`DedupPolicy` is the ledger's prefix policy
(``factory.engine.ledger.PrefixPolicy``): it tells the ledger how many of each decided
shard's samples count, its *kept* identities, so ``dataset.target`` = 50,000 means 50,000
distinct identities, and the index (written last) leaves the duplicates out.

The kept embeddings live in one :class:`BankDeduplicator` actor on the driver's node (its
memory grows with the bank: 26 MB per 50,000 dlib identities); the driver keeps one count
per decided shard. Each shard's decisions are written beside it, so a resumed build reads them back
instead of recomputing, and a retried earlier shard (``factory retry``) makes every later
decision be taken again, in order.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cluster.actors import ActorSpec, call, kill, result, start_actors, wait_ready
from cluster.ray_cluster import ClusterError
from factory.engine.failures import BuildError
from factory.engine.policy import CommittedPrefix, PolicyDecision
from factory.recipe import Recipe
from factory.sections import IDENTITY_BANK
from manifests.dedup import KeptIdentities, dedup_shard
from manifests.layout import RunLayout
from stages.portrait import DEDUP_THRESHOLDS

__all__ = ["BankDeduplicator", "DedupPolicy", "bank_dedup", "dedup_threshold"]


def dedup_threshold(recipe: Recipe) -> float:
    """``bank.dedup_threshold``, else the default of the portrait filter's embedder."""
    if recipe.bank.dedup_threshold is not None:
        return recipe.bank.dedup_threshold
    embedder = getattr(recipe.stage_config("filters"), "embedder", "dlib")
    return DEDUP_THRESHOLDS.get(embedder, DEDUP_THRESHOLDS["dlib"])


class BankDeduplicator:
    """Holds the kept identities and decides shards in dataset order (an actor)."""

    def __init__(self, run_dir: str, dataset: str, threshold: float) -> None:
        self.layout = RunLayout(run_dir, dataset)
        self.threshold = threshold
        self.kept = KeptIdentities()
        self.order: list[int] = []  # shards decided so far, in dataset order

    def info(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "stage": "dedup"}

    def advance(self, prefix: list[int]) -> dict[int, dict[str, int]]:
        """Decide every shard of ``prefix`` (the done shards of the complete prefix, in order)
        not decided yet; returns per shard its accepted, unique and duplicate counts. A
        prefix that does not extend the shards decided so far (a retried shard now sits
        among them) starts over from the first shard, reusing each file that still holds."""
        if self.order != prefix[: len(self.order)]:
            self.kept, self.order = KeptIdentities(), []
        out = {}
        for shard in prefix[len(self.order) :]:
            decided = dedup_shard(self.layout.shard_paths(shard), shard, self.kept, self.threshold, list(self.order))
            self.order.append(shard)
            out[shard] = {"accepted": decided.accepted, "unique": decided.unique, "duplicates": decided.duplicates}
        return out


class DedupPolicy:
    """The driver's side, a prefix policy of the ledger: when the committed prefix grew, send
    it to the actor and count each newly decided shard's kept identities."""

    def __init__(self, actor: Any) -> None:
        self.actor = actor
        self.decided = 0

    def review(self, prefix: CommittedPrefix) -> PolicyDecision:
        if len(prefix.shards) <= self.decided:
            return PolicyDecision()
        decided = result(call(self.actor, "advance", list(prefix.shards)), passthrough=(ValueError,))
        self.decided = len(prefix.shards)
        return PolicyDecision(counted={shard: counts["unique"] for shard, counts in decided.items()})


@contextmanager
def bank_dedup(recipe: Recipe, run_root: Path) -> Iterator[DedupPolicy | None]:
    """The deduplication of an identity-bank build (``None`` for any other build)."""
    if recipe.dataset.kind != IDENTITY_BANK:
        yield None
        return
    args = (str(run_root), recipe.dataset.name, dedup_threshold(recipe))
    # A restarted actor starts empty: its next call rebuilds the kept set from the files.
    actor = start_actors(BankDeduplicator, args, ActorSpec(1, on_this_node=True))[0]
    try:
        try:
            wait_ready([actor])
        except ClusterError as exc:
            raise BuildError(str(exc)) from None
        yield DedupPolicy(actor)
    finally:
        kill([actor])

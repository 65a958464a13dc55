"""Closed-loop balance of the accepted dataset, as the build runs (``[balance] enabled = true``).

:class:`BalancePolicy` is a prefix policy of the ledger (``factory.engine.policy``), like the
identity bank's deduplication (``factory.engine.dedup``): each time the committed prefix grows it
decides the new shards, in dataset order, with :func:`manifests.balance.balance_shard` (which
accepted samples the index keeps, the rest surplus) and tells the ledger to count only the kept
ones, so ``dataset.target`` counts kept samples and the ledger's projection (counted per planned
sample) sends as many more shards as the selection needs. Decisions depend only on the
committed prefix in shard order, so a resumed build or one on another number of GPUs decides
the same; a prefix that no longer extends the decided one (a retried shard) is decided again
from the start.

It also plans the closed loop (``balance.round_shards`` > 0): the runner asks it for each
shard's plan (:meth:`BalancePolicy.shard`); the first round is the open loop's, each later round
is chosen from the yields of the committed prefix below the round's boundary
(``factory.engine.rounds``), and the policy holds back (``send_below``) the shards of a round
whose boundary is not resolved yet. Plans are written before their shard runs, so a resumed
build replays them.

The policy runs in the driver: its state is a few hundred counters, and it reads each shard's
manifest once (eight small columns). Waste bound: once the decided shards planned
``max_generated_per_accepted x target`` samples, every cell still short of its share (below it
by more than its tolerance) at that shard is infeasible, not chased (once): it keeps the share its
kept samples hold and the rest of its share goes to the other cells of its kind, so the full
cells that blocked the rest open up (a cell found infeasible by its yield keeps what it holds
too). At twice the bound the dataset ends short of the target at the shard that reached it
(``PolicyDecision.finish_at``): the slots left are reported (``short``, written into index.json),
never filled with samples that would pass a full cell, so every share the index holds stays
within its tolerance of the samples it could keep.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa

from factory.engine.ledger import LedgerError
from factory.engine.policy import CommittedPrefix, PolicyDecision
from factory.engine.rounds import POOL, WIDEN, Rounds, RoundWeights, choose_plan, held_back, round_weights
from factory.expressions import EMFACS_PROTOTYPES
from factory.plan import Planner
from factory.recipe import Recipe
from manifests.balance import ShardBalance, Tally, balance_shard
from manifests.balance_targets import BalanceTargets
from manifests.bank import IdentityRecord
from manifests.layout import RunLayout
from manifests.vocab import AGE_BANDS, DISFA_AUS, EMOTION_MIX_KEYS, ETHNICITIES, GENDERS

__all__ = [
    "BalancePolicy",
    "balance_policy",
    "balance_targets",
    "bank_infeasible",
    "bank_limits",
    "unshowable_emotions",
]


def _normalised(weights: dict[str, float], keys: Sequence[str]) -> dict[str, float]:
    total = sum(weights.get(k, 0.0) for k in keys)
    return {k: weights.get(k, 0.0) / total for k in keys}


def bank_infeasible(identities: Sequence[IdentityRecord] | None) -> list[str]:
    """Demographic groups no identity of the bank belongs to (none without a bank: every
    sample gets a new identity of its planned stratum)."""
    if not identities:
        return []
    have = {(kind, getattr(r, kind)) for r in identities for kind in ("ethnicity", "age_band", "gender")}
    groups = [("ethnicity", ETHNICITIES), ("age_band", AGE_BANDS), ("gender", GENDERS)]
    return [f"{kind}={g}" for kind, vocab in groups for g in vocab if (kind, g) not in have]


def bank_limits(identities: Sequence[IdentityRecord] | None, shares: Mapping[str, float]) -> dict[str, float]:
    """Demographic groups the bank can fill only in part: every identity of the group shows its
    own AUs (``IdentityRecord.expression``) in every plan it gets, so the group's samples all
    carry the AUs its identities share, at their lowest level or above; the group's share is
    limited to the least target share (``shares``) of such an AU at such levels. Only groups
    whose recipe share exceeds that limit are named (with the limit)."""
    groups: dict[str, list[np.ndarray]] = {}
    for record in identities or ():
        own = np.zeros(len(DISFA_AUS), np.int64)
        own[: len(record.own_intensity() or ())] = record.own_intensity() or ()
        for kind in ("ethnicity", "age_band", "gender"):
            groups.setdefault(f"{kind}={getattr(record, kind)}", []).append(own.clip(0, 5))
    limits = {}
    for cell, owns in sorted(groups.items()):
        shown = np.stack(owns).min(axis=0)  # an AU every identity of the group shows, at the lowest level
        room = [
            sum(shares.get(f"AU{au}={k}", 0.0) for k in range(int(level), 6))
            for au, level in zip(DISFA_AUS, shown.tolist(), strict=True)
            if level > 0 and f"AU{au}+" in shares
        ]
        if room and min(room) < shares.get(cell, 0.0):
            limits[cell] = min(room)
    return limits


def unshowable_emotions(recipe: Recipe, identities: Sequence[IdentityRecord] | None) -> list[str]:
    """Emotions of the recipe's mix no bank identity can show as planned: an identity whose photo
    shows AUs (``IdentityRecord.expression``) has them folded into every plan, so it shows an
    emotion only when the emotion's prototype holds them all (``mixed`` always), and never
    ``neutral``; an identity with a neutral or unrecorded expression shows any emotion."""
    wanted = [e for e in EMOTION_MIX_KEYS if recipe.emotions.mix.get(e, 0.0) > 0]
    if not identities:
        return []
    shown: set[str] = set()
    for record in identities:
        own = {au for au, level in zip(DISFA_AUS, record.own_intensity() or (), strict=False) if level > 0}
        if not own:
            return []  # a neutral-capable identity takes every plan
        shown.add("mixed")
        shown.update(e for e, (req, opt, _) in EMFACS_PROTOTYPES.items() if e != "neutral" and own <= {*req, *opt})
    return [e for e in wanted if e not in shown]


def balance_targets(recipe: Recipe, identities: Sequence[IdentityRecord] | None = None) -> BalanceTargets:
    """Every cell's share of the target and tolerance, from the recipe's shares and the
    ``[balance]`` tolerances; the bank's missing demographic groups infeasible, and those it
    can fill only in part (:func:`bank_limits`) infeasible above their limit."""
    section, aus = recipe.balance, recipe.aus
    shares: dict[str, float] = {}
    tolerances: dict[str, float] = {}
    weights = [w / sum(aus.intensity_weights) for w in aus.intensity_weights]
    for au in aus.units:
        share = aus.share(au)
        shares[f"AU{au}+"], shares[f"AU{au}-"] = share, 1.0 - share
        tolerances[f"AU{au}+"] = tolerances[f"AU{au}-"] = section.au_share_tolerance
        for level, w in enumerate(weights, start=1):
            shares[f"AU{au}={level}"] = w * share
            # the tolerance is on the level's share of the AU's active samples
            tolerances[f"AU{au}={level}"] = section.intensity_share_tolerance * share
    groups = (
        ("emotion", _normalised(recipe.emotions.mix, EMOTION_MIX_KEYS), section.emotion_tolerance),
        ("ethnicity", _normalised(recipe.demographics.ethnicity, ETHNICITIES), section.demographic_tolerance),
        ("age_band", _normalised(recipe.demographics.age_band, AGE_BANDS), section.demographic_tolerance),
        ("gender", _normalised(recipe.demographics.gender, GENDERS), section.demographic_tolerance),
    )
    for kind, table, tolerance in groups:
        for name, share in table.items():
            shares[f"{kind}={name}"], tolerances[f"{kind}={name}"] = share, tolerance
    targets = BalanceTargets(recipe.dataset.target, tuple(aus.units), shares, tolerances)
    targets = targets.with_infeasible(bank_infeasible(identities))
    limits = bank_limits(identities, targets.shares)
    return replace(targets, limits=limits).with_infeasible(limits)


class BalancePolicy:
    """The ledger's prefix policy of a balanced build, and the planner of its closed-loop
    rounds (see module docstring and ``factory.engine.rounds``)."""

    def __init__(
        self,
        layout: RunLayout,
        targets: BalanceTargets,
        *,
        tries: int,
        max_generated: float,
        planner: Planner | None = None,
        rounds: Rounds | None = None,
        infeasible_yield: float = 0.0,
    ) -> None:
        self.layout = layout
        self.base = targets
        self.tries = tries
        self.max_generated = max_generated
        self.infeasible_yield = infeasible_yield
        self.planner = planner
        self.rounds = rounds if rounds is not None and planner is not None else Rounds(0, 0)
        self._reset()

    def _reset(self) -> None:
        self.tally = Tally()
        self.targets = self.base
        self.order: list[int] = []  # shards decided so far, in dataset order
        self.decided: dict[int, ShardBalance] = {}
        self.gave_up = False  # the waste bound was reached and the short cells given up
        self.weights: dict[int, RoundWeights] = {}  # closed-loop round -> its mix
        self.finish_at: int | None = None  # the shard the dataset ends at, short of the target
        self.short: str | None = None  # why, and the slots left unfilled

    def _budget(self) -> float:
        """Generated samples so far, in units of the waste bound (``max_generated x target``)."""
        return self.tally.generated / (self.max_generated * self.base.target)

    def _advance_targets(self) -> None:
        """The targets the tally so far implies (cells found infeasible, the waste bound).
        Idempotent for one tally."""
        self._give_up(self.tally.infeasible(self.targets, self.tries, self.infeasible_yield))
        if self._budget() >= 1.0 and not self.gave_up:  # once: the shares it leaves are met from then on
            self._give_up(self.tally.short(self.targets))
            self.gave_up = True

    def _finish_short(self, shard: int) -> None:
        """Twice the waste bound generated and the target not reached: the dataset ends at
        ``shard`` with the samples kept so far (the cells that were full are named: no sample
        the build made could be kept without passing one)."""
        kept, target = self.tally.kept_total, self.base.target
        full = self.targets.full(self.tally.kept)
        self.finish_at = shard
        self.short = (
            f"{target - kept} of {target} slots unfilled: {self.tally.generated:,} samples generated, twice the "
            f"waste bound (balance.max_generated_per_accepted = {self.max_generated:g}); the accepted samples "
            f"after it each fell in a full cell ({', '.join(full[:8])}{', ...' if len(full) > 8 else ''})"
        )

    def _give_up(self, cells: Sequence[str]) -> None:
        """``cells`` infeasible from now on, each keeping the share its kept samples already
        hold: they stay in the index, and a share of 0 would raise the other cells of its kind
        above what the slots left can give them (every later sample refused, the build stalled)."""
        new = [c for c in cells if c in self.targets.shares and c not in self.targets.infeasible]
        if new:
            held = {c: self.tally.kept[c] / self.base.target for c in new}
            self.targets = self.targets.with_infeasible(new, held)

    def _plan_rounds(self, below: int) -> None:
        """Plan every round whose boundary is at most ``below`` from the tally (which holds
        exactly the committed shards below that boundary when called)."""
        if not self.rounds.shards:
            return
        r = max(self.weights, default=0) + 1
        while self.rounds.boundary(r) <= below:
            self._advance_targets()
            self.weights[r] = round_weights(self.tally, self.targets)
            r += 1

    def review(self, prefix: CommittedPrefix) -> PolicyDecision:
        shards = list(prefix.shards)
        if self.order != shards[: len(self.order)]:
            self._reset()
        counted = {}
        for shard in shards[len(self.order) :]:
            if self.finish_at is not None:
                break
            self._plan_rounds(shard)
            self._advance_targets()
            decided = balance_shard(self.layout.shard_paths(shard), shard, self.tally, self.targets, list(self.order))
            self.order.append(shard)
            self.decided[shard] = decided
            counted[shard] = decided.kept
            if self._budget() >= 2.0 and self.tally.kept_total < self.base.target:
                self._finish_short(shard)
        if self.finish_at is not None:
            return PolicyDecision(counted=counted, finish_at=self.finish_at)
        self._plan_rounds(prefix.resolved)
        return PolicyDecision(counted=counted, send_below=self.rounds.send_below(prefix.resolved))

    def shard(self, shard: int) -> pa.Table:
        """The plan of ``shard``: the open loop's in round 0, else chosen for its round's mix."""
        assert self.planner is not None, "a balance policy without a planner plans nothing"
        r = self.rounds.round_of(shard)
        if r == 0:
            return self.planner.shard(shard)
        if r not in self.weights:
            raise LedgerError(f"shard {shard}: round {r} is not planned yet (the ledger sent it early)")
        size, weights = self.planner.recipe.dataset.shard_size, self.weights[r]
        pool = self.planner.pool(shard, POOL * size)
        surplus = held_back(pool, weights, self.base.units)
        # the last shard's worth of slots, with too few keepable candidates: widen the pool once
        # (only then: a pool WIDEN x larger costs seconds of driver time per shard)
        last = weights.prefix is not None and self.base.target - weights.prefix[0].kept_total <= size
        if last and (~surplus).sum() < size:
            pool = self.planner.pool(shard, WIDEN * POOL * size)
            surplus = held_back(pool, weights, self.base.units)
        return choose_plan(pool, weights, self.base.units, size, shard, self.planner.recipe.dataset.seed, surplus)


def balance_policy(
    recipe: Recipe, run_root: Path, identities: Sequence[IdentityRecord] | None, planner: Planner | None = None
) -> BalancePolicy | None:
    """The balance policy of a build with ``[balance] enabled = true`` (``None`` otherwise);
    with ``planner`` it plans closed-loop rounds (``balance.round_shards``; not for a
    multi-identity recipe, whose identities follow the sample's position in the plan)."""
    section = recipe.balance
    if not section.enabled:
        return None
    rounds = Rounds(section.round_shards, section.round_lag_shards)
    if recipe.identities.expressions_per_identity:
        rounds = Rounds(0, 0)
    return BalancePolicy(
        RunLayout(run_root, recipe.dataset.name),
        balance_targets(recipe, identities),
        tries=section.infeasible_after,
        max_generated=section.max_generated_per_accepted,
        planner=planner,
        rounds=rounds,
        infeasible_yield=section.infeasible_yield,
    )

"""Closed-loop planning rounds: later rounds planned from the yields of the committed prefix.

Pure: no Ray, no disk, no clock. :class:`BalancePolicy` (``factory.engine.balance``) feeds it
the tally of the committed prefix; the same prefix gives the same plans, whatever the timing.

Rounds and lag
--------------
Round ``r`` is shards ``[r L, (r + 1) L)`` (``L = balance.round_shards``). Round 0 is planned as
the open loop plans. Round ``r >= 1`` is planned from the committed prefix of the shards below
its *boundary* ``r L - G`` (``G = balance.round_lag_shards``): once all but ``G`` of round
``r - 1``'s shards are committed (or failed for good), in shard order. A frontier shard ``s``
therefore waits only while a shard below ``s - G`` is unresolved, so ``G`` at least the number
of workers keeps them all busy while a round is planned.

What a round plans
------------------
Each *variable* (each AU's level, 0 = inactive or 1-5; emotion; ethnicity; age band; gender) has
a target share per category (``BalanceTargets``). From the prefix: the *need* of a category,
``max(share x target - kept, 0)``, and its *yield*, samples delivered in it (accepted, by
their delivered labels) per sample planned in it, smoothed towards the overall yield with
:data:`PRIOR` pseudo-samples. The round plans each variable's categories in proportion to
``need / yield`` (a cell in deficit is over-sampled by the inverse of its measured yield), mixed
with :data:`KEEP_BASE` of the target shares so that no category's weight is zero. Identities
have no share of their own: each one is weighted by its smoothed yield over the overall one
(a better-yielding identity of the same stratum is preferred).

Each shard of such a round draws a pool of :data:`POOL` x ``shard_size`` candidate samples
from the open-loop planner (a seeded stream of its own), gives each candidate its identity's
weight, rakes the weights (iterative proportional fitting) to the round's share of every
variable (a candidate in a cell already full on the prefix gets weight 0: selection would hold
it back as surplus), and keeps ``shard_size`` candidates, sampled without replacement by weight
(Efraimidis-Spirakis keys from the shard's seed), in pool order, renumbered as the shard's
samples. Every candidate is a plan the open-loop planner could make (its constraints, identity
fit and folding hold).

End game (past :data:`ENDGAME` of the target kept): a candidate selection would refuse is not
planned at all. When fewer candidates than ``shard_size`` are left, the shard plans the ones
left again, by weight with replacement, each copy with a fresh seed (for the last shard's worth
of slots the pool is first drawn :data:`WIDEN` times larger, once; earlier that would cost
seconds of driver time per shard): a different render of the same
labels, another try at the rare combination the last slots need (on the demo the last 3 of 300
slots took 600 generated samples when the other 49 of each shard's 50 were refused ones).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from manifests.balance import Tally, refusal, sample_cells
from manifests.balance_targets import BalanceTargets
from manifests.layout import generated_identity_id, sample_key
from manifests.schema import N_AUS
from manifests.vocab import DISFA_AUS

__all__ = [
    "KEEP_BASE",
    "POOL",
    "PRIOR",
    "WIDEN",
    "RoundWeights",
    "Rounds",
    "choose_plan",
    "held_back",
    "rake",
    "round_weights",
]

POOL = 8  # candidates per planned sample: the most a category can be over-sampled
PRIOR = 20.0  # pseudo-samples at the overall yield behind every measured yield
ENDGAME = 0.5  # past this share of the target kept, a round plans only candidates selection would keep
WIDEN = 8  # in the end game, a pool with fewer keepable candidates than a shard is drawn this much larger
KEEP_BASE = 0.05  # share of the target mix kept in every round's mix (no weight reaches zero)
_YIELD_FLOOR = 0.02  # over-sample a cell by at most 1 / this over a fully yielding one
_STRATA = ("emotion", "ethnicity", "age_band", "gender")


@dataclass(frozen=True)
class Rounds:
    """The round layout: ``shards`` per round (0: no rounds, every shard open loop), ``lag``."""

    shards: int
    lag: int

    def round_of(self, shard: int) -> int:
        return shard // self.shards if self.shards else 0

    def boundary(self, round_: int) -> int:
        """Round ``round_`` is planned from the committed shards below this one."""
        return max(round_ * self.shards - self.lag, 0) if round_ > 0 else 0

    def send_below(self, resolved: int) -> int | None:
        """The first shard of the first round not plannable while shards ``0 .. resolved-1``
        are resolved (None without rounds)."""
        if not self.shards:
            return None
        return ((resolved + self.lag) // self.shards + 1) * self.shards


@dataclass(frozen=True)
class RoundWeights:
    """A round's planned share per variable and category, and a weight per identity."""

    shares: Mapping[str, Mapping[str, float]]
    identities: Mapping[str, float]
    full: tuple[str, ...] = ()  # cells at their cap on the prefix: a candidate in one would be surplus
    # near the target: the prefix's selection state, to plan only candidates it would keep
    prefix: tuple[Tally, BalanceTargets] | None = field(default=None, compare=False)

    def to_json(self) -> dict[str, object]:
        shares = {v: dict(c) for v, c in self.shares.items()}
        return {"shares": shares, "identities": dict(self.identities), "full": list(self.full)}


def _variables(targets: BalanceTargets) -> dict[str, list[str]]:
    """Variable -> its categories (cells of ``targets``): ``AU12`` -> AU12-, AU12=1..5; strata."""
    out: dict[str, list[str]] = {f"AU{au}": [f"AU{au}-"] + [f"AU{au}={k}" for k in range(1, 6)] for au in targets.units}
    for kind in _STRATA:
        out[kind] = [c for c in targets.shares if c.startswith(kind + "=")]
    return {v: [c for c in cells if c in targets.shares] for v, cells in out.items()}


def round_weights(tally: Tally, targets: BalanceTargets) -> RoundWeights:
    """The next round's mix from the prefix's ``tally`` (see module docstring)."""
    overall = tally.kept_total / tally.generated if tally.generated else 1.0
    overall = max(overall, _YIELD_FLOOR)
    shares: dict[str, dict[str, float]] = {}
    for variable, cells in _variables(targets).items():
        target = np.asarray([targets.shares[c] for c in cells])
        if target.sum() <= 0:
            continue
        need = np.asarray([max(targets.shares[c] * targets.target - tally.kept[c], 0.0) for c in cells])
        need = need / need.sum() if need.sum() > 0 else target / target.sum()
        measured = np.asarray([(tally.kept[c] + PRIOR * overall) / (tally.planned[c] + PRIOR) for c in cells])
        mix = need / np.maximum(measured, _YIELD_FLOOR)
        mix = (1 - KEEP_BASE) * mix / mix.sum() + KEEP_BASE * target / target.sum()
        shares[variable] = {c: float(m) for c, m in zip(cells, mix, strict=True)}
    identities = {
        identity: float((tally.identity_accepted[identity] + PRIOR * overall) / (n + PRIOR) / overall)
        for identity, n in sorted(tally.identity_planned.items())
    }
    full = targets.full(tally.kept)
    endgame = (copy.deepcopy(tally), targets) if tally.kept_total >= targets.target * ENDGAME else None
    return RoundWeights(shares, identities, full, endgame)


def _categories(pool: pa.Table, units: tuple[int, ...]) -> dict[str, tuple[list[str], np.ndarray]]:
    """Per variable: its category names and each candidate's category (an index into them)."""
    vectors = pool["planned_intensity"].combine_chunks().flatten().to_numpy().reshape(-1, N_AUS)
    out: dict[str, tuple[list[str], np.ndarray]] = {}
    for au in units:
        levels = vectors[:, DISFA_AUS.index(au)].astype(np.int64).clip(0, 5)
        out[f"AU{au}"] = ([f"AU{au}-"] + [f"AU{au}={k}" for k in range(1, 6)], levels)
    for kind in _STRATA:
        names, codes = np.unique(np.asarray(pool[kind].to_pylist(), dtype=object), return_inverse=True)
        out[kind] = ([f"{kind}={v}" for v in names.tolist()], codes.reshape(-1))
    return out


def in_full(categories: Mapping[str, tuple[list[str], np.ndarray]], full: Iterable[str], n: int) -> np.ndarray:
    """Per candidate: whether one of its cells is full (``AU12+`` full: every level of AU12)."""
    full = set(full)
    out = np.zeros(n, bool)
    for variable, (names, codes) in categories.items():
        active = f"{variable}+" in full
        flags = [c in full or (active and "=" in c) for c in names]
        if any(flags):
            out |= np.asarray(flags)[codes]
    return out


def refused(pool: pa.Table, units: tuple[int, ...], tally: Tally, targets: BalanceTargets) -> np.ndarray:
    """Per candidate: whether selection would hold it back after ``tally``, were it accepted
    with its planned labels."""
    vectors = pool["planned_intensity"].combine_chunks().flatten().to_numpy().reshape(-1, N_AUS)
    strata = {kind: pool[kind].to_pylist() for kind in _STRATA}
    return np.asarray(
        [
            refusal(sample_cells(vectors[i], {k: strata[k][i] for k in _STRATA}, units), tally, targets) is not None
            for i in range(pool.num_rows)
        ],
        bool,
    )


def rake(
    categories: Mapping[str, tuple[list[str], np.ndarray]],
    shares: Mapping[str, Mapping[str, float]],
    base: np.ndarray,
    sweeps: int = 12,
) -> np.ndarray:
    """Weights as close to ``base`` as iterative proportional fitting gets them while each
    variable's weighted category shares approach ``shares`` (``categories``: per variable its
    category names and each candidate's category index; categories absent from the candidates
    are left out, the rest scaled up to fill the variable; one the round plans none of gets 0)."""
    weights = base.astype(np.float64).copy()
    goals = []
    for variable, wanted in shares.items():
        if variable in categories:
            names, codes = categories[variable]
            goal = np.asarray([max(wanted.get(c, 0.0), 0.0) for c in names])
            goal[np.bincount(codes, minlength=len(names)) == 0] = 0.0
            if goal.sum() > 0:
                goals.append((codes, goal / goal.sum()))
    for _ in range(sweeps):
        for codes, goal in goals:
            mass = np.bincount(codes, weights=weights, minlength=len(goal))
            total = mass.sum()
            if total <= 0:
                return weights
            factor = np.divide(goal * total, mass, out=np.zeros_like(goal), where=mass > 0)
            weights *= factor[codes]
    return weights


def held_back(pool: pa.Table, weights: RoundWeights, units: tuple[int, ...]) -> np.ndarray:
    """Per candidate: would selection hold it back as surplus (a cell full on the prefix; in the
    end game, any refusal), were it accepted with its planned labels?"""
    surplus = in_full(_categories(pool, units), weights.full, pool.num_rows)
    if weights.prefix is not None:
        surplus |= refused(pool, units, *weights.prefix)
    return surplus


def choose_plan(
    pool: pa.Table,
    weights: RoundWeights,
    units: tuple[int, ...],
    n: int,
    shard: int,
    seed: int,
    surplus: np.ndarray | None = None,
) -> pa.Table:
    """``n`` candidates of ``pool`` (see module docstring) as shard ``shard``'s plan
    (``surplus``: :func:`held_back` of the pool, when the caller has it)."""
    base = np.clip(np.asarray([weights.identities.get(i, 1.0) for i in pool["identity_id"].to_pylist()]), 0.1, 10.0)
    categories = _categories(pool, units)
    surplus = held_back(pool, weights, units) if surplus is None else surplus
    if not surplus.all():  # candidates selection would hold back as surplus are not planned
        base = np.where(surplus, 0.0, base)
    raked = rake(categories, weights.shares, base)
    live = np.flatnonzero(raked > 0)
    if weights.prefix is not None and 0 < live.size < n and not surplus.all():
        # the end game with fewer keepable candidates than samples: each planned again, fresh seeds
        rng = np.random.default_rng([seed, shard, 3])
        chosen = np.sort(rng.choice(live, size=n, p=raked[live] / raked[live].sum()))
        plan = pool.take(pa.array(chosen))
        fresh = pa.array(rng.integers(0, 2**63 - 1, size=n, dtype=np.int64))
        plan = plan.set_column(plan.schema.get_field_index("seed"), plan.schema.field("seed"), fresh)
        return _renumbered(plan, shard, n)
    u = np.random.default_rng([seed, shard, 2]).random(pool.num_rows)
    with np.errstate(divide="ignore"):
        keys = np.where(raked > 0, np.log(u) / np.where(raked > 0, raked, 1.0), -np.inf)
    chosen = np.sort(np.argsort(-keys, kind="stable")[:n])
    return _renumbered(pool.take(pa.array(chosen)), shard, n)


def _renumbered(plan: pa.Table, shard: int, n: int) -> pa.Table:
    """Chosen candidates as shard ``shard``'s samples: its keys, indexes and generated identities."""
    generated = np.asarray(plan["identity_match"].to_pylist()) == "generated"
    ids = [
        generated_identity_id(shard, i) if g else v
        for i, (g, v) in enumerate(zip(generated, plan["identity_id"].to_pylist(), strict=True))
    ]
    columns = {
        "key": pa.array([sample_key(shard, i) for i in range(n)], pa.string()),
        "index": pa.array(np.arange(n, dtype=np.int32)),
        "identity_id": pa.array(ids, pa.string()),
    }
    for name, column in columns.items():
        plan = plan.set_column(plan.schema.get_field_index(name), plan.schema.field(name), column)
    return plan

"""The planner: a pure, deterministic function from (recipe, shard index) to that shard's
planned samples.

Each sample gets a key, a generation seed, a target AU intensity vector (0 = inactive,
1-5 = FACS A-E), an emotion label, an identity and its demographic stratum. Shards are
planned independently (nothing global is held), so planning 1,000,000 samples streams
shard by shard in constant memory; ``build`` writes each shard's plan to Parquet before
running it, so a resumed build replays exactly the recorded plan.

How balance is achieved
-----------------------
* Emotions and demographic cells (ethnicity x age band x gender) use per-shard quotas
  (largest remainder of ``proportion x shard_size``, ties broken by a seeded order), so each
  shard already matches the recipe proportions to within one sample per category.
* Prototypical emotions draw their EMFACS AUs (table below). The ``mixed`` share draws
  every AU independently with probabilities calibrated once per recipe (deterministic
  Monte-Carlo fixed point, below) so that, after the plausibility constraints are
  applied, each AU is active in its recipe share of *all* samples.
* Active intensities are drawn from ``aus.intensity_weights`` over 1-5.
* ``dataset.kind = "identity-bank"`` plans one neutral portrait (all AUs 0, emotion
  ``neutral``) per new identity instead, over the same demographic quotas.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import product

import numpy as np
import pyarrow as pa

from factory.expressions import EMFACS_PROTOTYPES, apply_constraints, fold_expression
from factory.recipe import Recipe, RecipeError
from factory.sections import IDENTITY_BANK
from manifests.bank import IdentityRecord
from manifests.layout import generated_identity_id, key_prefix, sample_key
from manifests.schema import N_AUS, PLAN_SCHEMA
from manifests.vocab import AGE_BANDS, AU_INDEX, DISFA_AUS, EMOTIONS, ETHNICITIES, GENDERS

__all__ = [
    "PlanStats",
    "Planner",
    "iter_plans",
    "plan_shard",
    "plan_statistics",
    "shards_for",
]


def _quota(weights: Sequence[float], n: int, rng: np.random.Generator) -> np.ndarray:
    """Category index per slot: largest-remainder counts of ``n``, shuffled (seeded)."""
    p = np.asarray(weights, dtype=np.float64)
    p = p / p.sum()
    exact = p * n
    counts = np.floor(exact).astype(np.int64)
    short = n - int(counts.sum())
    if short:
        # random tie-breaking so no category is systematically favoured across shards
        order = np.lexsort((rng.random(len(p)), -(exact - counts)))
        counts[order[:short]] += 1
    slots = np.repeat(np.arange(len(p)), counts)
    rng.shuffle(slots)
    return slots


_LEVELS = np.arange(1, 6, dtype=np.int8)


def _intensities(rng: np.random.Generator, shape: tuple[int, ...], weights: np.ndarray) -> np.ndarray:
    """``rng.choice(1..5, size=shape, p=weights)`` spelled out (same draws, same stream, none of its slow checks)."""
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    return _LEVELS[cdf.searchsorted(rng.random(shape), side="right")]


@dataclass(frozen=True)
class _Spec:
    """The hashable part of a recipe the planner depends on (for calibration caching)."""

    units: tuple[int, ...]
    shares: tuple[float, ...]
    intensity_weights: tuple[float, ...]
    emotion_keys: tuple[str, ...]
    emotion_weights: tuple[float, ...]

    @staticmethod
    def of(recipe: Recipe) -> _Spec:
        mix = recipe.emotions.mix
        keys = tuple(k for k in (*EMOTIONS, "neutral", "mixed") if mix.get(k, 0.0) > 0)
        w = np.array([recipe.aus.intensity_weights], dtype=np.float64)[0]
        return _Spec(
            units=recipe.aus.units,
            shares=tuple(recipe.aus.share(au) if au in recipe.aus.units else 0.0 for au in DISFA_AUS),
            intensity_weights=tuple((w / w.sum()).tolist()),
            emotion_keys=keys,
            emotion_weights=tuple(mix[k] for k in keys),
        )


def _draw_vectors(spec: _Spec, emotions: np.ndarray, mixed_p: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Intensity vectors for emotion indices ``emotions`` (into ``spec.emotion_keys``)."""
    n = len(emotions)
    weights = np.asarray(spec.intensity_weights)
    out = np.zeros((n, N_AUS), dtype=np.int8)
    allowed = np.array([au in spec.units for au in DISFA_AUS])
    for e_idx, name in enumerate(spec.emotion_keys):
        rows = np.flatnonzero(emotions == e_idx)
        if rows.size == 0:
            continue
        if name == "mixed":
            active = rng.random((rows.size, N_AUS)) < mixed_p
            values = _intensities(rng, (rows.size, N_AUS), weights)
            out[rows] = np.where(active, values, 0)
            continue
        required, optional, cap = EMFACS_PROTOTYPES[name]
        for au in required + optional:
            col = AU_INDEX[au]
            on = np.ones(rows.size, bool) if au in required else rng.random(rows.size) < 0.5
            vals = _intensities(rng, (rows.size,), weights)
            if cap < 5:
                vals = np.minimum(vals, cap)
            out[rows, col] = np.where(on, vals, 0)
    out[:, ~allowed] = 0
    return apply_constraints(out) * allowed


@lru_cache(maxsize=16)
def _calibrate_mixed(spec: _Spec) -> tuple[float, ...]:
    """Per-AU activation probability for ``mixed`` samples so overall shares hit the recipe.

    Deterministic fixed-point iteration on a fixed Monte-Carlo sample: estimate each AU's
    share over all emotions (after constraints), move the mixed probability by the gap
    divided by the mixed share, repeat. Raises RecipeError when a share is unreachable.
    """
    target = np.asarray(spec.shares)
    weights = np.asarray(spec.emotion_weights) / np.sum(spec.emotion_weights)
    mixed_share = weights[spec.emotion_keys.index("mixed")] if "mixed" in spec.emotion_keys else 0.0
    rng_seed = 20240601
    n = 40_000
    emotions = _quota(weights, n, np.random.default_rng(rng_seed))
    p = np.clip(target, 0.0, 1.0)
    for _ in range(12):
        v = _draw_vectors(spec, emotions, p, np.random.default_rng(rng_seed + 1))
        share = (v > 0).mean(axis=0)
        if mixed_share == 0:
            break
        p = np.clip(p + (target - share) / mixed_share, 0.0, 1.0)
    v = _draw_vectors(spec, emotions, p, np.random.default_rng(rng_seed + 1))
    share = (v > 0).mean(axis=0)
    for i, au in enumerate(DISFA_AUS):
        if au in spec.units and abs(share[i] - target[i]) > 0.02:
            raise RecipeError(
                f"field 'aus.active_share' (AU{au}): a share of {target[i]:.2f} cannot be reached "
                f"with this emotion mix (best {share[i]:.2f}); raise emotions.mix.mixed or move "
                f"AU{au}'s share (aus.share_overrides.AU{au}) towards {share[i]:.2f}",
                field="aus.active_share",
            )
    return tuple(p.tolist())


@dataclass
class Planner:
    """Plans shards of one recipe; holds only the calibration and the bank's strata."""

    recipe: Recipe
    identities: Sequence[IdentityRecord] | None = None
    _spec: _Spec = field(init=False)
    _mixed_p: np.ndarray = field(init=False)
    _cells: list[tuple[str, str, str]] = field(init=False)
    _cell_weights: np.ndarray = field(init=False)
    _own: dict[str, np.ndarray] = field(init=False)  # identity -> its photo's own AUs (non-neutral only)
    _bank_table: tuple[np.ndarray, list[tuple[int, np.ndarray]]] | None = field(init=False, default=None)
    _own_table: np.ndarray = field(init=False)  # own AUs per row of the bank table (zeros: neutral)

    def __post_init__(self) -> None:
        self._spec = _Spec.of(self.recipe)
        self._bank = self.recipe.dataset.kind == IDENTITY_BANK  # one neutral portrait per identity
        self._mixed_p = np.zeros(N_AUS) if self._bank else np.asarray(_calibrate_mixed(self._spec))
        owns = {r.identity_id: np.asarray(r.own_intensity() or (), np.int8) for r in self.identities or ()}
        self._own = {identity: own for identity, own in owns.items() if own.any()}
        demo = self.recipe.demographics
        weighted = [
            ((eth, age, gen), demo.ethnicity.get(eth, 0) * demo.age_band.get(age, 0) * demo.gender.get(gen, 0))
            for eth, age, gen in product(ETHNICITIES, AGE_BANDS, GENDERS)
        ]
        self._cells = [cell for cell, w in weighted if w > 0]
        self._cell_weights = np.asarray([w for _, w in weighted if w > 0])

    def cells(self) -> list[tuple[tuple[str, str, str], float]]:
        """The demographic cells (ethnicity, age band, gender) the recipe plans, with their shares."""
        shares = self._cell_weights / self._cell_weights.sum()
        return list(zip(self._cells, shares.tolist(), strict=True))

    def shard(self, shard: int) -> pa.Table:
        """The plan of shard ``shard`` as an Arrow table with :data:`PLAN_SCHEMA`."""
        if shard < 0:
            raise ValueError(f"shard index must be >= 0, got {shard}")
        return self._plan(
            shard, self.recipe.dataset.shard_size, np.random.default_rng([self.recipe.dataset.seed, shard])
        )

    def pool(self, shard: int, size: int) -> pa.Table:
        """``size`` candidate samples for shard ``shard``, planned as :meth:`shard` plans but from a
        stream of their own (a closed-loop round picks the shard's plan from them; their keys
        and generated identities are renumbered then)."""
        return self._plan(shard, size, np.random.default_rng([self.recipe.dataset.seed, shard, 1]))

    def _plan(self, shard: int, n: int, rng: np.random.Generator) -> pa.Table:
        if self._bank:
            emotions, vectors = np.full(n, "neutral", dtype=object), np.zeros((n, N_AUS), np.int8)
        else:
            emotion_idx = _quota(self._spec.emotion_weights, n, rng)
            vectors = _draw_vectors(self._spec, emotion_idx, self._mixed_p, rng)
            emotions = np.asarray(self._spec.emotion_keys, dtype=object)[emotion_idx]
        cell_idx = _quota(self._cell_weights, n, rng)
        seeds = rng.integers(0, 2**63 - 1, size=n, dtype=np.int64)
        pick = rng.random(n)
        ids, eths, ages, gens, matches = self._identities(cell_idx, pick, shard, vectors)
        self._fold_own_expressions(ids, vectors, emotions)
        return pa.table(
            {
                "key": _keys(shard, n),
                "shard": pa.array(np.full(n, shard, np.int32)),
                "index": pa.array(np.arange(n, dtype=np.int32)),
                "seed": pa.array(seeds),
                "emotion": pa.array(emotions.tolist(), pa.string()),
                "planned_intensity": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), N_AUS),
                "identity_id": ids,
                "ethnicity": eths,
                "age_band": ages,
                "gender": gens,
                "identity_match": matches,
            },
            schema=PLAN_SCHEMA,
        )

    def _fold_own_expressions(self, ids: list[str], vectors: np.ndarray, emotions: np.ndarray) -> None:
        """Fold a non-neutral bank photo's own AUs (``IdentityRecord.expression``) into its plans, in
        place; an emotion whose prototype lacks them becomes ``mixed``: the plan describes the face shown."""
        if not self._own:  # no bank photo with its own expression: nothing to fold (1M plans: ~1 s)
            return
        for i, identity in enumerate(ids):
            own = self._own.get(identity)
            if own is not None:
                vectors[i] = fold_expression(vectors[i], own)
                required, optional, _ = EMFACS_PROTOTYPES.get(emotions[i], ((), (), 0))
                if emotions[i] != "mixed" and set(np.asarray(DISFA_AUS)[own > 0]) - {*required, *optional}:
                    emotions[i] = "mixed"

    def _identities(
        self, cell_idx: np.ndarray, pick: np.ndarray, shard: int, vectors: np.ndarray | None = None
    ) -> tuple[list[str], list[str], list[str], list[str], list[str]]:
        """Identity per sample: the bank identity that best fits the planned stratum (fallback:
        same cell, same ethnicity + gender, same ethnicity, any; resolved per cell, the pick is
        ``int(u * len(candidates))``). The sample's metadata is the chosen identity's (truthful),
        ``identity_match`` says which level matched. Without a bank: a new identity per sample.
        With ``[balance] enabled``, identity-aware: a sample picks among the candidates whose own
        AUs its plan already holds at no lower intensity (neutral ones always qualify), so folding
        changes no plan; only when no candidate qualifies does it pick among all (and fold)."""
        n = len(cell_idx)
        if not self.identities:
            cells = np.asarray(self._cells, dtype=object)[cell_idx]
            prefix = generated_identity_id(shard, 0).rsplit("-", 1)[0]
            ids = [f"{prefix}-{suffix}" for suffix in _generated_suffixes(n)]
            return ids, cells[:, 0].tolist(), cells[:, 1].tolist(), cells[:, 2].tolist(), ["generated"] * n
        if self._bank_table is None:  # resolved once per planner, not per shard (a bank may hold 50k identities)
            self._bank_table = _bank_choices(self.identities, self._cells)
            zero = np.zeros(N_AUS, np.int8)
            self._own_table = np.stack([self._own.get(i, zero) for i in self._bank_table[0][:, 0].tolist()])
        table, choices = self._bank_table
        per_identity = self.recipe.identities.expressions_per_identity
        if per_identity:
            # Identity-major: sample g of the whole plan shows identity (g // N) mod bank size.
            first = shard * self.recipe.dataset.shard_size
            cols = table[((first + np.arange(n)) // per_identity) % len(table)]
            return cols[:, 0].tolist(), cols[:, 1].tolist(), cols[:, 2].tolist(), cols[:, 3].tolist(), ["exact"] * n
        chosen, level = np.zeros(n, np.int64), np.zeros(n, np.int64)
        for c in np.unique(cell_idx).tolist():
            rows = np.flatnonzero(cell_idx == c)
            lvl, members = choices[c]
            chosen[rows] = members[(pick[rows] * len(members)).astype(np.int64)]
            level[rows] = lvl
            if vectors is not None and self.recipe.balance.enabled:
                for r in rows.tolist():
                    fits = members[(vectors[r] >= self._own_table[members]).all(axis=1)]
                    if len(fits):
                        chosen[r] = fits[int(pick[r] * len(fits))]
        cols = table[chosen]
        matches = np.asarray(_MATCH_LEVELS, dtype=object)[level]
        return cols[:, 0].tolist(), cols[:, 1].tolist(), cols[:, 2].tolist(), cols[:, 3].tolist(), matches.tolist()


_MATCH_LEVELS = ("exact", "ethnicity_gender", "ethnicity", "any")


def _fallbacks(eth: str, age: str, gen: str) -> tuple[tuple[str, str, str], ...]:
    """The strata a sample of cell (eth, age, gen) may take an identity from, in _MATCH_LEVELS order."""
    return ((eth, age, gen), (eth, "*", gen), (eth, "*", "*"), ("*", "*", "*"))


@lru_cache(maxsize=256)
def _key_suffixes(n: int) -> tuple[str, ...]:
    return tuple(sample_key(0, i)[len(key_prefix(0)) :] for i in range(n))


def _keys(shard: int, n: int) -> list[str]:
    """The planner keys of a shard: ``sample_key(shard, i)`` for i < n (suffixes cached)."""
    prefix = key_prefix(shard)
    return [prefix + suffix for suffix in _key_suffixes(n)]


@lru_cache(maxsize=256)
def _generated_suffixes(n: int) -> tuple[str, ...]:
    """The sample part of ``generated_identity_id(shard, i)`` for i < n (cached, as the keys')."""
    return tuple(generated_identity_id(0, i).rsplit("-", 1)[1] for i in range(n))


def _bank_choices(
    records: Sequence[IdentityRecord], cells: Sequence[tuple[str, str, str]]
) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """(identity table: id, ethnicity, age band, gender per record in identity-id order;
    per cell: (fallback level index into _MATCH_LEVELS, indices of the candidate records))."""
    ordered = sorted(records, key=lambda r: r.identity_id)
    table = np.asarray([(r.identity_id, r.ethnicity, r.age_band, r.gender) for r in ordered], dtype=object)
    groups: dict[tuple[str, str, str], list[int]] = {}
    for i, r in enumerate(ordered):
        for key in _fallbacks(r.ethnicity, r.age_band, r.gender):
            groups.setdefault(key, []).append(i)
    choices = []
    for cell in cells:
        lvl, key = next((lvl, key) for lvl, key in enumerate(_fallbacks(*cell)) if key in groups)
        choices.append((lvl, np.asarray(groups[key], np.int64)))
    return table, choices


def plan_shard(recipe: Recipe, shard: int, identities: Sequence[IdentityRecord] | None = None) -> pa.Table:
    """Pure function form of :meth:`Planner.shard`."""
    return Planner(recipe, identities).shard(shard)


def shards_for(samples: int, shard_size: int) -> int:
    return -(-samples // shard_size)


@dataclass
class PlanStats:
    """Streaming balance statistics over planned shards (constant memory)."""

    n: int = 0
    au_active: np.ndarray = field(default_factory=lambda: np.zeros(N_AUS, np.int64))
    intensity_hist: np.ndarray = field(default_factory=lambda: np.zeros((N_AUS, 6), np.int64))
    emotions: dict[str, int] = field(default_factory=dict)
    ethnicity: dict[str, int] = field(default_factory=dict)
    age_band: dict[str, int] = field(default_factory=dict)
    gender: dict[str, int] = field(default_factory=dict)
    identity_match: dict[str, int] = field(default_factory=dict)
    violations: int = 0

    def add(self, table: pa.Table) -> None:
        v = table.column("planned_intensity").combine_chunks().flatten().to_numpy().reshape(-1, N_AUS)
        self.n += len(v)
        self.au_active += (v > 0).sum(axis=0)
        # one bincount over (AU, level) pairs instead of a pass per level
        pairs = (np.arange(N_AUS) * 6 + v.astype(np.int64)).ravel()
        self.intensity_hist += np.bincount(pairs, minlength=N_AUS * 6).reshape(N_AUS, 6)
        self.violations += int((apply_constraints(v) != v).any(axis=1).sum())
        for name in ("emotion", "ethnicity", "age_band", "gender", "identity_match"):
            counts = getattr(self, "emotions" if name == "emotion" else name)
            vc = table.column(name).value_counts()
            for item in vc.to_pylist():
                counts[item["values"]] = counts.get(item["values"], 0) + item["counts"]

    def shares(self) -> dict[str, float]:
        return {f"AU{au}": float(self.au_active[i] / max(self.n, 1)) for i, au in enumerate(DISFA_AUS)}


def iter_plans(planner: Planner, n_shards: int) -> Iterator[pa.Table]:
    for shard in range(n_shards):
        yield planner.shard(shard)


def plan_statistics(recipe: Recipe, samples: int, identities: Sequence[IdentityRecord] | None = None) -> PlanStats:
    """Balance statistics of the first ``samples`` planned samples (rounded up to whole
    shards), streamed shard by shard so memory does not grow with ``samples``."""
    planner = Planner(recipe, identities)
    stats = PlanStats()
    for table in iter_plans(planner, shards_for(samples, recipe.dataset.shard_size)):
        stats.add(table)
    return stats

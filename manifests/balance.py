"""Balanced selection of the accepted samples: which of them the index keeps, in dataset order.

A *cell* is one thing a share is asked of: ``AU12+`` / ``AU12-`` (AU12 active / not), ``AU12=3``
(AU12 at intensity 3), ``emotion=fear``, ``ethnicity=white``, ``age_band=adult``,
``gender=female``. :class:`BalanceTargets` gives each cell its share of the target and a
tolerance; a cell is *full* when it holds ``floor((share + tolerance) x target)`` kept samples.
Accepted samples are visited in dataset order (shard, then index in the shard), each cell read
from the sample's delivered labels (``au_intensity``, ``emotion`` and the identity's strata):
a sample is kept unless one of its cells is full or the target is reached; otherwise it is
surplus, with the first full cell named as the reason.

A cell is *infeasible* when nobody can fill it (it then has no cap): a demographic group no bank identity belongs
to (known before the build), or a cell planned at least ``infeasible_after`` times on the
committed shards before whose yield is below ``infeasible_yield`` with 95 % confidence
(measured: :meth:`Tally.infeasible`), or a demographic group the bank can fill only up to a
*limit* below its share (its identities show their own AUs in every plan, and the AU targets
allow that few samples with them). Its share, or what exceeds its limit, moves to the other
cells of its kind (an infeasible ``AU20+`` leaves ``AU20-`` the whole share), so the rest can
still reach the target.

Each shard's decisions depend only on the shards before it; they are written beside the shard
as ``{name}-{shard}.balance.parquet`` (one row per accepted sample: ``key``, ``dropped_by``
(``"balance"`` or null when kept), ``reason``), with the shards before it (``after``) and the
infeasible cells it was decided under in the file's metadata. The surplus stays in the shard.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from manifests.atomic import write_parquet_atomic
from manifests.balance_targets import BalanceTargets
from manifests.layout import ShardPaths, generated_identity_id
from manifests.schema import N_AUS
from manifests.store import open_parquet, read_table
from manifests.vocab import DISFA_AUS

__all__ = [
    "BALANCE_SCHEMA",
    "DROPPED_BY",
    "STRATA",
    "ShardBalance",
    "Tally",
    "balance_path",
    "balance_shard",
    "decide_samples",
    "intensity_vectors",
    "read_balance",
    "read_surplus",
    "read_targets",
    "refusal",
    "sample_cells",
]

DROPPED_BY = "balance"
BALANCE_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("dropped_by", pa.string()),
        pa.field("reason", pa.string()),
    ]
)
_COLUMNS = [
    "key",
    "accepted",
    "identity_id",
    "emotion",
    "ethnicity",
    "age_band",
    "gender",
    "planned_intensity",
    "au_intensity",
]
STRATA = ("emotion", "ethnicity", "age_band", "gender")
_CONFIDENCE = 0.95  # of the upper bound on a cell's yield before it is given up
_GENERATED = generated_identity_id(0, 0).split("-")[0] + "-"  # a new person per sample: no yield of its own


def balance_path(paths: ShardPaths) -> Path:
    """``{name}-{shard}.balance.parquet``, beside the shard's manifest."""
    return paths.parquet.with_name(paths.parquet.name.removesuffix(".parquet") + ".balance.parquet")


def sample_cells(intensity: Iterable[int], strata: Mapping[str, str], units: Iterable[int]) -> tuple[str, ...]:
    """The cells of one sample: per AU of ``units`` active or not (and its level when active),
    then its emotion and demographic groups (``strata``: emotion, ethnicity, age_band, gender)."""
    levels = list(intensity)
    cells: list[str] = []
    for au in units:
        level = int(levels[DISFA_AUS.index(au)] or 0)
        cells.append(f"AU{au}+" if level > 0 else f"AU{au}-")
        if level > 0:
            cells.append(f"AU{au}={level}")
    cells.extend(f"{kind}={strata[kind]}" for kind in STRATA)
    return tuple(cells)


@dataclass
class Tally:
    """What the decisions so far add up to: kept samples per cell, and for the yields, planned
    and accepted samples per cell over every decided shard."""

    kept_total: int = 0
    kept: Counter[str] = field(default_factory=Counter)
    planned: Counter[str] = field(default_factory=Counter)
    accepted: Counter[str] = field(default_factory=Counter)
    generated: int = 0  # planned samples of the decided shards
    accepted_total: int = 0
    identity_planned: Counter[str] = field(default_factory=Counter)
    identity_accepted: Counter[str] = field(default_factory=Counter)
    together: dict[str, frozenset[str]] = field(default_factory=dict)  # cell -> cells all its accepted samples share

    def infeasible(self, targets: BalanceTargets, tries: int, floor: float = 0.0) -> list[str]:
        """Cells with a share, planned at least ``tries`` times, whose yield (samples delivered
        in the cell per sample planned in it) is below ``floor`` with 95 % confidence: the
        one-sided Clopper-Pearson upper bound of ``accepted / planned`` under ``floor``. Without
        a floor: cells never accepted."""
        from scipy.stats import beta  # deferred: scipy's import is slow and only the closed loop needs it

        found = []
        for cell, n in self.planned.items():
            k = min(self.accepted[cell], n)
            if n < tries or targets.shares.get(cell, 0.0) <= 0:
                continue
            bound = 1.0 if k >= n else float(beta.ppf(_CONFIDENCE, k + 1, n - k))
            if (k == 0 and floor <= 0.0) or bound < floor:
                found.append(cell)
        return sorted(found)

    def short(self, targets: BalanceTargets) -> list[str]:
        """Cells with a share whose kept share falls below it by more than their tolerance (an
        AU's inactive cell left out: it mirrors the active one)."""
        n = max(self.kept_total, 1)
        return sorted(
            c
            for c, share in targets.shares.items()
            if share > 0 and not c.endswith("-") and self.kept[c] / n < share - targets.tolerances[c]
        )


@dataclass(frozen=True)
class ShardBalance:
    shard: int
    accepted: int
    kept: int
    infeasible: tuple[str, ...]


def intensity_vectors(column: pa.ChunkedArray) -> np.ndarray:
    """A 12-AU intensity column as an (n, 12) int array, nulls as 0."""
    rows = column.to_pylist()
    return np.asarray([r if r is not None else [0] * N_AUS for r in rows], dtype=np.int64).reshape(-1, N_AUS)


def balance_shard(
    paths: ShardPaths, shard: int, tally: Tally, targets: BalanceTargets, after: list[int]
) -> ShardBalance:
    """Decide the accepted samples of one shard against ``tally`` (the shards ``after``), write
    the decisions beside it and add the shard to ``tally``."""
    with open_parquet(paths.parquet) as manifest:
        table = manifest.read(columns=_COLUMNS, use_threads=False)
    out = decide_samples(table, tally, targets)
    meta = {"after": after, "targets": targets.to_json()}
    write_parquet_atomic(balance_path(paths), out.replace_schema_metadata({"mifa_balance": json.dumps(meta)}))
    kept = sum(d is None for d in out["dropped_by"].to_pylist())
    return ShardBalance(shard, out.num_rows, kept, tuple(sorted(targets.infeasible)))


def refusal(cells: tuple[str, ...], tally: Tally, targets: BalanceTargets) -> str | None:
    """Why selection holds back an accepted sample of ``cells`` after ``tally``, or None: it keeps it."""
    kept, total = tally.kept, tally.kept_total
    if total >= targets.target:
        return f"target of {targets.target} kept samples reached"
    if (full := targets.full_cell(cells, kept)) is not None:
        of = (
            f"its AU's {kept[full.split('=')[0] + '+']} active"
            if full.startswith("AU") and "=" in full
            else targets.target
        )
        return f"cell {full} full ({targets.cap(full, kept)} of {of})"
    if (crowded := targets.crowded(cells, kept, total)) is not None:
        return f"the slots left are kept for the short cells of {crowded}"
    if (reserved := targets.reserved(cells, kept, tally.together)) is not None:
        return f"the room left is kept for the short cell {reserved}"
    return None


def decide_samples(table: pa.Table, tally: Tally, targets: BalanceTargets) -> pa.Table:
    """The decisions on one shard's manifest rows (``key``, ``accepted``, ``identity_id``, the
    strata, ``planned_intensity``, ``au_intensity``), in row order, added to ``tally``: one
    :data:`BALANCE_SCHEMA` row per accepted sample."""
    strata = {k: table[k].to_pylist() for k in STRATA}
    planned, labels = intensity_vectors(table["planned_intensity"]), intensity_vectors(table["au_intensity"])
    accepted = table["accepted"].to_pylist()
    keys, dropped, reasons = [], [], []
    identities = table["identity_id"].to_pylist()
    for i, key in enumerate(table["key"].to_pylist()):
        row = {k: strata[k][i] for k in STRATA}
        tally.planned.update(sample_cells(planned[i], row, targets.units))
        bank = not identities[i].startswith(_GENERATED)
        if bank:
            tally.identity_planned[identities[i]] += 1
        if not accepted[i]:
            continue
        cells = sample_cells(labels[i], row, targets.units)
        tally.accepted.update(cells)
        tally.accepted_total += 1
        for cell in cells:
            tally.together[cell] = tally.together.get(cell, frozenset(cells)) & frozenset(cells)
        if bank:
            tally.identity_accepted[identities[i]] += 1
        reason = refusal(cells, tally, targets)
        if reason is None:
            tally.kept.update(cells)
            tally.kept_total += 1
        keys.append(key)
        dropped.append(DROPPED_BY if reason else None)
        reasons.append(reason)
    tally.generated += table.num_rows
    return pa.table({"key": keys, "dropped_by": dropped, "reason": reasons}, schema=BALANCE_SCHEMA)


def read_balance(paths: ShardPaths) -> tuple[pa.Table, dict[str, Any]] | None:
    """A shard's balance file and its metadata, or ``None`` when it has none (open loop)."""
    path = balance_path(paths)
    if not path.is_file():
        return None
    table = read_table(path)
    return table, json.loads((table.schema.metadata or {}).get(b"mifa_balance", b"{}"))


def read_targets(paths: ShardPaths) -> BalanceTargets | None:
    """The targets a shard was decided under (the last indexed shard's: the build's final ones)."""
    found = read_balance(paths)
    return BalanceTargets.from_json(found[1]["targets"]) if found is not None else None


def read_surplus(paths: ShardPaths) -> set[str]:
    """Keys of a shard's accepted samples held back as surplus (empty without a balance file)."""
    found = read_balance(paths)
    if found is None:
        return set()
    table = found[0]
    return {k for k, d in zip(table["key"].to_pylist(), table["dropped_by"].to_pylist(), strict=True) if d}

"""Delivered balance as reported: each target's delivered share against it (``factory status``,
the dataset card, the waste benchmark), and why each infeasible cell is (:func:`infeasible_causes`:
no identity of the bank, limited by the bank, or given up during the build, with how many
samples were planned in it, the share accepted, and the stage and reason that dropped most of
the rest). Cells as in :mod:`manifests.balance`."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from manifests.balance import STRATA, intensity_vectors
from manifests.balance_targets import BalanceTargets
from manifests.layout import shard_paths
from manifests.query import drop_code
from manifests.store import open_parquet
from manifests.vocab import DISFA_AUS

__all__ = [
    "CAUSE_COLUMNS",
    "CellReport",
    "DropTally",
    "balance_report",
    "causes_from",
    "delivered_cells",
    "given_up",
    "infeasible_causes",
    "shard_manifests",
]

# The manifest columns :func:`infeasible_causes` reads (planned labels, not delivered: a cell's
# yield is of the samples planned in it).
CAUSE_COLUMNS = ["planned_intensity", *STRATA, "accepted", "dropped_by", "drop_reason"]


@dataclass(frozen=True)
class CellReport:
    """One target as delivered: ``share`` of the kept samples (an intensity level's: of its AU's
    active ones) against ``target`` within ``tolerance``."""

    cell: str
    samples: int
    share: float
    target: float
    tolerance: float
    infeasible: bool

    @property
    def met(self) -> bool:
        return abs(self.share - self.target) <= self.tolerance + 1e-9


def delivered_cells(table: pa.Table, units: Iterable[int]) -> Counter[str]:
    """Samples per cell of ``table`` (index rows, or kept manifest rows: ``au_intensity``,
    ``emotion``, ``ethnicity``, ``age_band``, ``gender``)."""
    labels = intensity_vectors(table["au_intensity"])
    counts: Counter[str] = Counter()
    for au in units:  # counted per column, not per sample: an index of 1M rows in a second
        levels = np.bincount(labels[:, DISFA_AUS.index(au)].clip(0, 5), minlength=6)
        counts[f"AU{au}-"], counts[f"AU{au}+"] = int(levels[0]), int(levels[1:].sum())
        counts.update({f"AU{au}={level}": int(levels[level]) for level in range(1, 6)})
    for kind in STRATA:
        counts.update(f"{kind}={v}" for v in table[kind].to_pylist())
    return +counts  # without the empty cells


def balance_report(kept: Counter[str], n: int, targets: BalanceTargets) -> list[CellReport]:
    """Every target with a share (and every cell delivered), in the targets' order; ``AU12-``
    is left out (it mirrors ``AU12+``)."""
    rows = []
    for cell, target in targets.shares.items():
        if cell.endswith("-") or (target == 0.0 and kept[cell] == 0 and cell not in targets.infeasible):
            continue
        base, whole, tolerance = n, target, targets.tolerances[cell]
        dead = cell in targets.infeasible
        if "=" in cell and cell.startswith("AU"):  # a level's share of its AU's active samples
            active = cell.split("=")[0] + "+"
            base, active_share = kept[active], targets.shares[active]
            whole = target / active_share if active_share > 0 else 0.0
            tolerance = tolerance / active_share if active_share > 0 else tolerance
            dead = dead or active in targets.infeasible
        share = kept[cell] / base if base else 0.0
        rows.append(CellReport(cell, kept[cell], share, whole, tolerance, dead))
    return rows


def _cell_mask(table: pa.Table, vectors: np.ndarray, cell: str) -> np.ndarray:
    """Per row of ``table``: was it planned in ``cell``?"""
    name, _, value = cell.partition("=")
    if cell.startswith("AU"):
        au, levels = (int(name[2:]), None) if value else (int(cell[2:-1]), cell[-1])
        column = vectors[:, DISFA_AUS.index(au)]
        if levels is None:
            return column == int(value)
        return column > 0 if levels == "+" else column == 0
    return np.asarray(table[name].to_pylist(), dtype=object) == value


@dataclass
class DropTally:
    """Per cell: samples planned in it, accepted, and the rest by (stage, drop code: the
    reason with its values masked, ``manifests.query.drop_code``), over the manifests added so far."""

    planned: Counter[str] = field(default_factory=Counter)
    accepted: Counter[str] = field(default_factory=Counter)
    drops: dict[str, Counter[tuple[str, str]]] = field(default_factory=dict)

    def add(self, table: pa.Table, cells: Iterable[str]) -> None:
        """Count one shard's manifest rows (:data:`CAUSE_COLUMNS`)."""
        vectors = intensity_vectors(table["planned_intensity"])
        accepted = np.asarray(table["accepted"].to_pylist(), dtype=bool)
        stages, reasons = table["dropped_by"].to_pylist(), table["drop_reason"].to_pylist()
        for cell in cells:
            mask = _cell_mask(table, vectors, cell)
            self.planned[cell] += int(mask.sum())
            self.accepted[cell] += int((mask & accepted).sum())
            counter = self.drops.setdefault(cell, Counter())
            for i in np.flatnonzero(mask & ~accepted):
                counter[(stages[i] or "?", drop_code(reasons[i] or ""))] += 1


def infeasible_causes(targets: BalanceTargets, drops: DropTally | None) -> dict[str, str]:
    """Why each infeasible cell of ``targets`` is, in one line (``drops``: the build's manifests,
    counted for the cells given up during it)."""
    out: dict[str, str] = {}
    for cell in sorted(targets.infeasible):
        if cell in targets.limits:
            out[cell] = f"limited by the bank: at most {targets.limits[cell]:.3f} of the samples"
        elif cell in targets.held:
            planned = drops.planned[cell] if drops else 0
            if not planned:
                out[cell] = "given up during the build"
                continue
            accepted = drops.accepted[cell] if drops else 0
            text = f"given up during the build: {planned:,} planned, {accepted / planned:.0%} accepted"
            top = (drops.drops.get(cell) or Counter()).most_common(1) if drops else []
            if top:
                (stage, reason), n = top[0]
                text += f"; most of the rest dropped by {stage} ({reason}: {n / (planned - accepted):.0%})"
            out[cell] = text
        elif cell.startswith("AU") and "=" in cell and cell.split("=")[0] + "+" in targets.infeasible:
            out[cell] = f"{cell.split('=')[0]}+ is infeasible"
        else:
            out[cell] = "no identity of the bank belongs to it"
    return out


def given_up(targets: BalanceTargets) -> list[str]:
    """The infeasible cells given up during the build (whose causes need the manifests)."""
    return sorted(c for c in targets.infeasible if c in targets.held and c not in targets.limits)


def causes_from(tables: Iterable[pa.Table], targets: BalanceTargets) -> dict[str, str]:
    """:func:`infeasible_causes`, counting ``tables`` (manifests, :data:`CAUSE_COLUMNS`) for the
    cells given up (read only when there is one)."""
    cells = given_up(targets)
    drops = DropTally()
    if cells:
        for table in tables:
            drops.add(table, cells)
    return infeasible_causes(targets, drops)


def shard_manifests(shards_dir: Path, dataset: str, shards: Iterable[int]) -> Iterator[pa.Table]:
    """The :data:`CAUSE_COLUMNS` of each shard's manifest, one at a time."""
    for shard in shards:
        with open_parquet(shard_paths(shards_dir, dataset, shard).parquet) as manifest:
            yield manifest.read(columns=CAUSE_COLUMNS, use_threads=False)

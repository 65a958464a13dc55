"""Delivered balance as reported: each target's delivered share against it (``factory status``,
the dataset card, the waste benchmark). Cells as in :mod:`manifests.balance`."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from manifests.balance import STRATA, intensity_vectors
from manifests.balance_targets import BalanceTargets
from manifests.vocab import DISFA_AUS

__all__ = ["CellReport", "balance_report", "delivered_cells"]


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

"""The delivered-balance targets: each cell's share of the dataset, its tolerance, and the caps
and floors of kept samples they imply (``manifests.balance`` selects against them).

A *cell* is one thing a share is asked of (``AU12+``, ``AU12=3``, ``emotion=fear``,
``age_band=adult``...); cells of one *kind* share one whole (``AU12`` active or not, AU12's
levels, emotions...). A cell is *full* at its cap, *short* below its floor; an *infeasible* cell
has no floor, and its share (or what exceeds its bank limit, or what its kept samples do not
hold when it was given up) moves to the other cells of its kind.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

__all__ = ["BalanceTargets", "cell_kind"]


def cell_kind(cell: str) -> str:
    """The group of cells whose shares sum to one: ``AU12`` (+/-), ``AU12=`` (levels), ``emotion``..."""
    if cell.startswith("AU"):
        return cell.split("=")[0] + "=" if "=" in cell else cell[:-1]
    return cell.split("=")[0]


@dataclass(frozen=True)
class BalanceTargets:
    """Share and tolerance per cell, for a dataset of ``target`` samples; ``infeasible`` cells
    hold share 0 and no cap, their kind's other cells scaled up to fill the kind."""

    target: int
    units: tuple[int, ...]
    shares: Mapping[str, float]
    tolerances: Mapping[str, float]
    infeasible: frozenset[str] = frozenset()
    limits: Mapping[str, float] = field(default_factory=dict)  # infeasible cell -> the share it still holds
    # a cell given up during the build -> the share its kept samples already hold: they stay in
    # the index, so only the rest of its share can go to the other cells of its kind
    held: Mapping[str, float] = field(default_factory=dict)
    # a cell given up during the build -> the share asked of it before: still its cap, so what it
    # holds never grows past what the recipe asked (its floor is what was given up)
    asked: Mapping[str, float] = field(default_factory=dict)
    by_kind: Mapping[str, tuple[str, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        kinds: dict[str, list[str]] = {}
        for cell in self.shares:
            kinds.setdefault(cell_kind(cell), []).append(cell)
        object.__setattr__(self, "by_kind", {k: tuple(v) for k, v in kinds.items()})

    def to_json(self) -> dict[str, object]:
        return {
            "target": self.target,
            "units": list(self.units),
            "shares": dict(self.shares),
            "tolerances": dict(self.tolerances),
            "infeasible": sorted(self.infeasible),
            "limits": dict(self.limits),
            "held": dict(self.held),
            "asked": dict(self.asked),
        }

    @staticmethod
    def from_json(doc: Mapping[str, Any]) -> BalanceTargets:
        return BalanceTargets(
            int(doc["target"]),
            tuple(doc["units"]),
            dict(doc["shares"]),
            dict(doc["tolerances"]),
            frozenset(doc["infeasible"]),
            dict(doc.get("limits", {})),
            dict(doc.get("held", {})),
            dict(doc.get("asked", {})),
        )

    def _level(self, cell: str) -> tuple[str, float] | None:
        """An AU level cell's active cell and share of it (None: not a level, or its AU has no
        active share): a level's share is asked of its AU's *active* samples, not of the target."""
        if not (cell.startswith("AU") and "=" in cell) or cell in self.infeasible:
            return None
        active = cell.split("=")[0] + "+"
        active_share = self.shares.get(active, 0.0)
        return (active, active_share) if active_share > 0 and active not in self.infeasible else None

    def cap(self, cell: str, kept: Mapping[str, int] | None = None) -> int | None:
        """Kept samples a cell may hold (None: no target on it, or an infeasible one that was
        never asked for more than it holds: no identity for it, or limited by the bank). An AU
        level's cap is its share of the most of the AU's active samples it can be measured
        against: the AU's floor, or (``kept``) the active samples kept so far plus the one that
        would join them; so its share of the AU's active samples holds whatever that ends at."""
        share = self.shares.get(cell)
        if share is not None and cell in self.infeasible:
            share = self.asked.get(cell)
        if share is None:
            return None
        if (level := self._level(cell)) is not None:
            active, active_share = level
            base = max(self.floor(active), (kept or {}).get(active, 0) + 1 if kept is not None else 0)
            return math.floor((share + self.tolerances[cell]) / active_share * base + 1e-9)
        return math.floor((share + self.tolerances[cell]) * self.target + 1e-9)

    def with_infeasible(self, cells: Iterable[str], held: Mapping[str, float] | None = None) -> BalanceTargets:
        """These targets with ``cells`` (and those already known) infeasible; ``held``: the share
        each of them already holds in the kept samples (kept for it, never given away)."""
        if held:
            asked = {c: self.shares[c] for c in held if c in self.shares and c not in self.infeasible}
            return replace(self, held={**self.held, **held}, asked={**self.asked, **asked}).with_infeasible(cells)
        dead = self.infeasible | {c for c in cells if c in self.shares}
        for kind in {cell_kind(c) for c in dead - self.infeasible}:  # never a kind left with no target
            if all(c in dead for c, share in self.shares.items() if cell_kind(c) == kind and share > 0):
                dead -= {c for c in dead - self.infeasible if cell_kind(c) == kind}
        # an AU never shown active has no intensity targets either
        dead |= {c for c in self.shares if c.startswith("AU") and "=" in c and c.split("=")[0] + "+" in dead}
        if dead == self.infeasible:
            return self
        shares = dict(self.shares)
        for kind in sorted({cell_kind(c) for c in dead}):
            cells = [c for c in shares if cell_kind(c) == kind]
            alive = [c for c in cells if c not in dead]
            whole, kept = sum(shares[c] for c in cells), sum(shares[c] for c in alive)
            for c in cells:  # a limited cell keeps its limit (a given-up one what it holds), uncapped;
                if c in dead:  # the rest of the kind fills the remainder
                    shares[c] = min(max(self.limits.get(c, 0.0), self.held.get(c, 0.0)), shares[c])
            whole -= sum(shares[c] for c in cells if c in dead)
            for c in alive:
                shares[c] = shares[c] / kept * whole if kept > 0 else whole / len(alive)
        return replace(self, shares=shares, infeasible=frozenset(dead))

    def floor(self, cell: str) -> int:
        """Kept samples a cell needs to meet its share at the target (0: no share, infeasible);
        an AU level's, its share of the most active samples its AU may hold (its cap)."""
        share = self.shares.get(cell)
        if share is None or cell in self.infeasible:
            return 0
        base = float(self.target)
        if (level := self._level(cell)) is not None:
            active, active_share = level
            base = (self.cap(active) or 0) / active_share
        need = max(math.ceil((share - self.tolerances[cell]) * base - 1e-9), 0)
        return min(need, self.cap(cell) or 0)  # a tolerance under half a sample: the cap wins

    def crowded(self, cells: Iterable[str], kept: Counter[str], kept_total: int) -> str | None:
        """The first kind (``AU12`` active or not, ``emotion``, ...) whose other cells still
        need more kept samples than the slots left after one more: keeping this sample would
        leave one of them short at the target (an AU's levels are left out: their shares are
        of its active samples, which the target does not bound)."""
        room = self.target - kept_total - 1
        for cell in cells:
            if cell.startswith("AU") and "=" in cell:
                continue
            kind = cell_kind(cell)
            short = sum(max(self.floor(c) - kept[c], 0) for c in self.by_kind.get(kind, ()) if c != cell)
            if short > room:
                return kind
        return None

    def reserved(self, cells: Iterable[str], kept: Counter[str], together: Mapping[str, frozenset[str]]) -> str | None:
        """The first cell short of its floor, not one of ``cells``, whose every accepted sample so
        far (``together``: the cells they all shared) also fell in a capped cell of ``cells`` with
        no more room left than it still needs: keeping this sample would leave it unable to
        reach its floor (``emotion=neutral`` needs room in every ``AUx-``)."""
        mine = set(cells)
        for short, shared in together.items():
            need = self.floor(short) - kept[short]
            if need <= 0 or short in mine:
                continue
            for cell in sorted(shared & mine):
                cap = self.cap(cell)
                if cap is not None and cap - kept[cell] - 1 < need:
                    return short
        return None

    def full(self, kept: Counter[str]) -> tuple[str, ...]:
        """The cells at their cap after ``kept``: no further sample in them can be kept."""
        return tuple(c for c in self.shares if (cap := self.cap(c, kept)) is not None and kept[c] >= cap)

    def full_cell(self, cells: Iterable[str], kept: Counter[str]) -> str | None:
        """The first of ``cells`` that one more kept sample would push over its cap."""
        for cell in cells:
            cap = self.cap(cell, kept)
            if cap is not None and kept[cell] + 1 > cap:
                return cell
        return None

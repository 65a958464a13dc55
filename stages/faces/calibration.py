"""Calibrating an identity check's threshold on labelled real faces.

Given one embedding per face and who each face is, every pair of faces is scored by cosine
similarity and sorted into same-person and different-person pairs. From the two
distributions:

- ``threshold_at(far)``: the lowest threshold (on a 0.01 grid) at which at most ``far`` of the
  different-person pairs pass (score >= threshold): a drifted face passing is the check's
  false accept. ``dropped_at`` says how many same-person pairs it would drop (false rejects).
- ``keep_all``: the highest threshold on a 0.05 grid that keeps every same-person pair. The
  factory's defaults are this value: the check compares an edited face with its own neutral
  exemplar, so a real variation of the same person (another expression, session, size) is
  what it must keep; the false-accept rate there is reported beside it.

dlib's default 0.9 is ``keep_all`` of the set described in :mod:`stages.filters`, ArcFace's
too (measured with insightface's ``w600k_mbf.onnx``); ``factory identities calibrate``
runs this on a folder of a user's own photos and recogniser.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Calibration", "calibrate"]

_FINE, _COARSE = 0.01, 0.05


def _grid_above(x: float, step: float) -> float:
    """The lowest multiple of ``step`` (2 decimals) strictly above ``x``."""
    k = math.floor(x / step) - 1  # x / step may be off by one ulp either way: step up exactly
    while round(k * step, 2) <= x:
        k += 1
    return round(k * step, 2)


def _grid_at_or_below(x: float, step: float) -> float:
    """The highest multiple of ``step`` (2 decimals) at or below ``x``."""
    k = math.floor(x / step) + 1
    while round(k * step, 2) > x:
        k -= 1
    return round(k * step, 2)


@dataclass(frozen=True)
class Calibration:
    """Cosine scores of the same-person and different-person pairs of a labelled face set."""

    faces: int
    people: int
    same: np.ndarray
    different: np.ndarray

    def passing(self, threshold: float) -> int:
        """Different-person pairs at or above ``threshold`` (false accepts)."""
        return int((self.different >= threshold).sum())

    def dropped_at(self, threshold: float) -> int:
        """Same-person pairs below ``threshold`` (false rejects)."""
        return int((self.same < threshold).sum())

    def threshold_at(self, far: float) -> float:
        """The lowest 0.01-grid threshold that lets at most ``far`` of the different-person pairs pass."""
        allowed = math.floor(far * len(self.different))
        ranked = np.sort(self.different)[::-1]
        if allowed >= len(ranked):
            return -1.0
        # Above the (allowed + 1)-th highest different-person score, at most `allowed` pass.
        return _grid_above(float(ranked[allowed]), _FINE)

    @property
    def keep_all(self) -> float:
        """The highest 0.05-grid threshold that keeps every same-person pair."""
        return _grid_at_or_below(float(self.same.min()), _COARSE)

    def summary(self, far: float, name: str) -> list[str]:
        """The lines ``factory identities calibrate`` prints."""
        same, diff = self.same, self.different
        at_far, keep = self.threshold_at(far), self.keep_all
        return [
            f"{name}: {self.faces} faces of {self.people} people",
            f"same-person pairs: {len(same)}, lowest {same.min():.3f}, median {np.median(same):.3f}",
            f"different-person pairs: {len(diff)}, median {np.median(diff):.3f}, highest {diff.max():.3f}",
            f"false-accept rate {far:g}: threshold {at_far:.2f} "
            f"({self.passing(at_far)}/{len(diff)} different pass, {self.dropped_at(at_far)}/{len(same)} same dropped)",
            f"every same-person pair kept: threshold {keep:.2f} "
            f"({self.passing(keep)}/{len(diff)} different pass, {self.passing(keep) / len(diff):.1%})",
        ]


def calibrate(people: Sequence[str], embeddings: Sequence[np.ndarray]) -> Calibration:
    """Score every pair of faces; ``people[i]`` is who face ``i`` is (``embeddings[i]`` L2-normalised)."""
    if len(people) != len(embeddings):
        raise ValueError(f"{len(people)} labels for {len(embeddings)} embeddings")
    same: list[float] = []
    different: list[float] = []
    for i, j in itertools.combinations(range(len(people)), 2):
        score = float(np.dot(np.asarray(embeddings[i], np.float64), np.asarray(embeddings[j], np.float64)))
        (same if people[i] == people[j] else different).append(score)
    if not same or not different:
        raise ValueError("calibration needs two photos of at least one person and at least two people")
    return Calibration(len(people), len(set(people)), np.asarray(same), np.asarray(different))

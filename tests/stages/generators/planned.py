"""Checks shared by the tests of the planned-label generators (FineFace, MagicFace): both take the
planned AU vector as their condition, so their records and their batch invariance read the same."""

from __future__ import annotations

from typing import Any

import numpy as np

PINNED_PLAN = [0, 0, 4, 0, 0, 0, 5, 0, 0, 0, 3, 1]


def max_level_diff(a: np.ndarray, b: np.ndarray) -> int:
    """The largest difference between two uint8 images, in levels."""
    return int(np.abs(a.astype(int) - b.astype(int)).max())


def check_planned_record(record: dict[str, Any], size: int, generator: str) -> None:
    """An image of ``size`` that is not flat, and labels that are the plan (label_source planned)."""
    assert record["image"].shape == (size, size, 3) and record["image"].dtype == np.uint8
    assert record["image"].std() > 1.0
    assert record["generator"] == generator and record["label_source"] == "planned"
    planned = record["planned_intensity"]
    assert record["generator_intensity"] == [float(x) for x in planned]
    assert record["generator_occurrence"] == [1.0 if x > 0 else 0.0 for x in planned]


def check_pinned_row(record: dict[str, Any], pinned: list[int]) -> None:
    row = record["image"][30, 28:36, 0].astype(int)
    assert np.abs(row - np.asarray(pinned)).max() <= 2, row.tolist()  # 2 levels: BLAS rounding across machines

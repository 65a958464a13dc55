"""The report's balance plots draw delivered vs planned vs the recipe's target (no build needed)."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image

from factory.commands.report.data import ReportData
from factory.commands.report.plots import RECIPE_COLOUR, plot_intensity


def _pixels(png: bytes, colour: str) -> int:
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    want = np.asarray([int(colour[i : i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(rgb.astype(int) - want).sum(axis=2) < 8).sum())


def test_intensity_plot_shows_the_recipe_target_beside_plan_and_delivered() -> None:
    dataset: Any = None  # the plots read only the counts
    counts = np.tile(np.arange(1, 6, dtype=float), (12, 1))
    data = ReportData(dataset, planned_levels=counts, label_levels=counts, recipe_levels=[0.2] * 5)
    assert _pixels(plot_intensity(data), RECIPE_COLOUR) > 500  # grey: only the recipe's bars are grey

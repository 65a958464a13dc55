"""The report's plots: matplotlib figures rendered to PNG bytes (embedded base64 in the page).

matplotlib's object API (``Figure``, no pyplot): no global state, no display backend, safe in
any process. Colours are matplotlib's default cycle, so plan / labels / recipe read the same
in every plot (recipe grey, plan blue, labels orange). *Delivered* is what the index holds: the
accepted samples, less a balanced build's surplus (``manifests.query.with_balance``).
"""

from __future__ import annotations

import io

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from factory.commands.report.data import DEMOGRAPHICS, N, ReportData
from manifests.vocab import DISFA_AUS

__all__ = [
    "PLAN_COLOUR",
    "plot_agreement",
    "plot_au_occurrence",
    "plot_cooccurrence",
    "plot_demographics",
    "plot_fidelity",
    "plot_funnel",
    "plot_intensity",
]

PLAN_COLOUR = "#1f77b4"  # matplotlib tab:blue
LABEL_COLOUR = "#ff7f0e"  # tab:orange
RECIPE_COLOUR = "#7f7f7f"  # tab:grey
_AUS = [f"AU{a}" for a in DISFA_AUS]


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=96, bbox_inches="tight")
    return buffer.getvalue()


def _bars(ax: Axes, labels: list[str], series: list[tuple[str, list[float], str]]) -> None:
    x = np.arange(len(labels))
    width = 0.8 / max(len(series), 1)
    for k, (name, values, colour) in enumerate(series):
        ax.bar(x + (k - (len(series) - 1) / 2) * width, values, width, label=name, color=colour)
    tilt = len(labels) > 4
    ax.set_xticks(x, labels, rotation=45 if tilt else 0, ha="right" if tilt else "center")
    ax.legend(fontsize=8)


def plot_au_occurrence(data: ReportData) -> bytes:
    figure = Figure(figsize=(10, 3.6))
    ax = figure.subplots()
    series = []
    if data.recipe_share:
        series.append(("recipe target", [data.recipe_share.get(a) or 0.0 for a in DISFA_AUS], RECIPE_COLOUR))
    series += [
        ("planned (all planned samples)", list(data.planned_share), PLAN_COLOUR),
        ("delivered (indexed samples' labels)", list(data.label_share), LABEL_COLOUR),
    ]
    _bars(ax, _AUS, series)
    ax.set_ylabel("share of samples with the AU present")
    ax.set_title("AU occurrence: delivered vs planned vs recipe target")
    return _png(figure)


def plot_intensity(data: ReportData) -> bytes:
    figure = Figure(figsize=(12, 7))
    axes = figure.subplots(3, 4, sharey=True)
    levels = np.arange(1, 6)
    for i, ax in enumerate(axes.flat):
        planned = data.planned_levels[i] / max(data.planned_levels[i].sum(), 1)
        labels = data.label_levels[i] / max(data.label_levels[i].sum(), 1)
        if data.recipe_levels:
            ax.bar(levels - 0.27, data.recipe_levels, 0.27, color=RECIPE_COLOUR, label="recipe target")
        ax.bar(levels, planned, 0.27, color=PLAN_COLOUR, label="planned")
        ax.bar(levels + 0.27, labels, 0.27, color=LABEL_COLOUR, label="delivered")
        ax.set_title(f"{_AUS[i]} (n={int(data.label_levels[i].sum())})", fontsize=9)
        ax.set_xticks(levels)
    axes.flat[0].legend(fontsize=8)
    figure.subplots_adjust(hspace=0.45)
    figure.suptitle("Intensity of active AUs (share per level 1-5): delivered vs planned vs recipe target")
    return _png(figure)


def plot_cooccurrence(data: ReportData) -> bytes:
    figure = Figure(figsize=(7.5, 6.5))
    ax = figure.subplots()
    present = np.diag(data.cooccurrence)
    conditional = data.cooccurrence / np.maximum(present[:, None], 1)  # P(column AU | row AU)
    image = ax.imshow(conditional, cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(N), _AUS, rotation=45, ha="right")
    ax.set_yticks(range(N), _AUS)
    for i in range(N):
        for j in range(N):
            ax.text(j, i, f"{conditional[i, j]:.2f}", ha="center", va="center", fontsize=6, color="white")
    figure.colorbar(image, ax=ax, label="P(column AU present | row AU present)")
    ax.set_title("AU co-occurrence (accepted labels)")
    return _png(figure)


def plot_demographics(data: ReportData) -> bytes:
    figure = Figure(figsize=(12, 7))
    axes = figure.subplots(2, 2)
    for ax, column in zip(axes.flat, DEMOGRAPHICS, strict=True):
        counts = data.groups.get(column, {})
        target = data.recipe_groups.get(column, {})
        names = sorted(set(counts) | {k for k, v in target.items() if v > 0})
        planned = sum(p for p, _ in counts.values()) or 1
        accepted = sum(a for _, a in counts.values()) or 1
        series = [("recipe", [target.get(n, 0.0) for n in names], RECIPE_COLOUR)] if target else []
        series += [
            ("planned", [counts.get(n, (0, 0))[0] / planned for n in names], PLAN_COLOUR),
            ("delivered", [counts.get(n, (0, 0))[1] / accepted for n in names], LABEL_COLOUR),
        ]
        _bars(ax, names, series)
        ax.set_title(column)
    figure.suptitle("Balance: share of samples per group, delivered (indexed) vs planned vs recipe")
    figure.subplots_adjust(hspace=0.75)
    return _png(figure)


def plot_funnel(data: ReportData, stage_order: list[str]) -> bytes:
    planned, accepted, drops = data.funnel
    order = [s for s in stage_order if s in drops] + sorted(s for s in drops if s not in stage_order)
    names, remaining, left = ["generated"], [planned], planned
    for stage in order:
        left -= sum(drops[stage].values())
        names.append(f"after {stage}")
        remaining.append(left)
    names.append("accepted")
    remaining.append(accepted)
    figure = Figure(figsize=(9, 0.6 * len(names) + 1.2))
    ax = figure.subplots()
    y = np.arange(len(names))[::-1]
    colours = [PLAN_COLOUR] * (len(names) - 1) + [LABEL_COLOUR]
    ax.barh(y, remaining, color=colours)
    for yy, value in zip(y, remaining, strict=True):
        ax.text(value, yy, f" {value}", va="center", fontsize=9)
    ax.set_yticks(y, names)
    ax.set_xlabel("samples")
    ax.set_title(f"Acceptance funnel: {accepted} of {planned} accepted")
    return _png(figure)


def _heatmap(rows: dict[str, np.ndarray], title: str, label: str) -> bytes:
    names = list(rows)
    matrix = np.vstack([rows[n] for n in names]) if names else np.full((1, N), np.nan)
    figure = Figure(figsize=(10, 0.55 * max(len(names), 1) + 1.6))
    ax = figure.subplots()
    image = ax.imshow(np.ma.masked_invalid(matrix), cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(N), _AUS, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    for i in range(matrix.shape[0]):
        for j in range(N):
            text = "n/a" if np.isnan(matrix[i, j]) else f"{matrix[i, j]:.2f}"
            ax.text(j, i, text, ha="center", va="center", fontsize=7)
    figure.colorbar(image, ax=ax, label=label)
    ax.set_title(title)
    return _png(figure)


def plot_agreement(data: ReportData) -> bytes:
    rows = {f"{name} = consensus": values for name, values in data.agreement.items()}
    rows["all detectors agree"] = data.unanimous
    rows["consensus uncertain"] = data.uncertain_share
    return _heatmap(
        rows,
        "Per-AU detector agreement (accepted samples): each detector against the consensus where it decided, "
        "all covering detectors unanimous, consensus left uncertain",
        "share of samples",
    )


def plot_fidelity(data: ReportData) -> bytes:
    return _heatmap(
        data.fidelity,
        f"Label fidelity: F1 against the exact labels ({data.exact_samples} samples)",
        "F1 (present when probability >= 0.5)",
    )

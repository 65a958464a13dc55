"""What the report shows, as numbers: DuckDB aggregates over the dataset's manifests.

Every query is an aggregate (a few hundred numbers out of any number of rows), run with a
memory cap, so the report's memory does not grow with the dataset. The plan side reads the
``planned_intensity`` of every planned sample (accepted or not); the label side the final
labels of the accepted ones; recipe targets come from the recorded recipe (provenance.json).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from factory.recipe import RecipeError, recipe_from_dict
from manifests.card import acceptance_funnel, read_provenance
from manifests.dataset import DatasetRef, open_dataset
from manifests.query import connect
from manifests.subset import DUCKDB_MEMORY
from manifests.vocab import DISFA_AUS

__all__ = ["DEMOGRAPHICS", "ReportData", "collect"]

N = len(DISFA_AUS)
DEMOGRAPHICS = ("emotion", "ethnicity", "age_band", "gender")
_RANGE = "range(1, 13) AS t(i)"


@dataclass
class ReportData:
    dataset: DatasetRef
    planned: int = 0
    accepted: int = 0
    recipe_share: dict[int, float | None] = field(default_factory=dict)  # AU -> target share (None: AU off)
    recipe_groups: dict[str, dict[str, float]] = field(default_factory=dict)  # column -> group -> target share
    recipe_levels: list[float] = field(default_factory=list)  # target share of each level 1-5 of an active AU
    planned_share: np.ndarray = field(default_factory=lambda: np.zeros(N))
    label_share: np.ndarray = field(default_factory=lambda: np.zeros(N))
    planned_levels: np.ndarray = field(default_factory=lambda: np.zeros((N, 5)))  # AU x level 1-5 counts
    label_levels: np.ndarray = field(default_factory=lambda: np.zeros((N, 5)))
    cooccurrence: np.ndarray = field(default_factory=lambda: np.zeros((N, N)))  # both present, accepted
    groups: dict[str, dict[str, tuple[int, int]]] = field(
        default_factory=dict
    )  # column -> group -> (planned, accepted)
    funnel: tuple[int, int, dict[str, dict[str, int]]] = (0, 0, {})
    stage_order: list[str] = field(default_factory=list)
    agreement: dict[str, np.ndarray] = field(default_factory=dict)  # detector -> per-AU agreement with consensus
    uncertain_share: np.ndarray = field(default_factory=lambda: np.zeros(N))  # consensus -1 share per AU
    unanimous: np.ndarray = field(default_factory=lambda: np.full(N, np.nan))  # all covering detectors agree
    exact_samples: int = 0
    fidelity: dict[str, np.ndarray] = field(default_factory=dict)  # source -> per-AU F1 vs exact labels


def _recipe(data: ReportData) -> None:
    provenance = read_provenance(data.dataset.root)
    if provenance is None or "recipe" not in provenance:
        return
    data.stage_order = [s["name"] for s in provenance.get("stages", [])]
    try:
        recipe = recipe_from_dict(provenance["recipe"], source="provenance.json")
    except RecipeError:
        return
    data.recipe_share = {au: (recipe.aus.share(au) if au in recipe.aus.units else None) for au in DISFA_AUS}
    data.recipe_levels = [w / sum(recipe.aus.intensity_weights) for w in recipe.aus.intensity_weights]
    tables = {"emotion": recipe.emotions.mix, **recipe.demographics.model_dump()}
    for column, weights in tables.items():
        total = float(sum(weights.values())) or 1.0
        data.recipe_groups[column] = {k: float(v) / total for k, v in weights.items()}


def _shares(con: Any, data: ReportData) -> None:
    rows = con.execute(
        "SELECT i, avg(CASE WHEN planned_intensity[i] > 0 THEN 1.0 ELSE 0.0 END), "
        "avg(CASE WHEN au_occurrence[i] = 1 THEN 1.0 ELSE 0.0 END) FILTER (WHERE accepted) "
        f"FROM samples, {_RANGE} GROUP BY i"
    ).fetchall()
    for i, planned, label in rows:
        data.planned_share[i - 1] = planned or 0.0
        data.label_share[i - 1] = label or 0.0
    for column, target in (("planned_intensity", data.planned_levels), ("au_intensity", data.label_levels)):
        accepted = " AND accepted" if column == "au_intensity" else ""
        for i, level, count in con.execute(
            f"SELECT i, {column}[i], count(*) FROM samples, {_RANGE} WHERE {column}[i] BETWEEN 1 AND 5{accepted} "
            "GROUP BY ALL"
        ).fetchall():
            target[i - 1, int(level) - 1] = count


def _cooccurrence(con: Any, data: ReportData) -> None:
    pairs = [(i, j) for i in range(1, N + 1) for j in range(1, N + 1)]
    terms = ", ".join(f"count(*) FILTER (WHERE au_occurrence[{i}] = 1 AND au_occurrence[{j}] = 1)" for i, j in pairs)
    counts = con.execute(f"SELECT {terms} FROM samples WHERE accepted").fetchall()[0]
    data.cooccurrence = np.asarray(counts, dtype=float).reshape(N, N)


def _groups(con: Any, data: ReportData) -> None:
    for column in DEMOGRAPHICS:
        rows = con.execute(
            f"SELECT {column}, count(*), count(*) FILTER (WHERE accepted) FROM samples GROUP BY ALL ORDER BY ALL"
        ).fetchall()
        data.groups[column] = {str(k): (int(p), int(a)) for k, p, a in rows}


def _detectors(con: Any, data: ReportData) -> None:
    """Per detector and AU: agreement with the consensus decision; F1 against exact labels."""
    rows = con.execute(
        "WITH v AS (SELECT au_occurrence AS label, consensus_occurrence AS cons, label_source, unnest(votes) AS vote "
        "FROM samples WHERE accepted) "
        "SELECT vote.detector, i, "
        "count(*) FILTER (WHERE vote.occurrence[i] IS NOT NULL AND cons[i] >= 0), "
        "count(*) FILTER (WHERE vote.occurrence[i] IS NOT NULL AND cons[i] >= 0 "
        "AND (CASE WHEN vote.occurrence[i] >= 0.5 THEN 1 ELSE 0 END) = cons[i]), "
        "count(*) FILTER (WHERE label_source = 'exact' AND vote.occurrence[i] >= 0.5 AND label[i] = 1), "
        "count(*) FILTER (WHERE label_source = 'exact' AND vote.occurrence[i] >= 0.5 AND label[i] = 0), "
        "count(*) FILTER (WHERE label_source = 'exact' AND vote.occurrence[i] < 0.5 AND label[i] = 1) "
        f"FROM v, {_RANGE} GROUP BY ALL ORDER BY ALL"
    ).fetchall()
    counts: dict[str, np.ndarray] = {}
    for detector, i, n, agree, tp, fp, fn in rows:
        table = counts.setdefault(str(detector), np.zeros((N, 5)))
        table[i - 1] = (n, agree, tp, fp, fn)
    for detector, table in counts.items():
        data.agreement[detector] = np.where(table[:, 0] > 0, table[:, 1] / np.maximum(table[:, 0], 1), np.nan)
        data.fidelity[detector] = _f1(table[:, 2], table[:, 3], table[:, 4])
    consensus = con.execute(
        "SELECT i, avg(CASE WHEN consensus_occurrence[i] = -1 THEN 1.0 ELSE 0.0 END), "
        "count(*) FILTER (WHERE label_source = 'exact' AND consensus_occurrence[i] = 1 AND au_occurrence[i] = 1), "
        "count(*) FILTER (WHERE label_source = 'exact' AND consensus_occurrence[i] = 1 AND au_occurrence[i] = 0), "
        "count(*) FILTER (WHERE label_source = 'exact' AND consensus_occurrence[i] = 0 AND au_occurrence[i] = 1) "
        f"FROM samples, {_RANGE} WHERE accepted AND consensus_occurrence IS NOT NULL GROUP BY i ORDER BY i"
    ).fetchall()
    if consensus:
        table = np.zeros((N, 4))
        for i, uncertain, tp, fp, fn in consensus:
            table[i - 1] = (uncertain or 0.0, tp, fp, fn)
        data.uncertain_share = table[:, 0]
        data.fidelity["consensus"] = _f1(table[:, 1], table[:, 2], table[:, 3])
    (data.exact_samples,) = con.execute(
        "SELECT count(*) FROM samples WHERE accepted AND label_source = 'exact'"
    ).fetchall()[0]


def _unanimous(con: Any, data: ReportData) -> None:
    """Per AU: the share of accepted samples, among those two or more detectors cover, on which
    every covering detector decides the same (vote >= 0.5 or not); n/a where fewer cover it."""
    rows = con.execute(
        "WITH v AS (SELECT key, unnest(votes) AS vote FROM samples WHERE accepted), "
        "d AS (SELECT key, i, CASE WHEN vote.occurrence[i] >= 0.5 THEN 1 ELSE 0 END AS yes "
        f"FROM v, {_RANGE} WHERE vote.occurrence[i] IS NOT NULL) "
        "SELECT i, avg(CASE WHEN lo = hi THEN 1.0 ELSE 0.0 END) FROM "
        "(SELECT key, i, min(yes) AS lo, max(yes) AS hi FROM d GROUP BY key, i HAVING count(*) >= 2) "
        "GROUP BY i ORDER BY i"
    ).fetchall()
    for i, share in rows:
        data.unanimous[i - 1] = share


def _f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    denominator = 2 * tp + fp + fn
    return np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), np.nan)


def collect(run_dir: Path, spill_dir: Path | None = None) -> ReportData:
    """Every number the report plots, for the dataset or subset in ``run_dir``."""
    data = ReportData(dataset=open_dataset(run_dir))
    _recipe(data)
    con = connect(run_dir, include_rejected=True, memory_limit=DUCKDB_MEMORY, spill_dir=spill_dir)
    try:
        data.planned, data.accepted = con.execute(
            "SELECT count(*), count(*) FILTER (WHERE accepted) FROM samples"
        ).fetchall()[0]
        _shares(con, data)
        _cooccurrence(con, data)
        _groups(con, data)
        _detectors(con, data)
        _unanimous(con, data)
    finally:
        con.close()
    data.funnel = acceptance_funnel(data.dataset)
    return data

"""``factory eval DATASET``: label consistency of a built dataset (paper section 4, Table 2).

For every AU detector whose votes are in the manifest (``votes`` column) and for the
cross-detector consensus (``consensus_occurrence`` / ``consensus_intensity``), against the
dataset labels (``au_occurrence`` / ``au_intensity``):

- occurrence: TP/FP/FN/TN, F1 per AU and mean F1 (a vote counts as present when its
  probability is >= 0.5; a consensus of ``-1`` is uncertain: excluded and counted);
- intensity: ICC(3,1) (Shrout & Fleiss 1979, two-way mixed, consistency, single rater) and
  MAE per AU and their means.

A detector's ``null`` for an AU means "not covered": that AU is left out of its scores
(reported as ``n/a``), never counted as absent. Samples whose label itself is uncertain
(``-1``) or missing are left out of every comparison for that AU and counted.

The detectors are not re-run: their votes were stored when the dataset was built, so
evaluating is a pure read of the manifests (to score a new detector, add it to the recipe
and rebuild, or write its votes into the manifests).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from manifests.atomic import write_bytes_atomic
from manifests.files import make_dir
from manifests.index import read_index
from manifests.query import connect
from manifests.schema import N_AUS
from manifests.store import location
from manifests.vocab import DISFA_AUS, au_column

__all__ = [
    "CONSENSUS",
    "AUScore",
    "EvalReport",
    "ScoreTable",
    "anova_mean_squares",
    "confusion",
    "evaluate",
    "f1_score",
    "fmt_score",
    "icc_3_1",
    "mean_or_none",
    "print_report",
    "score_source",
]

CONSENSUS = "consensus"
OCCURRENCE_THRESHOLD = 0.5


def anova_mean_squares(ratings: np.ndarray) -> tuple[float, float, float]:
    """Two-way ANOVA of an ``(n targets, k raters)`` matrix: (BMS, JMS, EMS).

    BMS: between-targets mean square, JMS: between-raters (judges), EMS: residual.
    """
    x = np.asarray(ratings, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 2:
        raise ValueError(f"ratings must be an (n >= 2, k >= 2) matrix, got shape {x.shape}")
    n, k = x.shape
    grand = x.mean()
    ss_targets = k * np.sum((x.mean(axis=1) - grand) ** 2)
    ss_raters = n * np.sum((x.mean(axis=0) - grand) ** 2)
    ss_error = np.sum((x - grand) ** 2) - ss_targets - ss_raters
    return ss_targets / (n - 1), ss_raters / (k - 1), ss_error / ((n - 1) * (k - 1))


def icc_3_1(ratings: np.ndarray) -> float | None:
    """ICC(3,1) = (BMS - EMS) / (BMS + (k - 1) EMS); ``None`` when undefined (no variance)."""
    bms, _, ems = anova_mean_squares(ratings)
    k = np.asarray(ratings).shape[1]
    denominator = bms + (k - 1) * ems
    if denominator <= 1e-12:
        return None
    return float((bms - ems) / denominator)


def confusion(labels: np.ndarray, predictions: np.ndarray) -> tuple[int, int, int, int]:
    """(TP, FP, FN, TN) of boolean arrays of equal shape."""
    labels = np.asarray(labels, dtype=bool)
    predictions = np.asarray(predictions, dtype=bool)
    tp = int(np.sum(labels & predictions))
    fp = int(np.sum(~labels & predictions))
    fn = int(np.sum(labels & ~predictions))
    tn = int(np.sum(~labels & ~predictions))
    return tp, fp, fn, tn


def f1_score(tp: int, fp: int, fn: int) -> float | None:
    """2TP / (2TP + FP + FN); ``None`` if the AU never occurs in labels or predictions."""
    denominator = 2 * tp + fp + fn
    return None if denominator == 0 else 2 * tp / denominator


@dataclass(frozen=True)
class AUScore:
    """Scores of one source (a detector or the consensus) on one AU."""

    source: str
    au: int
    n_occurrence: int  # samples compared for occurrence
    tp: int
    fp: int
    fn: int
    tn: int
    f1: float | None
    excluded: int  # source did not give a usable value: not covered (detector) or uncertain (consensus)
    n_intensity: int  # samples compared for intensity
    icc: float | None
    mae: float | None


def score_source(
    source: str,
    label_occurrence: np.ndarray,
    label_intensity: np.ndarray,
    occurrence: np.ndarray,
    intensity: np.ndarray,
) -> list[AUScore]:
    """Per-AU scores of one source; all inputs ``(n, 12)`` float with NaN for missing.

    ``occurrence`` is a probability (detector) or 0/1/-1 (consensus; -1 = uncertain).
    """
    scores = []
    for i, au in enumerate(DISFA_AUS):
        label_ok = np.isin(label_occurrence[:, i], (0.0, 1.0))
        usable = ~np.isnan(occurrence[:, i]) & (occurrence[:, i] >= 0)
        both = label_ok & usable
        tp, fp, fn, tn = confusion(label_occurrence[both, i] == 1, occurrence[both, i] >= OCCURRENCE_THRESHOLD)
        excluded = int(np.sum(label_ok & ~usable))
        pairs = ~np.isnan(label_intensity[:, i]) & (label_intensity[:, i] >= 0)
        pairs &= ~np.isnan(intensity[:, i]) & (intensity[:, i] >= 0)
        n_int = int(pairs.sum())
        icc = mae = None
        if n_int >= 2:
            ratings = np.stack([label_intensity[pairs, i], intensity[pairs, i]], axis=1)
            icc = icc_3_1(ratings)
            mae = float(np.mean(np.abs(ratings[:, 0] - ratings[:, 1])))
        elif n_int == 1:
            mae = float(abs(label_intensity[pairs, i][0] - intensity[pairs, i][0]))
        scores.append(
            AUScore(source, au, int(both.sum()), tp, fp, fn, tn, f1_score(tp, fp, fn), excluded, n_int, icc, mae)
        )
    return scores


def mean_or_none(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def fmt_score(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


class ScoreTable:
    """Lookups over per-AU scores; a report provides ``scores`` and ``sources``."""

    scores: list[AUScore]
    sources: list[str]

    def for_source(self, source: str) -> list[AUScore]:
        return [s for s in self.scores if s.source == source]

    def score(self, source: str, au: int) -> AUScore:
        for s in self.scores:
            if s.source == source and s.au == au:
                return s
        raise KeyError(f"no scores for source {source!r} and AU {au}; sources: {self.sources}")

    def means(self, source: str) -> dict[str, float | None]:
        """Mean F1 / ICC / MAE of one source over the AUs where each is defined."""
        rows = self.for_source(source)
        return {metric: mean_or_none([getattr(s, metric) for s in rows]) for metric in ("f1", "icc", "mae")}


@dataclass
class EvalReport(ScoreTable):
    dataset: str | None
    samples: int
    include_rejected: bool
    sources: list[str]  # detectors in manifest order, then "consensus"
    scores: list[AUScore]
    label_uncertain: dict[int, int] = field(default_factory=dict)  # AU -> samples labelled -1

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "samples": self.samples,
            "include_rejected": self.include_rejected,
            "sources": self.sources,
            "means": {src: self.means(src) for src in self.sources},
            "label_uncertain": {str(au): n for au, n in self.label_uncertain.items()},
            "per_au": [asdict(s) for s in self.scores],
        }

    def to_csv(self) -> str:
        buffer = io.StringIO()
        names = list(AUScore.__dataclass_fields__)
        writer = csv.DictWriter(buffer, fieldnames=names)
        writer.writeheader()
        for s in self.scores:
            writer.writerow(asdict(s))
        return buffer.getvalue()

    def _grid(self, metric: str) -> tuple[list[str], list[list[str]]]:
        header = ["source", *[au_column(a) for a in DISFA_AUS], "mean"]
        rows = []
        for src in self.sources:
            values = [getattr(s, metric) for s in self.for_source(src)]
            rows.append([src, *[fmt_score(v) for v in values], fmt_score(self.means(src)[metric])])
        return header, rows

    def to_markdown(self) -> str:
        lines = [
            f"# Label consistency: {self.dataset or 'dataset'}",
            "",
            f"{self.samples} samples ({'all planned' if self.include_rejected else 'accepted only'}); "
            f"occurrence present when probability >= {OCCURRENCE_THRESHOLD}; "
            "n/a = AU not covered by the source or never occurring.",
        ]
        for metric, title in (
            ("f1", "F1 (occurrence)"),
            ("icc", "ICC(3,1) (intensity)"),
            ("mae", "MAE (intensity)"),
        ):
            header, rows = self._grid(metric)
            lines += ["", f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(row) + " |" for row in rows]
        lines += ["", "## Confusion (TP/FP/FN/TN) and excluded samples", ""]
        header = ["source", *[au_column(a) for a in DISFA_AUS]]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for src in self.sources:
            cells = [f"{s.tp}/{s.fp}/{s.fn}/{s.tn} ({s.excluded} excl.)" for s in self.for_source(src)]
            lines.append("| " + " | ".join([src, *cells]) + " |")
        uncertain = {au: n for au, n in self.label_uncertain.items() if n}
        if uncertain:
            listed = ", ".join(f"{au_column(au)}: {n}" for au, n in uncertain.items())
            lines += ["", f"Samples with an uncertain dataset label (excluded): {listed}."]
        return "\n".join(lines) + "\n"

    def save(self, out_dir: Path) -> list[Path]:
        """Write eval.json, eval_per_au.csv and eval.md (each temp + rename)."""
        out_dir = location(out_dir)
        make_dir(out_dir)
        files = {
            out_dir / "eval.json": json.dumps(self.to_dict(), indent=1).encode(),
            out_dir / "eval_per_au.csv": self.to_csv().encode(),
            out_dir / "eval.md": self.to_markdown().encode(),
        }
        for path, data in files.items():
            write_bytes_atomic(path, data)
        return list(files)


def print_report(report: EvalReport, console: Any = None) -> None:
    """Print the F1 / ICC / MAE grids as rich tables."""
    console = console or Console()
    for metric, title in (
        ("f1", "F1 (occurrence)"),
        ("icc", "ICC(3,1) (intensity)"),
        ("mae", "MAE (intensity)"),
    ):
        header, rows = report._grid(metric)
        table = Table(title=f"{title}: {report.dataset} ({report.samples} samples)")
        for i, name in enumerate(header):
            table.add_column(name, justify="left" if i == 0 else "right")
        for row in rows:
            table.add_row(*row)
        console.print(table)


def _columns(prefix: str, column: str) -> str:
    return ", ".join(f"{column}[{i}]::DOUBLE AS {prefix}{i}" for i in range(1, N_AUS + 1))


def _matrix(table: Any, prefix: str) -> np.ndarray:
    """12 scalar columns ``{prefix}1..12`` -> ``(n, 12)`` float64, NaN where null."""
    return np.stack(
        [table[f"{prefix}{i}"].to_numpy(zero_copy_only=False).astype(np.float64) for i in range(1, N_AUS + 1)],
        axis=1,
    ).reshape(table.num_rows, N_AUS)


def evaluate(run_dir: Path, out_dir: Path | None = None, include_rejected: bool = False) -> EvalReport:
    """Score every detector in the manifests and the consensus against the dataset labels.

    Saves eval.json / eval_per_au.csv / eval.md to ``out_dir`` (default ``run_dir/eval``).
    """
    run_dir = location(run_dir)
    con = connect(run_dir, include_rejected=include_rejected)
    try:
        # Row numbers fix one order for the label matrix and the unnested votes.
        con.execute("CREATE TEMP TABLE numbered AS SELECT row_number() OVER (ORDER BY key) - 1 AS row, * FROM samples")
        labels = con.sql(
            "SELECT "
            + ", ".join(
                (
                    _columns("lo", "au_occurrence"),
                    _columns("li", "au_intensity"),
                    _columns("co", "consensus_occurrence"),
                    _columns("ci", "consensus_intensity"),
                )
            )
            + " FROM numbered ORDER BY row"
        ).to_arrow_table()
        votes = con.sql(
            "WITH u AS (SELECT row, unnest(votes) AS v FROM numbered) "
            f"SELECT row, v.detector AS detector, {_columns('vo', 'v.occurrence')}, "
            f"{_columns('vi', 'v.intensity')} FROM u"
        ).to_arrow_table()
    finally:
        con.close()
    n = labels.num_rows
    label_occ, label_int = _matrix(labels, "lo"), _matrix(labels, "li")
    detectors = list(dict.fromkeys(votes["detector"].to_pylist()))
    rows = votes["row"].to_numpy()
    names = np.asarray(votes["detector"].to_pylist(), dtype=object)
    vote_occ, vote_int = _matrix(votes, "vo"), _matrix(votes, "vi")
    scores: list[AUScore] = []
    for detector in detectors:
        mine = names == detector
        occ = np.full((n, N_AUS), np.nan)
        inten = np.full((n, N_AUS), np.nan)
        occ[rows[mine]] = vote_occ[mine]
        inten[rows[mine]] = vote_int[mine]
        scores += score_source(detector, label_occ, label_int, occ, inten)
    scores += score_source(CONSENSUS, label_occ, label_int, _matrix(labels, "co"), _matrix(labels, "ci"))
    index = read_index(run_dir) or {}
    report = EvalReport(
        dataset=index.get("dataset"),
        samples=n,
        include_rejected=include_rejected,
        sources=[*detectors, CONSENSUS],
        scores=scores,
        label_uncertain={au: int(np.sum(label_occ[:, i] == -1)) for i, au in enumerate(DISFA_AUS)},
    )
    report.save(out_dir if out_dir is not None else run_dir / "eval")
    return report

"""The report of ``factory calibrate``: what was fitted, written and measured out of sample."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from factory.commands.evaluate import AUScore, ScoreTable, fmt_score
from manifests.vocab import DISFA_AUS, au_column

__all__ = ["BUILTIN_SOURCES", "BUILTIN_SUFFIX", "CONSENSUS", "DETECTORS", "SOURCES", "CalibrationReport", "shard_text"]

DETECTORS: tuple[str, ...] = ("geometric", "appearance")
CONSENSUS = "consensus"
SOURCES: tuple[str, ...] = (*DETECTORS, CONSENSUS)
# The shipped calibration scored on the same held-out samples, to show what a refit changes.
BUILTIN_SUFFIX = "@builtin"
BUILTIN_SOURCES: tuple[str, ...] = tuple(f"{src}{BUILTIN_SUFFIX}" for src in SOURCES)


@dataclass
class CalibrationReport(ScoreTable):
    """What :func:`calibrate_offline_detectors` fitted, wrote and measured out of sample."""

    recipe_fingerprint: str
    generator: str
    fit_shards: list[int]
    test_shards: list[int]
    fit_samples: dict[str, int]  # detector -> samples its calibration was fitted on
    fit_active: dict[int, int]  # AU -> fit samples where it is active (0: that AU is not fitted)
    test_samples: int  # held-out records that reached the detectors
    dropped: dict[str, int]  # "stage: reason" -> records left out (fit and test)
    files: dict[str, str]  # detector -> calibration JSON written
    min_agree: int
    intensity_tolerance: float
    scores: list[AUScore]
    seconds: float = 0.0
    sources: list[str] = field(default_factory=lambda: list(SOURCES))
    baseline_sources: list[str] = field(default_factory=list)  # built-in calibration, same samples

    def per_au(self) -> list[dict[str, Any]]:
        """One row per DISFA AU: F1 and MAE of each source (``None`` = not covered / undefined)."""
        rows = []
        for au in DISFA_AUS:
            row: dict[str, Any] = {"au": au, "fit_active": self.fit_active.get(au, 0)}
            for src in self.sources:
                s = self.score(src, au)
                row[f"{src}_f1"], row[f"{src}_mae"] = s.f1, s.mae
            row["consensus_uncertain"] = self.score(CONSENSUS, au).excluded
            rows.append(row)
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {
            "recipe_fingerprint": self.recipe_fingerprint,
            "generator": self.generator,
            "fit_shards": self.fit_shards,
            "test_shards": self.test_shards,
            "fit_samples": self.fit_samples,
            "fit_active": {str(k): v for k, v in self.fit_active.items()},
            "test_samples": self.test_samples,
            "dropped": self.dropped,
            "files": self.files,
            "agreement": {"min_agree": self.min_agree, "intensity_tolerance": self.intensity_tolerance},
            "seconds": round(self.seconds, 1),
            "means": {src: self.means(src) for src in [*self.sources, *self.baseline_sources]},
            "per_au": [asdict(s) for s in self.scores],
        }

    def to_markdown(self) -> str:
        header = ["AU", "fit active"]
        for src in self.sources:
            header += [f"{src} F1", f"{src} MAE"]
        header.append("consensus uncertain")
        lines = [
            "# Offline detector calibration",
            "",
            f"Generator `{self.generator}` (exact labels), recipe fingerprint `{self.recipe_fingerprint}`. "
            f"Fitted on shards {shard_text(self.fit_shards)} "
            f"({', '.join(f'{k}: {v} samples' for k, v in self.fit_samples.items())}); "
            f"scored on held-out shards {shard_text(self.test_shards)} ({self.test_samples} samples).",
            f"Consensus: `stages.agreement.consensus`, min_agree {self.min_agree}, "
            f"intensity_tolerance {self.intensity_tolerance:g}. Occurrence present when p >= 0.5; "
            "MAE over all held-out samples (inactive included); n/a = AU not covered or never occurring.",
            "",
            "| " + " | ".join(header) + " |",
            "|" + "---|" * len(header),
        ]
        for row in self.per_au():
            cells = [au_column(row["au"]), str(row["fit_active"])]
            for src in self.sources:
                cells += [fmt_score(row[f"{src}_f1"]), fmt_score(row[f"{src}_mae"])]
            cells.append(str(row["consensus_uncertain"]))
            lines.append("| " + " | ".join(cells) + " |")
        mean_cells = ["mean", ""]
        for src in self.sources:
            m = self.means(src)
            mean_cells += [fmt_score(m["f1"]), fmt_score(m["mae"])]
        mean_cells.append(str(sum(s.excluded for s in self.for_source(CONSENSUS))))
        lines.append("| " + " | ".join(mean_cells) + " |")
        if self.baseline_sources:
            lines += ["", "The shipped built-in calibration on the same held-out samples (means over AUs):", ""]
            for src in self.baseline_sources:
                m = self.means(src)
                lines.append(f"- {src}: F1 {fmt_score(m['f1'])}, MAE {fmt_score(m['mae'])}")
        lines += ["", "Calibration files (pass as the detectors' `calibration` option):", ""]
        lines += [f"- {name}: `{path}`" for name, path in self.files.items()]
        unfitted = [au_column(au) for au in DISFA_AUS if not self.fit_active.get(au)]
        if unfitted:
            lines += ["", f"Never active in the fit shards (their calibration is undetermined): {', '.join(unfitted)}."]
        if self.dropped:
            listed = "; ".join(f"{reason}: {n}" for reason, n in sorted(self.dropped.items()))
            lines += ["", f"Left out: {listed}."]
        return "\n".join(lines) + "\n"


def shard_text(shards: Sequence[int]) -> str:
    return ", ".join(str(s) for s in shards)

"""``factory calibrate RECIPE``: refit the offline AU detectors on exactly labelled renders.

The geometric (:mod:`stages.detectors.geometric`) and appearance
(:mod:`stages.detectors.appearance`) detectors turn measurements into AU intensities with
calibration constants. This module makes those constants reproducible from one command:

1. plan ``fit_shards`` and ``test_shards`` with the recipe's :class:`~factory.plan.Planner`
   (identity bank from the recipe), exactly as a build would;
2. run the recipe's generator and face stage on them in this process (no Ray). The
   generator must give exact labels (``label_source = "exact"``, the ``warp`` generator):
   the labels are the plan itself, so the fit learns the detectors' response, not another
   model's mistakes;
3. on the fit shards, extract each detector's own measurements with the recipe's detector
   options (``GeometricAUDetector.features``: landmark displacements against the identity
   exemplar; ``AppearanceAUDetector.deltas``: sample-minus-exemplar appearance statistics)
   and fit each with that module's ``fit_calibration``;
4. write ``out_dir/geometric.json`` and ``out_dir/appearance.json`` (the files the
   detectors' ``calibration`` option reads; extra ``provenance`` keys are ignored by them);
5. on the held-out test shards, run both detectors through their real ``calibration``
   option pointing at those files, combine their votes with the recipe's agreement rule
   (:func:`stages.agreement.consensus` with the recipe's ``min_agree`` and
   ``intensity_tolerance``), and score each detector and the consensus per AU against the
   exact labels with :func:`factory.commands.evaluate.score_source` (F1 at p >= 0.5, ICC(3,1), MAE).

The consensus here is over the two offline detectors only: other detectors a recipe lists
(OpenGraphAU, ONNX models) are not run, since they have no calibration to fit.

Records the face stage drops (no face found) and records a detector cannot measure are
left out and counted in the report. Calibrating on shards you later build is harmless (the
constants do not change the generated labels), but the numbers reported are only honest
for shards that were not in ``fit_shards``; overlapping lists are refused.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from factory.commands.evaluate import AUScore, ScoreTable, fmt_score, score_source
from factory.engine.pipeline import make_context, recipe_pipeline
from factory.plan import Planner
from factory.recipe import Recipe
from manifests.atomic import write_bytes_atomic
from manifests.vocab import DISFA_AUS, au_column
from stages import stage_class
from stages.agreement import AgreementConfig, consensus
from stages.base import Record, Stage, StageConfig, StageContext, is_dropped
from stages.detectors import appearance as appearance_detector
from stages.detectors import geometric as geometric_detector
from stages.pipeline import StageSpec, build_stage

__all__ = [
    "BUILTIN_SOURCES",
    "CONSENSUS",
    "DETECTORS",
    "CalibrationError",
    "CalibrationReport",
    "calibrate_offline_detectors",
    "detector_config",
    "parse_shards",
]

DETECTORS: tuple[str, ...] = ("geometric", "appearance")
CONSENSUS = "consensus"
SOURCES: tuple[str, ...] = (*DETECTORS, CONSENSUS)
# The shipped calibration scored on the same held-out samples, to show what a refit changes.
BUILTIN_SUFFIX = "@builtin"
BUILTIN_SOURCES: tuple[str, ...] = tuple(f"{src}{BUILTIN_SUFFIX}" for src in SOURCES)
# Fewer usable fit samples than unknowns per AU column would leave the least-squares fit
# undetermined (the geometric fit solves 12 intensities per feature).
MIN_FIT_SAMPLES = len(DISFA_AUS)


class CalibrationError(ValueError):
    """Calibration cannot run with these inputs; ``str()`` says what to change."""


def parse_shards(text: str) -> list[int]:
    """``"0-2,5"`` -> ``[0, 1, 2, 5]`` (CLI helper; order kept, duplicates removed)."""
    shards: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-", 1))
                if hi < lo:
                    raise ValueError
                shards.extend(range(lo, hi + 1))
            else:
                shards.append(int(part))
        except ValueError:
            raise CalibrationError(
                f"shard list {text!r}: cannot read {part!r}; use indices and ranges like '0-2,5'"
            ) from None
    if not shards or min(shards) < 0:
        raise CalibrationError(f"shard list {text!r} must name at least one shard index >= 0")
    return list(dict.fromkeys(shards))


def detector_config(recipe: Recipe, name: str, **overrides: Any) -> StageConfig:
    """The validated config of detector ``name`` from the recipe's ``[[detectors]]`` section
    (defaults when the recipe does not list it), with ``overrides`` applied."""
    options: dict[str, Any] = {}
    for section in recipe.detectors:
        if section.name == name:
            options = section.options()
    return stage_class(name).config_model(**{**options, **overrides})


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
            f"Fitted on shards {_shard_text(self.fit_shards)} "
            f"({', '.join(f'{k}: {v} samples' for k, v in self.fit_samples.items())}); "
            f"scored on held-out shards {_shard_text(self.test_shards)} ({self.test_samples} samples).",
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


def _shard_text(shards: Sequence[int]) -> str:
    return ", ".join(str(s) for s in shards)


def _check_shards(fit_shards: Sequence[int], test_shards: Sequence[int]) -> tuple[list[int], list[int]]:
    fit, test = [int(s) for s in fit_shards], [int(s) for s in test_shards]
    if not fit or not test:
        raise CalibrationError("calibration needs at least one fit shard and one test shard (e.g. 0-2 and 3)")
    if min(fit + test) < 0:
        raise CalibrationError(f"shard indices must be >= 0, got fit {fit} and test {test}")
    overlap = sorted(set(fit) & set(test))
    if overlap:
        raise CalibrationError(
            f"shards {overlap} are in both the fit and the test list; held-out "
            "numbers need shards the calibration never saw"
        )
    return list(dict.fromkeys(fit)), list(dict.fromkeys(test))


class _Pipeline:
    """The recipe's generator and face stage, run in-process on planned shards."""

    def __init__(self, recipe: Recipe, run_dir: Path) -> None:
        sections = recipe.stage_sections()
        if "face" not in sections:
            raise CalibrationError(
                "calibration needs the recipe's face stage (68 landmarks for both detectors); set [face] name = 'dlib'"
            )
        self.recipe = recipe
        self.context = make_context(recipe, run_dir, "cpu")
        self.bank = self.context.identity_bank
        if self.bank is None:
            raise CalibrationError(
                "calibration measures renders against their identity exemplar; "
                "set identities.bank to 'builtin' or a bank folder"
            )
        self.planner = Planner(recipe, self.bank.records())
        self.generator = recipe_pipeline(recipe, self.context, ["generator"])
        self.face = recipe_pipeline(recipe, self.context, ["face"])
        self.dropped: Counter[str] = Counter()

    def batches(self, shards: Sequence[int]) -> Iterable[list[Record]]:
        """Live (generated, face-checked) records, one engine batch at a time, so at most one
        batch of images is in memory."""
        size = self.recipe.engine.batch_size
        for shard in shards:
            records = self.planner.shard(shard).to_pylist()
            for start in range(0, len(records), size):
                batch = records[start : start + size]
                self.generator.run(batch)
                for record in batch:
                    if not is_dropped(record) and record.get("label_source") != "exact":
                        raise CalibrationError(
                            f"generator {self.recipe.generator.name!r} labels {record.get('key')} as "
                            f"{record.get('label_source')!r}; calibration needs exact labels "
                            "(set [generator] name = 'warp')"
                        )
                self.face.run(batch)
                for record in batch:
                    if is_dropped(record):
                        self.dropped[f"{record['dropped_by']}: {record.get('drop_reason')}"] += 1
                yield [r for r in batch if not is_dropped(r)]


def _detector(name: str, config: StageConfig, context: StageContext) -> Stage[Any]:
    return build_stage(StageSpec(name, name, config.model_dump()), context)


def _labels(records: Sequence[Record]) -> tuple[np.ndarray, np.ndarray]:
    occ = np.array([r["generator_occurrence"] for r in records], dtype=np.float64).reshape(-1, len(DISFA_AUS))
    inten = np.array([r["generator_intensity"] for r in records], dtype=np.float64).reshape(-1, len(DISFA_AUS))
    return occ, inten


def _vote_matrix(values: Sequence[Sequence[float | None]]) -> np.ndarray:
    return np.array([[np.nan if v is None else float(v) for v in row] for row in values], dtype=np.float64).reshape(
        -1, len(DISFA_AUS)
    )


def _write_json(path: Path, data: dict[str, Any]) -> None:
    write_bytes_atomic(path, (json.dumps(data, indent=1) + "\n").encode())


def calibrate_offline_detectors(
    recipe: Recipe,
    *,
    fit_shards: list[int],
    test_shards: list[int],
    out_dir: Path,
    log: Callable[[str], None] | None = None,
) -> CalibrationReport:
    """Fit the geometric and appearance calibrations on ``fit_shards`` and score them on
    ``test_shards`` (see the module docstring). Writes ``geometric.json``,
    ``appearance.json``, ``calibration.json`` (the report) and ``calibration.md`` to
    ``out_dir``. ``log`` receives one line per finished shard phase."""
    say = log or (lambda _msg: None)
    fit, test = _check_shards(fit_shards, test_shards)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    pipeline = _Pipeline(recipe, out_dir)

    # 1. Measurements on the fit shards. The extractors keep the recipe's detector options
    # but the built-in calibration, so a recipe that already points `calibration` at the
    # files about to be written still sets up (the measurements do not depend on it).
    geometric = _detector(
        "geometric", detector_config(recipe, "geometric", calibration="warp-builtin"), pipeline.context
    )
    appearance = _detector("appearance", detector_config(recipe, "appearance", calibration=None), pipeline.context)
    geo_x: list[np.ndarray] = []
    geo_y: list[np.ndarray] = []
    app_x: list[np.ndarray] = []
    app_y: list[np.ndarray] = []
    unmeasured: Counter[str] = Counter()
    fit_active = np.zeros(len(DISFA_AUS), dtype=np.int64)
    for batch in pipeline.batches(fit):
        if not batch:
            continue
        _, intensity = _labels(batch)
        fit_active += (intensity > 0).sum(axis=0)
        for record, truth in zip(batch, intensity, strict=True):
            features = geometric.features(record)  # type: ignore[attr-defined]
            if features is None:
                unmeasured["geometric: no landmarks (fit)"] += 1
            else:
                geo_x.append(features)
                geo_y.append(truth)
            deltas = appearance.deltas(record)  # type: ignore[attr-defined]
            if deltas is None:
                unmeasured["appearance: abstained (fit)"] += 1
            else:
                app_x.append(deltas)
                app_y.append(truth)
            record.pop("image", None)  # free the pixels before the next batch is rendered
            record.pop("face_crop", None)
    say(f"measured {len(geo_x)} fit samples from shards {_shard_text(fit)} ({time.perf_counter() - t0:.0f} s)")
    for name, xs in (("geometric", geo_x), ("appearance", app_x)):
        if len(xs) < MIN_FIT_SAMPLES:
            raise CalibrationError(
                f"only {len(xs)} fit samples could be measured by the {name} detector (need at least "
                f"{MIN_FIT_SAMPLES}); add fit shards or raise dataset.shard_size"
            )

    # 2. Fit and write, with where the numbers came from (the loaders ignore extra keys).
    provenance = {
        "recipe_fingerprint": recipe.fingerprint(),
        "seed": recipe.dataset.seed,
        "shard_size": recipe.dataset.shard_size,
        "image_size": recipe.output.image_size,
        "generator": recipe.generator.name,
        "fit_shards": fit,
    }
    geo_cal = geometric_detector.fit_calibration(np.stack(geo_x), np.stack(geo_y))
    app_cal = appearance_detector.fit_calibration(np.stack(app_x), np.stack(app_y))
    files = {"geometric": out_dir / "geometric.json", "appearance": out_dir / "appearance.json"}
    _write_json(files["geometric"], {**geo_cal, "provenance": provenance})
    _write_json(files["appearance"], {**app_cal, "provenance": provenance})

    # 3. Held-out scoring through the detectors' real `calibration` option.
    calibrated = [
        _detector(name, detector_config(recipe, name, calibration=str(files[name])), pipeline.context)
        for name in DETECTORS
    ]
    agree = pipeline.recipe.stage_config("agreement") if recipe.agreement.name == "agreement" else AgreementConfig()
    min_agree = int(agree.min_agree)  # type: ignore[attr-defined]
    tolerance = float(agree.intensity_tolerance)  # type: ignore[attr-defined]
    t_test = time.perf_counter()
    label_occ: list[np.ndarray] = []
    label_int: list[np.ndarray] = []
    votes: dict[str, tuple[list[list[float | None]], list[list[float | None]]]] = {
        src: ([], []) for src in (*SOURCES, *BUILTIN_SOURCES)
    }

    def collect(records: Sequence[Record], suffix: str) -> None:
        for record in records:
            record_votes = record["detector_votes"]
            for name in DETECTORS:
                votes[name + suffix][0].append(record_votes[name]["occurrence"])
                votes[name + suffix][1].append(record_votes[name]["intensity"])
            result = consensus(record_votes, min_agree, tolerance)
            votes[CONSENSUS + suffix][0].append(result["occurrence"])
            votes[CONSENSUS + suffix][1].append(result["intensity"])

    for batch in pipeline.batches(test):
        if not batch:
            continue
        # The built-in detectors (the fit-phase extractors) vote on shallow copies, so the
        # two calibrations never share a record's detector_votes.
        copies = [{**r, "detector_votes": {}} for r in batch]
        for det in (geometric, appearance):
            det.process(copies)
        for det in calibrated:
            det.process(batch)
        occ, inten = _labels(batch)
        label_occ.append(occ)
        label_int.append(inten)
        collect(batch, "")
        collect(copies, BUILTIN_SUFFIX)
        for record in batch:
            record.pop("image", None)
            record.pop("face_crop", None)
    if not label_occ:
        raise CalibrationError(
            f"no record of test shards {test} reached the detectors (left out: {dict(pipeline.dropped)})"
        )
    lo, li = np.concatenate(label_occ), np.concatenate(label_int)
    scores: list[AUScore] = []
    for src in (*SOURCES, *BUILTIN_SOURCES):
        scores += score_source(src, lo, li, _vote_matrix(votes[src][0]), _vote_matrix(votes[src][1]))
    say(f"scored {len(lo)} held-out samples from shards {_shard_text(test)} ({time.perf_counter() - t_test:.0f} s)")

    report = CalibrationReport(
        recipe_fingerprint=recipe.fingerprint(),
        generator=recipe.generator.name,
        fit_shards=fit,
        test_shards=test,
        fit_samples={"geometric": len(geo_x), "appearance": len(app_x)},
        fit_active={au: int(n) for au, n in zip(DISFA_AUS, fit_active, strict=True)},
        test_samples=len(lo),
        dropped=dict(pipeline.dropped + unmeasured),
        files={name: str(path) for name, path in files.items()},
        min_agree=min_agree,
        intensity_tolerance=tolerance,
        scores=scores,
        seconds=time.perf_counter() - t0,
        baseline_sources=list(BUILTIN_SOURCES),
    )
    _write_json(out_dir / "calibration.json", report.to_dict())
    write_bytes_atomic(out_dir / "calibration.md", report.to_markdown().encode())
    return report

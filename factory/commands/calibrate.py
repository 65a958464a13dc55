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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from factory.commands.calibration_report import (
    BUILTIN_SOURCES,
    BUILTIN_SUFFIX,
    CONSENSUS,
    DETECTORS,
    SOURCES,
    CalibrationReport,
    shard_text,
)
from factory.commands.evaluate import AUScore, score_source
from factory.engine.pipeline import make_context, recipe_pipeline
from factory.plan import Planner
from factory.recipe import Recipe
from manifests.atomic import write_bytes_atomic
from manifests.errors import UserError
from manifests.vocab import DISFA_AUS
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

# Fewer usable fit samples than unknowns per AU column would leave the least-squares fit
# undetermined (the geometric fit solves 12 intensities per feature).
MIN_FIT_SAMPLES = len(DISFA_AUS)
# What each offline detector measures for the fit: (detector name, its measuring method).
_MEASURES = (("geometric", "features", "no landmarks"), ("appearance", "deltas", "abstained"))


class CalibrationError(UserError, ValueError):
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


@dataclass
class _FitSet:
    """Measurements of one detector on the fit shards, with the exact intensities they fit."""

    x: list[np.ndarray] = field(default_factory=list)
    y: list[np.ndarray] = field(default_factory=list)


def _measure(
    renders: _Pipeline, fit: list[int], extractors: dict[str, Stage[Any]]
) -> tuple[dict[str, _FitSet], np.ndarray, Counter[str]]:
    """Each detector's own measurements on the fit shards (phase 1)."""
    sets = {name: _FitSet() for name in extractors}
    unmeasured: Counter[str] = Counter()
    fit_active = np.zeros(len(DISFA_AUS), dtype=np.int64)
    for batch in renders.batches(fit):
        if not batch:
            continue
        _, intensity = _labels(batch)
        fit_active += (intensity > 0).sum(axis=0)
        for record, truth in zip(batch, intensity, strict=True):
            # Measurements are relative to the exemplar, so they fit the label minus what the
            # exemplar itself shows (its bank row's expression; 0 for a neutral photo).
            relative = truth - extractors["geometric"].own(record)
            for name, method, why in _MEASURES:
                value = getattr(extractors[name], method)(record)
                if value is None:
                    unmeasured[f"{name}: {why} (fit)"] += 1
                else:
                    sets[name].x.append(value)
                    sets[name].y.append(relative)
            record.pop("image", None)  # free the pixels before the next batch is rendered
            record.pop("face_crop", None)
    for name, fit_set in sets.items():
        if len(fit_set.x) < MIN_FIT_SAMPLES:
            raise CalibrationError(
                f"only {len(fit_set.x)} fit samples could be measured by the {name} detector (need at least "
                f"{MIN_FIT_SAMPLES}); add fit shards or raise dataset.shard_size"
            )
    return sets, fit_active, unmeasured


def _fit_and_write(recipe: Recipe, fit: list[int], sets: dict[str, _FitSet], out_dir: Path) -> dict[str, Path]:
    """Fit each calibration and write it, with where the numbers came from (phase 2; the
    detectors' loaders ignore the extra ``provenance`` key)."""
    provenance = {
        "recipe_fingerprint": recipe.fingerprint(),
        "seed": recipe.dataset.seed,
        "shard_size": recipe.dataset.shard_size,
        "image_size": recipe.output.image_size,
        "generator": recipe.generator.name,
        "fit_shards": fit,
    }
    fitters = {"geometric": geometric_detector.fit_calibration, "appearance": appearance_detector.fit_calibration}
    files = {}
    for name, fit_set in sets.items():
        files[name] = out_dir / f"{name}.json"
        calibration = fitters[name](np.stack(fit_set.x), np.stack(fit_set.y))
        _write_json(files[name], {**calibration, "provenance": provenance})
    return files


@dataclass
class _Votes:
    """Occurrence and intensity votes of every scored source, in sample order."""

    min_agree: int
    tolerance: float
    votes: dict[str, tuple[list[Any], list[Any]]] = field(
        default_factory=lambda: {src: ([], []) for src in (*SOURCES, *BUILTIN_SOURCES)}
    )

    def add(self, records: Sequence[Record], suffix: str) -> None:
        for record in records:
            record_votes = record["detector_votes"]
            for name in DETECTORS:
                self.votes[name + suffix][0].append(record_votes[name]["occurrence"])
                self.votes[name + suffix][1].append(record_votes[name]["intensity"])
            result = consensus(record_votes, self.min_agree, self.tolerance)
            self.votes[CONSENSUS + suffix][0].append(result["occurrence"])
            self.votes[CONSENSUS + suffix][1].append(result["intensity"])

    def scores(self, occurrence: np.ndarray, intensity: np.ndarray) -> list[AUScore]:
        out: list[AUScore] = []
        for src, (occ, inten) in self.votes.items():
            out += score_source(src, occurrence, intensity, _vote_matrix(occ), _vote_matrix(inten))
        return out


def _score_held_out(
    renders: _Pipeline, test: list[int], builtin: list[Stage[Any]], calibrated: list[Stage[Any]], votes: _Votes
) -> tuple[list[AUScore], int]:
    """Both calibrations and their consensus scored on the held-out shards (phase 3)."""
    label_occ: list[np.ndarray] = []
    label_int: list[np.ndarray] = []
    for batch in renders.batches(test):
        if not batch:
            continue
        # The built-in detectors vote on shallow copies, so the two calibrations never
        # share a record's detector_votes.
        copies = [{**r, "detector_votes": {}} for r in batch]
        for det in builtin:
            det.process(copies)
        for det in calibrated:
            det.process(batch)
        occ, inten = _labels(batch)
        label_occ.append(occ)
        label_int.append(inten)
        votes.add(batch, "")
        votes.add(copies, BUILTIN_SUFFIX)
        for record in batch:
            record.pop("image", None)
            record.pop("face_crop", None)
    if not label_occ:
        raise CalibrationError(
            f"no record of test shards {test} reached the detectors (left out: {dict(renders.dropped)})"
        )
    lo, li = np.concatenate(label_occ), np.concatenate(label_int)
    return votes.scores(lo, li), len(lo)


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
    ``out_dir``. ``log`` receives one line per finished phase."""
    say = log or (lambda _msg: None)
    fit, test = _check_shards(fit_shards, test_shards)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    renders = _Pipeline(recipe, out_dir)
    # The extractors keep the recipe's detector options but the built-in calibration, so a
    # recipe that already points `calibration` at the files about to be written still sets
    # up (the measurements do not depend on it).
    builtin = {
        "geometric": _detector(
            "geometric", detector_config(recipe, "geometric", calibration="warp-builtin"), renders.context
        ),
        "appearance": _detector("appearance", detector_config(recipe, "appearance", calibration=None), renders.context),
    }
    sets, fit_active, unmeasured = _measure(renders, fit, builtin)
    say(
        f"measured {len(sets['geometric'].x)} fit samples from shards {shard_text(fit)} "
        f"({time.perf_counter() - t0:.0f} s)"
    )
    files = _fit_and_write(recipe, fit, sets, out_dir)
    calibrated = [
        _detector(name, detector_config(recipe, name, calibration=str(files[name])), renders.context)
        for name in DETECTORS
    ]
    # The recipe's agreement rule when it uses the agreement stage, the defaults otherwise.
    agree = AgreementConfig(**(recipe.agreement.options() if recipe.agreement.name == "agreement" else {}))
    votes = _Votes(int(agree.min_agree), float(agree.intensity_tolerance))
    t_test = time.perf_counter()
    scores, test_samples = _score_held_out(renders, test, list(builtin.values()), calibrated, votes)
    say(f"scored {test_samples} held-out samples from shards {shard_text(test)} ({time.perf_counter() - t_test:.0f} s)")
    report = CalibrationReport(
        recipe_fingerprint=recipe.fingerprint(),
        generator=recipe.generator.name,
        fit_shards=fit,
        test_shards=test,
        fit_samples={name: len(fit_set.x) for name, fit_set in sets.items()},
        fit_active={au: int(n) for au, n in zip(DISFA_AUS, fit_active, strict=True)},
        test_samples=test_samples,
        dropped=dict(renders.dropped + unmeasured),
        files={name: str(path) for name, path in files.items()},
        min_agree=votes.min_agree,
        intensity_tolerance=votes.tolerance,
        scores=scores,
        seconds=time.perf_counter() - t0,
        baseline_sources=list(BUILTIN_SOURCES),
    )
    _write_json(out_dir / "calibration.json", report.to_dict())
    write_bytes_atomic(out_dir / "calibration.md", report.to_markdown().encode())
    return report

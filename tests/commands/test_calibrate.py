"""Offline detector calibration: fit on one warp shard, score on another, files the detectors load.

One tiny real run (12 renders per shard at 256 px, builtin identities) is shared by the
module; it takes about 10 s on this machine when idle.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.standin import STANDIN
from factory.commands.calibrate import (
    BUILTIN_SOURCES,
    CONSENSUS,
    DETECTORS,
    CalibrationError,
    CalibrationReport,
    calibrate_offline_detectors,
    detector_config,
    parse_shards,
)
from factory.recipe import Recipe, recipe_from_dict
from manifests.vocab import AU_INDEX, DISFA_AUS
from stages.base import StageContext

GEOMETRIC_ONLY = (5, 15, 17, 20)  # AUs the appearance detector does not cover


def _tiny_recipe(out: Path, **changes: Any) -> Recipe:
    data: dict[str, Any] = {
        "dataset": {"name": "calib_test", "shard_size": 12, "seed": 0},
        "identities": {"bank": "builtin"},
        "generator": {"name": "warp"},
        "face": {"name": "dlib"},
        # The recipe already points at the files calibration is about to write: measuring
        # must not need them, and the held-out run must load them.
        "detectors": [
            {"name": "geometric", "calibration": str(out / "geometric.json")},
            {"name": "appearance", "calibration": str(out / "appearance.json")},
        ],
        "agreement": {"name": "agreement", "min_agree": 1},
        "output": {"image_size": 256},
        "engine": {"batch_size": 6},
    }
    data.update(changes)
    return recipe_from_dict(data, "test")


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Recipe, CalibrationReport, Path]:
    out = tmp_path_factory.mktemp("calib")
    recipe = _tiny_recipe(out)
    report = calibrate_offline_detectors(recipe, fit_shards=[0], test_shards=[1], out_dir=out)
    return recipe, report, out


def test_writes_both_calibrations_and_the_report(calibrated: tuple[Recipe, CalibrationReport, Path]) -> None:
    recipe, report, out = calibrated
    assert {p.name for p in out.iterdir()} == {
        "geometric.json",
        "appearance.json",
        "calibration.json",
        "calibration.md",
    }
    geo = json.loads((out / "geometric.json").read_text())
    app = json.loads((out / "appearance.json").read_text())
    assert np.array(geo["signatures"]).shape == (14, 12) and len(geo["thresholds"]) == 12
    assert sorted(int(k) for k in app["scales"]) == [1, 2, 4, 6, 9, 12, 25, 26]
    # Provenance: enough to re-run the same command.
    for cal in (geo, app):
        assert cal["provenance"]["fit_shards"] == [0]
        assert cal["provenance"]["recipe_fingerprint"] == recipe.fingerprint()
        assert cal["samples"] == report.fit_samples["geometric" if cal is geo else "appearance"]
    assert 0 < report.fit_samples["geometric"] <= 12 and report.test_samples <= 12
    assert report.test_samples + sum(v for k, v in report.dropped.items() if "(fit)" not in k) >= 12
    saved = json.loads((out / "calibration.json").read_text())
    assert saved["test_shards"] == [1] and set(saved["means"]) == {*report.sources, *BUILTIN_SOURCES}


def test_detectors_load_the_files_through_their_calibration_option(
    calibrated: tuple[Recipe, CalibrationReport, Path],
) -> None:
    from manifests.bank import open_bank
    from stages.detectors.appearance import AppearanceAUDetector
    from stages.detectors.geometric import GeometricAUDetector, intensities_from_features
    from stages.faces.landmarks import detect_faces

    recipe, _, out = calibrated
    context = StageContext(run_dir=out, identity_bank=open_bank("builtin"))
    geo_cfg = detector_config(recipe, "geometric")
    assert geo_cfg.calibration == str(out / "geometric.json")  # type: ignore[attr-defined]
    geo = GeometricAUDetector(geo_cfg, context)
    geo.setup()
    app = AppearanceAUDetector(detector_config(recipe, "appearance"), context)
    app.setup()
    image = context.identity_bank.image("builtin-grace-hopper")
    record = {
        "key": "x",
        "identity_id": "builtin-grace-hopper",
        "image": image,
        "landmarks": detect_faces(image)[0].landmarks,
    }
    features = geo.features(record)
    assert features is not None
    written = json.loads((out / "geometric.json").read_text())
    expected = intensities_from_features(features, np.array(written["signatures"]))
    assert geo.measure(record) == pytest.approx(expected)
    scales = json.loads((out / "appearance.json").read_text())["scales"]
    assert app._scales == {int(k): v for k, v in scales.items()}


def test_report_has_one_row_per_au_and_the_agreement_rule(
    calibrated: tuple[Recipe, CalibrationReport, Path],
) -> None:
    _, report, _ = calibrated
    rows = report.per_au()
    assert [r["au"] for r in rows] == list(DISFA_AUS)
    markdown = report.to_markdown()
    assert sum(line.startswith("| AU") and "|---" not in line for line in markdown.splitlines()) == 13  # header + 12
    for au in GEOMETRIC_ONLY:
        assert rows[AU_INDEX[au]]["appearance_f1"] is None
        # min_agree 1 and one covering detector: the consensus is the geometric decision.
        geo, cons = report.score("geometric", au), report.score(CONSENSUS, au)
        assert (cons.tp, cons.fp, cons.fn, cons.tn) == (geo.tp, geo.fp, geo.fn, geo.tn)
    for au in (1, 2, 4, 6, 9, 12, 25, 26):
        # Both detectors cover it: the consensus only decides where they agree.
        cons = report.score(CONSENSUS, au)
        decided = cons.tp + cons.fp + cons.fn + cons.tn
        assert decided + cons.excluded == report.test_samples
    for src in (*DETECTORS, CONSENSUS):
        f1 = [s.f1 for s in report.for_source(src) if s.f1 is not None]
        assert f1 and all(0.0 <= v <= 1.0 for v in f1)
        assert report.means(src)["mae"] is not None


def test_parse_shards() -> None:
    assert parse_shards("0-2,5") == [0, 1, 2, 5]
    assert parse_shards("3, 3,1") == [3, 1]
    for bad in ("", "a", "2-1", "-1"):
        with pytest.raises(CalibrationError, match="shard"):
            parse_shards(bad)


def test_refuses_overlapping_shards_and_inexact_labels(tmp_path: Path) -> None:
    recipe = _tiny_recipe(tmp_path)
    with pytest.raises(CalibrationError, match=r"shards \[1\] are in both"):
        calibrate_offline_detectors(recipe, fit_shards=[0, 1], test_shards=[1], out_dir=tmp_path)
    standin = _tiny_recipe(tmp_path, generator={"name": STANDIN})
    with pytest.raises(CalibrationError, match="exact labels"):
        calibrate_offline_detectors(standin, fit_shards=[0], test_shards=[1], out_dir=tmp_path)
    no_face = _tiny_recipe(tmp_path, face={"name": "none"})
    with pytest.raises(CalibrationError, match="face stage"):
        calibrate_offline_detectors(no_face, fit_shards=[0], test_shards=[1], out_dir=tmp_path)

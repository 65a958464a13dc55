"""Appearance AU detector: painted furrows and mouth cavity on packaged portraits."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from manifests.vocab import AU_INDEX, DISFA_AUS
from stages.base import StageContext, StageError
from stages.detectors.appearance import (
    APPEARANCE_AUS,
    AppearanceAUDetector,
    AppearanceConfig,
    appearance_features,
    fit_calibration,
)
from stages.detectors.base import covered_aus
from tests.stages.faces.test_dlib import astronaut, grace_hopper

IDENTITIES = {"builtin-astronaut": astronaut, "builtin-grace-hopper": grace_hopper}


@pytest.fixture(scope="module")
def faces() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from stages.faces.landmarks import detect_faces

    out = {}
    for identity, load in IDENTITIES.items():
        image = load()
        out[identity] = (image, detect_faces(image)[0].landmarks.astype(np.float64))
    return out


@pytest.fixture(scope="module")
def detector() -> AppearanceAUDetector:
    from manifests.bank import open_bank

    det = AppearanceAUDetector(AppearanceConfig(), StageContext(run_dir=Path("."), identity_bank=open_bank("builtin")))
    det.setup()
    return det


def _iod(p: np.ndarray) -> float:
    return float(np.linalg.norm(p[42:48].mean(0) - p[36:42].mean(0)))


def _line(image: np.ndarray, a: np.ndarray, b: np.ndarray, width: float, darkness: float = 0.45) -> None:
    """Darken a soft line in place (a furrow drawn onto the photo)."""
    mask = np.zeros(image.shape[:2], np.float32)
    cv2.line(mask, tuple(int(v) for v in np.round(a)), tuple(int(v) for v in np.round(b)), 1.0, max(1, round(width)))
    mask = cv2.GaussianBlur(mask, (0, 0), max(0.5, width / 3))
    image[:] = np.clip(image * (1 - darkness * mask[..., None]), 0, 255).astype(np.uint8)


def _deltas(det: AppearanceAUDetector, identity: str, image: np.ndarray, landmarks: np.ndarray) -> dict[int, float]:
    d = det.deltas({"identity_id": identity, "image": image, "landmarks": landmarks})
    assert d is not None
    return dict(zip(APPEARANCE_AUS, d.tolist(), strict=True))


def test_features_are_finite_for_every_covered_au(faces: dict) -> None:
    image, lm = faces["builtin-astronaut"]
    feats = appearance_features(image, lm)
    assert sorted(feats) == sorted(APPEARANCE_AUS)
    assert all(np.isfinite(v) and v >= 0 for v in feats.values())


def test_exemplar_itself_has_zero_deltas(detector: AppearanceAUDetector, faces: dict) -> None:
    image, lm = faces["builtin-astronaut"]
    assert max(abs(v) for v in _deltas(detector, "builtin-astronaut", image, lm).values()) < 1e-9


@pytest.mark.parametrize("identity", list(IDENTITIES))
def test_painted_glabella_furrows_raise_au4_most(detector: AppearanceAUDetector, faces: dict, identity: str) -> None:
    image, lm = faces[identity]
    painted = image.copy()
    iod = _iod(lm)
    mid = (lm[21] + lm[22]) / 2
    for side in (-1, 1):
        top = mid + (side * 0.06 * iod, -0.08 * iod)
        _line(painted, top, top + (side * 0.01 * iod, 0.22 * iod), 0.03 * iod)
    deltas = _deltas(detector, identity, painted, lm)
    base = appearance_features(image, lm)
    relative = {au: deltas[au] / max(base[au], 1e-9) for au in APPEARANCE_AUS}
    assert deltas[4] > 0
    assert max(relative, key=relative.get) == 4


def test_painted_forehead_lines_raise_au1_and_au2(detector: AppearanceAUDetector, faces: dict) -> None:
    image, lm = faces["builtin-astronaut"]
    painted = image.copy()
    iod = _iod(lm)
    mid = (lm[21] + lm[22]) / 2
    top = lm[17:27, 1].min()
    for h in (0.22, 0.36):
        y = top - h * iod
        _line(painted, np.array([mid[0] - 1.0 * iod, y]), np.array([mid[0] + 1.0 * iod, y]), 0.025 * iod, 0.3)
    deltas = _deltas(detector, "builtin-astronaut", painted, lm)
    assert deltas[1] > 0 and deltas[2] > 0
    assert abs(deltas[25]) < 1e-9 and abs(deltas[26]) < 1e-9  # the mouth is untouched


def test_painted_mouth_cavity_raises_au25_and_au26(detector: AppearanceAUDetector, faces: dict) -> None:
    image, lm = faces["builtin-grace-hopper"]
    painted = image.copy()
    centre = lm[[62, 66]].mean(0)
    half_width = 0.35 * float(lm[54, 0] - lm[48, 0])
    half_height = 0.45 * float(lm[57, 1] - lm[51, 1])
    cv2.ellipse(
        painted,
        (round(centre[0]), round(centre[1])),
        (round(half_width), round(half_height)),
        0,
        0,
        360,
        (25, 15, 15),
        -1,
    )
    deltas = _deltas(detector, "builtin-grace-hopper", painted, lm)
    assert deltas[25] > 0.01 and deltas[26] > 0.05


def test_process_covers_only_its_aus(detector: AppearanceAUDetector, faces: dict) -> None:
    image, lm = faces["builtin-astronaut"]
    rec = {"key": "a", "identity_id": "builtin-astronaut", "image": image, "landmarks": lm}
    detector.process([rec])
    vote = rec["detector_votes"]["appearance"]
    for au in DISFA_AUS:
        covered = au in APPEARANCE_AUS
        assert (vote["occurrence"][AU_INDEX[au]] is not None) == covered
        assert (vote["intensity"][AU_INDEX[au]] is not None) == covered
    assert covered_aus(detector.vocabulary) == APPEARANCE_AUS


def test_abstains_without_an_exemplar(faces: dict) -> None:
    image, lm = faces["builtin-astronaut"]
    det = AppearanceAUDetector(AppearanceConfig(), StageContext(run_dir=Path(".")))
    det.setup()
    rec = {"key": "n", "identity_id": "builtin-astronaut", "image": image, "landmarks": lm}
    det.process([rec])
    assert rec["detector_votes"]["appearance"]["occurrence"] == [None] * 12


def test_fit_calibration_recovers_scale_and_offset() -> None:
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 6, size=(300, 12)) * (rng.random((300, 12)) < 0.35)
    k = np.linspace(0.002, 0.05, len(APPEARANCE_AUS))
    cols = [DISFA_AUS.index(au) for au in APPEARANCE_AUS]
    deltas = -0.01 + truth[:, cols] * k + rng.normal(0, 0.0005, size=(300, len(APPEARANCE_AUS)))
    cal = fit_calibration(deltas, truth)
    got = np.array([cal["scales"][str(au)] for au in APPEARANCE_AUS])
    assert np.allclose(got, k, rtol=0.1)
    assert all(abs(cal["offsets"][str(au)] + 0.01) < 0.002 for au in APPEARANCE_AUS)


def test_calibration_file(tmp_path: Path) -> None:
    good = tmp_path / "app.json"
    good.write_text(
        json.dumps(
            {"scales": {str(a): 0.01 for a in APPEARANCE_AUS}, "thresholds": {str(a): 1.0 for a in APPEARANCE_AUS}}
        )
    )
    det = AppearanceAUDetector(AppearanceConfig(calibration=str(good)), StageContext(run_dir=tmp_path))
    det.setup()
    assert det._scales[4] == 0.01 and det._offsets[4] == 0.0
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"scales": {"4": 0.01}, "thresholds": {"4": 1.0}}))
    with pytest.raises(StageError, match="missing"):
        AppearanceAUDetector(AppearanceConfig(calibration=str(bad)), StageContext(run_dir=tmp_path)).setup()

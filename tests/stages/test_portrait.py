"""Portrait filters of an identity-bank build on real photographs, in process.

The recipe's chain as a bank build runs it: dlib with ``max_secondary_area_ratio = 0`` (one
face), the geometric detector without a bank (population mode), heuristic realism, then
``portrait-filters``. Each photo is kept or dropped for the reason it is there.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from stages.base import StageContext, StageError
from stages.faces.landmarks import detect_faces
from stages.faces.pose import head_pose
from stages.pipeline import Pipeline, StageSpec
from stages.portrait import PortraitFilterConfig, neutral_problem, sharpness
from tests.commands.test_identities import tiny_arcface  # noqa: F401 - a fixture
from tests.stages.faces.test_dlib import POSED, grace_hopper, pyfeat_frame, pyfeat_image

PHOTOS = {
    "hopper": (grace_hopper, None),
    "jin": (lambda: pyfeat_frame("single_face.mp4", 0), None),
    "posed_smile": (lambda: pyfeat_image(POSED["happiness"]), "not neutral: geometric finds AU12"),
    "group": (lambda: pyfeat_image("multi_face.jpg"), "faces"),
    "half_profile": (lambda: pyfeat_image(POSED["disgust"]), "not frontal: yaw"),
    "tilted": (lambda: np.asarray(Image.fromarray(grace_hopper()).rotate(25, expand=True)), "not frontal: roll"),
    "blurred": (lambda: np.asarray(Image.fromarray(grace_hopper()).filter(ImageFilter.GaussianBlur(3))), "blurred"),
    "small": (lambda: np.asarray(Image.fromarray(grace_hopper()).resize((171, 200))), "face too small"),
}


def _pipeline(tmp_path: Path, **portrait: object) -> Pipeline:
    specs = [
        StageSpec("face", "dlib", {"max_secondary_area_ratio": 0.0}),
        StageSpec("detectors[0]", "geometric", {}),
        StageSpec("realism", "heuristic-realism", {}),
        StageSpec("filters", "portrait-filters", dict(portrait)),
    ]
    return Pipeline.build(specs, StageContext(run_dir=tmp_path))


@pytest.fixture(scope="module")
def decided(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    records = [{"key": name, "identity_id": name, "image": load()} for name, (load, _) in PHOTOS.items()]
    _pipeline(tmp_path_factory.mktemp("portrait")).run(records)
    return {r["key"]: r for r in records}


@pytest.mark.parametrize("name", list(PHOTOS))
def test_each_photo_is_kept_or_dropped_for_its_reason(decided: dict[str, dict], name: str) -> None:
    record, reason = decided[name], PHOTOS[name][1]
    if reason is None:
        assert not record.get("dropped_by"), record.get("drop_reason")
        embedding = record["identity_embedding"]
        assert embedding.shape == (128,) and abs(float(np.linalg.norm(embedding)) - 1.0) < 1e-4
    else:
        assert reason in record["drop_reason"], record["drop_reason"]
        assert "identity_embedding" not in record


def test_pose_and_sharpness_measures() -> None:
    hopper = grace_hopper()
    pose = head_pose(detect_faces(hopper)[0].landmarks, hopper.shape[:2])
    assert pose.largest() < 10
    turned = pyfeat_image(POSED["disgust"])
    assert abs(head_pose(detect_faces(turned)[0].landmarks, turned.shape[:2]).yaw) > 25
    blurred = np.asarray(Image.fromarray(hopper).filter(ImageFilter.GaussianBlur(3)))
    assert sharpness(blurred) < sharpness(hopper) / 4


def test_neutral_problem_reads_every_detector() -> None:
    quiet = {"occurrence": [0.1] * 12}
    assert neutral_problem({"a": quiet, "b": {"occurrence": [None] * 12}}, 0.5) is None
    loud = {"occurrence": [0.1] * 10 + [0.7, 0.1]}
    assert neutral_problem({"a": quiet, "b": loud}, 0.5) == "not neutral: b finds AU25 (p = 0.70)"


def test_arcface_embedder_from_a_local_file(tmp_path: Path, tiny_arcface: Path) -> None:  # noqa: F811
    record = {"key": "h", "identity_id": "h", "image": grace_hopper()}
    _pipeline(tmp_path, embedder="arcface", arcface_onnx=str(tiny_arcface)).run([record])
    assert not record.get("dropped_by") and abs(float(np.linalg.norm(record["identity_embedding"])) - 1.0) < 1e-4
    with pytest.raises(StageError, match=r"nope\.onnx"):
        _pipeline(tmp_path, embedder="arcface", arcface_onnx=str(tmp_path / "nope.onnx"))
    assert PortraitFilterConfig().embedder == "dlib"

"""SCRFD stage through insightface's real loading and decoding, on tiny SCRFD-layout models.

The models (``tiny_scrfd``) detect painted squares: red ones at stride 16, green ones at
stride 32. One has a dynamic input like det_10g.onnx (insightface sizes it with
``det_size``), one a fixed 320x320 input (``det_size`` is then ignored).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from insightface.utils.face_align import arcface_dst

from stages import catalogue, stage_class
from stages.base import StageContext, StageError
from stages.faces.scrfd import SCRFDConfig, SCRFDFaceStage
from tests.stages.faces.tiny_scrfd import GREEN, expected_face, export_tiny_scrfd, paint_face

SIDE = 320


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("scrfd")
    return {
        "dynamic": export_tiny_scrfd(root / "dynamic.onnx"),
        "fixed": export_tiny_scrfd(root / "fixed320.onnx", input_side=SIDE),
    }


def _stage(tmp_path: Path, model: Path, **cfg: object) -> SCRFDFaceStage:
    stage = SCRFDFaceStage(SCRFDConfig(model=str(model), **cfg), StageContext(run_dir=tmp_path))
    stage.setup()
    return stage


def _canvas(height: int = SIDE, width: int = SIDE) -> np.ndarray:
    return np.zeros((height, width, 3), dtype=np.uint8)


def test_registered() -> None:
    assert stage_class("scrfd") is SCRFDFaceStage
    assert SCRFDFaceStage.kind == "face"


@pytest.mark.parametrize("model", ["dynamic", "fixed"])
def test_one_face_box_keypoints_and_crop(tmp_path: Path, models: dict[str, Path], model: str) -> None:
    stage = _stage(tmp_path, models[model], det_size=SIDE, crop_size=112, crop_margin=0.0)
    # 240 x 160 image letterboxed into 320 x 213: scale 4/3. Image block x 120-132, y 72-84
    # covers input cell (row 6, col 10) of stride 16.
    image = _canvas(160, 240)
    image[72:84, 120:132] = (255, 0, 0)
    record = {"key": "a", "image": image}
    stage.process([record])
    assert not record.get("dropped_by"), record.get("drop_reason")
    box, points = expected_face(16, 6, 10, scale=int(SIDE * 160 / 240) / 160)
    np.testing.assert_allclose(record["face_box"], box, rtol=1e-5)
    np.testing.assert_allclose(record["landmarks5"], points, rtol=1e-5)
    assert record["landmarks5"].dtype == np.float32
    assert record["face_score"] == pytest.approx(1.0, abs=1e-3)
    assert record["face_crop"].shape == (112, 112, 3) and record["face_crop"].dtype == np.uint8
    assert "landmarks" not in record  # no 68-point landmarks from SCRFD


def test_det_size_sets_the_dynamic_input(tmp_path: Path, models: dict[str, Path]) -> None:
    # At det_size 640 a 320 image is doubled: the painted square fills 2x2 stride-16 cells,
    # NMS keeps the first, and the model's constant distances shrink by half in image pixels.
    image = _canvas()
    paint_face(image, 16, 6, 10)
    big = {"key": "b", "image": image}
    _stage(tmp_path, models["dynamic"], det_size=2 * SIDE).process([big])
    box, _ = expected_face(16, 12, 20, scale=2.0)
    np.testing.assert_allclose(big["face_box"], box, rtol=1e-5)
    fixed = {"key": "f", "image": image.copy()}  # a fixed-input model ignores det_size
    _stage(tmp_path, models["fixed"], det_size=2 * SIDE).process([fixed])
    np.testing.assert_allclose(fixed["face_box"], expected_face(16, 6, 10)[0], rtol=1e-5)


@pytest.mark.parametrize(("margin", "size"), [(0.0, 112), (0.2, 224)])
def test_crop_puts_keypoints_on_template(tmp_path: Path, models: dict[str, Path], margin: float, size: int) -> None:
    # Paint a dot on the expected left eye; after alignment it must land on the template's.
    stage = _stage(tmp_path, models["dynamic"], det_size=SIDE, crop_size=size, crop_margin=margin)
    image = _canvas()
    paint_face(image, 16, 6, 10)
    x, y = np.round(expected_face(16, 6, 10)[1][0]).astype(int)
    image[y - 1 : y + 2, x - 1 : x + 2] = 255
    record = {"key": "c", "image": image}
    stage.process([record])
    crop = record["face_crop"]
    ys, xs = np.nonzero((crop[:, :, 1] > 60) & (crop[:, :, 0] > 60))  # white, not the red square
    want = ((arcface_dst[0] - 56.0) / (1.0 + margin) + 56.0) * size / 112
    assert abs(xs.mean() - want[0]) < 3 * size / 112 and abs(ys.mean() - want[1]) < 3 * size / 112


def test_neighbouring_anchors_merge_and_two_faces_drop(tmp_path: Path, models: dict[str, Path]) -> None:
    stage = _stage(tmp_path, models["dynamic"], det_size=SIDE)
    wide = _canvas()  # one face over two neighbouring cells: NMS keeps one box
    paint_face(wide, 16, 6, 10)
    paint_face(wide, 16, 6, 11)
    two = _canvas()
    paint_face(two, 16, 6, 10)
    paint_face(two, 32, 2, 2, GREEN)
    merged, dropped = {"key": "w", "image": wide}, {"key": "t", "image": two}
    stage.process([merged, dropped])
    assert not merged.get("dropped_by") and merged["face_score"] == pytest.approx(1.0, abs=1e-3)
    assert dropped["dropped_by"] == "scrfd" and dropped["drop_reason"] == "2 faces (SCRFD score >= 0.5)"
    assert "face_box" not in dropped

    largest = {"key": "l", "image": two.copy()}
    _stage(tmp_path, models["dynamic"], det_size=SIDE, on_multiple="largest").process([largest])
    assert not largest.get("dropped_by")
    np.testing.assert_allclose(largest["face_box"], expected_face(32, 2, 2)[0], rtol=1e-5)


def test_small_background_faces_can_be_ignored(tmp_path: Path, models: dict[str, Path]) -> None:
    image = _canvas()  # the stride-16 face has a quarter of the stride-32 face's box area
    paint_face(image, 16, 15, 15)
    paint_face(image, 32, 2, 2, GREEN)
    kept = {"key": "k", "image": image.copy()}
    _stage(tmp_path, models["dynamic"], det_size=SIDE, min_relative_area=0.3).process([kept])
    assert not kept.get("dropped_by")
    np.testing.assert_allclose(kept["face_box"], expected_face(32, 2, 2)[0], rtol=1e-5)
    both = {"key": "b", "image": image.copy()}
    _stage(tmp_path, models["dynamic"], det_size=SIDE, min_relative_area=0.2).process([both])
    assert both["dropped_by"] == "scrfd" and both["drop_reason"].startswith("2 faces")


def test_no_face_drops_and_missing_image_is_an_error(tmp_path: Path, models: dict[str, Path]) -> None:
    stage = _stage(tmp_path, models["dynamic"])
    record = {"key": "n", "image": np.full((100, 100, 3), 255, dtype=np.uint8)}
    stage.process([record])
    assert record["dropped_by"] == "scrfd" and record["drop_reason"] == "no face (SCRFD score < 0.5)"
    with pytest.raises(StageError, match="no decoded 'image'"):
        stage.process([{"key": "x"}])


def test_missing_model_names_file_and_pull(tmp_path: Path) -> None:
    stage = SCRFDFaceStage(SCRFDConfig(model=str(tmp_path / "det.onnx")), StageContext(run_dir=tmp_path))
    with pytest.raises(StageError) as err:
        stage.setup()
    assert str(tmp_path / "det.onnx") in str(err.value) and "factory models pull scrfd-10g" in str(err.value)


def test_default_model_lookup_lists_searched_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(catalogue, "DEFAULT_MODELS_DIR", tmp_path / "cache")
    monkeypatch.setattr(catalogue, "LOCAL_MODELS_DIR", tmp_path / "models")
    with pytest.raises(StageError) as err:
        SCRFDFaceStage(SCRFDConfig(), StageContext(run_dir=tmp_path)).setup()
    assert "searched" in str(err.value) and str(tmp_path / "models") in str(err.value)
    assert "factory models pull scrfd-10g" in str(err.value)


def test_files_that_are_not_scrfd_detectors(tmp_path: Path, models: dict[str, Path]) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a protobuf")
    with pytest.raises(StageError, match=r"cannot load ONNX model .*broken\.onnx"):
        _stage(tmp_path, broken)
    # An ArcFace-shaped graph (one output): insightface routes it to recognition.
    arcface = tmp_path / "arcface.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 8)),
            (torch.zeros(1, 3, 112, 112),),
            str(arcface),
            dynamo=False,
        )
    with pytest.raises(StageError, match=r"not a face detector.*5 keypoints"):
        _stage(tmp_path, arcface)
    renamed = tmp_path / "det_10g.bin"
    renamed.write_bytes(models["fixed"].read_bytes())
    with pytest.raises(StageError, match=r"not an \.onnx file"):
        _stage(tmp_path, renamed)

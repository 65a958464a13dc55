"""SCRFD stage on tiny ONNX models with the real 9-output signature and constructed outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from stages import stage_class
from stages.base import StageContext, StageError
from stages.faces.scrfd import (
    SCRFDConfig,
    SCRFDFaceStage,
    anchor_centers,
    decode_scrfd,
    nms,
)

SIZE = 320  # detector input side of the test models
STRIDES = (8, 16, 32)
# One face at stride 16, grid cell (row 6, col 10), anchor 0: centre (160, 96) in input pixels.
CELL = (16, 6, 10, 0)
BOX_DIST = (4.0, 5.0, 4.0, 6.0)  # left, top, right, bottom in stride units
KPS_DIST = ((-2.0, -1.5), (2.0, -1.5), (0.0, 0.5), (-1.5, 3.0), (1.5, 3.0))


class ConstantSCRFD(torch.nn.Module):
    """Emits fixed SCRFD outputs (scores, boxes, keypoints per stride) for chosen anchors."""

    def __init__(self, faces: list[tuple[int, int, int, int]]):
        super().__init__()
        for stride in STRIDES:
            n = (SIZE // stride) ** 2 * 2
            scores = torch.full((n, 1), 0.02)
            boxes = torch.ones((n, 4))
            kps = torch.zeros((n, 10))
            for s, row, col, anchor in faces:
                if s == stride:
                    i = (row * (SIZE // stride) + col) * 2 + anchor
                    scores[i, 0] = 0.9
                    boxes[i] = torch.tensor(BOX_DIST)
                    kps[i] = torch.tensor(KPS_DIST).reshape(-1)
            self.register_buffer(f"s{stride}", scores)
            self.register_buffer(f"b{stride}", boxes)
            self.register_buffer(f"k{stride}", kps)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        zero = x.mean() * 0.0  # keep the input in the graph
        outs = [getattr(self, f"{kind}{s}") + zero for kind in ("s", "b", "k") for s in STRIDES]
        return tuple(outs)


def _export(module: torch.nn.Module, path: Path) -> Path:
    names = [f"{kind}_{s}" for kind in ("score", "bbox", "kps") for s in STRIDES]
    torch.onnx.export(
        module, (torch.zeros(1, 3, SIZE, SIZE),), str(path), input_names=["input.1"], output_names=names,
        dynamo=False,
    )  # fmt: skip
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("scrfd")
    return {
        "one": _export(ConstantSCRFD([CELL]), root / "one.onnx"),
        # Two neighbouring anchors on the same face: NMS must merge them.
        "dup": _export(ConstantSCRFD([CELL, (16, 6, 10, 1)]), root / "dup.onnx"),
        "two": _export(ConstantSCRFD([CELL, (32, 2, 2, 0)]), root / "two.onnx"),
        "none": _export(ConstantSCRFD([]), root / "none.onnx"),
    }


def _stage(tmp_path: Path, model: Path, **cfg: object) -> SCRFDFaceStage:
    stage = SCRFDFaceStage(SCRFDConfig(model=str(model), **cfg), StageContext(run_dir=tmp_path))
    stage.setup()
    return stage


def _expected_in_image(scale: float) -> tuple[np.ndarray, np.ndarray]:
    stride, row, col, _ = CELL
    cx, cy = col * stride, row * stride
    box = np.array([cx - BOX_DIST[0] * stride, cy - BOX_DIST[1] * stride, cx + BOX_DIST[2] * stride,
                    cy + BOX_DIST[3] * stride])  # fmt: skip
    kps = np.array([[cx + dx * stride, cy + dy * stride] for dx, dy in KPS_DIST])
    return box / scale, kps / scale


def test_registered() -> None:
    assert stage_class("scrfd") is SCRFDFaceStage
    assert SCRFDFaceStage.kind == "face"


def test_anchor_layout_matches_insightface() -> None:
    c = anchor_centers(2, 3, 8)
    # row-major cells, each repeated for its 2 anchors
    assert c.tolist()[:4] == [[0, 0], [0, 0], [8, 0], [8, 0]]
    assert c.tolist()[-1] == [16, 8]


def test_nms_keeps_the_best_of_overlapping_boxes() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], dtype=np.float32)
    assert nms(boxes, np.array([0.8, 0.9, 0.7]), 0.4) == [1, 2]


def test_decode_rejects_wrong_layout() -> None:
    with pytest.raises(ValueError, match="9 SCRFD outputs"):
        decode_scrfd([np.zeros((1, 1))] * 6, (SIZE, SIZE), 0.5)


def test_one_face_box_landmarks_and_crop(tmp_path: Path, models: dict[str, Path]) -> None:
    stage = _stage(tmp_path, models["one"], crop_size=112, crop_margin=0.0)
    # 240 x 160 image: letterboxed to 320 x 213 (insightface: scale = resized height / height).
    rng = np.random.default_rng(0)
    record = {"key": "a", "image": rng.integers(0, 255, (160, 240, 3), dtype=np.uint8)}
    stage.process([record])
    assert not record.get("dropped_by")
    box, kps = _expected_in_image(int(SIZE * 160 / 240) / 160)
    np.testing.assert_allclose(record["face_box"], box, rtol=1e-5)
    np.testing.assert_allclose(record["landmarks5"], kps, rtol=1e-5)
    assert record["face_score"] == pytest.approx(0.9)
    assert record["face_crop"].shape == (112, 112, 3) and record["face_crop"].dtype == np.uint8
    assert "landmarks" not in record  # no 68-point landmarks from SCRFD


def test_crop_puts_keypoints_on_template(tmp_path: Path, models: dict[str, Path]) -> None:
    # Paint the expected left-eye pixel; after alignment it must land near the template spot.
    stage = _stage(tmp_path, models["one"], crop_size=112, crop_margin=0.0)
    image = np.zeros((160, 240, 3), dtype=np.uint8)
    _, kps = _expected_in_image(int(SIZE * 160 / 240) / 160)
    x, y = np.round(kps[0]).astype(int)
    image[y - 1 : y + 2, x - 1 : x + 2] = 255
    record = {"key": "b", "image": image}
    stage.process([record])
    ys, xs = np.nonzero(record["face_crop"][:, :, 0] > 60)
    assert abs(xs.mean() - 38.29) < 3 and abs(ys.mean() - 51.70) < 3


def test_duplicates_merge_and_two_faces_drop(tmp_path: Path, models: dict[str, Path]) -> None:
    image = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
    dup = {"key": "d", "image": image.copy()}
    _stage(tmp_path, models["dup"]).process([dup])
    assert not dup.get("dropped_by") and dup["face_score"] == pytest.approx(0.9)

    two = {"key": "t", "image": image.copy()}
    _stage(tmp_path, models["two"]).process([two])
    assert two["dropped_by"] == "scrfd" and "2 faces" in two["drop_reason"]

    largest = {"key": "l", "image": image.copy()}
    _stage(tmp_path, models["two"], on_multiple="largest").process([largest])
    assert not largest.get("dropped_by")
    # the stride-32 face is twice as large as the stride-16 one
    assert largest["face_box"][2] - largest["face_box"][0] == pytest.approx(8 * 32)


def test_small_background_faces_can_be_ignored(tmp_path: Path, models: dict[str, Path]) -> None:
    image = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
    # The stride-16 face has a quarter of the stride-32 face's area.
    kept = {"key": "k", "image": image.copy()}
    _stage(tmp_path, models["two"], min_relative_area=0.3).process([kept])
    assert not kept.get("dropped_by") and kept["face_box"][2] - kept["face_box"][0] == pytest.approx(8 * 32)
    both = {"key": "b", "image": image.copy()}
    _stage(tmp_path, models["two"], min_relative_area=0.2).process([both])
    assert both["dropped_by"] == "scrfd"


def test_no_face_drops(tmp_path: Path, models: dict[str, Path]) -> None:
    record = {"key": "n", "image": np.zeros((100, 100, 3), dtype=np.uint8)}
    _stage(tmp_path, models["none"]).process([record])
    assert record["dropped_by"] == "scrfd" and "no face" in record["drop_reason"]


def test_missing_model_names_file_and_pull(tmp_path: Path) -> None:
    stage = SCRFDFaceStage(SCRFDConfig(model=str(tmp_path / "det.onnx")), StageContext(run_dir=tmp_path))
    with pytest.raises(StageError) as err:
        stage.setup()
    assert str(tmp_path / "det.onnx") in str(err.value) and "factory models pull scrfd-10g" in str(err.value)


def test_default_model_lookup_lists_searched_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from stages import catalogue as models

    monkeypatch.setattr(models, "DEFAULT_MODELS_DIR", tmp_path / "cache")
    monkeypatch.setattr(models, "LOCAL_MODELS_DIR", tmp_path / "models")
    with pytest.raises(StageError) as err:
        SCRFDFaceStage(SCRFDConfig(), StageContext(run_dir=tmp_path)).setup()
    assert "searched" in str(err.value) and str(tmp_path / "models") in str(err.value)

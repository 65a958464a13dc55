"""Face stage on dlib: detect, keep exactly one main face, 68 landmarks, aligned crop.

Detection is dlib's HOG + linear SVM frontal detector, landmarks dlib's 68-point
predictor, via ``stages.faces.landmarks``. Per record (input ``record["image"]``, uint8 RGB):

- no face -> dropped, reason ``"no face"``;
- several faces -> the largest is the main face; the record is dropped (reason names the
  count and area ratio) unless every other face is smaller than
  ``max_secondary_area_ratio`` x the main face's box area. Default 0.1: a generated
  portrait can carry a tiny face in the background (a poster, a reflection) without its
  labels becoming ambiguous, while a second face of comparable size means the AU labels
  could describe either person. Set it to 0 to drop any image with two faces;
- otherwise sets ``face_score`` (detector confidence; for dlib the HOG-SVM score, about
  0.25-3 on real faces), ``face_box`` ([x0, y0, x1, y1] pixels), transient ``landmarks``
  ((68, 2) float32 pixels) and transient ``face_crop`` (``crop_size`` square uint8 RGB,
  5-point similarity alignment of the 68 landmarks onto the ArcFace template).

The selection and record-writing helpers are shared with the LBP face stage.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np
from pydantic import Field

from stages.base import Record, Stage, StageConfig, StageError, drop, is_dropped

__all__ = [
    "DlibFaceConfig",
    "DlibFaceStage",
    "FaceCandidate",
    "box_area",
    "check_image",
    "select_main_face",
    "write_face",
]

FaceCandidate = tuple[tuple[float, float, float, float], float | None]  # box, score


class DlibFaceConfig(StageConfig):
    upsample: int = Field(1, ge=0, le=3, description="image doublings before detection (small faces)")
    min_score: float = Field(0.25, ge=-1.0, le=5.0, description="HOG-SVM score threshold")
    max_secondary_area_ratio: float = Field(0.1, ge=0.0, le=1.0)
    crop_size: int = Field(224, ge=32, le=1024)


def box_area(box: Sequence[float]) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def select_main_face(
    candidates: Sequence[FaceCandidate], max_secondary_area_ratio: float
) -> tuple[int | None, str | None]:
    """Index of the main (largest) face, or ``(None, reason)`` when the image must be dropped."""
    if not candidates:
        return None, "no face"
    areas = [box_area(box) for box, _ in candidates]
    main = int(np.argmax(areas))
    others = [a / areas[main] for i, a in enumerate(areas) if i != main] if areas[main] > 0 else [1.0]
    if others and max(others) >= max_secondary_area_ratio:
        return None, (
            f"{len(candidates)} faces (second largest is {max(others):.2f} of the main face's area, "
            f"limit {max_secondary_area_ratio:.2f})"
        )
    return main, None


def check_image(record: Record) -> str | None:
    """Why ``record["image"]`` is unusable, or ``None`` when it is a uint8 RGB array."""
    image = record.get("image")
    if image is None:
        return "no image on the record (the generator must set record['image'])"
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        return f"image is {arr.dtype} {arr.shape}, expected uint8 RGB (H, W, 3)"
    return None


def write_face(
    record: Record,
    box: Sequence[float],
    score: float | None,
    landmarks: np.ndarray,
    crop_size: int,
) -> Record:
    from stages.faces.landmarks import align_face

    record["face_score"] = None if score is None else float(score)
    record["face_box"] = [float(v) for v in box]
    record["landmarks"] = np.asarray(landmarks, dtype=np.float32)
    record["face_crop"] = align_face(record["image"], record["landmarks"], size=crop_size)
    return record


class DlibFaceStage(Stage):
    name: ClassVar[str] = "dlib"
    kind: ClassVar[str] = "face"
    config_model: ClassVar[type[StageConfig]] = DlibFaceConfig

    def setup(self) -> None:
        from stages.faces.landmarks import LandmarkError, detect_faces, landmarks_for_box

        blank = np.zeros((64, 64, 3), dtype=np.uint8)
        try:  # load both models now so a missing file fails the run before any sample
            detect_faces(blank, upsample=0)
            landmarks_for_box(blank, (8.0, 8.0, 56.0, 56.0))
        except LandmarkError as exc:
            raise StageError(str(exc)) from exc

    def process(self, batch: list[Record]) -> list[Record]:
        from stages.faces.landmarks import detect_faces

        cfg: DlibFaceConfig = self.config  # type: ignore[assignment]
        for record in batch:
            if is_dropped(record):
                continue
            problem = check_image(record)
            if problem:
                drop(record, self.name, problem)
                continue
            faces = detect_faces(record["image"], upsample=cfg.upsample, min_score=cfg.min_score)
            main, reason = select_main_face([(f.box, f.score) for f in faces], cfg.max_secondary_area_ratio)
            if main is None:
                drop(record, self.name, reason or "no face")
                continue
            face = faces[main]
            write_face(record, face.box, face.score, face.landmarks, cfg.crop_size)
        return batch

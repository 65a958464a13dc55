"""The face kind: find the faces of ``record["image"]``, keep exactly one, write its fields.

:class:`FaceStage` owns the per-record work. Per live record:

1. the image is checked (:meth:`FaceStage.image_problem`: a uint8 RGB array, else dropped);
2. the stage's detector lists the faces (:meth:`FaceStage.find_faces`, the one method every
   face stage writes), each a :class:`FaceCandidate`;
3. :meth:`FaceStage.choose_face` keeps one or gives the drop reason;
4. the kept face's landmarks (68 iBUG points, or 5 ArcFace-order points; asked of
   :meth:`FaceStage.landmarks_for` when the detector gives none) give the aligned crop
   (:meth:`FaceStage.face_crop`);
5. :func:`write_face` sets ``face_score`` (detector confidence, ``None`` when the detector
   has none), ``face_box`` ([x0, y0, x1, y1] pixels), transient ``landmarks`` ((68, 2)) or
   ``landmarks5`` ((5, 2)) float32 pixels, and transient ``face_crop`` (uint8 RGB square).

:class:`MainFaceStage` is the face stage with dlib's 68 landmarks (the dlib and lbp stages):
it keeps the main face with :func:`select_main_face` (the largest; the image is dropped when
another face reaches ``max_secondary_area_ratio`` of its box area: a generated portrait may
carry a tiny face in the background, a poster or a reflection, without its labels becoming
ambiguous, while a second face of comparable size means the AU labels could describe either
person) and crops with :func:`stages.faces.landmarks.arcface_crop_68`.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, TypeVar

import numpy as np
from pydantic import Field

from stages.base import Kind, Record, Stage, StageConfig
from stages.faces.landmarks import arcface_crop_68, dlib_model_files

__all__ = [
    "Box",
    "FaceCandidate",
    "FaceStage",
    "MainFaceConfig",
    "MainFaceStage",
    "box_area",
    "check_image",
    "select_main_face",
    "write_face",
]

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels


@dataclass(frozen=True)
class FaceCandidate:
    """One detected face: its box, the detector's confidence and, if the detector gives them, landmarks."""

    box: Box
    score: float | None = None  # None: the detector reports no confidence
    landmarks: np.ndarray | None = None  # (68, 2) iBUG or (5, 2) ArcFace order, pixels; None: landmarks_for()


class MainFaceConfig(StageConfig):
    """Options of a :class:`MainFaceStage`."""

    max_secondary_area_ratio: float = Field(0.1, ge=0.0, le=1.0)
    crop_size: int = Field(224, ge=32, le=1024)


C = TypeVar("C", bound=StageConfig)
M = TypeVar("M", bound=MainFaceConfig)


def box_area(box: Sequence[float]) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def select_main_face(
    candidates: Sequence[FaceCandidate], max_secondary_area_ratio: float
) -> tuple[int | None, str | None]:
    """Index of the main (largest) face, or ``(None, reason)`` when the image must be dropped."""
    if not candidates:
        return None, "no face"
    areas = [box_area(c.box) for c in candidates]
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
    record: Record, box: Sequence[float], score: float | None, landmarks: np.ndarray, crop: np.ndarray
) -> Record:
    """Set the face fields; 68 landmarks go to ``landmarks``, 5 keypoints to ``landmarks5``."""
    points = np.asarray(landmarks, dtype=np.float32)
    record["face_score"] = None if score is None else float(score)
    record["face_box"] = [float(v) for v in box]
    record["landmarks" if len(points) == 68 else "landmarks5"] = points
    record["face_crop"] = crop
    return record


class FaceStage(Stage[C]):
    """Base of every face stage (``kind = "face"``); see the module docstring for the steps."""

    kind: ClassVar[Kind] = "face"
    reads = frozenset({"image"})
    # 68 landmarks go to ``landmarks``, 5 keypoints to ``landmarks5`` (write_face).
    writes = frozenset({"face_score", "face_box", "landmarks", "landmarks5", "face_crop"})

    @abstractmethod
    def find_faces(self, image: np.ndarray) -> list[FaceCandidate]:
        """Every face the detector finds in a uint8 RGB image."""

    def landmarks_for(self, image: np.ndarray, box: Box) -> np.ndarray:
        """Landmarks of the face in ``box``, for a detector that gives none with its boxes."""
        raise NotImplementedError(f"face stage {self.name!r} found a face without landmarks")

    def image_problem(self, record: Record) -> str | None:
        """The drop reason when ``record["image"]`` cannot be searched for faces."""
        return check_image(record)

    @abstractmethod
    def choose_face(self, faces: list[FaceCandidate]) -> tuple[int | None, str | None]:
        """Index of the face to keep, or ``(None, drop reason)``."""

    @abstractmethod
    def face_crop(self, image: np.ndarray, landmarks: np.ndarray) -> np.ndarray | None:
        """The aligned crop of the kept face, or ``None`` when no alignment fits."""

    def run_record(self, record: Record) -> str | None:
        problem = self.image_problem(record)
        if problem:
            return problem
        image = record["image"]
        faces = self.find_faces(image)
        main, reason = self.choose_face(faces)
        if main is None:
            return reason or "no face"
        face = faces[main]
        landmarks = face.landmarks if face.landmarks is not None else self.landmarks_for(image, face.box)
        crop = self.face_crop(image, landmarks)
        if crop is None:
            return "face keypoints are degenerate (no alignment transform)"
        write_face(record, face.box, face.score, landmarks, crop)
        return None


class MainFaceStage(FaceStage[M]):
    """A face stage with dlib's 68 landmarks: keeps the main face, crops on the landmarks' 5 points."""

    writes = FaceStage.writes - {"landmarks5"}

    def choose_face(self, faces: list[FaceCandidate]) -> tuple[int | None, str | None]:
        return select_main_face(faces, self.config.max_secondary_area_ratio)

    def face_crop(self, image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        return arcface_crop_68(image, landmarks, self.config.crop_size)

    def model_files(self) -> dict[str, Path]:
        return {**super().model_files(), **dlib_model_files("pose68")}

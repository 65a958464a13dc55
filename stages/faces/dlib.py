"""Face stage on dlib: HOG + linear SVM frontal detector, 68 landmarks, aligned crop.

Detection and landmarks come from ``stages.faces.landmarks`` (dlib's HOG detector and its
68-point predictor). Everything else is :class:`stages.faces.base.MainFaceStage`: the image
check, keeping the main face (``max_secondary_area_ratio``; set it to 0 to drop any image
with two faces), and the record fields. ``face_score`` is the HOG-SVM score, about 0.25-3 on
real faces; ``face_crop`` is the ``crop_size`` square with the landmarks' 5 points on the
ArcFace template.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from pydantic import Field

from stages.base import StageError
from stages.catalogue import DLIB_68_LICENCE, DLIB_HOG_LICENCE, THIS_CODE
from stages.faces.base import FaceCandidate, MainFaceConfig, MainFaceStage
from stages.faces.landmarks import LandmarkError, detect_faces, landmarks_for_box

__all__ = ["DlibFaceConfig", "DlibFaceStage"]


class DlibFaceConfig(MainFaceConfig):
    upsample: int = Field(1, ge=0, le=3, description="image doublings before detection (small faces)")
    min_score: float = Field(0.25, ge=-1.0, le=5.0, description="HOG-SVM score threshold")


class DlibFaceStage(MainFaceStage[DlibFaceConfig]):
    name: ClassVar[str] = "dlib"
    licence: ClassVar[str] = f"{THIS_CODE}; {DLIB_HOG_LICENCE}; {DLIB_68_LICENCE}"

    def setup(self) -> None:
        blank = np.zeros((64, 64, 3), dtype=np.uint8)
        try:  # load both models now so a missing file fails the run before any sample
            detect_faces(blank, upsample=0)
            landmarks_for_box(blank, (8.0, 8.0, 56.0, 56.0))
        except LandmarkError as exc:
            raise StageError(str(exc)) from exc

    def find_faces(self, image: np.ndarray) -> list[FaceCandidate]:
        faces = detect_faces(image, upsample=self.config.upsample, min_score=self.config.min_score)
        return [FaceCandidate(f.box, f.score, f.landmarks) for f in faces]

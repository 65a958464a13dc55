"""Face stage on scikit-image's LBP frontal-face cascade, with dlib's 68 landmarks in its box.

A second, independent face detector (multi-block LBP cascade shipped with scikit-image,
``skimage.data.lbp_frontal_face_cascade_filename()``), useful as a cross-check of the dlib
HOG detector and where dlib's detector misses. Landmarks come from
``stages.faces.landmarks.landmarks_for_box`` (dlib's 68-point predictor run inside the cascade
box, only for the face the stage keeps). Selection, drop reasons and the record fields are
those of every :class:`stages.faces.base.MainFaceStage`, as in the dlib face stage, except
``face_score``: the cascade reports no confidence, so it is ``None`` (the heuristic realism
scorer then leaves the detector-confidence term out).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from stages.base import StageContext, StageError
from stages.catalogue import DLIB_68_LICENCE, THIS_CODE
from stages.faces.base import Box, FaceCandidate, MainFaceConfig, MainFaceStage, box_area
from stages.faces.landmarks import landmarks_for_box

__all__ = ["LBPFaceConfig", "LBPFaceStage", "lbp_faces", "merge_overlapping"]


class LBPFaceConfig(MainFaceConfig):
    scale_factor: float = Field(1.2, gt=1.0, le=2.0, description="window growth per scale")
    step_ratio: float = Field(1.0, ge=1.0, le=3.0, description="1 = exhaustive search")
    min_face_fraction: float = Field(
        0.1, gt=0.0, le=1.0, description="smallest face side as a share of the shorter image side"
    )
    # 3: at 1-2 the cascade fires on textured background (flag, patches) in the test photos.
    min_neighbor_number: int = Field(3, ge=0, le=20)
    merge_overlap: float = Field(
        0.5, gt=0.0, le=1.0, description="merge boxes whose intersection covers this share of the smaller"
    )


def lbp_faces(cascade: Any, image: Any, cfg: LBPFaceConfig) -> list[FaceCandidate]:
    """Cascade detections, boxes (x0, y0, x1, y1) in pixels, no score and no landmarks."""
    h, w = image.shape[:2]
    side = min(h, w)
    low = max(24, round(side * cfg.min_face_fraction))
    found = cascade.detect_multi_scale(
        img=image,
        scale_factor=cfg.scale_factor,
        step_ratio=cfg.step_ratio,
        min_size=(low, low),
        max_size=(side, side),
        min_neighbor_number=cfg.min_neighbor_number,
    )
    boxes = [(float(d["c"]), float(d["r"]), float(d["c"] + d["width"]), float(d["r"] + d["height"])) for d in found]
    return [FaceCandidate(box) for box in merge_overlapping(boxes, cfg.merge_overlap)]


def _overlap(a: Box, b: Box) -> float:
    """Intersection area over the smaller box's area."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    return w * h / max(1e-9, min(box_area(a), box_area(b)))


def merge_overlapping(boxes: list[Box], min_overlap: float) -> list[Box]:
    """One box (the mean) per group of mutually overlapping detections, largest group first.

    scikit-image's cascade merges only near-identical windows, so one face often comes
    back as two or three boxes at neighbouring scales; without this every face would look
    like "several faces".
    """
    groups: list[list[Box]] = []
    for box in sorted(boxes, key=box_area, reverse=True):
        for group in groups:
            if _overlap(group[0], box) >= min_overlap:
                group.append(box)
                break
        else:
            groups.append([box])
    merged: list[Box] = []
    for group in groups:
        x0, y0, x1, y1 = (float(v) for v in np.mean(group, axis=0))
        merged.append((x0, y0, x1, y1))
    return sorted(merged, key=box_area, reverse=True)


class LBPFaceStage(MainFaceStage[LBPFaceConfig]):
    name: ClassVar[str] = "lbp"
    licence: ClassVar[str] = f"{THIS_CODE}; scikit-image LBP frontal-face cascade: BSD-3-Clause; {DLIB_68_LICENCE}"

    def __init__(self, config: LBPFaceConfig, context: StageContext) -> None:
        super().__init__(config, context)
        self._cascade: Any = None

    def setup(self) -> None:
        try:  # deferred: optional (the faces extra); a missing install becomes the StageError below
            from skimage import data
            from skimage.feature import Cascade
        except ImportError as exc:
            raise StageError("the lbp face stage needs scikit-image; pip install scikit-image") from exc
        self._cascade = Cascade(data.lbp_frontal_face_cascade_filename())

    def find_faces(self, image: np.ndarray) -> list[FaceCandidate]:
        if self._cascade is None:
            self.setup()
        return lbp_faces(self._cascade, image, self.config)

    def landmarks_for(self, image: np.ndarray, box: Box) -> np.ndarray:
        return landmarks_for_box(image, box)

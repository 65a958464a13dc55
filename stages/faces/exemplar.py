"""An identity exemplar: the single usable face of an identity photo, and signs it is not neutral.

Shared by ``factory identities index`` and the warp generator, so both accept the same photos.
:func:`exemplar_landmarks` is the one bounded cache of exemplar faces the stages that measure
a sample against its identity's exemplar (the geometric and appearance detectors, the
filters' identity check) share in a worker; each bounds its own per-identity results with
``functools.lru_cache(EXEMPLAR_CACHE)`` too.
"""

from __future__ import annotations

import functools
import io
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from stages.faces.landmarks import FaceDetection, detect_faces, landmarks_for_box

__all__ = [
    "EXEMPLAR_CACHE",
    "ExemplarError",
    "IdentityStatus",
    "decode_image",
    "exemplar_face",
    "exemplar_landmarks",
    "exemplar_warnings",
]

IdentityStatus = Literal["ok", "missing", "unreadable", "no_face", "several_faces"]

# Exemplars are detected on a copy whose longer side is at most this many pixels: phone
# photos (4000 px) would otherwise take seconds per upsampled HOG pass. Landmarks are then
# fitted on the full-resolution image.
_DETECT_MAX_SIDE = 800
# Identities whose exemplar a worker keeps (each holds its photo), least recently used first out.
EXEMPLAR_CACHE = 256


class ExemplarError(ValueError):
    """An identity photo has no usable face; ``status`` says why."""

    def __init__(self, status: IdentityStatus, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def exemplar_face(image: np.ndarray) -> FaceDetection:
    """The single face of an identity photo, or :class:`ExemplarError`.

    Shared by the indexer and the warp generator so both accept the same photos.
    """
    h, w = image.shape[:2]
    scale = min(1.0, _DETECT_MAX_SIDE / max(h, w))
    small = image
    if scale < 1.0:
        small = np.asarray(
            Image.fromarray(image).resize((round(w * scale), round(h * scale)), Image.Resampling.BILINEAR)
        )
    faces = detect_faces(small, upsample=1)
    if not faces:
        raise ExemplarError("no_face", "no face found (dlib HOG detector, upsample=1)")
    if len(faces) > 1:
        boxes = ", ".join(f"({', '.join(f'{v / scale:.0f}' for v in f.box)})" for f in faces)
        raise ExemplarError("several_faces", f"{len(faces)} faces found at {boxes}; crop the photo to one person")
    face = faces[0]
    if scale == 1.0:
        return face
    x0, y0, x1, y1 = (v / scale for v in face.box)
    box = (x0, y0, x1, y1)
    return FaceDetection(box=box, score=face.score, landmarks=landmarks_for_box(image, box))


@functools.lru_cache(maxsize=EXEMPLAR_CACHE)
def exemplar_landmarks(bank: Any, identity_id: str) -> tuple[np.ndarray, np.ndarray | None]:
    """An identity's exemplar photo in ``bank`` and dlib's 68 landmarks of the first face found
    in it (``None``: no face); cached, so neither array may be changed (the landmarks are
    read-only)."""
    image = np.asarray(bank.image(identity_id))
    faces = detect_faces(image)
    if not faces:
        return image, None
    landmarks = faces[0].landmarks
    landmarks.setflags(write=False)
    return image, landmarks


# Neutrality thresholds in inter-ocular distances, set between a neutral closed-mouth
# exemplar (Grace Hopper: inner-lip gap 0.004, corner lift 0.03) and a broad smile
# (the astronaut: 0.16 and 0.20).
_PARTED_LIPS_IOD = 0.05
_CORNER_LIFT_IOD = 0.08


def exemplar_warnings(landmarks: np.ndarray) -> list[str]:
    """Signs that an identity photo is not neutral (usable, but worth knowing).

    A smiling or open-mouthed photo carries that expression into every sample made from
    it; the labels account for it (the bank's ``expression``, or population mode), but a
    neutral photo is what lets a sample show any expression.
    """
    lm = np.asarray(landmarks, np.float64)
    left, right = lm[36:42].mean(axis=0), lm[42:48].mean(axis=0)
    iod = float(np.linalg.norm(right - left))
    if iod < 1e-6:
        return ["degenerate landmarks (eye centres coincide)"]
    ex = (right - left) / iod
    down = np.array([-ex[1], ex[0]])
    y = lm @ down / iod  # position down the face, IOD units
    gap = float(np.mean([y[lo] - y[up] for up, lo in ((61, 67), (62, 66), (63, 65))]))
    lift = float((y[62] + y[66]) / 2 - (y[48] + y[54]) / 2)
    out = []
    if gap > _PARTED_LIPS_IOD:
        out.append(
            f"lips parted ({gap:.2f} IOD): renders inherit AU25-like opening; "
            "a neutral closed-mouth photo gives exact labels"
        )
    if lift > _CORNER_LIFT_IOD:
        out.append(
            f"lip corners raised ({lift:.2f} IOD): the photo smiles, renders inherit AU12; "
            "a neutral photo gives exact labels"
        )
    return out


def decode_image(data: bytes, path: Path) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ExemplarError("unreadable", f"{path} is not a readable image ({exc})") from exc

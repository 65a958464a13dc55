"""Portrait filters of an identity-bank build: is this generated face a usable identity exemplar?

A bank portrait is what the warp generator, MAUGen and the exemplar-relative detectors take
as a person's neutral face, so it must show exactly that. Per record (after the face stage,
the AU detectors and the realism scorer), :class:`PortraitFilterStage` first records the
scores, then keeps the portrait only if, in this order:

1. **face size**: the inter-ocular distance is at least ``min_iod_px`` pixels (the warp
   generator wants ~60; smaller faces lose the detail detectors read);
2. **sharpness**: the variance of the Laplacian of the aligned grey face crop (the usual
   focus measure, Pech-Pacheco et al. 2000) is at least ``min_sharpness``;
3. **frontal pose**: yaw, pitch and roll from the landmarks
   (:func:`stages.faces.pose.head_pose`) within ``max_yaw`` / ``max_pitch`` / ``max_roll``
   (before the expression: population-mode readings of a turned or tilted face are not
   trustworthy, a tilted neutral face reads as a smile);
4. **neutral expression**: no AU detector of the recipe finds any AU active (occurrence
   probability >= ``max_au_occurrence``); with no bank, exemplar-relative detectors measure
   in population mode (:mod:`stages.detectors.population`), so the check covers the AUs
   each detector can judge without a reference, and a learned detector (OpenGraphAU) in the
   recipe covers all 12;
5. **realism**: ``realism_score`` at least ``min_realism``.

"Exactly one face" is the face stage's rule: the bank recipe sets its
``max_secondary_area_ratio = 0`` so any second face drops the image.

The stage also embeds every kept face (``identity_embedding``: dlib's 128-D descriptor, or
an insightface ArcFace ONNX model from a local file, L2-normalised). The bank-wide
deduplication runs on those embeddings when the dataset is committed
(:mod:`factory.engine.dedup`), since whether a face repeats an identity depends on every
portrait kept before it, not on this record alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from manifests.vocab import DISFA_AUS
from stages.base import Kind, Record, Stage, StageConfig, StageContext, StageError
from stages.catalogue import DLIB_68_LICENCE, DLIB_RESNET_LICENCE, INSIGHTFACE_LICENCE, THIS_CODE, local_path
from stages.faces.embedding import Embedder, EmbedderError, arcface_embedder, dlib_embedder
from stages.faces.landmarks import dlib_model_files, inter_ocular_distance
from stages.faces.pose import head_pose

__all__ = ["DEDUP_THRESHOLDS", "PortraitFilterConfig", "PortraitFilterStage", "neutral_problem", "sharpness"]

# Default cosine at or above which two embeddings are one person. dlib: its documented rule
# (raw descriptor distance < 0.6) restated as a cosine on descriptors of norm ~1.43 (see
# stages.filters). ArcFace: a conservative same-person cosine for buffalo_l's w600k_r50
# (different people rarely exceed 0.3 there); set bank.dedup_threshold to choose another.
DEDUP_THRESHOLDS: dict[str, float] = {"dlib": 0.9, "arcface": 0.5}


class PortraitFilterConfig(StageConfig):
    min_iod_px: float = Field(60.0, ge=0.0, description="smallest inter-ocular distance, pixels")
    min_sharpness: float = Field(20.0, ge=0.0, description="variance of the Laplacian of the grey face crop")
    max_au_occurrence: float = Field(0.5, gt=0.0, le=1.0, description="detector probability that counts as active")
    max_yaw: float = Field(20.0, ge=0.0, le=90.0, description="degrees")
    max_pitch: float = Field(20.0, ge=0.0, le=90.0, description="degrees")
    max_roll: float = Field(15.0, ge=0.0, le=90.0, description="degrees")
    min_realism: float | None = Field(0.5, ge=0.0, le=1.0, description="None disables")
    embedder: Literal["dlib", "arcface"] = "dlib"
    arcface_onnx: str | None = Field(None, description="ArcFace ONNX file; default: the catalogue's arcface-r50")


def sharpness(crop: np.ndarray) -> float:
    """Variance of the Laplacian of a uint8 RGB crop's grey image (higher is sharper)."""
    import cv2  # deferred: opencv is optional (the faces extra)

    grey = cv2.cvtColor(np.ascontiguousarray(crop), cv2.COLOR_RGB2GRAY)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def neutral_problem(votes: dict[str, dict[str, list[float | None]]], limit: float) -> str | None:
    """The first active AU any detector reports, as a drop reason, or ``None`` when neutral."""
    for detector, vote in sorted(votes.items()):
        for au, p in zip(DISFA_AUS, vote.get("occurrence") or [], strict=False):
            if p is not None and p == p and p >= limit:
                return f"not neutral: {detector} finds AU{au} (p = {p:.2f})"
    return None


class PortraitFilterStage(Stage[PortraitFilterConfig]):
    name: ClassVar[str] = "portrait-filters"
    kind: ClassVar[Kind] = "filter"
    reads = frozenset({"image", "landmarks"})
    optional_reads = frozenset({"face_crop", "detector_votes", "realism_score"})
    writes = frozenset({"head_pose", "face_iod", "face_sharpness", "identity_embedding"})
    licence = f"{THIS_CODE}; the identity embedding: {DLIB_RESNET_LICENCE}, or {INSIGHTFACE_LICENCE} (ArcFace)"

    def licence_notice(self) -> str:
        if self.config.embedder == "arcface":
            return f"{THIS_CODE}; ArcFace identity embedding: {INSIGHTFACE_LICENCE}"
        return f"{THIS_CODE}; {DLIB_RESNET_LICENCE}; {DLIB_68_LICENCE}"

    def model_files(self) -> dict[str, Path]:
        if self.config.embedder == "arcface":
            path = Path(self.config.arcface_onnx) if self.config.arcface_onnx else local_path("arcface-r50")
            return {**super().model_files(), "arcface": path} if path.is_file() else super().model_files()
        return {**super().model_files(), **dlib_model_files("pose68", "resnet")}

    def __init__(self, config: PortraitFilterConfig, context: StageContext) -> None:
        super().__init__(config, context)
        self._embed: Embedder | None = None

    def setup(self) -> None:
        cfg = self.config
        if cfg.embedder == "dlib":
            self._embed = dlib_embedder()
            return
        path = Path(cfg.arcface_onnx) if cfg.arcface_onnx else local_path("arcface-r50")
        try:
            self._embed = arcface_embedder(path)
        except EmbedderError as exc:
            raise StageError(f"portrait-filters: embedder 'arcface': {exc}") from exc

    def _scores(self, record: Record) -> None:
        # A face stage with 68 landmarks (dlib or lbp) runs before it: declared reads, Pipeline.check.
        landmarks, image = record["landmarks"], record["image"]
        pose = head_pose(landmarks, image.shape[:2])
        record["head_pose"] = (pose.yaw, pose.pitch, pose.roll)
        record["face_iod"] = inter_ocular_distance(landmarks)
        crop = record.get("face_crop")
        record["face_sharpness"] = sharpness(crop if crop is not None else image)

    def keep(self, record: Record) -> str | None:
        """Why the portrait is not a usable exemplar (the first failing check), or ``None``."""
        cfg = self.config
        if record["face_iod"] < cfg.min_iod_px:
            return f"face too small: inter-ocular distance {record['face_iod']:.0f} px < {cfg.min_iod_px:.0f}"
        if record["face_sharpness"] < cfg.min_sharpness:
            return f"blurred: sharpness {record['face_sharpness']:.1f} < {cfg.min_sharpness:.1f}"
        yaw, pitch, roll = record["head_pose"]
        limits = (("yaw", yaw, cfg.max_yaw), ("pitch", pitch, cfg.max_pitch), ("roll", roll, cfg.max_roll))
        for what, angle, limit in limits:
            if abs(angle) > limit:
                return f"not frontal: {what} {angle:.0f} degrees (limit {limit:.0f})"
        expression = neutral_problem(record.get("detector_votes") or {}, cfg.max_au_occurrence)
        if expression:
            return expression
        realism = record.get("realism_score")
        if cfg.min_realism is not None and (realism is None or realism < cfg.min_realism):
            return f"realism {realism if realism is None else round(realism, 3)} < {cfg.min_realism:.3f}"
        return None

    def run_record(self, record: Record) -> str | None:
        self._scores(record)
        reason = self.keep(record)
        if reason is None and self._embed is not None:
            record["identity_embedding"] = self._embed(record["image"], record["landmarks"]).astype(np.float32)
        return reason

"""Geometric AU detector: AU intensities from 68-landmark displacement against a neutral.

Measurement, per sample:

1. Reference shape: the 68 landmarks of the sample's identity exemplar (detected once per
   identity and cached). Without a bank, with ``use_identity_exemplar = false``, or when the
   exemplar shows no face, the detector measures in **population mode** instead
   (:mod:`stages.detectors.population`: AUs 4, 12, 15, 25, 26 from features that are near-universal
   in neutral faces, NaN for the rest), not against an average shape: absolute landmark
   positions mix identity with expression. The sample's own 68 are the face stage's, or dlib's
   in its face box when it gives 5 keypoints (SCRFD).
2. Normalisation: the reference is put in a canonical frame (eye centres on a horizontal
   line, mid-eye at the origin, inter-ocular distance 1, y pointing **up**); the sample's
   landmarks are mapped onto it by the least-squares similarity transform (Umeyama) fitted
   on points that no DISFA AU moves much: the jaw tops (0, 16), the nose bridge (27-30)
   and the four eye corners (36, 39, 42, 45). All displacements are therefore in
   inter-ocular-distance (IOD) units, free of pose roll, scale and position.
3. Features (sample minus reference, IOD units, ``+`` = up / outward / wider; the 14
   ``FEATURES``):

   ====================  =====================================================  ==========
   feature               formula (iBUG-68 indices, 0-based)                     AUs
   ====================  =====================================================  ==========
   brow_inner_raise      mean dy of 20, 21, 22, 23                              1, (2), 4-, 9-
   brow_outer_raise      mean dy of 17, 18, 25, 26                              2, (1), 4-
   brow_gap_shrink       -d(x22 - x21)                                          4
   eye_aperture          d mean(upper lid 37, 38, 43, 44 - lower lid 41, 40, 47, 46)  5, 6-
   lower_lid_raise       mean dy of 40, 41, 46, 47                              6
   nose_base_raise       mean dy of 31-35                                       9
   upper_lip_raise       mean dy of 50, 51, 52                                  9
   corner_raise          mean dy of 48, 54                                      12, 15-, 20-
   mouth_width           d(x54 - x48) / 2                                       12, 20
   lower_lip_raise       mean dy of 56, 57, 58                                  17, 25-, 26-
   lip_gap               d mean(y of 61, 62, 63 - y of 67, 66, 65)              25, 26
   chin_raise            mean dy of 7, 8, 9                                     17, 26-
   upper_lid_raise       mean dy of 37, 38, 43, 44                              5
   cheek_raise           mean dy of jaw points 1, 2, 14, 15 (cheek contour)     6
   ====================  =====================================================  ==========

4. Unmixing: the 14 features are explained jointly as ``features ~= S @ a`` with ``a >= 0``
   (non-negative least squares), where column ``S[:, au]`` is the feature change of one
   intensity level of that AU. Solving jointly is what separates AUs that move the same
   points (AU12 up-and-out, AU20 out, AU15 down at the mouth corners; AU25 lips only vs
   AU26 lips and chin). ``a[au]`` is the intensity (clipped to 0-5); occurrence is
   ``sigmoid((a - threshold) / 0.15)``, threshold 0.5 by default (the rounding boundary
   between intensity 0 and 1). An exemplar that is not neutral itself (its bank row's
   ``expression``, or population mode on it when not recorded) has its own AUs added, so
   the reading is absolute, as the labels are.

Calibration (``GeometricConfig.calibration``):

- ``"facs"``: ``DEFAULT_SIGNATURES``, one level = a fifth of the FACS maximum-intensity
  excursion of the named points, from anthropometric sizes (IOD about 62 mm; brow raise up
  to ~10 mm, lid widening ~5 mm, smile corner ~8 mm up and ~10 mm out, lip part ~10 mm,
  jaw drop ~25 mm at the lips and chin) and the secondary movements FACS lists per AU;
  thresholds all ``threshold`` (0.5). Generator-agnostic.
- ``"warp-builtin"`` (default): ``WARP_BUILTIN_SIGNATURES``/``THRESHOLDS``, refitted with
  :func:`fit_calibration` on 470 warp renders of the builtin identities (see the constant).
  Fitted to dlib's damped response on two identities and one generator; refit for others
  with ``factory calibrate`` (:func:`factory.commands.calibrate.calibrate_offline_detectors`) and
  pass its ``geometric.json`` as ``calibration``.
- a path: a JSON file written from :func:`fit_calibration` on any labelled samples.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import Field
from scipy.optimize import nnls

from manifests.vocab import DISFA_AUS, INTENSITY_MAX
from stages.base import Record, StageConfig, StageContext, StageError
from stages.catalogue import DLIB_68_LICENCE, DLIB_HOG_LICENCE, THIS_CODE
from stages.detectors.base import MeasuringDetector, exemplar_for, read_calibration
from stages.detectors.population import OCCURRENCE_THRESHOLD, exemplar_own_intensity, population_intensities
from stages.faces.exemplar import EXEMPLAR_CACHE, exemplar_landmarks
from stages.faces.geometry import (
    affine_fit,
    apply_transform,
    averaged_upright_landmarks,
    canonical_frame,
    similarity_fit,
)
from stages.faces.landmarks import dlib_model_files, landmarks_for_box

__all__ = [
    "DEFAULT_SIGNATURES",
    "FEATURES",
    "STABLE_POINTS",
    "WARP_BUILTIN_SIGNATURES",
    "WARP_BUILTIN_THRESHOLDS",
    "GeometricAUDetector",
    "GeometricConfig",
    "displacement_features",
    "fit_calibration",
    "intensities_from_features",
]

STABLE_POINTS: tuple[int, ...] = (0, 16, 27, 28, 29, 30, 36, 39, 42, 45)

FEATURES: tuple[str, ...] = (
    "brow_inner_raise",
    "brow_outer_raise",
    "brow_gap_shrink",
    "eye_aperture",
    "lower_lid_raise",
    "nose_base_raise",
    "upper_lip_raise",
    "corner_raise",
    "mouth_width",
    "lower_lip_raise",
    "lip_gap",
    "chin_raise",
    "upper_lid_raise",
    "cheek_raise",
)

# Feature change (IOD units) per intensity level, one dict per AU; unlisted = 0.
_SIGNATURE_TABLE: dict[int, dict[str, float]] = {
    1: {"brow_inner_raise": 0.030, "brow_outer_raise": 0.010},
    2: {"brow_outer_raise": 0.030, "brow_inner_raise": 0.008},
    4: {
        "brow_gap_shrink": 0.020,
        "brow_inner_raise": -0.020,
        "brow_outer_raise": -0.010,
        "eye_aperture": -0.004,
    },
    5: {"eye_aperture": 0.016, "upper_lid_raise": 0.014},
    6: {"lower_lid_raise": 0.012, "eye_aperture": -0.010, "corner_raise": 0.004, "cheek_raise": 0.005},
    9: {
        "nose_base_raise": 0.014,
        "upper_lip_raise": 0.016,
        "brow_inner_raise": -0.008,
        "brow_gap_shrink": 0.006,
    },
    12: {"corner_raise": 0.024, "mouth_width": 0.018, "upper_lip_raise": 0.008, "lower_lid_raise": 0.004},
    15: {"corner_raise": -0.020, "mouth_width": 0.003},
    17: {"lower_lip_raise": 0.016, "chin_raise": 0.014, "corner_raise": -0.004},
    20: {"mouth_width": 0.024, "corner_raise": -0.005},
    25: {"lip_gap": 0.030, "lower_lip_raise": -0.018},
    26: {"lip_gap": 0.030, "lower_lip_raise": -0.040, "chin_raise": -0.050, "corner_raise": -0.010},
}
DEFAULT_SIGNATURES: np.ndarray = np.array(
    [[_SIGNATURE_TABLE[au].get(f, 0.0) for au in DISFA_AUS] for f in FEATURES], dtype=np.float64
)
# Signatures and thresholds as dlib actually sees them on warp renders: fitted with
# fit_calibration on 470 renders of the two builtin identities (default recipe, seed 0,
# plan shards 0-2 at shard sizes 120/150/200), rows = FEATURES, columns = DISFA_AUS. dlib's
# shape prior damps small landmark moves, so most entries are 30-60 % of the FACS table.
# Out of sample (shard 3, 200 renders): mean F1 0.74, MAE 0.64 (FACS table: 0.70 / 0.68).
# Provenance: the fitting script was never committed. Re-running that setup with today's
# code (factory.commands.calibrate's pipeline, 512 px) gives signatures within 0.001 of these but
# F1-optimal thresholds up to 0.35 away, so they are kept as shipped, not regenerated. The
# reproducible refit is
#   factory calibrate recipes/demo.toml --seed 0 --shard-size 160 --fit-shards 0-5 --test-shards 6-7 --out calib/
# whose geometric.json scored held-out (shards 6-7, 320 renders at 256 px) F1 0.760, MAE
# 0.672 against 0.761 / 0.632 for these constants; it is not the default because its fit
# lets AU4/AU5 absorb lip-corner moves larger than a level-5 AU12 (an exaggerated synthetic
# smile reads AU4 2.4), which tests/stages/detectors/test_geometric.py rules out.
WARP_BUILTIN_SIGNATURES: np.ndarray = np.array(
    [
        [0.0140, -0.0008, -0.0057, 0.0008, -0.0004, -0.0036, -0.0005, 0.0014, 0.0008, 0.0001, 0.0011, 0.0046],
        [0.0031, 0.0120, -0.0017, -0.0003, 0.0023, -0.0009, -0.0006, 0.0041, 0.0019, 0.0004, 0.0011, 0.0026],
        [0.0051, -0.0064, 0.0069, -0.0033, 0.0015, -0.0014, -0.0010, -0.0015, -0.0015, -0.0009, -0.0014, 0.0046],
        [-0.0007, 0.0001, -0.0006, 0.0041, -0.0032, 0.0002, -0.0011, 0.0006, 0.0003, 0.0000, 0.0000, 0.0010],
        [0.0007, -0.0016, -0.0010, 0.0007, 0.0020, -0.0015, 0.0004, 0.0002, 0.0004, 0.0006, -0.0000, -0.0017],
        [-0.0032, -0.0013, 0.0023, -0.0004, 0.0013, 0.0076, 0.0008, 0.0009, 0.0011, -0.0002, 0.0014, 0.0018],
        [-0.0028, -0.0004, 0.0021, -0.0002, 0.0017, 0.0080, 0.0043, 0.0015, 0.0035, -0.0001, 0.0032, 0.0031],
        [-0.0034, -0.0005, 0.0011, 0.0001, 0.0012, 0.0020, 0.0163, -0.0109, 0.0005, -0.0035, 0.0007, -0.0091],
        [-0.0003, -0.0011, -0.0009, -0.0006, -0.0008, 0.0007, 0.0128, -0.0026, -0.0019, 0.0114, -0.0016, -0.0021],
        [-0.0030, -0.0022, 0.0021, 0.0009, 0.0008, -0.0018, 0.0050, -0.0033, 0.0073, -0.0019, -0.0087, -0.0371],
        [0.0008, 0.0000, -0.0001, 0.0004, 0.0008, 0.0080, 0.0011, 0.0051, -0.0015, 0.0013, 0.0182, 0.0385],
        [-0.0038, 0.0001, 0.0026, 0.0013, 0.0031, -0.0003, 0.0021, 0.0027, 0.0101, -0.0001, 0.0018, -0.0398],
        [0.0000, -0.0015, -0.0016, 0.0048, -0.0012, -0.0013, -0.0007, 0.0008, 0.0007, 0.0006, -0.0000, -0.0008],
        [-0.0028, 0.0033, 0.0002, -0.0001, -0.0004, -0.0011, 0.0037, -0.0025, 0.0009, -0.0001, 0.0003, -0.0120],
    ],
    dtype=np.float64,
)
WARP_BUILTIN_THRESHOLDS: np.ndarray = np.array([2.0, 1.1, 1.95, 2.0, 0.75, 1.45, 0.65, 0.8, 0.45, 1.05, 0.35, 0.75])


class GeometricConfig(StageConfig):
    calibration: str = Field(
        "warp-builtin", description="'warp-builtin', 'facs' or a JSON file written from fit_calibration"
    )
    relandmark_iod: float | None = Field(
        120.0, ge=30.0, le=400.0, description="re-landmark both faces upright at this IOD (px); None = off"
    )
    relandmark_scales: tuple[float, ...] = Field(
        (0.85, 0.92, 1.0, 1.08, 1.16), min_length=1, description="IOD multipliers averaged when re-landmarking"
    )
    threshold: float = Field(0.5, ge=0.0, le=5.0, description="intensity at occurrence p = 0.5 (calibration = 'facs')")
    use_identity_exemplar: bool = Field(True, description="False always measures in population mode")


def displacement_features(landmarks: np.ndarray, reference: np.ndarray, transform: str = "similarity") -> np.ndarray:
    """The 14 ``FEATURES`` (IOD units) of ``landmarks`` relative to the ``reference`` shape.

    ``transform="affine"`` also absorbs per-axis scale and shear between the two shapes
    (for shapes of different people, where face proportions and head pitch differ).
    """
    ref = canonical_frame(reference)
    raw = np.asarray(landmarks, dtype=np.float64).copy()
    raw[:, 1] *= -1.0  # same handedness as the canonical frame before fitting
    idx = list(STABLE_POINTS)
    fit = affine_fit if transform == "affine" else similarity_fit
    exp = apply_transform(fit(raw[idx], ref[idx]), raw)
    dy = exp[:, 1] - ref[:, 1]

    def mean_dy(points: tuple[int, ...]) -> float:
        return float(dy[list(points)].mean())

    def aperture(s: np.ndarray) -> float:
        return float((s[[37, 38, 43, 44], 1] - s[[41, 40, 47, 46], 1]).mean())

    def lip_gap(s: np.ndarray) -> float:
        return float((s[[61, 62, 63], 1] - s[[67, 66, 65], 1]).mean())

    return np.array(
        [
            mean_dy((20, 21, 22, 23)),
            mean_dy((17, 18, 25, 26)),
            -((exp[22, 0] - exp[21, 0]) - (ref[22, 0] - ref[21, 0])),
            aperture(exp) - aperture(ref),
            mean_dy((40, 41, 46, 47)),
            mean_dy((31, 32, 33, 34, 35)),
            mean_dy((50, 51, 52)),
            mean_dy((48, 54)),
            ((exp[54, 0] - exp[48, 0]) - (ref[54, 0] - ref[48, 0])) / 2,
            mean_dy((56, 57, 58)),
            lip_gap(exp) - lip_gap(ref),
            mean_dy((7, 8, 9)),
            mean_dy((37, 38, 43, 44)),
            mean_dy((1, 2, 14, 15)),
        ]
    )


def intensities_from_features(features: np.ndarray, signatures: np.ndarray = DEFAULT_SIGNATURES) -> np.ndarray:
    """Non-negative least squares ``features ~= signatures @ a``; ``a`` clipped to 0-5."""
    a, _ = nnls(np.asarray(signatures, dtype=np.float64), np.asarray(features, dtype=np.float64))
    return np.clip(a, 0.0, INTENSITY_MAX)


def fit_calibration(features: np.ndarray, intensities: np.ndarray) -> dict[str, Any]:
    """Refit the signature matrix from labelled samples.

    ``features``: ``(m, len(FEATURES))`` from :func:`displacement_features`; ``intensities``: ``(m, 12)``
    true 0-5 levels in DISFA order. Solves ``features ~= intensities @ S.T`` by least
    squares, then picks per AU the threshold on the unmixed intensity that maximises F1 on
    the same samples. Returns the JSON-ready calibration ``GeometricConfig.calibration`` reads.
    """
    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(intensities, dtype=np.float64)
    if f.ndim != 2 or f.shape[1] != len(FEATURES) or y.shape != (f.shape[0], len(DISFA_AUS)):
        raise ValueError(f"need features (m, {len(FEATURES)}) and intensities (m, {len(DISFA_AUS)})")
    sig_t, *_ = np.linalg.lstsq(y, f, rcond=None)
    signatures = sig_t.T
    est = np.stack([intensities_from_features(row, signatures) for row in f])
    thresholds = []
    for j in range(len(DISFA_AUS)):
        truth = y[:, j] >= 0.5
        best, best_f1 = 0.5, -1.0
        for t in np.arange(0.2, 2.01, 0.05):
            pred = est[:, j] >= t
            tp = float((pred & truth).sum())
            f1 = 2 * tp / max(1.0, float(pred.sum() + truth.sum()))
            if f1 > best_f1 + 1e-9:
                best, best_f1 = float(t), f1
        thresholds.append(round(best, 3))
    return {
        "features": list(FEATURES),
        "aus": list(DISFA_AUS),
        "signatures": signatures.round(6).tolist(),
        "thresholds": thresholds,
        "samples": int(f.shape[0]),
    }


def _parse_calibration(data: Any) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(data["signatures"], dtype=np.float64), np.asarray(data["thresholds"], dtype=np.float64)


def _load_calibration(path: str) -> tuple[np.ndarray, np.ndarray]:
    sig, thr = read_calibration(path, "geometric", _parse_calibration)
    if sig.shape != DEFAULT_SIGNATURES.shape or thr.shape != (len(DISFA_AUS),):
        raise StageError(
            f"geometric calibration {Path(path)}: signatures must be {DEFAULT_SIGNATURES.shape} "
            f"and thresholds {len(DISFA_AUS)} values"
        )
    return sig, thr


class GeometricAUDetector(MeasuringDetector[GeometricConfig]):
    name: ClassVar[str] = "geometric"
    vocabulary = tuple(f"AU{au}" for au in DISFA_AUS)
    scale = "probability"
    intensity_vocabulary = tuple(f"AU{au}" for au in DISFA_AUS)
    preprocessing = (
        "68 iBUG landmarks from the face stage, or dlib's in its face box; similarity-normalised on stable "
        "points against the identity exemplar's landmarks, IOD units; population mode without an exemplar"
    )
    optional_reads = MeasuringDetector.optional_reads | {"face_box"}
    # Reads the 300-W mean shape from the 68-point model file and the face stage's 68 landmarks.
    licence = f"{THIS_CODE}; {DLIB_HOG_LICENCE}; {DLIB_68_LICENCE}"

    def __init__(self, config: GeometricConfig, context: StageContext) -> None:
        super().__init__(config, context)
        self._exemplar_shapes = functools.lru_cache(maxsize=EXEMPLAR_CACHE)(self._shapes)
        self._own = functools.lru_cache(maxsize=EXEMPLAR_CACHE)(self._own_of)  # what an exemplar shows
        self._signatures = DEFAULT_SIGNATURES
        self._thresholds = np.full(len(DISFA_AUS), config.threshold)

    def model_files(self) -> dict[str, Path]:
        return {**super().model_files(), **dlib_model_files("pose68")}

    def setup(self) -> None:
        cfg = self.config
        if cfg.calibration == "warp-builtin":
            self._signatures, self._thresholds = WARP_BUILTIN_SIGNATURES, WARP_BUILTIN_THRESHOLDS
        elif cfg.calibration == "facs":
            self._signatures = DEFAULT_SIGNATURES
            self._thresholds = np.full(len(DISFA_AUS), cfg.threshold)
        else:
            self._signatures, self._thresholds = _load_calibration(cfg.calibration)

    def _shapes(self, identity: str) -> tuple[np.ndarray | None, np.ndarray | None]:
        """dlib's landmarks of an identity's exemplar photo, and their upright re-landmarked mean."""
        cfg = self.config
        image, landmarks = exemplar_landmarks(self.context.identity_bank, identity)
        raw = landmarks.astype(np.float64) if landmarks is not None else None
        upright = None
        if raw is not None and cfg.relandmark_iod:
            upright = averaged_upright_landmarks(image, raw, cfg.relandmark_iod, cfg.relandmark_scales)
        return raw, upright

    def reference(self, record: Record) -> tuple[np.ndarray | None, str]:
        """The exemplar shape this record is measured against and ``"exemplar"``, or
        ``(None, "population")`` for population mode.

        With re-landmarking on, the exemplar shape is the upright re-landmarked one when
        the record carries its image (so the sample is re-landmarked too), else dlib's
        landmarks of the exemplar as detected: both sides are always measured alike.
        """
        identity = exemplar_for(record, self.context.identity_bank) if self.config.use_identity_exemplar else None
        if identity is not None:
            raw, upright = self._exemplar_shapes(identity)
            use_upright = upright is not None and record.get("image") is not None
            ref = upright if use_upright else raw
            if ref is not None:
                return ref, "exemplar"
        return None, "population"

    def landmarks(self, record: Record) -> np.ndarray | None:
        """The face stage's 68 landmarks, else dlib's in its face box (SCRFD's 5 keypoints), else None."""
        if (landmarks := record.get("landmarks")) is not None or (box := record.get("face_box")) is None:
            return landmarks
        return landmarks_for_box(record["image"], (float(box[0]), float(box[1]), float(box[2]), float(box[3])))

    def features(self, record: Record, landmarks: np.ndarray | None = None) -> np.ndarray | None:
        """A record's ``FEATURES`` against its exemplar; None without landmarks or in population mode."""
        cfg = self.config
        landmarks = self.landmarks(record) if landmarks is None else landmarks
        ref, _ = self.reference(record)
        if landmarks is None or ref is None:
            return None
        if cfg.relandmark_iod and record.get("image") is not None:
            landmarks = averaged_upright_landmarks(
                record["image"], landmarks, cfg.relandmark_iod, cfg.relandmark_scales
            )
        return displacement_features(landmarks, ref)

    def measure(self, record: Record) -> np.ndarray:
        """0-5 intensity per DISFA AU for one record, NaN when it has no landmarks (and, in
        population mode, for the AUs that mode does not measure)."""
        landmarks = self.landmarks(record)
        if landmarks is None:
            return np.full(len(DISFA_AUS), np.nan)
        features = self.features(record, landmarks)
        if features is None:
            return population_intensities(landmarks)
        return np.clip(intensities_from_features(features, self._signatures) + self.own(record), 0.0, INTENSITY_MAX)

    def own(self, record: Record) -> np.ndarray:
        """The record's exemplar's own AUs (the bank's ``expression``, else population mode on
        its landmarks), added to the exemplar-relative reading so it is absolute."""
        return self._own(str(record["identity_id"]))

    def _own_of(self, identity: str) -> np.ndarray:
        bank = self.context.identity_bank
        return exemplar_own_intensity(bank, identity, lambda: self._exemplar_shapes(identity)[0])

    def thresholds(self, record: Record) -> np.ndarray:
        if self.reference(record)[0] is None:
            return np.full(len(DISFA_AUS), OCCURRENCE_THRESHOLD)
        return self._thresholds

"""Appearance AU detector: wrinkles, furrows and mouth cavity, relative to the identity exemplar.

An independent second opinion to the geometric detector: it never measures where a
landmark went, only what the skin looks like in regions *anchored* on each image's own
landmarks (FACS names these appearance changes as the distinguishing signs of the AUs).

Per image (sample, and once per identity its exemplar from ``context.identity_bank``):

1. Resample the face upright with inter-ocular distance ``IOD_PX`` = 128 px (similarity
   on the eye centres), convert to grey and normalise local contrast,
   ``n = grey / (gaussian(grey, 0.1u) + 4) - 1``, so lighting gain, gamma and smooth
   gradients cancel; smooth with a 0.015u Gaussian; Sobel gradients and the Hessian's
   dark-line response. Pixels within 0.06u of the landmark contours (lips, eyes, brows,
   nose, jaw) are ignored except for the AU1 and AU12 cues, whose lines run along them.
2. Region features (boxes in IOD units ``u`` around this image's landmarks, iBUG-68):

   ======  ===================  ==========================================  ===============
   AU      cue                  region                                      statistic
   ======  ===================  ==========================================  ===============
   1       central forehead     brow-midpoint x +-0.35u, 0.1-0.5u above     mean abs(d/dy)
           horizontal furrows   the highest brow point
   2       lateral forehead     0.45-0.95u either side of the brow          mean dark-line
           furrows              midpoint, 0-0.5u above the brow top         d2/dy2 > 0
   4       glabella vertical    brow-midpoint x +-0.15u, 0.1u above to      mean abs(d/dx)
           furrows              0.2u below it
   6       crow's feet          0.05-0.3u outside each outer eye corner     mean gradient
                                (36, 45), +-0.15u vertically                magnitude
   9       nasal-root wrinkles  nose bridge top (27) x +-0.13u, 0-0.22u     d2/dy2 > 0, over
                                below it                                    its face mean
   12      nasolabial furrow    from the nostril wing (31/35) to 0.15u      mean gradient
                                beyond the lip corner (48/54)               magnitude
   25      mouth cavity         inside the outer-lip polygon (48-59):       dark area / u^2
                                pixels darker than 0.55x the cheek median
   26      open jaw             the same dark pixels: their vertical        height / u
                                extent
   ======  ===================  ==========================================  ===============

3. ``delta = feature(sample) - feature(exemplar)``; intensity
   ``clip((delta - offset_au) / k_au + own_au, 0, 5)`` with ``k_au`` the feature change per
   intensity level, ``offset_au`` what every generated face shares relative to its
   exemplar (a re-rendered face is smoother) and ``own_au`` the exemplar's own level (its
   bank row's ``expression``, else population mode; 0 for a neutral photo); occurrence
   ``sigmoid((intensity - threshold_au) / 0.15)``.

Covered: AUs 1, 2, 4, 6, 9, 12, 25, 26 (the 8 AUs most detectors share). Not covered,
so missing (``None``) in this detector's votes: AU5 (sclera show), AU20 (lip-stretch
lines), AU15 (fold below the lip corner) and AU17 (chin texture): on warp renders their
statistics correlated with the true intensity below 0.25 (AU12: 0.2-0.4, AU6: 0.25-0.35,
the weakest kept; AU4: 0.9, AU25/26: 0.75-0.85). Without an
identity exemplar (no bank, or no face in the exemplar) the detector abstains (all
missing): absolute wrinkle energy varies far more between people than with expression.

Calibration: ``DEFAULT_SCALES``, ``DEFAULT_OFFSETS`` and ``DEFAULT_THRESHOLDS`` were fitted
with :func:`fit_calibration` (per-AU least squares ``delta ~ offset + k * intensity``;
F1-optimal threshold) on 960 warp renders (256 px) of the two builtin identities by
``factory calibrate recipes/demo.toml --seed 0 --shard-size 160 --fit-shards 0-5
--test-shards 6-7`` (:func:`factory.commands.calibrate.calibrate_offline_detectors`), which writes
them as ``appearance.json``. Held out (shards 6-7, 320 renders) mean F1 over the 8 covered
AUs was 0.644, MAE 1.02 (the previous, uncommitted 512 px fit: 0.651 / 1.17 on the same
renders). They are tuned to the warp generator's shading; for another generator refit them
with the same command on its exactly labelled output and pass the JSON file through
``calibration``.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from manifests.vocab import DISFA_AUS, INTENSITY_MAX
from stages.base import Record, StageConfig, StageContext, StageError
from stages.catalogue import DLIB_68_LICENCE, DLIB_HOG_LICENCE, THIS_CODE
from stages.detectors.base import MeasuringDetector, exemplar_for, read_calibration
from stages.detectors.population import exemplar_own_intensity
from stages.faces.exemplar import EXEMPLAR_CACHE, exemplar_landmarks
from stages.faces.geometry import upright_transform
from stages.faces.landmarks import dlib_model_files

__all__ = [
    "APPEARANCE_AUS",
    "DEFAULT_OFFSETS",
    "DEFAULT_SCALES",
    "DEFAULT_THRESHOLDS",
    "IOD_PX",
    "AppearanceAUDetector",
    "AppearanceConfig",
    "appearance_features",
    "fit_calibration",
    "upright_face",
]

IOD_PX = 128.0
_SIZE = (512, 576)  # width, height of the upright face image
_EYE_MID = (256.0, 200.0)
APPEARANCE_AUS: tuple[int, ...] = (1, 2, 4, 6, 9, 12, 25, 26)

# Feature change per intensity level, offset and threshold per AU: the output of
#   factory calibrate recipes/demo.toml --seed 0 --shard-size 160 --fit-shards 0-5 --test-shards 6-7 --out calib/
# (appearance.json; see the module docstring).
DEFAULT_SCALES: dict[int, float] = {
    1: 0.003604,
    2: 0.000417173,
    4: 0.00582151,
    6: 0.00553439,
    9: 0.0335255,
    12: 0.00490337,
    25: 0.0236204,
    26: 0.0600577,
}
DEFAULT_OFFSETS: dict[int, float] = {
    1: -0.000956626,
    2: -0.00157098,
    4: -0.00185682,
    6: -0.0148128,
    9: -0.0618768,
    12: 0.00479274,
    25: 0.0111286,
    26: 0.0499992,
}
DEFAULT_THRESHOLDS: dict[int, float] = {
    1: 0.2,
    2: 0.75,
    4: 1.15,
    6: 1.3,
    9: 1.7,
    12: 0.45,
    25: 1.1,
    26: 1.8,
}


class AppearanceConfig(StageConfig):
    calibration: str | None = Field(None, description="JSON from fit_calibration; None = built-in (warp)")
    dark_ratio: float = Field(0.55, gt=0.0, lt=1.0, description="cavity: darker than this x cheek median")


def upright_face(image: np.ndarray, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Grey float image of the face resampled upright at IOD ``IOD_PX``, and its landmarks."""
    import cv2  # deferred: opencv is optional (the faces extra)

    pts = np.asarray(landmarks, dtype=np.float64)
    m, scale = upright_transform(pts, IOD_PX, _EYE_MID)
    rgb = np.ascontiguousarray(np.asarray(image, dtype=np.uint8))
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    out = cv2.warpAffine(
        grey, m, _SIZE, flags=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT_101
    )
    return out.astype(np.float64), pts @ m[:, :2].T + m[:, 2]


def _box(img: np.ndarray, x0: float, x1: float, y0: float, y1: float) -> np.ndarray:
    h, w = img.shape[:2]
    xa, xb = sorted((x0, x1))
    ya, yb = sorted((y0, y1))
    xa, xb = int(np.clip(round(xa), 0, w - 1)), int(np.clip(round(xb), 1, w))
    ya, yb = int(np.clip(round(ya), 0, h - 1)), int(np.clip(round(yb), 1, h))
    region = img[ya : max(yb, ya + 1), xa : max(xb, xa + 1)]
    return region


def _mean(*regions: np.ndarray) -> float:
    values = [float(r.mean()) for r in regions if r.size]
    return float(np.mean(values)) if values else 0.0


def _contour_mask(shape: tuple[int, ...], p: np.ndarray, width: float) -> np.ndarray:
    """True near the landmark contours (lips, eyes, brows, nose, jaw): edges that move with
    geometry, not wrinkles, so texture statistics ignore them."""
    import cv2  # deferred: opencv is optional (the faces extra)

    mask = np.zeros(shape[:2], np.uint8)
    thick = max(1, round(width))
    for idx, closed in (
        (range(0, 17), False),
        (range(17, 22), False),
        (range(22, 27), False),
        (range(27, 31), False),
        (range(31, 36), False),
        (range(36, 42), True),
        (range(42, 48), True),
        (range(48, 60), True),
        (range(60, 68), True),
    ):
        poly = np.round(p[list(idx)]).astype(np.int32)
        cv2.polylines(mask, [poly], closed, 1, thickness=thick)
    return mask > 0


def _valleys(norm: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dark-line responses: horizontal lines, vertical lines, any orientation (Hessian)."""
    import cv2  # deferred: opencv is optional (the faces extra)

    smooth = cv2.GaussianBlur(norm, (0, 0), sigma)
    ixx = cv2.Sobel(smooth, cv2.CV_64F, 2, 0, ksize=3)
    iyy = cv2.Sobel(smooth, cv2.CV_64F, 0, 2, ksize=3)
    ixy = cv2.Sobel(smooth, cv2.CV_64F, 1, 1, ksize=3)
    top = (ixx + iyy) / 2 + np.sqrt(((ixx - iyy) / 2) ** 2 + ixy**2)
    return np.maximum(iyy, 0.0), np.maximum(ixx, 0.0), np.maximum(top, 0.0)


def appearance_features(image: np.ndarray, landmarks: np.ndarray, dark_ratio: float = 0.55) -> dict[int, float]:
    """One appearance statistic per covered AU (see the module table), for one image."""
    import cv2  # deferred: opencv is optional (the faces extra)

    grey, p = upright_face(image, landmarks)
    u = IOD_PX
    norm = grey / (cv2.GaussianBlur(grey, (0, 0), 0.1 * u) + 4.0) - 1.0
    keep = ~_contour_mask(grey.shape, p, 0.06 * u)
    smooth = cv2.GaussianBlur(norm, (0, 0), 0.015 * u)
    # The nasolabial furrow and central forehead lines run close to the lip, nose and brow
    # contours, so those two cues keep the contour pixels (measured: masking them removed
    # the AU12 signal on warp renders); the others ignore contour pixels.
    gx_all = np.abs(cv2.Sobel(smooth, cv2.CV_64F, 1, 0, ksize=3))
    gy_all = np.abs(cv2.Sobel(smooth, cv2.CV_64F, 0, 1, ksize=3))
    mag_all = np.hypot(gx_all, gy_all)
    gx, mag = gx_all * keep, mag_all * keep
    horizontal = _valleys(norm, 0.015 * u)[0] * keep
    # Nasal-root lines relative to the face's mean line response: the nose bridge of a
    # re-rendered face is smoother than the exemplar's everywhere, this cancels that.
    hull = np.zeros(grey.shape, np.uint8)
    cv2.fillPoly(hull, [np.round(p[list(range(0, 17)) + [26, 25, 24, 19, 18, 17]]).astype(np.int32)], 1)
    face = (hull > 0) & keep
    horizontal_rel = horizontal / max(float(horizontal[face].mean()) if face.any() else 1.0, 1e-9)

    brow_mid = (p[21] + p[22]) / 2
    brow_top = float(p[17:27, 1].min())
    bx = float(brow_mid[0])
    feats: dict[int, float] = {}
    feats[1] = _mean(_box(gy_all, bx - 0.35 * u, bx + 0.35 * u, brow_top - 0.5 * u, brow_top - 0.1 * u))
    feats[2] = _mean(
        _box(horizontal, bx - 0.95 * u, bx - 0.45 * u, brow_top - 0.5 * u, brow_top),
        _box(horizontal, bx + 0.45 * u, bx + 0.95 * u, brow_top - 0.5 * u, brow_top),
    )
    feats[4] = _mean(_box(gx, bx - 0.15 * u, bx + 0.15 * u, brow_mid[1] - 0.1 * u, brow_mid[1] + 0.2 * u))
    feats[6] = _mean(
        _box(mag, p[36, 0] - 0.3 * u, p[36, 0] - 0.05 * u, p[36, 1] - 0.15 * u, p[36, 1] + 0.15 * u),
        _box(mag, p[45, 0] + 0.05 * u, p[45, 0] + 0.3 * u, p[45, 1] - 0.15 * u, p[45, 1] + 0.15 * u),
    )
    feats[9] = _mean(_box(horizontal_rel, p[27, 0] - 0.13 * u, p[27, 0] + 0.13 * u, p[27, 1], p[27, 1] + 0.22 * u))
    feats[12] = _mean(
        _box(mag_all, p[48, 0] - 0.2 * u, p[31, 0], p[31, 1], p[48, 1] + 0.12 * u),
        _box(mag_all, p[35, 0], p[54, 0] + 0.2 * u, p[35, 1], p[54, 1] + 0.12 * u),
    )

    # Mouth cavity: dark pixels inside the outer lip contour, relative to the cheeks.
    cheeks = np.concatenate(
        [
            _box(grey, p[1, 0] + 0.1 * u, p[31, 0] - 0.1 * u, p[29, 1], p[33, 1]).ravel(),
            _box(grey, p[35, 0] + 0.1 * u, p[15, 0] - 0.1 * u, p[29, 1], p[33, 1]).ravel(),
        ]
    )
    skin = float(np.median(cheeks)) if cheeks.size else float(np.median(grey))
    mask = np.zeros(grey.shape, np.uint8)
    cv2.fillPoly(mask, [np.round(p[48:60]).astype(np.int32)], 1)
    dark = (mask > 0) & (grey < dark_ratio * skin)
    feats[25] = float(dark.sum()) / (u * u)
    rows = np.flatnonzero(dark.any(axis=1))
    feats[26] = float(rows[-1] - rows[0] + 1) / u if rows.size else 0.0
    return feats


def fit_calibration(deltas: np.ndarray, intensities: np.ndarray) -> dict[str, Any]:
    """Per AU: ``delta ~= offset + scale * intensity`` by least squares, then the F1-optimal
    threshold on the resulting intensity estimate.

    ``deltas``: ``(m, len(APPEARANCE_AUS))`` sample-minus-exemplar features;
    ``intensities``: ``(m, 12)`` true levels in DISFA order. The offset absorbs what every
    generated face shares relative to its exemplar (e.g. a re-rendered face is smoother).
    """
    d = np.asarray(deltas, dtype=np.float64)
    y = np.asarray(intensities, dtype=np.float64)
    if d.ndim != 2 or d.shape[1] != len(APPEARANCE_AUS) or y.shape != (d.shape[0], len(DISFA_AUS)):
        raise ValueError(f"need deltas (m, {len(APPEARANCE_AUS)}) and intensities (m, {len(DISFA_AUS)})")
    scales, offsets, thresholds = {}, {}, {}
    for j, au in enumerate(APPEARANCE_AUS):
        t = y[:, DISFA_AUS.index(au)]
        design = np.stack([np.ones_like(t), t], axis=1)
        (offset, k), *_ = np.linalg.lstsq(design, d[:, j], rcond=None)
        k = max(float(k), 1e-9)
        est = np.clip((d[:, j] - offset) / k, 0, INTENSITY_MAX)
        truth = t >= 1
        best, best_f1 = 0.5, -1.0
        for thr in np.arange(0.2, 2.51, 0.05):
            pred = est >= thr
            f1 = 2 * float((pred & truth).sum()) / max(1.0, float(pred.sum() + truth.sum()))
            if f1 > best_f1 + 1e-9:
                best, best_f1 = float(thr), f1
        scales[str(au)] = float(f"{k:.6g}")
        offsets[str(au)] = float(f"{offset:.6g}")
        thresholds[str(au)] = round(best, 3)
    return {"scales": scales, "offsets": offsets, "thresholds": thresholds, "samples": int(d.shape[0])}


Calibration = tuple[dict[int, float], dict[int, float], dict[int, float]]  # scales, offsets, thresholds


def _parse_calibration(data: Any) -> Calibration:
    scales = {int(k): float(v) for k, v in data["scales"].items()}
    offsets = {int(k): float(v) for k, v in data.get("offsets", {}).items()}
    thresholds = {int(k): float(v) for k, v in data["thresholds"].items()}
    return scales, offsets, thresholds


def _load_calibration(path: str) -> Calibration:
    scales, offsets, thresholds = read_calibration(path, "appearance", _parse_calibration)
    missing = [au for au in APPEARANCE_AUS if au not in scales or au not in thresholds]
    if missing or any(v <= 0 for v in scales.values()):
        raise StageError(
            f"appearance calibration {Path(path)}: needs a positive scale and a threshold "
            f"for AUs {list(APPEARANCE_AUS)} (missing {missing})"
        )
    return scales, {au: offsets.get(au, 0.0) for au in APPEARANCE_AUS}, thresholds


class AppearanceAUDetector(MeasuringDetector[AppearanceConfig]):
    name: ClassVar[str] = "appearance"
    vocabulary = tuple(f"AU{au}" for au in APPEARANCE_AUS)
    scale = "probability"
    intensity_vocabulary = tuple(f"AU{au}" for au in APPEARANCE_AUS)
    preprocessing = (
        "face resampled upright at 64 px inter-ocular distance from the face stage's landmarks; "
        "local-contrast-normalised grey; region statistics minus the identity exemplar's"
    )
    licence = f"{THIS_CODE}; {DLIB_HOG_LICENCE}; {DLIB_68_LICENCE}"

    def __init__(self, config: AppearanceConfig, context: StageContext) -> None:
        super().__init__(config, context)
        self._exemplar = functools.lru_cache(maxsize=EXEMPLAR_CACHE)(self._exemplar_of)
        self._scales = dict(DEFAULT_SCALES)
        self._offsets = dict(DEFAULT_OFFSETS)
        self._thresholds = dict(DEFAULT_THRESHOLDS)

    def model_files(self) -> dict[str, Path]:
        return {**super().model_files(), **dlib_model_files("pose68")}

    def setup(self) -> None:
        if self.config.calibration:
            self._scales, self._offsets, self._thresholds = _load_calibration(self.config.calibration)

    def _vector(self, image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        feats = appearance_features(image, landmarks, self.config.dark_ratio)
        return np.array([feats[au] for au in APPEARANCE_AUS])

    def _exemplar_of(self, identity: str) -> tuple[np.ndarray | None, np.ndarray]:
        """Features of an identity's exemplar (``None``: no face in it) and its own AUs, in
        ``APPEARANCE_AUS`` order."""
        bank = self.context.identity_bank
        image, landmarks = exemplar_landmarks(bank, identity)
        features = self._vector(image, landmarks) if landmarks is not None else None
        own = exemplar_own_intensity(bank, identity, lambda: landmarks)
        return features, np.array([own[DISFA_AUS.index(au)] for au in APPEARANCE_AUS])

    def exemplar_features(self, record: Record) -> np.ndarray | None:
        """Features of the record's identity exemplar, or ``None`` (no bank, no face in it)."""
        identity = exemplar_for(record, self.context.identity_bank)
        return None if identity is None else self._exemplar(identity)[0]

    def deltas(self, record: Record) -> np.ndarray | None:
        """Sample-minus-exemplar features in ``APPEARANCE_AUS`` order, or ``None`` (abstain)."""
        if record.get("image") is None or record.get("landmarks") is None:
            return None
        ref = self.exemplar_features(record)
        if ref is None:
            return None
        return self._vector(record["image"], record["landmarks"]) - ref

    def measure(self, record: Record) -> np.ndarray:
        """0-5 intensity per covered AU (``APPEARANCE_AUS`` order); NaN when abstaining."""
        d = self.deltas(record)
        if d is None:
            return np.full(len(APPEARANCE_AUS), np.nan)
        k = np.array([self._scales[au] for au in APPEARANCE_AUS])
        offset = np.array([self._offsets[au] for au in APPEARANCE_AUS])
        own = self._exemplar(str(record["identity_id"]))[1]
        return np.clip((d - offset) / k + own, 0.0, INTENSITY_MAX)

    def thresholds(self, record: Record) -> np.ndarray:
        return np.array([self._thresholds[au] for au in APPEARANCE_AUS])

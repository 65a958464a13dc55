"""The AU-to-displacement model of the ``warp`` generator: explicit, per AU, documented.

Why a hand-written model: the warp generator's labels are *exact* (``label_source =
"exact"``) because the image is made from the label, so the mapping from an AU to a face
deformation must be inspectable. Each AU is a short list of :class:`Move` entries: which
iBUG-68 landmarks move, in which direction and how far at the maximum intensity (FACS "E").

Units and frame
---------------
Distances are in inter-ocular distances (IOD: eye centre to eye centre, about 62 mm in
adults, so 0.1 IOD ~ 6 mm). The face frame has its origin between the eye centres, x along
the eye line towards image-right and y perpendicular, pointing down the face; ``up`` in a
Move is towards the brows. A Move is written for the image-left half of the face (iBUG
indices 0-7, 17-21, 31-32, 36-41, 48-50, 58-61, 67) or the midline and is mirrored onto
the other half by :data:`MIRROR`; ``outward`` is away from the facial midline (0 for
midline points). The per-landmark displacement of a full AU vector is the sum of the moves
of its active AUs, each scaled by ``intensity / 5`` (FACS A-E mapped to 1-5, as in
DISFA). The sum is linear, as in linear AU-to-landmark models such as py-feat's plotting
model (``pyfeat_aus_to_landmarks``, a PLS regression; py-feat's code is MIT-licensed, the
model was fitted on third-party AU datasets). Neither its weights nor its code are used
here. Scaling by the IOD makes the model face-size free.

Sources: the *directions* follow the per-AU "appearance changes" of Ekman, Friesen & Hager,
*Facial Action Coding System* (2002), paraphrased in each :class:`AUMoves`. The
*magnitudes* are hand-set estimates of plausible E-level travel (brow raise ~8 mm = 0.13
IOD, lip corner ~9 mm = 0.15 IOD along the zygomaticus line, jaw drop ~16 mm = 0.25 IOD),
not values from a measured dataset; they were checked by re-detecting dlib landmarks on
renders (tests/stages/generators/test_warp.py): on the astronaut, dlib follows 55-95 % of
the commanded vertical moves (AU5 lid 55 %, AU12 corner 84 %, AU26 chin 94 %) but only
~15 % of AU4's medial brow pull, and on Grace Hopper ~15-50 % of AU20's lateral stretch.
Calibrating them against a posed-AU dataset (DISFA, CK+) is the obvious next step.

Appearance cues (:func:`appearance_strokes`) are the wrinkles and furrows that geometry
alone cannot show (FACS lists them as the distinguishing signs of AU1/2, 4, 6, 9, 12, 15, 17
and 20); they are soft shaded strokes, a few percent of brightness, also in IOD units.
The mouth interior for parted lips (AU25/AU26) is drawn by the generator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from manifests.vocab import DISFA_AUS, INTENSITY_MAX

__all__ = [
    "AU_MOVES",
    "MIRROR",
    "AUMoves",
    "Move",
    "Stroke",
    "appearance_strokes",
    "displacements",
    "face_frame",
    "intensity_fraction",
]


def _mirror_table() -> np.ndarray:
    """iBUG-68 left/right correspondence (index -> its mirror; midline maps to itself)."""
    m = np.arange(68)
    pairs = [(i, 16 - i) for i in range(8)]  # jaw line, 8 = chin tip
    pairs += [(17 + i, 26 - i) for i in range(5)]  # brows
    pairs += [(31, 35), (32, 34)]  # nostrils / alae; 27-30 and 33 are midline
    pairs += [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]  # eyes
    pairs += [(48, 54), (49, 53), (50, 52), (59, 55), (58, 56)]  # outer lips; 51, 57 midline
    pairs += [(60, 64), (61, 63), (67, 65)]  # inner lips; 62, 66 midline
    for a, b in pairs:
        m[a], m[b] = b, a
    return m


MIRROR: np.ndarray = _mirror_table()
_MIDLINE = frozenset(int(i) for i in np.flatnonzero(np.arange(68) == MIRROR))


@dataclass(frozen=True)
class Move:
    points: tuple[int, ...]  # iBUG-68 indices, image-left half or midline
    up: float = 0.0  # IOD at intensity 5, + = towards the brows
    outward: float = 0.0  # IOD at intensity 5, + = away from the midline


@dataclass(frozen=True)
class AUMoves:
    au: int
    facs: str  # the FACS appearance change this encodes
    moves: tuple[Move, ...]


AU_MOVES: dict[int, AUMoves] = {
    1: AUMoves(
        1,
        "inner brow raiser: the inner corners of the brows rise, the brow becomes "
        "oblique; horizontal wrinkles in the centre of the forehead",
        (
            Move((21,), up=0.13),
            Move((20,), up=0.09),
            Move((19,), up=0.05),
            Move((18,), up=0.02),
        ),
    ),
    2: AUMoves(
        2,
        "outer brow raiser: the lateral part of the brows rises, arching the brow; wrinkles over the lateral forehead",
        (
            Move((17,), up=0.13, outward=0.01),
            Move((18,), up=0.11),
            Move((19,), up=0.07),
            Move((20,), up=0.03),
        ),
    ),
    4: AUMoves(
        4,
        "brow lowerer: the brows are lowered and pulled together; vertical furrows "
        "between the brows; the upper lid is pushed down slightly",
        (
            Move((21,), up=-0.08, outward=-0.075),
            Move((20,), up=-0.065, outward=-0.045),
            Move((19,), up=-0.05, outward=-0.02),
            Move((18,), up=-0.03),
            Move((17,), up=-0.015),
            Move((37, 38), up=-0.015),
        ),
    ),
    5: AUMoves(
        5,
        "upper lid raiser: the upper lid rises, widening the eye aperture and exposing sclera above the iris",
        (
            Move((37, 38), up=0.06),
            Move((36,), up=0.008),
        ),
    ),
    6: AUMoves(
        6,
        "cheek raiser: the cheeks and the skin below the eye are pushed up, the lower "
        "lid rises and bags; the eye narrows; crow's-feet wrinkles",
        (
            Move((40, 41), up=0.04),
            Move((36,), up=0.012, outward=0.005),
            Move((37, 38), up=-0.012),
            Move((1, 2), up=0.025, outward=0.008),
        ),
    ),
    9: AUMoves(
        9,
        "nose wrinkler: the skin along the sides of the nose is pulled up, the "
        "nostril wings rise, the upper lip rises; wrinkles across the nasal root; "
        "the medial brows are pulled down",
        (
            Move((31, 32), up=0.06, outward=0.01),
            Move((33,), up=0.055),
            Move((49, 50), up=0.045),
            Move((51,), up=0.04),
            Move((48,), up=0.015),
            Move((61, 62), up=0.03),
            Move((21,), up=-0.04, outward=-0.01),
            Move((20,), up=-0.02),
        ),
    ),
    12: AUMoves(
        12,
        "lip corner puller: the lip corners are pulled up and back obliquely, the "
        "nasolabial furrow deepens, the cheeks rise a little",
        (
            Move((48,), up=0.10, outward=0.11),
            Move((60,), up=0.085, outward=0.085),
            Move((49,), up=0.05, outward=0.05),
            Move((59,), up=0.06, outward=0.06),
            Move((61,), up=0.04, outward=0.04),
            Move((67,), up=0.045, outward=0.04),
            Move((58,), up=0.03, outward=0.02),
            Move((50,), up=0.015),
            Move((2, 3), up=0.02, outward=0.015),
        ),
    ),
    15: AUMoves(
        15,
        "lip corner depressor: the lip corners are pulled down, the lower lip is "
        "stretched and angled down at the corners; a fold below the corners",
        (
            Move((48,), up=-0.085, outward=0.005),
            Move((60,), up=-0.07),
            Move((59,), up=-0.045),
            Move((49,), up=-0.02),
            Move((67,), up=-0.03),
            Move((58,), up=-0.02),
        ),
    ),
    17: AUMoves(
        17,
        "chin raiser: the chin boss and lower lip are pushed up, the mentolabial "
        "furrow deepens, the chin skin wrinkles",
        (
            Move((8,), up=0.05),
            Move((7,), up=0.045),
            Move((6,), up=0.03),
            Move((5,), up=0.01),
            Move((57,), up=0.045),
            Move((58,), up=0.04),
            Move((59,), up=0.02),
            # The upper lip is pushed up as much as the lower inner lip so the lips never cross.
            Move((66, 67), up=0.02),
            Move((61, 62), up=0.02),
            Move((50, 51), up=0.015),
        ),
    ),
    20: AUMoves(
        20,
        "lip stretcher: the lip corners are pulled laterally, the mouth elongates "
        "and flattens; small wrinkles beyond the corners",
        (
            Move((48,), up=-0.02, outward=0.10),
            Move((60,), up=-0.015, outward=0.085),
            Move((49,), outward=0.04),
            Move((59,), up=-0.01, outward=0.045),
            Move((61, 67), outward=0.035),
            Move((50, 58), outward=0.015),
        ),
    ),
    25: AUMoves(
        25,
        "lips part: the lips separate, the lower lip drops a little without the jaw; "
        "teeth or the mouth cavity become visible",
        (
            Move((61, 62), up=0.02),
            Move((50, 51), up=0.01),
            Move((66, 67), up=-0.07),
            Move((57,), up=-0.05),
            Move((58,), up=-0.045),
            Move((59,), up=-0.03),
            Move((60,), up=-0.005),
        ),
    ),
    26: AUMoves(
        26,
        "jaw drop: the mandible is lowered, the chin and lower lip move down, the "
        "face lengthens; the lips part (usually with AU25)",
        (
            Move((8,), up=-0.25),
            Move((7,), up=-0.23),
            Move((6,), up=-0.19, outward=-0.015),
            Move((5,), up=-0.14, outward=-0.01),
            Move((4,), up=-0.09),
            Move((3,), up=-0.045),
            Move((2,), up=-0.015),
            Move((57,), up=-0.22),
            Move((58,), up=-0.21),
            Move((59,), up=-0.17),
            Move((66,), up=-0.22),
            Move((67,), up=-0.20),
            Move((48,), up=-0.06, outward=-0.02),
            Move((60,), up=-0.06, outward=-0.025),
        ),
    ),
}


def intensity_fraction(intensity: float) -> float:
    """FACS intensity 0-5 -> share of the E-level displacement (linear, clipped)."""
    return float(np.clip(intensity, 0, INTENSITY_MAX)) / INTENSITY_MAX


def _unit_moves(au: int) -> np.ndarray:
    """(68, 2) face-frame displacement of ``au`` at intensity 5 (x right, y down)."""
    d = np.zeros((68, 2), np.float64)
    for move in AU_MOVES[au].moves:
        for p in move.points:
            if p in _MIDLINE:
                d[p] += (0.0, -move.up)  # outward is meaningless on the midline
            else:
                d[p] += (-move.outward, -move.up)
                d[MIRROR[p]] += (move.outward, -move.up)
    return d


_UNIT = {au: _unit_moves(au) for au in DISFA_AUS}


def displacements(intensities: Sequence[float]) -> np.ndarray:
    """(68, 2) face-frame displacement (IOD units) of a 12-vector in DISFA order."""
    if len(intensities) != len(DISFA_AUS):
        raise ValueError(f"expected {len(DISFA_AUS)} intensities in DISFA order, got {len(intensities)}")
    total = np.zeros((68, 2), np.float64)
    for au, value in zip(DISFA_AUS, intensities, strict=True):
        if value:
            total += intensity_fraction(value) * _UNIT[au]
    return total


def face_frame(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Origin (eye midpoint), 2x2 basis (columns: x along the eyes, y down the face), IOD."""
    pts = np.asarray(landmarks, np.float64)
    left, right = pts[36:42].mean(axis=0), pts[42:48].mean(axis=0)
    axis = right - left
    iod = float(np.linalg.norm(axis))
    if iod < 1e-6:
        raise ValueError("eye centres coincide; landmarks are degenerate")
    ex = axis / iod
    ey = np.array([-ex[1], ex[0]])
    return (left + right) / 2, np.stack([ex, ey], axis=1), iod


@dataclass(frozen=True)
class Stroke:
    """A soft shaded line: ``darkness`` > 0 darkens (furrow), < 0 brightens (bulge)."""

    points: np.ndarray  # (k, 2) polyline in output pixels
    width: float  # pixels
    darkness: float  # multiplicative brightness change at the stroke centre


def appearance_strokes(landmarks: np.ndarray, intensities: Sequence[float]) -> list[Stroke]:
    """Wrinkle/furrow strokes for the active AUs, placed on (already displaced) landmarks."""
    pts = np.asarray(landmarks, np.float64)
    _, basis, iod = face_frame(pts)
    ex, ey = basis[:, 0], basis[:, 1]
    level = dict(zip(DISFA_AUS, (intensity_fraction(v) for v in intensities), strict=True))
    strokes: list[Stroke] = []

    def add(poly: list[np.ndarray], width: float, darkness: float, au: int) -> None:
        if level[au] > 0:
            strokes.append(Stroke(np.array(poly), width * iod, darkness * level[au]))

    brow_mid = (pts[21] + pts[22]) / 2
    brow_top = min(pts[17:27] @ ey)  # highest brow point along the face axis
    for k, h in enumerate((0.22, 0.36)):  # forehead lines above the brows
        y_off = (brow_top - brow_mid @ ey) - h * iod
        centre = brow_mid + y_off * ey
        # AU1: central forehead wrinkles; AU2: lateral ones.
        add([centre - 0.35 * iod * ex, centre + 0.35 * iod * ex], 0.022, 0.10 - 0.02 * k, 1)
        for side in (-1.0, 1.0):
            a = centre + side * 0.45 * iod * ex + 0.04 * iod * ey
            b = centre + side * 0.95 * iod * ex + 0.10 * iod * ey
            add([a, b], 0.022, 0.08 - 0.02 * k, 2)
    for side in (-1.0, 1.0):  # AU4: vertical glabellar furrows
        top = brow_mid + side * 0.06 * iod * ex - 0.10 * iod * ey
        add([top, top + 0.20 * iod * ey + side * 0.015 * iod * ex], 0.025, 0.18, 4)
    for corner, side in ((36, -1.0), (45, 1.0)):  # AU6: crow's feet at the outer eye corners
        for angle in (-0.45, 0.0, 0.45):
            direction = side * np.cos(angle) * ex + np.sin(angle) * ey
            start = pts[corner] + 0.07 * iod * direction
            add([start, start + 0.16 * iod * direction], 0.018, 0.13, 6)
    for a, b in ((40, 41), (46, 47)):  # AU6: lower-lid bulge, a soft highlight
        c = (pts[a] + pts[b]) / 2 + 0.08 * iod * ey
        add([c - 0.12 * iod * ex, c + 0.12 * iod * ex], 0.05, -0.06, 6)
    for k in range(3):  # AU9: transverse wrinkles over the nasal root
        y = pts[27] + (0.02 + 0.07 * k) * iod * ey
        add([y - 0.13 * iod * ex, y + 0.13 * iod * ex], 0.018, 0.17, 9)
    for ala, corner, side in ((31, 48, -1.0), (35, 54, 1.0)):
        # AU12: nasolabial furrow from above the nostril wing to beyond the lip corner.
        a = pts[ala] + side * 0.07 * iod * ex - 0.03 * iod * ey
        b = pts[corner] + side * 0.10 * iod * ex - 0.02 * iod * ey
        c = pts[corner] + side * 0.12 * iod * ex + 0.12 * iod * ey
        add([a, (a + b) / 2 + side * 0.03 * iod * ex, b, c], 0.03, 0.16, 12)
        # AU9 also deepens the upper part of this furrow.
        add([a, (a + b) / 2 + side * 0.02 * iod * ex], 0.025, 0.08, 9)
        # AU15: a fold below the depressed lip corner.
        add(
            [pts[corner] + side * 0.03 * iod * ex, pts[corner] + side * 0.08 * iod * ex + 0.16 * iod * ey],
            0.025,
            0.10,
            15,
        )
        # AU20: short stretch lines beyond the lip corner.
        add(
            [pts[corner] + side * 0.05 * iod * ex, pts[corner] + side * 0.14 * iod * ex + 0.01 * iod * ey],
            0.015,
            0.07,
            20,
        )
    # AU17: deepened mentolabial furrow and a shaded, bulging chin boss.
    furrow = pts[57] + 0.35 * (pts[8] - pts[57])
    add([furrow - 0.18 * iod * ex, furrow + 0.03 * iod * ey, furrow + 0.18 * iod * ex], 0.035, 0.14, 17)
    boss = pts[57] + 0.70 * (pts[8] - pts[57])
    add([boss - 0.12 * iod * ex, boss + 0.12 * iod * ex], 0.09, 0.07, 17)
    add([boss - 0.06 * iod * ex - 0.05 * iod * ey, boss + 0.06 * iod * ex - 0.05 * iod * ey], 0.05, -0.05, 17)
    return strokes

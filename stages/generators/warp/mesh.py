"""The identity mesh the ``warp`` generator deforms: landmarks in the face frame plus anchors.

An identity photo's 68 dlib landmarks are put in its face frame (eye midpoint origin, IOD
units, :func:`stages.generators.warp.model.face_frame`), closed lips are given a hair of
gap, and fixed anchor points (a ring around the face and a far square) are added so the
deformation stays local; a Delaunay triangulation over all of them is what
:mod:`stages.generators.warp.render` warps. :func:`displaced_points` moves the landmarks by
the AU model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.spatial import Delaunay

from stages.generators.warp.model import displacements, face_frame

__all__ = ["INNER_LIP_PAIRS", "IdentityGeometry", "displaced_points", "identity_geometry"]


@dataclass
class IdentityGeometry:
    """What the stage caches per identity: photo, landmarks, frame, triangulation."""

    identity_id: str
    image: np.ndarray  # uint8 RGB source photo
    landmarks: np.ndarray  # (68, 2) float64 source pixels
    origin: np.ndarray  # eye midpoint, source pixels
    basis: np.ndarray  # 2x2, columns: eye axis, face-down axis
    iod: float  # source pixels
    points: np.ndarray  # (68 + anchors, 2) face frame (IOD units): landmarks then anchors
    simplices: np.ndarray  # (T, 3) Delaunay triangles over ``points``
    scaled: dict[float, np.ndarray] = field(default_factory=dict)  # pre-shrunk photos
    own: tuple[int, ...] = (0,) * 12  # the AUs the photo itself shows (DISFA order)


def _anchor_points(landmarks_face: np.ndarray) -> np.ndarray:
    """Fixed (never displaced) points in the face frame: a ring outside the face and a far
    square, so the deformation stays local and the triangulation covers any crop."""
    centre = landmarks_face.mean(axis=0)
    half = (landmarks_face.max(axis=0) - landmarks_face.min(axis=0)) / 2
    # The ring leaves room for the largest move (jaw drop 0.27 IOD) below the chin.
    radii = half * 1.25 + 0.45
    angles = np.linspace(0, 2 * np.pi, 20, endpoint=False)
    ring = centre + np.stack([np.cos(angles) * radii[0], np.sin(angles) * radii[1]], axis=1)
    far = 12.0
    square = np.array([[x, y] for x in (-far, 0, far) for y in (-far, 0, far) if (x, y) != (0, 0)])
    return np.vstack([ring, square])


INNER_LIP_PAIRS = ((61, 67), (62, 66), (63, 65))  # upper / lower inner-lip points, iBUG-68
_MIN_LIP_GAP = 0.004  # IOD; also the gap identity_geometry opens between closed lips


def _uncross_lips(face_pts: np.ndarray) -> np.ndarray:
    """Keep each lower inner-lip point below its upper partner (face frame, IOD units).

    The AU moves add linearly; some sums (e.g. AU12 with a closed mouth) lift the lower
    inner lip a hair more than the upper one, which would fold triangles. Crossed pairs
    meet at their midpoint instead, which is what lips pressed together do.
    """
    out = face_pts.copy()
    for up, low in INNER_LIP_PAIRS:
        if out[low, 1] - out[up, 1] < _MIN_LIP_GAP:
            mid = (out[low, 1] + out[up, 1]) / 2
            out[up, 1], out[low, 1] = mid - _MIN_LIP_GAP / 2, mid + _MIN_LIP_GAP / 2
    return out


def identity_geometry(
    identity_id: str, image: np.ndarray, landmarks: np.ndarray, own: tuple[int, ...] = (0,) * 12
) -> IdentityGeometry:
    """Face frame and triangulation of one identity photo (pure; cached by the stage)."""
    lm = np.asarray(landmarks, np.float64)
    origin, basis, iod = face_frame(lm)
    face = (lm - origin) @ basis / iod
    # Closed lips give (near-)identical inner-lip points; keep a hair of gap so the
    # triangulation has non-degenerate triangles there to open the mouth with.
    face = _uncross_lips(face)
    points = np.vstack([face, _anchor_points(face)])
    simplices = Delaunay(points).simplices.astype(np.int32)
    return IdentityGeometry(
        identity_id, np.ascontiguousarray(image), lm, origin, basis, iod, points, simplices, own=own
    )


def displaced_points(geom: IdentityGeometry, intensities: list[int]) -> np.ndarray:
    """The identity's mesh points (face frame, IOD units) moved by the AU model."""
    disp = np.zeros_like(geom.points)
    disp[:68] = displacements(intensities)
    return _uncross_lips(geom.points + disp)

"""The per-identity inputs MagicFace edits from: the face crop and the "bg" attribute image.

**Face crop** (as the release's ``utils/preprocess.py``): a square of 1.5x the face box's width
around the box centre, resized to the output size; outside the photo is black. The box comes
from our face alignment (dlib's detector and 68 landmarks, :func:`stages.faces.exemplar.exemplar_face`);
the release uses insightface's SCRFD, whose box is a little larger than dlib's.

**bg image.** The release paints the face regions of a BiSeNet face parsing black (skin,
brows, eyes, nose, mouth; hair, ears, neck, clothes and background kept) and draws the 17
jaw-contour points of a Basel-Face-Model reconstruction as coloured dots: ``bg = "bisenet"``
does that with our BiSeNet and dlib's jaw points (:mod:`.parsing`). ``bg = "landmark-hull"``
is a stand-in needing no parsing model: it paints black the polygon of our 68-point jaw line
closed over the brows raised by a quarter of the brow-to-chin height (the forehead), then
draws the jaw dots (matplotlib's ``rainbow`` in RGB order); it is not the release's input, so
images differ from the release's on real photos.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["CROP_SCALE", "SourceFace", "face_crop", "landmark_hull_bg", "rainbow"]

CROP_SCALE = 1.5  # the release's crop_ratio 0.75 on either side of the box centre
_FOREHEAD = 0.25  # forehead height over the brow-to-chin height (stand-in for BiSeNet's skin)


@dataclass(frozen=True)
class SourceFace:
    """One identity's inputs, each ``(size, size, 3)`` uint8."""

    crop: np.ndarray
    bg: np.ndarray
    landmarks: np.ndarray  # (68, 2) in crop pixels


def face_crop(
    image: np.ndarray, box: Sequence[float], landmarks: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """The 1.5x square crop around ``box`` resized to ``size``, and the landmarks moved into it."""
    x0, y0, x1, y1 = (float(v) for v in box)
    side = CROP_SCALE * (x1 - x0)
    if side <= 0:
        raise ValueError(f"degenerate face box {tuple(box)}")
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left, top = cx - side / 2, cy - side / 2
    region = (round(left), round(top), round(left + side), round(top + side))
    crop = Image.fromarray(np.asarray(image, dtype=np.uint8)).crop(region)  # out-of-photo area is black
    crop = crop.resize((size, size), Image.Resampling.BILINEAR)
    scale = size / (region[2] - region[0])
    moved = (np.asarray(landmarks, np.float64) - (region[0], region[1])) * scale
    return np.asarray(crop, dtype=np.uint8), moved.astype(np.float32)


def rainbow(n: int) -> list[tuple[int, int, int]]:
    """matplotlib's ``rainbow`` colour map at ``n`` evenly spaced points, as 0-255 RGB (within 3
    levels: matplotlib samples a 256-entry table)."""
    x = np.linspace(0.0, 1.0, n)
    # matplotlib's _rainbow_data: r = |2x - 0.5| (clipped to 1), g = sin(pi x), b = cos(pi x / 2)
    rgb = np.stack([np.clip(np.abs(2 * x - 0.5), 0.0, 1.0), np.sin(np.pi * x), np.cos(np.pi * x / 2)], axis=1)
    return [tuple(int(v) for v in row) for row in (255 * rgb).astype(int)]


def landmark_hull_bg(crop: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """The stand-in "bg" image: the face painted black, the 17 jaw points drawn as dots."""
    lm = np.asarray(landmarks, np.float64)
    jaw, brows = lm[0:17], lm[17:27]
    height = float(jaw[8, 1] - brows[:, 1].mean())
    forehead = brows[::-1] - (0.0, _FOREHEAD * max(height, 0.0))
    polygon = [tuple(p) for p in np.concatenate([jaw, forehead])]
    bg = Image.fromarray(np.asarray(crop, dtype=np.uint8).copy())
    draw = ImageDraw.Draw(bg)
    draw.polygon(polygon, fill=(0, 0, 0))
    size = crop.shape[0]
    radius = 2.0 * size / 256  # radius 2 at 256 px, warped to the crop size as the release does
    colours = rainbow(70)  # 68 landmarks + 2 gaze points in the release's colour order
    for i, (x, y) in enumerate(jaw):
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=colours[i])
    return np.asarray(bg, dtype=np.uint8)


def source_face(
    image: np.ndarray,
    box: Sequence[float],
    landmarks: np.ndarray,
    size: int,
    make_bg: Callable[[np.ndarray, np.ndarray], np.ndarray] = landmark_hull_bg,
) -> SourceFace:
    """The crop and the bg of one identity photo; ``make_bg(crop, crop_landmarks)`` paints the bg."""
    crop, moved = face_crop(image, box, landmarks, size)
    return SourceFace(crop=crop, bg=make_bg(crop, moved), landmarks=moved)

"""Rendering of the ``warp`` generator: the identity photo warped onto the displaced mesh.

All in the output frame, one resampling of the source photo: seeded jitter (roll, scale,
shift) -> crop of ``crop_scale`` inter-ocular distances around the face -> triangle-wise
affine map output px -> source px (:func:`piecewise_affine_map`, the same maths as
``skimage.transform.PiecewiseAffineTransform``, rasterised with OpenCV for speed) ->
``cv2.remap`` -> mouth interior -> wrinkle shading -> seeded lighting jitter. The same seed
gives the identical image.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Protocol

import numpy as np

from stages.generators.warp.mesh import INNER_LIP_PAIRS, IdentityGeometry, displaced_points
from stages.generators.warp.model import appearance_strokes

__all__ = ["RenderOptions", "piecewise_affine_map", "render_expression"]


class RenderOptions(Protocol):
    """The rendering switches of ``WarpConfig`` (any object with these attributes)."""

    jitter: float
    mouth_interior: bool
    teeth: bool
    appearance_cues: bool
    cue_strength: float
    crop_scale: float


# Jitter at jitter=1.0: roll (degrees), scale, shift (share of the side), lighting.
_ROLL_DEG, _SCALE, _SHIFT = 4.0, 0.04, 0.025
_GAIN, _CHANNEL_GAIN, _GAMMA, _GRADIENT = 0.06, 0.025, 0.07, 0.05
# Crop centre below the eye midpoint, in IOD (puts the nose near the image centre).
_CENTRE_DOWN = 0.55


@lru_cache(maxsize=8)
def _pixel_grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel x and y coordinates (float32, read-only), shared across calls of one size."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    xs.flags.writeable = ys.flags.writeable = False
    return xs, ys


def piecewise_affine_map(
    dst: np.ndarray,
    src: np.ndarray,
    simplices: np.ndarray,
    shape: tuple[int, int],
    fallback: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Backward maps ``(map_x, map_y)`` for ``cv2.remap``: each output pixel inside triangle
    ``dst[simplices[t]]`` goes to the same barycentric spot of ``src[simplices[t]]``.

    The per-pixel result equals ``skimage.transform.PiecewiseAffineTransform`` estimated
    from ``dst`` to ``src`` on the given triangles; pixels outside every triangle use the
    2x3 ``fallback`` affine (default: identity).
    """
    import cv2  # deferred: opencv is optional (the faces extra)

    h, w = shape
    tri_dst = dst[simplices]  # (T, 3, 2)
    tri_src = src[simplices]
    ones = np.ones((len(simplices), 3, 1))
    q = np.concatenate([tri_dst, ones], axis=2)  # (T, 3, 3) rows [x, y, 1]
    det = np.linalg.det(q)
    ok = np.abs(det) > 1e-9
    affines = np.zeros((len(simplices) + 1, 2, 3))
    affines[0] = np.array([[1.0, 0, 0], [0, 1.0, 0]]) if fallback is None else fallback
    # Solve q @ A^T = tri_src for each well-formed triangle: A maps [x, y, 1] -> source.
    affines[1:][ok] = np.linalg.solve(q[ok], tri_src[ok]).transpose(0, 2, 1)
    index = np.zeros((h, w), np.int32)
    shift = 4  # sub-pixel vertex precision for the rasteriser
    for t in np.flatnonzero(ok):
        poly = np.round(tri_dst[t] * (1 << shift)).astype(np.int32)
        cv2.fillConvexPoly(index, poly, int(t) + 1, lineType=cv2.LINE_8, shift=shift)
    a = affines.astype(np.float32)[index]  # (h, w, 2, 3)
    xs, ys = _pixel_grid(h, w)
    map_x = a[..., 0, 0] * xs + a[..., 0, 1] * ys + a[..., 0, 2]
    map_y = a[..., 1, 0] * xs + a[..., 1, 1] * ys + a[..., 1, 2]
    return map_x, map_y


def _inner_gap(pts: np.ndarray) -> float:
    return float(np.mean([np.linalg.norm(pts[lo] - pts[up]) for up, lo in INNER_LIP_PAIRS]))


def _poly_mask(shape: tuple[int, int], poly: np.ndarray) -> np.ndarray:
    """Anti-aliased float mask (0-1) of a polygon given in (sub-)pixel coordinates."""
    import cv2  # deferred: opencv is optional (the faces extra)

    mask = np.zeros(shape, np.uint8)
    cv2.fillPoly(mask, [np.round(poly * 16).astype(np.int32)], 255, cv2.LINE_AA, shift=4)
    return mask.astype(np.float32) / 255.0


def _smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _synthetic_teeth(cavity: np.ndarray, dst_pts: np.ndarray, gap: float, iod: float) -> np.ndarray:
    """A hint of upper teeth hanging from the upper inner lip.

    Per image column: the lip line is a parabola through the upper inner-lip points; the
    teeth hang ``depth`` below it, shorter towards the mouth corners (only canine to canine
    shows), with slightly rounded incisal edges per tooth (~0.12 IOD wide, a central incisor
    is ~8.5 mm), a shadow under the lip, darker towards the sides and soft seams between
    teeth.
    """
    h, w = cavity.shape[:2]
    upper = dst_pts[[60, 61, 62, 63, 64]]
    coef = np.polyfit(upper[:, 0], upper[:, 1], 2)
    centre_x = float(dst_pts[62, 0])
    half = max(float(upper[4, 0] - upper[0, 0]) / 2, 1.0)
    depth = min(0.45 * gap, 0.075 * iod)
    tooth_w = 0.12 * iod
    xs = np.arange(w, dtype=np.float32)
    ys = np.arange(h, dtype=np.float32)[:, None]
    top = np.polyval(coef, xs).astype(np.float32)
    rel = (xs - centre_x) / half  # -1 at the left corner, +1 at the right one
    span = np.clip(1.0 - (np.abs(rel) / 0.85) ** 4, 0.0, 1.0)
    phase = (xs - centre_x) / tooth_w  # tooth boundaries at integer phases
    length = depth * span * (1.0 - 0.12 * (1.0 + np.cos(2 * np.pi * phase)) / 2)
    soft = max(0.01 * iod, 0.7)  # edge softness in pixels
    below_top = np.clip((ys - top) / soft + 0.5, 0.0, 1.0)
    above_edge = np.clip((top + length - ys) / soft + 0.5, 0.0, 1.0)
    tmask = below_top * above_edge * (length > 0.5)
    t = np.clip((ys - top) / np.maximum(length, 1.0), 0.0, 1.0)
    vertical = 0.55 + 0.45 * _smoothstep(0.0, 0.35, t) - 0.12 * _smoothstep(0.75, 1.0, t)
    sideways = 1.0 - 0.45 * np.abs(np.clip(rel, -1, 1)) ** 1.5
    seam_dist = np.abs(phase - np.round(phase)) * tooth_w
    seam = 0.22 * np.exp(-((seam_dist / max(0.012 * iod, 0.6)) ** 2))
    enamel = np.array([222, 212, 192], np.float32)  # ivory, before the lips' shadow
    tooth_rgb = enamel * (vertical * (sideways * (1.0 - seam))[None, :])[..., None]
    return cavity * (1 - tmask[..., None]) + tooth_rgb * tmask[..., None]


def _paint_mouth(
    img: np.ndarray,
    source: np.ndarray,
    out_to_src: np.ndarray,
    src_pts: np.ndarray,
    dst_pts: np.ndarray,
    iod: float,
    teeth: bool,
) -> np.ndarray:
    """Mouth interior inside the displaced inner-lip contour where the lips part further.

    A dark oral cavity with a dim tongue fills the new opening. If the photo already shows
    its mouth interior (teeth in a smile), that interior is moved with the upper lip (upper
    teeth are fixed to the skull) and laid over the cavity instead of being stretched;
    otherwise a hint of upper teeth is drawn. ``src_pts`` / ``dst_pts`` are the neutral and
    displaced landmarks in output pixels; ``out_to_src`` maps output pixels to ``source``
    pixels for the undeformed crop.
    """
    gap_dst, gap_src = _inner_gap(dst_pts), _inner_gap(src_pts)
    if gap_dst < 0.02 * iod or gap_dst - gap_src < 0.01 * iod:
        return img
    # Work inside a box around the lips only (full-frame float arrays cost more than the warp).
    h, w = img.shape[:2]
    pad = 0.1 * iod + 4
    lips = np.vstack([dst_pts[48:68], src_pts[48:68]])
    x0, y0 = (max(int(v), 0) for v in np.floor(lips.min(axis=0) - pad))
    x1, y1 = min(int(np.ceil(lips[:, 0].max() + pad)), w), min(int(np.ceil(lips[:, 1].max() + pad)), h)
    if x1 <= x0 or y1 <= y0:
        return img
    offset = np.array([x0, y0], np.float64)
    roi_to_src = out_to_src @ np.array([[1.0, 0, x0], [0, 1.0, y0], [0, 0, 1.0]])
    out = img.copy()
    out[y0:y1, x0:x1] = _mouth_roi(
        img[y0:y1, x0:x1], source, roi_to_src, src_pts - offset, dst_pts - offset, iod, teeth, gap_src, gap_dst
    )
    return out


def _mouth_roi(
    img: np.ndarray,
    source: np.ndarray,
    out_to_src: np.ndarray,
    src_pts: np.ndarray,
    dst_pts: np.ndarray,
    iod: float,
    teeth: bool,
    gap_src: float,
    gap_dst: float,
) -> np.ndarray:
    import cv2  # deferred: opencv is optional (the faces extra)

    h, w = img.shape[:2]
    cavity = np.empty((h, w, 3), np.float32)
    cavity[:] = (42, 16, 20)  # dark red-brown of the oral cavity in shadow
    lower = dst_pts[[65, 66, 67]].mean(axis=0)
    axes = (max(int(0.45 * np.linalg.norm(dst_pts[64] - dst_pts[60])), 1), max(int(0.35 * gap_dst), 1))
    tongue = np.zeros((h, w), np.float32)
    cv2.ellipse(tongue, (round(lower[0]), round(lower[1])), axes, 0, 180, 360, 1.0, -1, cv2.LINE_AA)
    tongue = cv2.GaussianBlur(tongue, (0, 0), max(0.15 * gap_dst, 0.5))
    cavity += tongue[..., None] * (np.array([105, 42, 46], np.float32) - cavity) * 0.6
    # Deeper shadow towards the mouth corners, where the cheeks hide the cavity.
    half = max(float(np.linalg.norm(dst_pts[64] - dst_pts[60])) / 2, 1.0)
    rel = (np.arange(w, dtype=np.float32) - float(dst_pts[62, 0])) / half
    cavity *= (0.6 + 0.4 * (1.0 - np.clip(np.abs(rel), 0, 1) ** 2))[None, :, None]

    if gap_src >= 0.03 * iod:
        # Move the photo's own mouth interior with the upper lip, widening it with the mouth.
        c_src, c_dst = src_pts[61:64].mean(axis=0), dst_pts[61:64].mean(axis=0)
        width_src = max(float(np.linalg.norm(src_pts[64] - src_pts[60])), 1.0)
        sx = float(np.linalg.norm(dst_pts[64] - dst_pts[60])) / width_src
        # q (output) -> v = c_src + diag(1/sx, 1) (q - c_dst) (undeformed output) -> source.
        to_undeformed = np.array([[1 / sx, 0, c_src[0] - c_dst[0] / sx], [0, 1, c_src[1] - c_dst[1]]])
        full = np.vstack([out_to_src, [0, 0, 1]]) @ np.vstack([to_undeformed, [0, 0, 1]])
        interior = cv2.warpAffine(
            source, full[:2], (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT_101
        ).astype(np.float32)
        moved_poly = c_dst + (src_pts[60:68] - c_src) * np.array([[sx, 1.0]])
        keep = cv2.GaussianBlur(_poly_mask((h, w), moved_poly), (0, 0), max(0.004 * iod, 0.5))
        cavity = cavity * (1 - keep[..., None]) + interior * keep[..., None]
    elif teeth and gap_dst > 0.04 * iod:
        cavity = _synthetic_teeth(cavity, dst_pts, gap_dst, iod)
    m = cv2.GaussianBlur(_poly_mask((h, w), dst_pts[60:68]), (0, 0), max(0.008 * iod, 0.6))
    out = img.astype(np.float32) * (1 - m[..., None]) + cavity * m[..., None]
    return np.clip(out, 0, 255).astype(np.uint8)


def _shade(img: np.ndarray, landmarks: np.ndarray, intensities: list[int], strength: float) -> np.ndarray:
    import cv2  # deferred: opencv is optional (the faces extra)

    strokes = appearance_strokes(landmarks, intensities)
    if not strokes or strength <= 0:
        return img
    h, w = img.shape[:2]
    shade = np.zeros((h, w), np.float32)
    for s in strokes:
        # Wide blur: a furrow is a soft shadow, not a drawn line. Each stroke is drawn and
        # blurred only inside its own padded bounding box (the blur is the costly part).
        sigma = max(s.width * 1.1, 0.8)
        pad = int(3 * sigma + s.width) + 2
        x0, y0 = np.floor(s.points.min(axis=0)).astype(int) - pad
        x1, y1 = np.ceil(s.points.max(axis=0)).astype(int) + pad
        cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
        if cx1 <= cx0 or cy1 <= cy0:
            continue
        layer = np.zeros((y1 - y0, x1 - x0), np.float32)
        pts = np.round((s.points - (x0, y0)) * 16).astype(np.int32)
        cv2.polylines(layer, [pts], False, 1.0, max(round(s.width), 1), cv2.LINE_AA, shift=4)
        layer = cv2.GaussianBlur(layer, (0, 0), sigma)
        shade[cy0:cy1, cx0:cx1] += layer[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] * (s.darkness * strength)
    factor = 1.0 - np.clip(shade, -0.3, 0.6)
    out = img.astype(np.float32) * factor[..., None]
    return np.clip(out, 0, 255).astype(np.uint8)


def _light(img: np.ndarray, rng: np.random.Generator, amount: float) -> np.ndarray:
    """Seeded exposure, white balance, gamma and a soft directional light gradient."""
    if amount <= 0:
        return img
    gain = 1 + _GAIN * amount * rng.uniform(-1, 1)
    channel = 1 + _CHANNEL_GAIN * amount * rng.uniform(-1, 1, size=3)
    gamma = 1 + _GAMMA * amount * rng.uniform(-1, 1)
    angle = rng.uniform(0, 2 * np.pi)
    h, w = img.shape[:2]
    levels = np.arange(256, dtype=np.float32) / 255.0
    lut = np.power(levels, gamma)[:, None] * (gain * channel * 255.0)[None, :].astype(np.float32)
    x = np.stack([lut[img[..., c], c] for c in range(3)], axis=-1)
    slope = 2 * _GRADIENT * amount
    ramp = (
        1.0
        + ((np.arange(w, dtype=np.float32) / w - 0.5) * np.cos(angle) * slope)[None, :]
        + ((np.arange(h, dtype=np.float32) / h - 0.5) * np.sin(angle) * slope)[:, None]
    )
    x *= ramp[..., None]
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)


def render_expression(
    geom: IdentityGeometry, intensities: list[int], size: int, seed: int, cfg: RenderOptions
) -> tuple[np.ndarray, np.ndarray]:
    """The expression image ``(size, size, 3)`` uint8 and its 68 landmarks in output pixels."""
    import cv2  # deferred: opencv is optional (the faces extra)

    rng = np.random.default_rng(seed)
    j = cfg.jitter
    roll = np.deg2rad(_ROLL_DEG * j * rng.uniform(-1, 1))
    zoom = 1 + _SCALE * j * rng.uniform(-1, 1)
    shift = _SHIFT * j * rng.uniform(-1, 1, size=2) * size
    px_per_iod = size / cfg.crop_scale * zoom
    c, s = np.cos(roll), np.sin(roll)
    rot = np.array([[c, -s], [s, c]])
    centre_face = np.array([0.0, _CENTRE_DOWN])

    def to_output(u: np.ndarray) -> np.ndarray:  # face frame (IOD) -> output pixels
        return size / 2 + shift + px_per_iod * (u - centre_face) @ rot.T

    # Sample from a pre-shrunk photo when the output is much smaller (avoids aliasing).
    ratio = (size / cfg.crop_scale) / geom.iod
    factor = 1.0 if ratio >= 0.7 else round(min(ratio * 1.25, 1.0), 3)
    if factor not in geom.scaled:
        geom.scaled[factor] = (
            geom.image
            if factor == 1.0
            else cv2.resize(geom.image, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
        )
    source = geom.scaled[factor]

    n = 68
    src_face, dst_face = geom.points, displaced_points(geom, intensities)
    src_pixels = (geom.origin + geom.iod * src_face @ geom.basis.T) * factor
    dst_out = to_output(dst_face)
    src_out = to_output(src_face)
    # Fallback for pixels outside all triangles: the undeformed crop transform.
    fallback_pts = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    q = np.hstack([to_output(fallback_pts), np.ones((3, 1))])
    fallback = np.linalg.solve(q, (geom.origin + geom.iod * fallback_pts @ geom.basis.T) * factor).T
    map_x, map_y = piecewise_affine_map(dst_out, src_pixels, geom.simplices, (size, size), fallback)
    img = cv2.remap(source, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)

    lm_out = dst_out[:n]
    if cfg.mouth_interior:
        img = _paint_mouth(img, source, fallback, src_out[:n], lm_out, px_per_iod, cfg.teeth)
    if cfg.appearance_cues:
        img = _shade(img, lm_out, intensities, cfg.cue_strength)
    img = _light(img, rng, j)
    return img, lm_out.astype(np.float32)

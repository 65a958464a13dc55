"""The release's "bg" attribute image from BiSeNet face parsing plus our 68-point jaw contour.

As MagicFace's ``utils/retrieve_bg.py`` makes it: the face crop resized to 512 px (bilinear),
ImageNet-normalised, parsed by BiSeNet (``79999_iter.pth``, 19 CelebAMask-HQ classes, argmax
of the main head); every pixel of a face class (skin, brows, eyes, glasses, nose, mouth, lips,
necklace) painted black, background, ears, earrings, neck, clothes, hair and hat kept. The 17
jaw-contour points are then drawn as filled dots on a black canvas and *added* to that image
(saturating, as its ``save_image(bg + dots)`` does), in matplotlib's ``rainbow`` colours over
70 points with red and blue swapped (the release draws BGR colour tuples with OpenCV into an
RGB array).

Departure: the release takes the jaw points from a 3D face reconstruction with the Basel Face
Model (non-commercial) in a 256 px aligned crop, dots of radius 2 there, warped back; ours
are dlib's 68-point jaw landmarks (iBUG 300-W) in the crop itself, dots of radius
``2 * size / 256``. Measured on the release's three example faces (its ``test_images/*.png``
and the ``*_bg.png`` it made from them, 512 px; its 17 dots found as coloured blobs, ordered
along the jaw): dlib's points lie 8, 16 and 19 px from the release's on average (0.08-0.19
of the inter-ocular distance), worst 12, 24 and 49 px (the chin of an open-mouthed face);
the release's sit 6-12 px higher on average.

A missing, unreadable or mismatched weights file raises one :class:`~stages.base.StageError`
naming the file and ``factory models pull bisenet-face-parsing``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from stages.base import StageError
from stages.nets.checkpoint import state_dict_mismatch

__all__ = [
    "BISENET_FILE",
    "FACE_CLASSES",
    "PARSE_SIZE",
    "FaceParser",
    "jaw_dots",
    "parsing_bg",
    "release_dot_colours",
]

BISENET_FILE = "79999_iter.pth"
PARSE_SIZE = 512  # the release parses the 512 px crop
# Painted black by the release's keep_background (it skips 0, 7, 8, 9, 14, 16, 17, 18).
FACE_CLASSES = (1, 2, 3, 4, 5, 6, 10, 11, 12, 13, 15)
_IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
_PULL = "fetch it with `factory models pull bisenet-face-parsing` or set generator.bisenet_file"


def release_dot_colours(n: int = 70) -> list[tuple[int, int, int]]:
    """matplotlib's ``rainbow`` at ``n`` points as the release's dots show it (red and blue swapped)."""
    x = np.linspace(0.0, 1.0, n)
    # matplotlib's _rainbow_data: r = |2x - 0.5| (clipped to 1), g = sin(pi x), b = cos(pi x / 2)
    rgb = np.stack([np.clip(np.abs(2 * x - 0.5), 0.0, 1.0), np.sin(np.pi * x), np.cos(np.pi * x / 2)], axis=1)
    return [(int(b), int(g), int(r)) for r, g, b in (255 * rgb).astype(int)]


def jaw_dots(size: int, jaw: np.ndarray) -> np.ndarray:
    """``(size, size, 3)`` uint8: the 17 jaw points as filled dots on black."""
    canvas = Image.new("RGB", (size, size))
    draw = ImageDraw.Draw(canvas)
    radius = 2.0 * size / 256
    colours = release_dot_colours()
    for i, (x, y) in enumerate(np.round(np.asarray(jaw, np.float64))):
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=colours[i])
    return np.asarray(canvas, dtype=np.uint8)


def parsing_bg(crop: np.ndarray, labels: np.ndarray, jaw: np.ndarray) -> np.ndarray:
    """The bg image: face classes of ``labels`` (crop-sized) black, jaw dots added on top."""
    kept = np.where(np.isin(labels, FACE_CLASSES)[..., None], 0, np.asarray(crop, np.uint8))
    summed = kept.astype(np.int16) + jaw_dots(crop.shape[0], jaw)
    return np.clip(summed, 0, 255).astype(np.uint8)


def _fail(problem: str) -> StageError:
    return StageError(f"{problem}; {_PULL}")


class FaceParser:
    """BiSeNet loaded strictly from ``path``; :meth:`parse` gives per-pixel CelebAMask-HQ labels."""

    def __init__(self, path: Path, device: str = "cpu", parse_size: int = PARSE_SIZE) -> None:
        import torch  # deferred: optional and heavy (the gen extra)

        from stages.nets.bisenet import BiSeNet  # deferred: imports torch

        self.path, self.parse_size = path, parse_size
        if not path.is_file():
            raise _fail(f"BiSeNet face-parsing file {path} is missing")
        try:
            sd: Any = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for a corrupt or foreign file
            raise _fail(f"BiSeNet face-parsing file {path} cannot be read ({type(exc).__name__})") from exc
        if not (isinstance(sd, dict) and all(isinstance(v, torch.Tensor) for v in sd.values())):
            raise _fail(f"BiSeNet face-parsing file {path} is not a state dict (name -> tensor)")
        net = BiSeNet()
        problem = state_dict_mismatch(net.state_dict(), sd)
        if problem:
            raise _fail(f"BiSeNet face-parsing file {path} does not match the network ({problem})")
        net.load_state_dict(sd, strict=True)
        self.net = net.to(device).eval().requires_grad_(False)
        self.device = device

    def parse(self, crop: np.ndarray) -> np.ndarray:
        """``(H, W)`` uint8 class labels of a square uint8 RGB crop, at the crop's size."""
        import torch  # deferred: optional and heavy (the gen extra)

        size = crop.shape[0]
        image = Image.fromarray(np.asarray(crop, np.uint8)).resize(
            (self.parse_size, self.parse_size), Image.Resampling.BILINEAR
        )
        x = (np.asarray(image, np.float32) / 255.0 - _IMAGENET_MEAN) / _IMAGENET_STD
        batch = torch.from_numpy(x.transpose(2, 0, 1)[None].copy()).to(self.device)
        with torch.inference_mode():
            labels = self.net(batch)[0].argmax(0).to(torch.uint8).cpu().numpy()
        # The release parses at 512 and keeps 512; another crop size takes the nearest label.
        return np.asarray(Image.fromarray(labels).resize((size, size), Image.Resampling.NEAREST))

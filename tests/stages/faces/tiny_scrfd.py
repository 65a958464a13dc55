"""A tiny SCRFD stand-in in insightface's real ONNX layout that "detects" painted squares.

The graph has SCRFD's input (``(1, 3, H, W)``, ``(RGB - 127.5) / 128``) and its 9 outputs:
scores ``(n, 1)``, box distances ``(n, 4)`` and keypoint distances ``(n, 10)`` for strides
8, 16 and 32, ``n = (H / stride) * (W / stride) * 2`` anchors, cells row-major with the two
anchors innermost. insightface's ``model_zoo.get_model`` routes it to its ``SCRFD`` class,
which letterboxes, decodes and suppresses as for the real det_10g.onnx.

What it detects: each stride's input is averaged over its cells; a red cell (R high, G low)
scores about 1 at stride 16 (anchor 0), a green cell at stride 32; anything else, and
every stride-8 cell and second anchor, about 0. Box and keypoint distances are the constants
below, in stride units from the cell's anchor centre, which SCRFD puts at the cell's
top-left corner (``col * stride, row * stride``).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

STRIDES = (8, 16, 32)
BOX_DIST = (4.0, 5.0, 4.0, 6.0)  # left, top, right, bottom
KPS_DIST = ((-2.0, -1.5), (2.0, -1.5), (0.0, 0.5), (-1.5, 3.0), (1.5, 3.0))  # eyes, nose, mouth corners
RED = (255, 0, 0)  # a stride-16 face
GREEN = (0, 255, 0)  # a stride-32 face


class PaintedSquareSCRFD(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("box_dist", torch.tensor(BOX_DIST))
        self.register_buffer("kps_dist", torch.tensor(KPS_DIST).reshape(-1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        scores, boxes, points = [], [], []
        for stride in STRIDES:
            cells = F.avg_pool2d(x, stride, stride)
            red, green = cells[:, 0], cells[:, 1]  # about +1 where the channel is 255, -1 where 0
            if stride == 16:
                logit = 20.0 * (red - green - 1.0)
            elif stride == 32:
                logit = 20.0 * (green - red - 1.0)
            else:
                logit = red * 0.0 - 20.0
            first = torch.sigmoid(logit).reshape(-1, 1)
            score = torch.stack([first, first * 0.0], dim=1).reshape(-1, 1)  # anchor 1 never fires
            scores.append(score)
            boxes.append(score * 0.0 + self.box_dist)
            points.append(score * 0.0 + self.kps_dist)
        return (*scores, *boxes, *points)


def export_tiny_scrfd(path: Path, input_side: int | None = None) -> Path:
    """Write the model to ``path``; ``input_side=None`` leaves height and width dynamic (like det_10g)."""
    side = input_side or 320
    names = [f"{kind}_{s}" for kind in ("score", "bbox", "kps") for s in STRIDES]
    dynamic = None
    if input_side is None:
        dynamic = {"input.1": {2: "height", 3: "width"}} | {name: {0: f"n_{name}"} for name in names}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter; dynamo needs onnxscript
        torch.onnx.export(
            PaintedSquareSCRFD(),
            (torch.zeros(1, 3, side, side),),
            str(path),
            input_names=["input.1"],
            output_names=names,
            dynamic_axes=dynamic,
            dynamo=False,
        )
    return path


def paint_face(image: np.ndarray, stride: int, row: int, col: int, colour: tuple[int, int, int] = RED) -> None:
    """Fill detector-input cell (row, col) of ``stride`` (image pixels = input pixels at scale 1)."""
    image[row * stride : (row + 1) * stride, col * stride : (col + 1) * stride] = colour


def expected_face(stride: int, row: int, col: int, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(box, keypoints) in image pixels for a face at that cell; ``scale`` = input pixels per image pixel."""
    cx, cy = col * stride, row * stride
    left, top, right, bottom = BOX_DIST
    box = np.array([cx - left * stride, cy - top * stride, cx + right * stride, cy + bottom * stride])
    points = np.array([[cx + dx * stride, cy + dy * stride] for dx, dy in KPS_DIST])
    return box / scale, points / scale

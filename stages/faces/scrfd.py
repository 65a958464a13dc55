"""SCRFD face detection from an insightface ONNX file (e.g. buffalo_l ``det_10g.onnx``).

The network is run with onnxruntime; everything around it is here: letterbox resize into
the detector's square input (padding right/bottom, like insightface), ``(x - 127.5) / 128``
normalisation of RGB, decoding of the standard 9-output layout (scores, box distances and
5-keypoint distances for strides 8, 16, 32, two anchors per location), greedy NMS, and a
similarity-transform alignment of the 5 keypoints onto the ArcFace template.

Per record it sets ``face_score``, ``face_box`` (x0, y0, x1, y1 in image pixels),
``landmarks5`` (5x2 float32: left eye, right eye, nose, left and right mouth corner, image
pixels) and ``face_crop`` (aligned uint8 RGB, ``crop_size`` square). SCRFD has no 68-point
landmarks, so ``landmarks`` is left alone. Images with no face, or with several when
``on_multiple="drop"``, are dropped with the reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from stages.base import Record, Stage, StageConfig, StageError, drop, is_dropped

__all__ = [
    "ARCFACE_TEMPLATE",
    "SCRFDConfig",
    "SCRFDFaceStage",
    "align_face",
    "anchor_centers",
    "decode_scrfd",
    "distance2bbox",
    "distance2kps",
    "letterbox",
    "nms",
]

# ArcFace 112x112 reference positions of the 5 keypoints (insightface face_align).
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)
STRIDES = (8, 16, 32)
NUM_ANCHORS = 2


class SCRFDConfig(StageConfig):
    model: str | None = Field(None, description="SCRFD .onnx; default: `factory models pull scrfd-10g`")
    det_size: int = Field(640, ge=64, le=2048, description="square input side when the model's is dynamic")
    score_threshold: float = Field(0.5, gt=0.0, lt=1.0)
    nms_threshold: float = Field(0.4, gt=0.0, le=1.0)
    on_multiple: Literal["drop", "largest"] = "drop"
    min_relative_area: float = Field(
        0.0, ge=0.0, lt=1.0, description="ignore faces smaller than this fraction of the largest face's box area"
    )
    crop_size: int = Field(224, ge=32, le=1024)
    crop_margin: float = Field(
        0.2, ge=0.0, le=1.0, description="extra context around the ArcFace framing (0 = ArcFace's tight crop)"
    )


def distance2bbox(points: np.ndarray, distance: np.ndarray) -> np.ndarray:
    """Anchor centres ``(n, 2)`` + (left, top, right, bottom) distances -> ``(n, 4)`` boxes."""
    return np.stack(
        [
            points[:, 0] - distance[:, 0],
            points[:, 1] - distance[:, 1],
            points[:, 0] + distance[:, 2],
            points[:, 1] + distance[:, 3],
        ],
        axis=-1,
    )


def distance2kps(points: np.ndarray, distance: np.ndarray) -> np.ndarray:
    """Anchor centres ``(n, 2)`` + ``(n, 2k)`` offsets -> ``(n, k, 2)`` keypoints."""
    offsets = distance.reshape(distance.shape[0], distance.shape[1] // 2, 2)
    return points[:, None, :] + offsets


def anchor_centers(height: int, width: int, stride: int, num_anchors: int = NUM_ANCHORS) -> np.ndarray:
    """``(height * width * num_anchors, 2)`` (x, y) centres, row-major, anchors innermost."""
    ys, xs = np.mgrid[:height, :width]
    centers = (np.stack([xs, ys], axis=-1).reshape(-1, 2) * stride).astype(np.float32)
    return np.repeat(centers, num_anchors, axis=0)


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> list[int]:
    """Greedy NMS (insightface's +1 pixel area convention); indices of kept boxes, best first."""
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        iou = inter / (areas[i] + areas[rest] - inter)
        order = rest[iou <= threshold]
    return keep


def letterbox(image: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, float]:
    """Resize keeping aspect into ``size`` = (width, height), pad right/bottom; returns scale."""
    import cv2

    h, w = image.shape[:2]
    width, height = size
    if h / w > height / width:
        new_h, new_w = height, int(height * w / h)
    else:
        new_w, new_h = width, int(width * h / w)
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    canvas[:new_h, :new_w] = cv2.resize(image, (new_w, new_h))
    return canvas, new_h / h


def decode_scrfd(
    outputs: list[np.ndarray], input_hw: tuple[int, int], threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The 9 raw outputs -> (scores ``(n,)``, boxes ``(n, 4)``, keypoints ``(n, 5, 2)``) above threshold.

    Coordinates are in detector-input pixels. Output order is insightface's: scores for
    strides 8/16/32, then box distances, then keypoint distances (in stride units).
    """
    if len(outputs) != 3 * len(STRIDES):
        raise ValueError(f"expected {3 * len(STRIDES)} SCRFD outputs (with keypoints), got {len(outputs)}")
    fmc = len(STRIDES)
    all_scores, all_boxes, all_kps = [], [], []
    for idx, stride in enumerate(STRIDES):
        # Batched exports add a leading batch axis of 1.
        scores, boxes, kps = (
            np.asarray(o[0] if o.ndim == 3 else o, dtype=np.float32)
            for o in (outputs[idx], outputs[idx + fmc], outputs[idx + 2 * fmc])
        )
        centers = anchor_centers(input_hw[0] // stride, input_hw[1] // stride, stride)
        if scores.shape[0] != centers.shape[0]:
            raise ValueError(
                f"stride {stride}: {scores.shape[0]} scores for {centers.shape[0]} anchors "
                f"(input {input_hw[1]}x{input_hw[0]}, {NUM_ANCHORS} anchors per location)"
            )
        keep = np.flatnonzero(scores.reshape(-1) >= threshold)
        all_scores.append(scores.reshape(-1)[keep])
        all_boxes.append(distance2bbox(centers[keep], boxes[keep] * stride))
        all_kps.append(distance2kps(centers[keep], kps[keep] * stride))
    return np.concatenate(all_scores), np.concatenate(all_boxes), np.concatenate(all_kps)


def align_face(image: np.ndarray, points: np.ndarray, size: int, margin: float = 0.0) -> np.ndarray | None:
    """Warp ``image`` so its 5 keypoints land on the (margin-widened) ArcFace template.

    ``None`` when no similarity transform fits (degenerate keypoints).
    """
    import cv2
    from skimage.transform import SimilarityTransform

    template = (ARCFACE_TEMPLATE - 56.0) / (1.0 + margin) + 56.0
    template = template * (size / 112.0)
    tform = SimilarityTransform.from_estimate(points.astype(np.float64), template.astype(np.float64))
    if not tform:
        return None
    return cv2.warpAffine(image, tform.params[:2].astype(np.float32), (size, size), borderValue=0)


def _searched(explicit: str | None) -> str:
    if explicit:
        return ""
    from stages.catalogue import search_dirs

    return "; searched: " + ", ".join(str(d) for d in search_dirs())


class SCRFDFaceStage(Stage):
    name: ClassVar[str] = "scrfd"
    kind: ClassVar[str] = "face"
    config_model: ClassVar[type[StageConfig]] = SCRFDConfig

    session: Any = None

    def model_path(self) -> Path:
        cfg: SCRFDConfig = self.config  # type: ignore[assignment]
        if cfg.model:
            return Path(cfg.model).expanduser()
        from stages.catalogue import local_path

        return local_path("scrfd-10g")

    def setup(self) -> None:
        import onnxruntime as ort

        path = self.model_path()
        cfg: SCRFDConfig = self.config  # type: ignore[assignment]
        if not path.is_file():
            raise StageError(
                f"scrfd: model {path} not found; get insightface's det_10g.onnx with "
                "`factory models pull scrfd-10g` (or set `model` to another SCRFD .onnx)" + _searched(cfg.model)
            )
        providers = ["CPUExecutionProvider"]
        if self.context.device == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # one actor per CPU; the engine scales out, not up
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise StageError(f"scrfd: cannot load ONNX model {path}: {exc}") from exc
        outputs = self.session.get_outputs()
        if len(outputs) != 9:
            raise StageError(
                f"scrfd: {path} has {len(outputs)} outputs; this stage reads the 9-output SCRFD layout "
                "(scores/boxes/keypoints for strides 8, 16, 32), e.g. det_10g.onnx or *_kps models"
            )
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        self.output_names = [o.name for o in outputs]
        shape = model_input.shape
        fixed = isinstance(shape[2], int) and isinstance(shape[3], int)
        self.input_size = (int(shape[3]), int(shape[2])) if fixed else (cfg.det_size, cfg.det_size)

    def detect(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(scores, boxes, keypoints) after NMS, in image pixels, best score first."""
        cfg: SCRFDConfig = self.config  # type: ignore[assignment]
        canvas, scale = letterbox(image, self.input_size)
        blob = ((canvas.astype(np.float32) - 127.5) / 128.0).transpose(2, 0, 1)[None]
        outputs = self.session.run(self.output_names, {self.input_name: blob})
        scores, boxes, kps = decode_scrfd(outputs, (canvas.shape[0], canvas.shape[1]), cfg.score_threshold)
        keep = nms(boxes, scores, cfg.nms_threshold) if scores.size else []
        return scores[keep], boxes[keep] / scale, kps[keep] / scale

    def process(self, batch: list[Record]) -> list[Record]:
        if self.session is None:
            self.setup()
        cfg: SCRFDConfig = self.config  # type: ignore[assignment]
        for record in batch:
            if is_dropped(record):
                continue
            image = record.get("image")
            if not isinstance(image, np.ndarray) or image.ndim != 3:
                raise StageError(f"scrfd: record {record.get('key')!r} has no decoded 'image' (H, W, 3)")
            scores, boxes, kps = self.detect(image)
            if scores.size == 0:
                drop(record, self.name, f"no face (SCRFD score < {cfg.score_threshold})")
                continue
            if cfg.min_relative_area > 0 and scores.size > 1:
                # Background faces (posters, reflections) far smaller than the subject do not count.
                areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
                keep = areas >= cfg.min_relative_area * areas.max()
                scores, boxes, kps = scores[keep], boxes[keep], kps[keep]
            best = 0
            if scores.size > 1:
                if cfg.on_multiple == "drop":
                    drop(record, self.name, f"{scores.size} faces (SCRFD score >= {cfg.score_threshold})")
                    continue
                areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
                best = int(np.argmax(areas))
            crop = align_face(image, kps[best], cfg.crop_size, cfg.crop_margin)
            if crop is None:
                drop(record, self.name, "face keypoints are degenerate (no alignment transform)")
                continue
            record["face_score"] = float(scores[best])
            record["face_box"] = [float(v) for v in boxes[best]]
            record["landmarks5"] = kps[best].astype(np.float32)
            record["face_crop"] = crop
        return batch

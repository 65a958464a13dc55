"""SCRFD face detection from an insightface ONNX file (e.g. buffalo_l ``det_10g.onnx``).

insightface does the detector's work: ``insightface.model_zoo.get_model`` loads the file and
routes it to its ``SCRFD`` class by the graph's outputs; ``prepare`` sets the input size
(``det_size`` when the model's input is dynamic) and the thresholds; ``detect`` letterboxes
the image, normalises it, decodes the 9-output layout (scores, box distances and 5-keypoint
distances for strides 8, 16, 32) and runs NMS. The crop is
:func:`stages.faces.align.arcface_crop`, insightface's 5-point fit widened by ``crop_margin``.
This module chooses the file, says what to do when it is missing or wrong, picks the face
and writes the record.

Per record it sets ``face_score``, ``face_box`` (x0, y0, x1, y1 in image pixels),
``landmarks5`` (5x2 float32: left eye, right eye, nose, left and right mouth corner, image
pixels) and ``face_crop`` (aligned uint8 RGB, ``crop_size`` square). SCRFD has no 68-point
landmarks, so ``landmarks`` is left alone. Images with no face, or with several when
``on_multiple="drop"``, are dropped with the reason; a record without a decoded image is an
error (the generator must set one).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from stages.base import Record, StageConfig, StageContext, StageError
from stages.catalogue import INSIGHTFACE_LICENCE, THIS_CODE, local_path, search_dirs
from stages.faces.align import arcface_crop
from stages.faces.base import FaceCandidate, FaceStage

__all__ = ["SCRFDConfig", "SCRFDFaceStage", "load_scrfd"]


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


def load_scrfd(path: Path, config: SCRFDConfig, cuda: bool = False) -> Any:
    """insightface's ``SCRFD`` for the file at ``path``, prepared with the config's size and thresholds."""
    import onnxruntime as ort  # deferred: optional (the faces extra) and heavy
    from insightface.model_zoo import SCRFD, get_model  # deferred: importing insightface loads onnxruntime

    if path.suffix != ".onnx":
        # get_model reads any other name as a model-zoo name under ~/.insightface.
        raise StageError(f"scrfd: model {path} is not an .onnx file; set `model` to an SCRFD .onnx file")
    providers = ["CPUExecutionProvider"]
    if cuda and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # one actor per CPU; the engine scales out, not up
    try:
        model = get_model(str(path), providers=providers, sess_options=options)
    except Exception as exc:  # onnxruntime and onnx raise their own exception types
        raise StageError(f"scrfd: cannot load ONNX model {path}: {exc}") from exc
    if not isinstance(model, SCRFD) or not model.use_kps:
        what = "an SCRFD detector without keypoints" if isinstance(model, SCRFD) else "not a face detector"
        raise StageError(
            f"scrfd: {path} is {what} for insightface; this stage reads the SCRFD layout with 5 keypoints "
            "(9 outputs: scores/boxes/keypoints for strides 8, 16, 32), e.g. det_10g.onnx or *_kps models"
        )
    side = config.det_size
    model.prepare(
        ctx_id=0 if providers[0] == "CUDAExecutionProvider" else -1,
        input_size=(side, side),
        det_thresh=config.score_threshold,
        nms_thresh=config.nms_threshold,
    )
    return model


def _area(box: tuple[float, ...]) -> float:
    """Box area as SCRFD's own code computes it (no clamping, unlike base.box_area)."""
    return (box[2] - box[0]) * (box[3] - box[1])


class SCRFDFaceStage(FaceStage[SCRFDConfig]):
    name: ClassVar[str] = "scrfd"
    writes = FaceStage.writes - {"landmarks"}  # its 5 keypoints, never 68 landmarks
    licence: ClassVar[str] = f"{THIS_CODE}; SCRFD weights and insightface alignment: {INSIGHTFACE_LICENCE}"

    def __init__(self, config: SCRFDConfig, context: StageContext) -> None:
        super().__init__(config, context)
        self.detector: Any = None

    def model_path(self) -> Path:
        if self.config.model:
            return Path(self.config.model).expanduser()
        return local_path("scrfd-10g")

    def setup(self) -> None:
        path = self.model_path()
        if not path.is_file():
            searched = "" if self.config.model else "; searched: " + ", ".join(str(d) for d in search_dirs())
            raise StageError(
                f"scrfd: model {path} not found; get insightface's det_10g.onnx with "
                "`factory models pull scrfd-10g` (or set `model` to another SCRFD .onnx)" + searched
            )
        self.detector = load_scrfd(path, self.config, cuda=self.context.device == "cuda")

    def image_problem(self, record: Record) -> str | None:
        image = record.get("image")
        if not isinstance(image, np.ndarray) or image.ndim != 3:
            raise StageError(f"scrfd: record {record.get('key')!r} has no decoded 'image' (H, W, 3)")
        return None

    def find_faces(self, image: np.ndarray) -> list[FaceCandidate]:
        """Faces after NMS, best score first; boxes and keypoints in image pixels."""
        if self.detector is None:
            self.setup()
        # insightface takes OpenCV's BGR order and swaps to RGB itself.
        boxes, points = self.detector.detect(np.ascontiguousarray(image[..., ::-1]))
        return [
            FaceCandidate((float(x0), float(y0), float(x1), float(y1)), float(score), kps)
            for (x0, y0, x1, y1, score), kps in zip(boxes, points, strict=True)
        ]

    def choose_face(self, faces: list[FaceCandidate]) -> tuple[int | None, str | None]:
        cfg = self.config
        if not faces:
            return None, f"no face (SCRFD score < {cfg.score_threshold})"
        kept = list(range(len(faces)))
        if cfg.min_relative_area > 0 and len(faces) > 1:
            # Background faces (posters, reflections) far smaller than the subject do not count.
            largest = max(_area(f.box) for f in faces)
            kept = [i for i in kept if _area(faces[i].box) >= cfg.min_relative_area * largest]
        if len(kept) == 1:
            return kept[0], None
        if cfg.on_multiple == "drop":
            return None, f"{len(kept)} faces (SCRFD score >= {cfg.score_threshold})"
        return max(kept, key=lambda i: _area(faces[i].box)), None

    def face_crop(self, image: np.ndarray, landmarks: np.ndarray) -> np.ndarray | None:
        return arcface_crop(image, landmarks, self.config.crop_size, self.config.crop_margin)

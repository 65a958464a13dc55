"""Identity embeddings of a face: dlib's 128-D descriptor or an ArcFace ONNX model (512-D).

An embedder is a callable ``(image, landmarks68) -> L2-normalised float32 vector``.

The ArcFace embedder is insightface's recognition pipeline on a local file:
``insightface.model_zoo.get_model`` loads it (its ``ArcFaceONNX``: input normalisation read
from the graph, one output), the face is aligned by ``face_align.norm_crop`` on the 5 points
of its 68 landmarks at the model's input size, and ``get_feat`` embeds the crop.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from stages.catalogue import local_path
from stages.faces.align import norm_crop
from stages.faces.landmarks import face_embedding, five_points

__all__ = [
    "Embedder",
    "EmbedderError",
    "arcface_embedder",
    "arcface_file_problem",
    "dlib_embedder",
    "identity_similarity",
]

Embedder = Callable[[np.ndarray, np.ndarray], np.ndarray]

_ARCFACE_EXAMPLE = "an insightface recognition model, e.g. buffalo_l/w600k_r50.onnx"
_ARCFACE_EXAMPLE_OTHER = "the path of another insightface recognition .onnx file"


class EmbedderError(RuntimeError):
    """The embedding model cannot be used; the message names the file and the fix."""


def dlib_embedder() -> Embedder:
    return lambda image, landmarks: face_embedding(image, landmarks)


def arcface_file_problem(path: Path) -> str | None:
    """Why ``path`` cannot be loaded as an ArcFace model (missing, not ONNX), or ``None``."""
    if not path.is_file():
        return (
            f"ArcFace model {path} does not exist; `factory models pull arcface-r50` puts buffalo_l's "
            f"w600k_r50.onnx at {local_path('arcface-r50')}, or pass {_ARCFACE_EXAMPLE_OTHER}"
        )
    if path.suffix != ".onnx":
        # get_model reads any other name as a model-zoo name under ~/.insightface.
        return f"ArcFace model {path} is not an .onnx file; pass {_ARCFACE_EXAMPLE}"
    return None


def arcface_embedder(model_path: Path) -> Embedder:
    """Embed with the ArcFace ONNX file at ``model_path`` (CPU), or :class:`EmbedderError`."""
    from insightface.model_zoo import ArcFaceONNX, get_model  # deferred: importing insightface loads onnxruntime

    model_path = Path(model_path)
    problem = arcface_file_problem(model_path)
    if problem:
        raise EmbedderError(problem)
    try:
        model = get_model(str(model_path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime and onnx raise their own exception types
        raise EmbedderError(
            f"cannot load ArcFace ONNX model {model_path} ({type(exc).__name__}: {exc}); pass {_ARCFACE_EXAMPLE}"
        ) from exc
    if not isinstance(model, ArcFaceONNX):
        raise EmbedderError(
            f"{model_path} is not an ArcFace recognition model for insightface (it takes aligned faces, "
            f"(N, 3, 112, 112), and gives one embedding each); pass {_ARCFACE_EXAMPLE}"
        )
    model.prepare(ctx_id=-1)
    size = int(model.input_size[0])

    def embed(image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        # insightface's recognition path: OpenCV (BGR) order in, norm_crop, get_feat swaps to RGB.
        bgr = np.ascontiguousarray(np.asarray(image)[..., ::-1])
        crop = norm_crop(bgr, five_points(landmarks), size)
        return _l2(np.asarray(model.get_feat(crop))[0])

    return embed


def _l2(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32).reshape(-1)
    return v / max(float(np.linalg.norm(v)), 1e-12)


def identity_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two embeddings (1 = same direction)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"embeddings differ in size: {a.shape[0]} vs {b.shape[0]}")
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))

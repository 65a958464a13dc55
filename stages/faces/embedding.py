"""Identity embeddings of a face: dlib's 128-D descriptor or an ArcFace ONNX model (512-D).

An embedder is a callable ``(image, landmarks68) -> L2-normalised float32 vector``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from stages.faces.landmarks import align_face, face_embedding

__all__ = [
    "Embedder",
    "EmbedderError",
    "arcface_embedder",
    "arcface_preprocess",
    "dlib_embedder",
    "identity_similarity",
]

Embedder = Callable[[np.ndarray, np.ndarray], np.ndarray]


class EmbedderError(RuntimeError):
    """The embedding model cannot be used; the message names the file and the fix."""


def dlib_embedder() -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    return lambda image, landmarks: face_embedding(image, landmarks)


@lru_cache(maxsize=4)
def _arcface_session(path: str) -> Any:
    import onnxruntime as ort

    try:
        return ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise EmbedderError(
            f"cannot load ArcFace ONNX model {path} ({exc}); pass the path of an "
            "insightface recognition model (e.g. w600k_r50.onnx)"
        ) from exc


def arcface_preprocess(aligned_rgb: np.ndarray) -> np.ndarray:
    """Standard ArcFace input: 112x112 RGB -> float32 NCHW ``(1, 3, 112, 112)`` in [-1, 1]."""
    x = (aligned_rgb.astype(np.float32) - 127.5) / 127.5
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def arcface_embedder(model_path: Path) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    try:
        import insightface  # type: ignore[import-not-found]
    except ImportError:
        insightface = None
    if insightface is not None:
        model = insightface.model_zoo.get_model(str(model_path))
        if model is None or not hasattr(model, "get_feat"):
            raise EmbedderError(
                f"insightface does not recognise {model_path} as a recognition "
                "(ArcFace) model; pass e.g. buffalo_l/w600k_r50.onnx"
            )
        model.prepare(ctx_id=-1)

        def embed_insightface(image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
            # insightface's get_feat takes OpenCV-order (BGR) crops and swaps to RGB itself.
            aligned_bgr = align_face(image, landmarks, 112)[..., ::-1]
            return _l2(np.asarray(model.get_feat(np.ascontiguousarray(aligned_bgr)))[0])

        return embed_insightface

    session = _arcface_session(str(model_path))
    inp = session.get_inputs()[0]
    if list(inp.shape[1:]) != [3, 112, 112]:
        raise EmbedderError(f"{model_path}: expected an ArcFace input of shape (N, 3, 112, 112), got {inp.shape}")

    def embed_onnx(image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        x = arcface_preprocess(align_face(image, landmarks, 112))
        return _l2(np.asarray(session.run(None, {inp.name: x})[0])[0])

    return embed_onnx


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

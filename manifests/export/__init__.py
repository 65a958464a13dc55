"""Export formats: one file each in this folder, one line each in :data:`FORMATS`.

``base.py`` is the small format interface, ``stream.py`` the selection and image stream,
``run.py`` the loop (parts, resume, target folder rules, progress, ``export.json``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from manifests.export.base import Exporter, ExportError, ExportOptions, Sample
from manifests.export.folder import FolderExporter
from manifests.export.graphau import GraphAUExporter
from manifests.export.huggingface import HuggingFaceExporter
from manifests.export.identity_bank import IdentityBankExporter
from manifests.export.libreface import Landmarker, LibreFaceExporter
from manifests.export.maugen import MaugenExporter
from manifests.export.run import Progress, run_export
from manifests.export.webdataset import WebDatasetExporter
from manifests.layout import ExportLayout
from manifests.store import location

__all__ = [
    "BYTE_SHARD_MAX_SAMPLES",
    "EXPORT_MARKER",
    "FORMATS",
    "ExportError",
    "ExportOptions",
    "Exporter",
    "Landmarker",
    "Sample",
    "export",
]

EXPORT_MARKER = ExportLayout(Path(".")).marker.name
BYTE_SHARD_MAX_SAMPLES = 20_000

FORMATS: dict[str, type[Exporter]] = {
    "webdataset": WebDatasetExporter,
    "folder": FolderExporter,
    "huggingface": HuggingFaceExporter,
    "maugen": MaugenExporter,
    "graphau": GraphAUExporter,
    "libreface": LibreFaceExporter,
    "identity-bank": IdentityBankExporter,
}


def export(
    run_dir: Path,
    out: Path,
    *,
    where: str | None = None,
    limit: int | None = None,
    format: str = "webdataset",
    shard_size: int | None = None,
    shard_bytes: int | None = None,
    name: str | None = None,
    format_options: dict[str, Any] | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
    landmarker: Landmarker | None = None,
) -> dict[str, Any]:
    """Export the samples of ``run_dir`` (a dataset or a subset) matching ``where`` (SQL on
    ``samples``; the first ``limit`` in source order) to ``out`` in ``format``; streams in
    constant memory, resumes an unfinished export of the same job; returns ``export.json``.

    Parts (output shards, image folders) hold ``shard_size`` samples (default 1,000), or with
    ``shard_bytes`` no more than that many bytes, unless one sample does (and at most
    ``BYTE_SHARD_MAX_SAMPLES`` samples unless
    ``shard_size`` says otherwise). ``landmarker`` gives the libreface format its 68 points
    (``--landmarks``; the command layer passes dlib's, which this layer cannot import)."""
    if shard_size is None:
        # By bytes, a shard also closes at BYTE_SHARD_MAX_SAMPLES: its manifest rows stay in memory until it commits.
        shard_size = 1000 if shard_bytes is None else BYTE_SHARD_MAX_SAMPLES
    if format not in FORMATS:
        raise ExportError(f"format must be one of {', '.join(repr(f) for f in FORMATS)}, got {format!r}")
    options = ExportOptions(
        format=format,
        where=where,
        limit=limit,
        shard_size=shard_size,
        shard_bytes=shard_bytes,
        name=name,
        format_options=dict(format_options or {}),
    )
    return run_export(
        FORMATS[format],
        location(run_dir),
        location(out),
        options,
        overwrite=overwrite,
        progress=progress,
        landmarker=landmarker,
    )

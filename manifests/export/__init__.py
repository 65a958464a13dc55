"""Export formats: one file each in this folder, one line each in :data:`FORMATS`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from manifests.export.base import EXPORT_MARKER, Exporter, run_export
from manifests.export.folder import FolderExporter
from manifests.export.identity_bank import IdentityBankExporter
from manifests.export.webdataset import WebDatasetExporter

__all__ = ["EXPORT_MARKER", "FORMATS", "export"]

FORMATS: dict[str, type[Exporter]] = {
    "webdataset": WebDatasetExporter,
    "folder": FolderExporter,
    "identity-bank": IdentityBankExporter,
}


def export(
    run_dir: Path,
    out: Path,
    *,
    where: str | None = None,
    limit: int | None = None,
    format: str = "webdataset",
    shard_size: int = 1000,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Copy the accepted samples matching ``where`` (SQL on ``samples``; first ``limit`` in
    shard order) to ``out`` in ``format``; returns what was written (also ``out/export.json``)."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(repr(f) for f in FORMATS)}, got {format!r}")
    return run_export(
        FORMATS[format], Path(run_dir), Path(out), where=where, limit=limit, shard_size=shard_size, overwrite=overwrite
    )

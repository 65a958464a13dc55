"""Export a subset of a built dataset: the selection, the image stream, and the format base.

The selection is SQL over the ``samples`` view (accepted samples, see ``manifests.query``).
Images are copied byte for byte from the source tars (no re-encoding). A format is one
small :class:`Exporter` subclass in this folder plus one line in ``manifests.export.FORMATS``;
the base owns the loop (:func:`export`), the target folder rules and the report.

``out`` must be empty or absent; ``overwrite=True`` replaces a previous export (one that has
the ``.mifa-export`` marker), never an unrelated folder.
"""

from __future__ import annotations

import json
import shutil
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from manifests.atomic import write_bytes_atomic
from manifests.index import index_shards_dir, read_index
from manifests.layout import shard_paths
from manifests.query import query
from manifests.records import json_default

__all__ = ["EXPORT_MARKER", "Exporter", "iter_images", "prepare_out", "run_export", "select_rows"]

EXPORT_MARKER = ".mifa-export"


class Exporter:
    """One export format: :meth:`write` receives the selected rows with their image bytes,
    in shard order, and returns what it wrote (merged into ``export.json``)."""

    name: ClassVar[str]

    def __init__(self, run_dir: Path, out: Path, dataset: str, shard_size: int) -> None:
        self.run_dir = run_dir
        self.out = out
        self.dataset = dataset
        self.shard_size = shard_size

    def write(self, samples: Iterator[tuple[dict[str, Any], bytes]], count: int) -> dict[str, Any]:
        raise NotImplementedError


def prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"export target {out} is a file; pass a directory path")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"export target {out} is not empty; pass overwrite=True or choose an empty folder")
        if not (out / EXPORT_MARKER).exists():
            raise FileExistsError(
                f"export target {out} is not empty and is not a previous export (no {EXPORT_MARKER}); "
                "refusing to delete it even with overwrite=True: remove it yourself or choose another folder"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / EXPORT_MARKER).write_text("written by manifests.export; overwrite=True may replace this folder\n")


def select_rows(run_dir: Path, where: str | None, limit: int | None) -> list[dict[str, Any]]:
    sql = "SELECT * FROM samples WHERE image_member IS NOT NULL"
    if where:
        sql += f" AND ({where})"
    sql += " ORDER BY shard, index"
    if limit is not None:
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        sql += f" LIMIT {int(limit)}"
    return query(run_dir, sql=sql).to_pylist()


def _read_members(tar_path: Path, wanted: set[str]) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(tar_path, "r:") as tar:
            for member in tar:
                if member.name in wanted:
                    fh = tar.extractfile(member)
                    if fh is not None:
                        found[member.name] = fh.read()
    except (OSError, tarfile.TarError) as exc:
        raise OSError(f"cannot read source shard {tar_path} ({exc}); run `factory status --verify`") from exc
    return found


def iter_images(run_dir: Path, rows: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], bytes]]:
    """(row, image bytes) in row order, reading each source tar once."""
    index = read_index(run_dir) or {}
    shards_dir = index_shards_dir(run_dir, index)
    start = 0
    while start < len(rows):
        shard = rows[start]["shard"]
        end = start
        while end < len(rows) and rows[end]["shard"] == shard:
            end += 1
        tar_path = shard_paths(shards_dir, index["dataset"], shard).tar
        found = _read_members(tar_path, {r["image_member"] for r in rows[start:end]})
        for row in rows[start:end]:
            data = found.get(row["image_member"])
            if data is None:
                raise FileNotFoundError(
                    f"{tar_path} has no member {row['image_member']} named in its manifest; "
                    "run `factory status --verify` on the source dataset"
                )
            yield row, data
        start = end


def run_export(
    exporter_cls: type[Exporter],
    run_dir: Path,
    out: Path,
    *,
    where: str | None,
    limit: int | None,
    shard_size: int,
    overwrite: bool,
) -> dict[str, Any]:
    """Select, prepare ``out``, stream the images through the exporter, write ``export.json``."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    rows = select_rows(run_dir, where, limit)  # before touching out: a bad query changes nothing
    index = read_index(run_dir) or {}
    dataset = index.get("dataset", "mifa")
    prepare_out(out, overwrite)
    report: dict[str, Any] = {
        "source": str(run_dir),
        "dataset": dataset,
        "format": exporter_cls.name,
        "where": where,
        "limit": limit,
        "samples": len(rows),
        "shard_size": shard_size,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    exporter = exporter_cls(run_dir, out, dataset, shard_size)
    report.update(exporter.write(iter_images(run_dir, rows), len(rows)))
    write_bytes_atomic(out / "export.json", json.dumps(report, indent=1, default=json_default).encode())
    return report

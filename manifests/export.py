"""Export a subset of a built dataset: re-sharded WebDataset tars, or a folder + labels.csv.

The selection is SQL over the ``samples`` view (accepted samples, see ``manifests.query``).
Images are copied byte for byte from the source tars (no re-encoding).

- ``webdataset``: ``out/{dataset}-{n:06d}.tar|.parquet|.stats.json`` written by
  :class:`manifests.writer.ShardWriter` (atomic per shard, stats last), then
  ``out/index.parquet`` + ``out/index.json``: an export is itself a dataset that
  ``manifests.query`` and ``factory status --verify`` can open.
- ``folder``: ``out/images/{n:06d}/{key}.{ext}`` (``shard_size`` images per sub-folder)
  and ``out/labels.csv`` (one row per image: metadata, per-AU occurrence and intensity
  columns ``AU01``..``AU26`` / ``AU01_intensity``.., quality scores), written last.

``out`` must be empty or absent; ``overwrite=True`` replaces a previous export (one that has
the ``.mifa-export`` marker), never an unrelated folder.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import os
import shutil
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from factory.aus import DISFA_AUS, au_column
from manifests.index import read_index, write_index
from manifests.query import query
from manifests.writer import SCORE_KEYS, ShardWriter, json_default, temp_path, write_bytes_atomic

__all__ = ["EXPORT_MARKER", "export"]

EXPORT_MARKER = ".mifa-export"
_META_COLUMNS = ("key", "emotion", "identity_id", "ethnicity", "age_band", "gender", "label_source")


def _prepare_out(out: Path, overwrite: bool) -> None:
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


def _select(run_dir: Path, where: str | None, limit: int | None) -> list[dict[str, Any]]:
    sql = "SELECT * FROM samples WHERE image_member IS NOT NULL"
    if where:
        sql += f" AND ({where})"
    sql += " ORDER BY shard, index"
    if limit is not None:
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        sql += f" LIMIT {int(limit)}"
    return query(run_dir, sql=sql).to_pylist()


def _images(run_dir: Path, rows: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], bytes]]:
    """(row, image bytes) in row order, reading each source tar once."""
    index = read_index(run_dir) or {}
    shards_dir = Path(run_dir) / index.get("shards_dir", "shards")
    start = 0
    while start < len(rows):
        shard = rows[start]["shard"]
        end = start
        while end < len(rows) and rows[end]["shard"] == shard:
            end += 1
        tar_path = shards_dir / f"{index['dataset']}-{shard:06d}.tar"
        wanted = {r["image_member"] for r in rows[start:end]}
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
        for row in rows[start:end]:
            data = found.get(row["image_member"])
            if data is None:
                raise FileNotFoundError(
                    f"{tar_path} has no member {row['image_member']} named in its manifest; "
                    "run `factory status --verify` on the source dataset"
                )
            yield row, data
        start = end


def _export_webdataset(
    run_dir: Path, out: Path, rows: list[dict[str, Any]], dataset: str, shard_size: int
) -> list[int]:
    images = _images(run_dir, rows)
    shards = list(range(math.ceil(len(rows) / shard_size)))
    for shard in shards:
        with ShardWriter(out, dataset, shard) as writer:
            for row, data in itertools.islice(images, shard_size):
                # The row keeps its source shard/index (provenance); the bytes are copied as is.
                writer.add({**row, "image_bytes": data})
            writer.commit({"exported_from": str(run_dir)})
    return shards


def _csv_header() -> list[str]:
    aus = [au_column(a) for a in DISFA_AUS]
    return [
        "file",
        *_META_COLUMNS,
        *aus,
        *[f"{a}_intensity" for a in aus],
        *SCORE_KEYS,
        "width",
        "height",
        "description",
    ]


def _csv_row(row: dict[str, Any], file: str) -> list[Any]:
    return [
        file,
        *[row[c] for c in _META_COLUMNS],
        *(row["au_occurrence"] or [None] * len(DISFA_AUS)),
        *(row["au_intensity"] or [None] * len(DISFA_AUS)),
        *[row[k] for k in SCORE_KEYS],
        row["width"],
        row["height"],
        row["description"],
    ]


def _export_folder(run_dir: Path, out: Path, rows: list[dict[str, Any]], shard_size: int) -> int:
    buffer = io.StringIO()
    table = csv.writer(buffer)
    table.writerow(_csv_header())
    folders = 0
    for position, (row, data) in enumerate(_images(run_dir, rows)):
        folder = out / "images" / f"{position // shard_size:06d}"
        if position % shard_size == 0:
            folder.mkdir(parents=True, exist_ok=True)
            folders += 1
        path = folder / f"{row['key']}.{row['image_format']}"
        # Temp + rename so a crash never leaves a truncated image under its final name;
        # one os.sync() below instead of an fsync per file.
        tmp = temp_path(path)
        tmp.write_bytes(data)
        os.replace(tmp, path)
        table.writerow(_csv_row(row, str(path.relative_to(out))))
    os.sync()
    write_bytes_atomic(out / "labels.csv", buffer.getvalue().encode())
    return folders


def export(
    run_dir: Path,
    out: Path,
    *,
    where: str | None = None,
    limit: int | None = None,
    format: Literal["webdataset", "folder"] = "webdataset",
    shard_size: int = 1000,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Copy the accepted samples matching ``where`` (SQL on ``samples``; first ``limit`` in
    shard order) to ``out``; returns what was written (also saved as ``out/export.json``)."""
    run_dir, out = Path(run_dir), Path(out)
    if format not in ("webdataset", "folder"):
        raise ValueError(f"format must be 'webdataset' or 'folder', got {format!r}")
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    rows = _select(run_dir, where, limit)  # before touching out: a bad query changes nothing
    index = read_index(run_dir) or {}
    dataset = index.get("dataset", "mifa")
    _prepare_out(out, overwrite)
    report: dict[str, Any] = {
        "source": str(run_dir),
        "dataset": dataset,
        "format": format,
        "where": where,
        "limit": limit,
        "samples": len(rows),
        "shard_size": shard_size,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if format == "webdataset":
        shards = _export_webdataset(run_dir, out, rows, dataset, shard_size)
        write_index(out, dataset, shards, target=len(rows), surplus=[], failed={}, shards_dir=out)
        report["shards"] = len(shards)
    else:
        report["folders"] = _export_folder(run_dir, out, rows, shard_size)
    write_bytes_atomic(out / "export.json", json.dumps(report, indent=1, default=json_default).encode())
    return report

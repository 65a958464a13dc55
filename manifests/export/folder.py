"""Folder export: ``out/images/{part:06d}/{key}.{ext}`` (``shard_size`` images per folder)
and ``out/labels.csv``: one row per image, DISFA-style label columns (12 occurrence columns
``AU01``..``AU26`` then 12 intensity columns ``AU01_intensity``..), metadata and quality
scores. Each part leaves its rows in ``.parts/``; the csv is joined from them at the end."""

from __future__ import annotations

import csv
import io
import shutil
from collections.abc import Iterator
from typing import Any

from manifests.atomic import atomic_output, fsync_dir, write_bytes_atomic
from manifests.export.base import Exporter, Sample
from manifests.export.provenance import write_derived_card
from manifests.files import make_dir
from manifests.schema import SCORE_KEYS
from manifests.vocab import DISFA_AUS, au_column

__all__ = ["FolderExporter", "csv_header", "csv_row", "write_image"]

_META_COLUMNS = ("key", "emotion", "identity_id", "ethnicity", "age_band", "gender", "label_source")


def csv_header() -> list[str]:
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


def csv_row(row: dict[str, Any], file: str) -> list[Any]:
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


def write_image(exporter: Exporter, folder: str, part: int, sample: Sample) -> str:
    """Write one image under ``out/{folder}/{part:06d}/``; returns its path relative to ``out``."""
    relative = f"{folder}/{part:06d}/{sample.name}.{sample.extension}"
    # Temp, fsync, rename: a crash never leaves a truncated image under its final name; the
    # folder's renames are made durable once per part by the format.
    write_bytes_atomic(exporter.inside(relative), sample.image, sync_dir=False)
    return relative


class FolderExporter(Exporter):
    name = "folder"
    columns = (*_META_COLUMNS, "au_occurrence", "au_intensity", *SCORE_KEYS, "width", "height", "description")

    def write_part(self, part: int, samples: Iterator[Sample]) -> dict[str, Any]:
        make_dir(self.inside("images", f"{part:06d}"))
        buffer = io.StringIO()
        table = csv.writer(buffer)
        for sample in samples:
            table.writerow(csv_row(sample.row, write_image(self, "images", part, sample)))
        fsync_dir(self.inside("images", f"{part:06d}"))  # the part's images are durable before it is recorded
        make_dir(self.layout.parts)
        write_bytes_atomic(self.layout.parts / f"labels-{part:06d}.csv", buffer.getvalue().encode(), sync_dir=False)
        return {"folder": f"images/{part:06d}"}

    def finish(self, parts: list[dict[str, Any]]) -> dict[str, Any]:
        with atomic_output(self.out / "labels.csv") as tmp, open(tmp, "w", newline="") as fh:
            csv.writer(fh).writerow(csv_header())
            for part in range(len(parts)):
                with open(self.layout.parts / f"labels-{part:06d}.csv", newline="") as fragment:
                    shutil.copyfileobj(fragment, fh)
        write_derived_card(self.run_dir, self.out)
        return {"folders": len(parts)}

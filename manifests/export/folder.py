"""Folder export: ``out/images/{n:06d}/{key}.{ext}`` (``shard_size`` images per sub-folder)
and ``out/labels.csv`` (one row per image: metadata, per-AU occurrence and intensity columns
``AU01``..``AU26`` / ``AU01_intensity``.., quality scores), written last."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterator
from typing import Any

from manifests.atomic import temp_path, write_bytes_atomic
from manifests.export.base import Exporter
from manifests.schema import SCORE_KEYS
from manifests.vocab import DISFA_AUS, au_column

__all__ = ["FolderExporter"]

_META_COLUMNS = ("key", "emotion", "identity_id", "ethnicity", "age_band", "gender", "label_source")


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


class FolderExporter(Exporter):
    name = "folder"

    def write(self, samples: Iterator[tuple[dict[str, Any], bytes]], count: int) -> dict[str, Any]:
        buffer = io.StringIO()
        table = csv.writer(buffer)
        table.writerow(_csv_header())
        folders = 0
        for position, (row, data) in enumerate(samples):
            folder = self.out / "images" / f"{position // self.shard_size:06d}"
            if position % self.shard_size == 0:
                folder.mkdir(parents=True, exist_ok=True)
                folders += 1
            path = folder / f"{row['key']}.{row['image_format']}"
            # Temp + rename so a crash never leaves a truncated image under its final name;
            # one os.sync() below instead of an fsync per file.
            tmp = temp_path(path)
            tmp.write_bytes(data)
            os.replace(tmp, path)
            table.writerow(_csv_row(row, str(path.relative_to(self.out))))
        os.sync()
        write_bytes_atomic(self.out / "labels.csv", buffer.getvalue().encode())
        return {"folders": folders}

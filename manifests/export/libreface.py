"""LibreFace training folds: the folder its AU recognition and detection trainers read.

ihp-lab/LibreFace's ``AU_Recognition`` (intensity) and ``AU_Detection`` (occurrence) solvers
read, with ``data: DISFA`` and ``data_root`` set in their config yaml,
``{data_root}/DISFA/labels_intensity_5/{fold}/{train,test}.csv`` and
``{data_root}/DISFA/labels/{fold}/{train,test}.csv``; their ``data.py`` ``MyDataset`` reads
each with ``pandas.read_csv`` and takes the columns ``image_path`` (joined to ``data_root``)
and ``au1, au2, au4, au5, au6, au9, au12, au15, au17, au20, au25, au26`` (DISFA's 12, which are
MIFA's 12). ``labels_intensity_5`` holds intensities 0-5; ``labels`` holds 0/1 occurrence at
the ``occurrence_threshold``. Each csv also has an ``identity_id`` column (their reader takes
columns by name and ignores it). ``fold`` is ``0`` .. ``folds - 1``: identity-disjoint
(``manifests.export.folds``); fold ``k`` tests on group ``k``.

Images go to ``DISFA/images/{part:06d}/{key}.{ext}``. With ``landmarks`` each image gets the
68 dlib points as a ``(68, 2)`` float32 ``.npy`` where their ``data_utils.au2heatmap`` looks
(``image_path.replace('images', 'landmarks')[:-4] + '.npy'``), so training does not run dlib
per image; the points come from the ``landmarker`` the command layer passes (the model our
``dlib`` stage uses), in the exported image's pixels, as their own dlib fallback returns them.
Samples with an uncertain label on any AU are left out (counted in ``export.json``).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from manifests.atomic import write_bytes_atomic, write_text_atomic
from manifests.export.base import ExportError, Sample
from manifests.export.folder import write_image
from manifests.export.folds import SplitExporter, fold_sides, occurrence_label
from manifests.export.provenance import write_derived_card
from manifests.files import make_dir
from manifests.vocab import AU_INDEX, DISFA_AUS

__all__ = ["LIBREFACE_COLUMNS", "Landmarker", "LibreFaceExporter"]

LIBREFACE_COLUMNS = ("image_path", *[f"au{au}" for au in DISFA_AUS], "identity_id")
TREES = {"intensity": "labels_intensity_5", "occurrence": "labels"}
# Image bytes -> (68, 2) points in pixels, and whether a face was found (else the whole image's box).
Landmarker = Callable[[bytes], tuple[np.ndarray, bool]]


def _csv_line(values: list[Any]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow(values)
    return buffer.getvalue()


class LibreFaceExporter(SplitExporter):
    name = "libreface"
    columns = ("identity_id", "au_occurrence", "au_intensity")
    count_columns = ("identity_id", "au_occurrence", "au_intensity")
    required = ("au_occurrence", "au_intensity")
    landmarker: Landmarker | None = None

    def labels(self, row: dict[str, Any]) -> tuple[list[int], list[int]] | None:
        """(0-5 intensities, 0/1 occurrences) in DISFA order, or None when any is uncertain."""
        intensity = row.get("au_intensity")
        occurrence = [occurrence_label(row, au, self.threshold) for au in DISFA_AUS]
        if intensity is None or any(v is None for v in occurrence):
            return None
        levels = [intensity[AU_INDEX[au]] for au in DISFA_AUS]
        if any(v is None or v < 0 for v in levels):
            return None
        return [int(v) for v in levels], [int(v) for v in occurrence if v is not None]

    def keeps(self, row: dict[str, Any]) -> bool:
        return self.labels(row) is not None

    def plan(self, rows: Iterable[dict[str, Any]]) -> None:
        if self.option("landmarks", False) and self.landmarker is None:
            raise ExportError("--landmarks needs dlib's 68-point model: run the export through `factory export`")
        super().plan(rows)

    def write_part(self, part: int, samples: Iterator[Sample]) -> dict[str, Any]:
        wants_landmarks = bool(self.option("landmarks", False))
        make_dir(self.inside("DISFA", "images", f"{part:06d}"))
        n = self.folds
        lines: dict[str, list[list[str]]] = {kind: [[] for _ in range(n)] for kind in TREES}
        skipped = no_face = 0
        for sample in samples:
            labels = self.labels(sample.row)
            if labels is None:
                skipped += 1
                self.skip()
                continue
            group = self.group_of(sample.row)
            image_path = write_image(self, "DISFA/images", part, sample)
            if wants_landmarks:
                no_face += self._write_landmarks(image_path, sample.image)
            identity = str(sample.row["identity_id"])
            for kind, values in zip(TREES, labels, strict=True):
                lines[kind][group].append(_csv_line([image_path, *values, identity]))
        for kind, by_group in lines.items():
            self.write_fragments(part, kind, by_group)
        return {"groups": [len(g) for g in lines["intensity"]], "skipped_uncertain": skipped, "no_face": no_face}

    def _write_landmarks(self, image_path: str, image: bytes) -> int:
        """Write the image's landmarks where LibreFace looks; 1 when no face was found."""
        assert self.landmarker is not None
        points, found = self.landmarker(image)
        target = self.inside(image_path.replace("images", "landmarks")[:-4] + ".npy")  # their au2heatmap's path
        make_dir(target.parent)
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(points, dtype=np.float32).reshape(68, 2))
        write_bytes_atomic(target, buffer.getvalue(), sync_dir=False)
        return 0 if found else 1

    def finish(self, parts: list[dict[str, Any]]) -> dict[str, Any]:
        folds = []
        for fold in range(self.folds):
            train, test = fold_sides(fold, self.folds)
            counts = {
                side: sum(int(p["groups"][g]) for p in parts for g in groups)
                for side, groups in (("train", train), ("test", test))
            }
            self.check_sides({f"fold {fold} {side}": n for side, n in counts.items()})
            for kind, tree in TREES.items():
                for side, groups in (("train", train), ("test", test)):
                    target = self.inside("DISFA", tree, str(fold), f"{side}.csv")
                    self.join(target, len(parts), groups, kind, header=",".join(LIBREFACE_COLUMNS))
            folds.append({"fold": fold, **counts})
        write_derived_card(self.run_dir, self.out)
        write_text_atomic(self.out / "README.md", self._readme())
        report: dict[str, Any] = {
            "folds": folds,
            "columns": list(LIBREFACE_COLUMNS),
            "skipped_uncertain": sum(int(p["skipped_uncertain"]) for p in parts),
            **self.split_report(),
        }
        if self.option("landmarks", False):
            report["landmarks_without_face"] = sum(int(p["no_face"]) for p in parts)
        return report

    def _readme(self) -> str:
        return (
            "# LibreFace folds (MIFA export)\n\nIn LibreFace's `AU_Recognition/config_au_recognition.yaml` "
            f"(intensity) or `AU_Detection/config_au_detection.yaml` (occurrence) set `data_root: "
            f"'{self.out.resolve()}'`, `data: DISFA` and `fold: '0'` (folds 0 to {self.folds - 1}), then "
            "train as LibreFace says. intensity: DISFA/labels_intensity_5/{fold}/train.csv, test.csv (0-5); "
            f"occurrence: DISFA/labels/{{fold}}/... (1 = intensity >= {self.threshold}, "
            "`--occurrence-threshold`). Columns: " + ", ".join(LIBREFACE_COLUMNS) + ". A fold's train and "
            "test hold disjoint identities. With `--landmarks`, DISFA/landmarks/ holds the 68 dlib points "
            "of each image, in that image's pixels (their heatmaps assume `image_size` equals the image "
            "width).\n"
        )

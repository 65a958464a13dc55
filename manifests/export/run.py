"""The export loop: target folder, resume, parts, progress and ``export.json``.

An export folder is ours when it holds ``.mifa-export`` (the job: format, selection, source).
``out`` must be a local folder that is new, empty, or ours (``manifests.claim``, the rule run
directories and subsets share); then:

- ours and complete (``export.json`` exists): refused unless ``overwrite``, which replaces it;
- ours and unfinished with the same job: resumed. ``.export-state.json`` lists the parts
  committed so far; the selection (deterministic: source order) skips their rows and the next
  part is written, so an export killed midway and run again holds every sample once;
- ours and unfinished with another job: refused unless ``overwrite``;
- anything else that is not empty: always refused (never deleted).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from manifests.atomic import clean_temps, write_bytes_atomic, write_text_atomic
from manifests.claim import FolderKind, claim_folder
from manifests.dataset import DatasetRef, open_dataset
from manifests.export.base import Exporter, ExportError, ExportOptions, Sample
from manifests.export.folds import SplitExporter
from manifests.export.stream import count_sql, iter_rows, iter_samples, shard_batches, unlabelled_sql
from manifests.files import exists, make_dir, remove_tree
from manifests.layout import ExportLayout
from manifests.query import check_where, connect, user_sql
from manifests.records import json_default
from manifests.store import absolute, is_inside, location
from manifests.urls import is_url

__all__ = ["Progress", "run_export"]

Progress = Callable[[int, int], None]  # (samples done, samples selected)
# DuckDB's cap in an export: it counts and reads one shard manifest at a time.
DUCKDB_MEMORY = "128MB"


def _job(dataset: DatasetRef, options: ExportOptions) -> dict[str, Any]:
    return {
        "source": str(absolute(dataset.root)),
        "source_created_at": dataset.index.get("created_at"),
        "format": options.format,
        "where": options.where,
        "limit": options.limit,
        "shard_size": options.shard_size,
        "shard_bytes": options.shard_bytes,
        "name": options.name,
        "format_options": options.format_options,
    }


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _fresh(out: Path, layout: ExportLayout, job: dict[str, Any]) -> list[dict[str, Any]]:
    if exists(out):
        remove_tree(out)
    make_dir(out)
    write_text_atomic(layout.marker, json.dumps(job, indent=1, default=json_default))
    return []


EXPORT_FOLDER = FolderKind(
    noun="export target",
    what="a previous export",
    marker=ExportLayout.MARKER,
    fix="refusing to touch it even with --overwrite: remove it yourself or choose another folder",
    error=ExportError,
    local_only="export to a local folder, then upload it",  # the formats write through local files
)


def open_target(out: Path, job: dict[str, Any], overwrite: bool) -> list[dict[str, Any]]:
    """Prepare ``out`` for ``job``; returns the parts already committed (resume) or ``[]``."""
    layout = ExportLayout(out)
    if claim_folder(out, EXPORT_FOLDER) == "new":
        return _fresh(out, layout, job)
    if exists(layout.report):
        if overwrite:
            return _fresh(out, layout, job)
        raise ExportError(f"{out} already holds a finished export; pass --overwrite to replace it")
    previous = _read_json(layout.marker)
    if previous != job:
        if overwrite:
            return _fresh(out, layout, job)
        differing = sorted(k for k in job if not isinstance(previous, dict) or previous.get(k) != job[k])
        raise ExportError(
            f"{out} holds an unfinished export with other options (differing: {', '.join(differing)}); "
            "run its command again to resume it, or pass --overwrite to start over"
        )
    for folder, dirs, _ in os.walk(out):  # a killed part's temps (its files are rewritten)
        clean_temps(Path(folder))
        for spill in [d for d in dirs if d.startswith(".export-spill-")]:
            remove_tree(Path(folder) / spill)
    state = _read_json(layout.state)
    return list(state["parts"]) if isinstance(state, dict) else []


class _Parts:
    """Cuts the sample stream into parts: ``shard_size`` samples, and with ``shard_bytes`` no
    more than fit in that many bytes once the part is closed (a part of one sample may not)."""

    def __init__(self, samples: Iterator[Sample], exporter: Exporter, options: ExportOptions) -> None:
        self.samples = samples
        self.exporter = exporter
        self.options = options
        self.pending: Sample | None = next(samples, None)
        self.taken = 0

    def more(self) -> bool:
        return self.pending is not None

    def _would_exceed(self, sample: Sample, limit_bytes: int) -> bool:
        """Whether the part, closed with ``sample`` in it, would be over ``limit_bytes``."""
        exporter = self.exporter
        return exporter.closed_bytes(exporter.part_bytes() + exporter.sample_bytes(sample)) > limit_bytes

    def part(self) -> Iterator[Sample]:
        self.taken = 0
        self.exporter.part_image_bytes = 0
        limit_bytes = self.options.shard_bytes
        while self.pending is not None and self.taken < self.options.shard_size:
            if limit_bytes is not None and self.taken and self._would_exceed(self.pending, limit_bytes):
                return
            sample, self.pending = self.pending, None
            self.taken += 1
            self.exporter.part_image_bytes += len(sample.image)
            yield sample
            self.pending = next(self.samples, None)


def _write_parts(
    exporter: Exporter, parts: list[dict[str, Any]], stream: _Parts, state_path: Path, progress: Progress, total: int
) -> None:
    done = sum(int(p["rows"]) for p in parts)
    while stream.more():
        iterator = stream.part()
        summary = dict(exporter.write_part(len(parts), iterator))
        if next(iterator, None) is not None:
            raise RuntimeError(f"export format {exporter.name!r}: write_part() left samples of its part unread")
        summary["rows"] = stream.taken
        parts.append(summary)
        done += stream.taken
        write_text_atomic(state_path, json.dumps({"parts": parts}, default=json_default), sync_dir=False)
        progress(done, total)


def _check_required(con: Any, exporter: Exporter, options: ExportOptions) -> None:
    """Refuse, before the target is touched, a selection holding a sample the format cannot write."""
    required = exporter.required_columns()
    if not required:
        return
    row = con.execute(unlabelled_sql(options, required)).fetchone()
    if row is not None:
        raise ExportError(exporter.missing_message(str(row[0]), required))


def run_export(
    exporter_cls: type[Exporter],
    run_dir: Path,
    out: Path,
    options: ExportOptions,
    *,
    overwrite: bool = False,
    progress: Progress | None = None,
    landmarker: Any = None,
) -> dict[str, Any]:
    """Export the selected samples of the dataset in ``run_dir`` to ``out``; returns export.json."""
    options.check()
    started = time.perf_counter()
    dataset = open_dataset(run_dir)
    out = location(out)
    for source in (dataset.root, dataset.shards_dir):  # a subset's shards are its source's
        if is_inside(source, out):
            raise ExportError(f"export target {out} would contain the source {source}; choose another folder")
    progress = progress or _no_progress
    if options.where:
        check_where(options.where)  # read-only, before anything runs
    # DuckDB's spill folder is set before the connection is locked, so it is named now (inside
    # a local out, made once out is claimed); the user's --where can reach no file but the dataset's.
    spill_parent = Path(tempfile.gettempdir()) if is_url(str(out)) else Path(out)
    spill = spill_parent / f".export-spill-{os.getpid()}-{time.time_ns()}"
    con = connect(run_dir, memory_limit=DUCKDB_MEMORY, spill_dir=spill)
    try:
        with user_sql():  # a bad --where fails before out is touched
            (selected,) = con.execute(count_sql(options)).fetchall()[0]
        total = selected if options.limit is None else min(selected, options.limit)
        exporter = exporter_cls(dataset.root, out, options.name or dataset.name, options.shard_size, options)
        if landmarker is not None:
            exporter.landmarker = landmarker
        _check_required(con, exporter, options)
        if isinstance(exporter, SplitExporter):  # its folds are planned (or refused) before out is touched
            exporter.plan(iter_rows(shard_batches(con, dataset, options, exporter.count_columns)))
        job = _job(dataset, options)
        parts = open_target(out, job, overwrite)
        layout = ExportLayout(out)
        done = sum(int(p["rows"]) for p in parts)
        if isinstance(exporter, SplitExporter):
            exporter.position = done
        progress(done, total)
        spill.mkdir()
        try:
            batches = shard_batches(con, dataset, options, exporter_cls.columns, done)
            samples = iter_samples(
                dataset, batches, exporter_cls.row_columns or exporter_cls.columns, copies=exporter_cls.copies_members
            )
            _write_parts(exporter, parts, _Parts(samples, exporter, options), layout.state, progress, total)
            result = exporter.finish(parts)
        finally:
            shutil.rmtree(spill, ignore_errors=True)
    finally:
        con.close()
    seconds = round(time.perf_counter() - started, 3)  # this run's (a resumed export: the rest)
    doc = {**job, "dataset": dataset.name, "samples": total, "seconds": seconds, "created_at": _now(), **result}
    if exists(layout.parts):
        shutil.rmtree(layout.parts)
    write_bytes_atomic(layout.report, json.dumps(doc, indent=1, default=json_default).encode())
    return doc


def _no_progress(done: int, total: int) -> None:
    """The default progress callback: nothing to show."""


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

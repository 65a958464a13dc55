"""Repair what ``manifests.verify`` found: move the bad shards aside so the next build redoes
exactly those, and withdraw the commit point so the index is rewritten.

A shard is done only while its stats file exists and matches (``manifests.writer.is_done``),
so moving a bad shard's files (tar, Parquet, stats) into ``quarantine/{stamp}/`` makes the
next ``factory build`` (or ``factory retry``) regenerate that shard from its recorded plan,
the same plan it ran before, and nothing else: every good shard stays done. Files the index
does not name (extra shards) are moved aside too. ``index.json`` and ``index.parquet`` go
into the same folder, since the dataset is not whole until those shards exist again; the
build writes a new index last, as always. Nothing is deleted: the quarantine folder keeps the
evidence and a ``repair.json`` listing what was found and moved.

A plan file (``plans/``) of a bad shard that no longer reads is moved aside as well (the
planner writes it again, identically). A subset or an export has no build to redo its
shards, so repair refuses them and says what to do instead.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
from filelock import FileLock, Timeout

from manifests.atomic import write_text_atomic
from manifests.errors import UserError
from manifests.files import exists, move
from manifests.layout import RunLayout
from manifests.store import open_parquet
from manifests.verify import VerifyReport

__all__ = ["RepairError", "RepairResult", "repair"]


class RepairError(UserError, RuntimeError):
    """The dataset cannot be repaired in place; the message says what to do instead."""


@dataclass
class RepairResult:
    quarantine: Path | None
    shards: list[int] = field(default_factory=list)  # shards the next build redoes
    moved: list[Path] = field(default_factory=list)  # where each file went

    def to_dict(self) -> dict[str, Any]:
        return {
            "quarantine": str(self.quarantine) if self.quarantine else None,
            "shards_to_rebuild": self.shards,
            "moved": [str(p) for p in self.moved],
        }


def _plan_unreadable(path: Path) -> bool:
    if not exists(path):
        return False
    try:
        open_parquet(path).metadata  # noqa: B018 - reading the footer is the check
    except (OSError, pa.ArrowException):
        return True
    return False


def _move_all(files: list[Path], target: Path) -> list[Path]:
    moved = []
    for path in files:
        if exists(path):
            destination = target / path.name
            move(path, destination)
            moved.append(destination)
    return moved


def repair(report: VerifyReport) -> RepairResult:
    """Quarantine the shards and files ``report`` found bad; ``RepairError`` for a dataset
    that no build can restore, or while a build holds the run directory."""
    if report.ok:
        return RepairResult(quarantine=None)
    if report.subset:
        raise RepairError(
            f"{report.root} is a subset: it has no shards of its own and its source is never modified; "
            "run `factory verify --repair` on the source, rebuild it, then `factory filter` again"
        )
    layout = RunLayout(report.root, report.dataset or "")
    if report.dataset is None or not exists(layout.run_json):
        raise RepairError(
            f"{report.root} was not made by `factory build` (no run.json), so no build can redo its shards; "
            "export it again from its source instead"
        )
    lock = FileLock(str(layout.build_lock))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise RepairError(f"{report.root} is held by a running build; let it finish, then repair") from None
    try:
        return _quarantine(report, layout)
    finally:
        lock.release()


def _quarantine(report: VerifyReport, layout: RunLayout) -> RepairResult:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = layout.quarantine / stamp
    shards = report.bad_shards
    files = sorted({p for f in report.findings if f.kind in ("missing", "corrupt", "extra") for p in f.files})
    plans = [layout.plan_path(s) for s in shards if _plan_unreadable(layout.plan_path(s))]
    moved = _move_all(files, target / "shards") + _move_all(plans, target / "plans")
    # The commit point last: the dataset is not whole until the build has redone the shards.
    moved += _move_all([layout.index_json, layout.index_parquet], target)
    result = RepairResult(quarantine=target, shards=shards, moved=moved)
    record = {**result.to_dict(), "found": report.to_dict(), "at": stamp}
    write_text_atomic(target / "repair.json", json.dumps(record, indent=1))
    return result

"""`factory status`: what a run directory holds: planned / running / done / failed shards and counts,
and while a build runs, its workers (host, GPU, current shard, samples/s) from ``workers.json``.

A committed shard whose files no longer read (a stats file that does not parse or match its
tar and manifest, a manifest without Parquet's magic bytes, an indexed shard not done) is
named with the commands that restore it (``verify --repair``, then ``retry``): exit 1. Failure
records of shards that committed after all are history, not counted."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from factory.engine.rundir import RunDir, open_run
from manifests.dataset import read_index
from manifests.errors import FailedError
from manifests.store import store_for
from manifests.verify import verify as verify_index
from manifests.writer import read_stats

__all__ = ["WORKERS_STALE_S", "DamagedRunError", "damage_error", "damaged_shards", "run_status"]

# The build rewrites workers.json every second; older than this, the record is not shown as live.
WORKERS_STALE_S = 30.0


class DamagedRunError(FailedError):
    """A run whose committed shard files no longer read; the message names one and the fix."""


_PARQUET_MAGIC = b"PAR1"


def _parquet_ends_unreadable(path: Path) -> bool:
    """Whether a local Parquet file lacks its magic bytes at either end (a cheap read: 8 bytes)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
            f.seek(-4, 2)
            return head != _PARQUET_MAGIC or f.read(4) != _PARQUET_MAGIC
    except OSError:
        return True


def damaged_shards(run: RunDir, done: dict[int, Any], indexed: list[int]) -> dict[int, str]:
    """Shards whose commit is damaged, each with the file at fault: a stats file that does not
    read or does not match its tar and manifest, a manifest that is no Parquet file, or a shard
    the index names that is not done. Reads the stats and 8 bytes of each manifest, no more."""
    found: dict[int, str] = {}
    local = store_for(run.root).local
    for shard in sorted(set(run.stats_shards()) | set(indexed)):
        paths = run.shard_paths(shard)
        if shard not in done:
            try:
                read_stats(run.shards, run.dataset, shard)
            except (OSError, ValueError) as exc:
                found[shard] = str(exc).split(";", 1)[0]
            else:
                found[shard] = (
                    f"{paths.tar.name} or {paths.parquet.name} is missing or not the size {paths.stats} records"
                )
        elif local and _parquet_ends_unreadable(paths.parquet):
            found[shard] = f"shard manifest {paths.parquet} is not a Parquet file (unreadable)"
    return found


def run_status(path: Path, *, verify: bool = False) -> dict[str, Any]:
    run, info = open_run(path)
    done = run.done_shards()
    planned = run.planned_shards()
    failures = {s: f for s, f in run.failures().items() if s not in done}  # a done shard's are history
    max_attempts = info["recipe"]["engine"]["max_retries"] + 1
    failed = {s: f["errors"][-1]["error"] for s, f in failures.items() if len(f["errors"]) >= max_attempts}
    running = run.is_held()
    try:
        index = read_index(run.root)
    except ValueError as exc:  # a damaged index.json: the message names it and the fix
        raise DamagedRunError(str(exc)) from None
    damaged = {} if running else damaged_shards(run, done, list((index or {}).get("shards", [])))
    pending = [s for s in planned if s not in done and s not in failed and s not in damaged]
    if index and not damaged:  # a committed dataset: planned shards beyond its last one were not needed
        pending = [s for s in pending if s < max(index.get("shards") or [0])]
    status: dict[str, Any] = {
        "run_dir": str(run.root),
        "dataset": run.dataset,
        "target": info["recipe"]["dataset"]["target"],
        "build_running": running,
        "planned_shards": len(planned),
        "done_shards": len(done),
        "running_shards": pending if running else [],
        "unfinished_shards": [] if running else pending,
        "failed_shards": failed,
        "retrying_shards": sorted(s for s in failures if s not in failed),
        "accepted_in_done_shards": sum(int(s["accepted"]) for s in done.values()),
        "planned_in_done_shards": sum(int(s["planned"]) for s in done.values()),
        "index": index,
        "damaged_shards": damaged,
        "complete": not damaged and bool(index) and index.get("accepted", 0) >= index.get("target", 1),
        "workers": [],
    }
    if running:
        updated, workers = run.read_workers()
        if time.time() - updated < WORKERS_STALE_S:
            status["workers"] = workers
    if verify:
        status["problems"] = verify_index(run.root)
        status["verified"] = True
    return status


def damage_error(status: dict[str, Any]) -> DamagedRunError:
    """The error for a run with damaged shards: the first one's file, and the two commands that
    restore it (verify --repair sets the damaged files aside; retry rebuilds those shards)."""
    damaged = status["damaged_shards"]
    shard, reason = next(iter(damaged.items()))
    root = status["run_dir"]
    others = f" (and {len(damaged) - 1} more shard(s))" if len(damaged) > 1 else ""
    return DamagedRunError(
        f"shard {shard} of {root} is damaged: {reason}{others}",
        fix=f"run `factory verify {root} --repair`, then `factory retry {root}` to rebuild it",
    )

"""`factory status`: what a run directory holds: planned / running / done / failed shards and counts,
and while a build runs, its workers (host, GPU, current shard, samples/s) from ``workers.json``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from factory.engine.rundir import open_run
from manifests.index import read_index
from manifests.verify import verify as verify_index

__all__ = ["WORKERS_STALE_S", "run_status"]

# The build rewrites workers.json every second; older than this, the record is not shown as live.
WORKERS_STALE_S = 30.0


def run_status(path: Path, *, verify: bool = False) -> dict[str, Any]:
    run, info = open_run(path)
    done = run.done_shards()
    planned = run.planned_shards()
    failures = run.failures()
    max_attempts = info["recipe"]["engine"]["max_retries"] + 1
    failed = {s: f["errors"][-1]["error"] for s, f in failures.items() if len(f["errors"]) >= max_attempts}
    running = run.is_held()
    pending = [s for s in planned if s not in done and s not in failed]
    index = read_index(run.root)
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
        "complete": bool(index) and index.get("accepted", 0) >= index.get("target", 1),
        "workers": [],
    }
    if running:
        updated, workers = run.read_workers()
        if time.time() - updated < WORKERS_STALE_S:
            status["workers"] = workers
    if verify:
        status["problems"] = verify_index(run.root)
    return status

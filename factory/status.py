"""What a run directory holds: planned / running / done / failed shards and counts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from factory.state import RunDir, RunError

__all__ = ["open_run", "run_status"]


def open_run(path: Path) -> tuple[RunDir, dict[str, Any]]:
    """The run directory at ``path`` and its recorded start info, or a clear error."""
    info_path = path / "run.json"
    if not info_path.exists():
        raise RunError(f"{path} is not a build directory (no run.json); pass the --out of a build")
    info = json.loads(info_path.read_text())
    return RunDir(path, info["dataset"]), info


def _held(run: RunDir) -> bool:
    lock = FileLock(run.root / "build.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return True
    lock.release()
    return False


def run_status(path: Path, *, verify: bool = False) -> dict[str, Any]:
    from factory.engine import scan_done
    from manifests.index import read_index

    run, info = open_run(path)
    done = scan_done(run)
    planned = sorted(int(p.name[len(run.dataset) + 1:].split(".")[0]) for p in run.plans.glob("*.plan.parquet"))
    failures = run.failures()
    max_attempts = info["recipe"]["engine"]["max_retries"] + 1
    failed = {s: f["errors"][-1]["error"] for s, f in failures.items() if len(f["errors"]) >= max_attempts}
    running = _held(run)
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
    }
    if verify:
        from manifests.index import verify as verify_index

        status["problems"] = verify_index(run.root)
    return status

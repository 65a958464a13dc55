"""The run directory: every piece of build state lives here, explicitly, on disk.

::

    OUT/
      run.json                  recipe, fingerprint, seed, software versions (first start)
      build.lock, build.owner   held by the running build (flock, freed if the process dies)
      plans/{name}-{shard}.plan.parquet     a shard's plan, written before it runs
      shards/{name}-{shard}.tar|.parquet    WebDataset tar + manifest (temp, then rename)
      shards/{name}-{shard}.stats.json      written last: the only proof a shard is done
      failed/{name}-{shard}.json            attempts and errors of a failing shard
      cache/                                request caches (LLM)
      index.parquet, index.json             the dataset; index.json is the commit point
"""

from __future__ import annotations

import json
import os
import platform
import socket
import time
import uuid
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from filelock import FileLock, Timeout

from factory.recipe import Recipe

__all__ = ["RunDir", "RunError", "atomic_write_text", "recipe_differences", "software_versions"]

# Fields that may change between a build and its resume without changing any sample.
RESUMABLE_FIELDS = ("dataset.target", "dataset.out", "engine.")


class RunError(RuntimeError):
    """The run directory refuses the operation; the message says why and what to do."""


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def software_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("mifa-factory", "ray", "pyarrow", "webdataset", "duckdb", "torch", "diffusers", "numpy",
                 "dlib-bin", "openai"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): d}


def recipe_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Dotted fields whose values differ and would change the dataset."""
    a, b = _flatten(old), _flatten(new)
    diff = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    return [k for k in diff if not any(k == f or (f.endswith(".") and k.startswith(f)) for f in RESUMABLE_FIELDS)]


@dataclass(frozen=True)
class RunDir:
    root: Path
    dataset: str

    @property
    def plans(self) -> Path:
        return self.root / "plans"

    @property
    def shards(self) -> Path:
        return self.root / "shards"

    @property
    def failed(self) -> Path:
        return self.root / "failed"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def run_json(self) -> Path:
        return self.root / "run.json"

    def shard_name(self, shard: int) -> str:
        return f"{self.dataset}-{shard:06d}"

    # --- lifecycle -------------------------------------------------------------------
    def lock(self) -> FileLock:
        """Take the build lock at once or fail naming the holder (no waiting, no hang)."""
        self.root.mkdir(parents=True, exist_ok=True)
        lock = FileLock(self.root / "build.lock")
        owner = self.root / "build.owner"
        try:
            lock.acquire(timeout=0)
        except Timeout:
            who = owner.read_text().strip() if owner.exists() else "another process"
            raise RunError(
                f"output directory {self.root} is held by a running build ({who}); wait for it to "
                "finish, stop it, or choose another --out"
            ) from None
        atomic_write_text(owner, f"pid {os.getpid()} on {socket.gethostname()}")
        return lock

    def start(self, recipe: Recipe, bank_fingerprint: str | None) -> dict[str, Any]:
        """Record the recipe on first start; on resume refuse a recipe that differs."""
        for d in (self.plans, self.shards, self.failed, self.cache):
            d.mkdir(parents=True, exist_ok=True)
        current = recipe.model_dump(mode="json")
        if self.run_json.exists():
            recorded = json.loads(self.run_json.read_text())
            diff = recipe_differences(recorded["recipe"], current)
            if recorded.get("identity_bank") != bank_fingerprint:
                diff.append("identities (bank contents changed)")
            if diff:
                raise RunError(
                    f"{self.root} was started with a different recipe; differing fields: "
                    f"{', '.join(diff)}. Resume with the original recipe or build into a new --out"
                )
            if recorded["recipe"] != current:  # only resumable fields changed: keep a record
                recorded.setdefault("resumed_with", []).append({"at": time.time(), "recipe": current})
                atomic_write_text(self.run_json, json.dumps(recorded, indent=2))
            return recorded
        info = {
            "dataset": self.dataset,
            "recipe": current,
            "fingerprint": recipe.fingerprint(),
            "seed": recipe.dataset.seed,
            "identity_bank": bank_fingerprint,
            "versions": software_versions(),
            "started_at": time.time(),
            "host": socket.gethostname(),
        }
        atomic_write_text(self.run_json, json.dumps(info, indent=2))
        return info

    # --- plans -----------------------------------------------------------------------
    def plan_path(self, shard: int) -> Path:
        return self.plans / f"{self.shard_name(shard)}.plan.parquet"

    def load_or_write_plan(self, shard: int, make: Any) -> pa.Table:
        """The recorded plan of ``shard``; planned with ``make(shard)`` and written first."""
        path = self.plan_path(shard)
        if path.exists():
            return pq.read_table(path)
        table = make(shard)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, path)
        return table

    # --- failures --------------------------------------------------------------------
    def failure_path(self, shard: int) -> Path:
        return self.failed / f"{self.shard_name(shard)}.json"

    def record_failure(self, shard: int, error: str) -> int:
        """Append an attempt's error; returns the number of failed attempts so far."""
        path = self.failure_path(shard)
        record = json.loads(path.read_text()) if path.exists() else {"shard": shard, "errors": []}
        record["errors"].append({"at": time.time(), "error": error[-4000:]})
        atomic_write_text(path, json.dumps(record, indent=2))
        return len(record["errors"])

    def failures(self) -> dict[int, dict[str, Any]]:
        out = {}
        for p in sorted(self.failed.glob("*.json")) if self.failed.exists() else []:
            rec = json.loads(p.read_text())
            out[int(rec["shard"])] = rec
        return out

    def clear_failure(self, shard: int) -> None:
        self.failure_path(shard).unlink(missing_ok=True)

    def clean_temps(self) -> list[Path]:
        """Remove temp files a crash left in plans/ and the run root (shards: the writer's)."""
        removed = []
        for d in (self.plans, self.root, self.failed):
            if d.exists():
                for p in d.glob(".*.tmp"):
                    p.unlink(missing_ok=True)
                    removed.append(p)
        return removed

"""The run directory's lifecycle: the build lock, run.json, plans, failure records, done shards.

Every piece of build state lives in the run directory, explicitly, on disk; its layout and
file names are ``manifests.layout.RunLayout``'s, which :class:`RunDir` extends with the
operations a build (and ``factory status``) performs on it.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import pyarrow as pa
from filelock import FileLock, Timeout

from factory.recipe import Recipe
from factory.sections import BalanceSection
from manifests.atomic import TEMP_SUFFIX, clean_temps, write_parquet_atomic, write_text_atomic
from manifests.claim import FolderKind, claim_folder
from manifests.errors import UserError
from manifests.layout import RunLayout
from manifests.store import read_table, store_for
from manifests.writer import is_done, read_stats

__all__ = [
    "ProbeError",
    "RunDir",
    "RunError",
    "brief_stats",
    "check_probe",
    "open_run",
    "package_versions",
    "recipe_differences",
    "software_versions",
]

# Fields that may change between a build and its resume without changing any sample.
RESUMABLE_FIELDS = ("dataset.target", "dataset.out", "engine.")
# Fields removed from the recipe, with the one value a recorded recipe can hold for each: a
# build recorded before the removal resumes (sections.AUSection drops the same value on load).
RETIRED_FIELDS = {"aus.intensity_scale": [0, 5]}
# Sections added to the recipe later: a recipe recorded before holds their defaults.
ADDED_SECTIONS = {"balance": BalanceSection().model_dump(mode="json")}


class RunError(UserError, RuntimeError):
    """The run directory refuses the operation; the message says why and what to do."""


class ProbeError(RuntimeError):
    """A worker does not see the driver's dataset.out (another node's local folder)."""


def check_probe(root: Path, token: str | None) -> None:
    """Raise :class:`ProbeError` naming the probe and this host unless the driver's probe file
    (:meth:`RunDir.write_probe`) is here with ``token``: this process writes into the same
    dataset.out as the driver. ``None`` (object storage: one bucket, reached by its URL) passes."""
    if token is None:
        return
    path = RunLayout(root, "").probe_file(token)
    try:
        seen = json.loads(path.read_text()).get("token")
    except (OSError, ValueError, AttributeError):
        seen = None
    if seen != token:
        raise ProbeError(
            f"the worker on host {socket.gethostname()} cannot see {path}, which the build's driver wrote in "
            f"dataset.out: this node does not share the driver's {root} (a failed shared-filesystem mount would "
            "leave its shards on its local disk). Mount the same shared folder at that path on every node, or "
            'use object storage (dataset.out = "s3://bucket/prefix"); the build stopped before any shard ran'
        )


# Packages whose versions run.json records (``factory show`` compares them with this machine's).
RUN_PACKAGES = (
    *("mifa-factory", "ray", "pyarrow", "webdataset", "duckdb"),
    *("torch", "diffusers", "numpy", "dlib-bin", "openai"),
)


def package_versions(packages: tuple[str, ...]) -> dict[str, str]:
    """The installed version of each of ``packages`` that is installed."""
    found = {}
    for dist in packages:
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return found


def software_versions() -> dict[str, str]:
    return {"python": platform.python_version(), **package_versions(RUN_PACKAGES)}


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): d}


def recipe_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Dotted fields whose values differ and would change the dataset."""
    a, b = _flatten({**ADDED_SECTIONS, **old}), _flatten(new)
    a = {k: v for k, v in a.items() if k not in RETIRED_FIELDS or v != RETIRED_FIELDS[k]}
    diff = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    return [k for k in diff if not any(k == f or (f.endswith(".") and k.startswith(f)) for f in RESUMABLE_FIELDS)]


# What the driver keeps of each done shard's stats: the stop rule, the acceptance rate and
# the floor's drop-reason report need no more, and a full stats dict (timings, checksums,
# worker) is ~4 kB of Python objects, which at 1,000+ shards grew the driver measurably.
_KEPT_STATS = ("planned", "accepted", "drop_reasons")


def brief_stats(stats: dict[str, Any]) -> dict[str, Any]:
    """The part of a shard's stats the driver keeps for the rest of the build."""
    return {k: stats[k] for k in _KEPT_STATS if k in stats}


@dataclass(frozen=True)
class RunDir(RunLayout):
    # --- lifecycle -------------------------------------------------------------------
    def lock(self) -> FileLock:
        """Take the build lock at once or fail naming the holder (no waiting, no hang).

        The output folder must be new, empty or a factory build's (it has run.json): a
        build never writes into a folder of someone else's files."""
        self._check_is_ours()
        try:
            self._make_root()
            lock = FileLock(self.build_lock)
            lock.acquire(timeout=0)
        except Timeout:
            owner = self.owner_file
            who = owner.read_text().strip() if owner.exists() else "another process"
            raise RunError(
                f"output directory {self.root} is held by a running build ({who}); wait for it to "
                "finish, stop it, or choose another --out"
            ) from None
        except OSError as exc:
            raise RunError(
                f"cannot create the output folder {self.root} ({exc.strerror or exc}); choose a folder "
                "you can write with --out (or dataset.out in the recipe)"
            ) from None
        try:
            write_text_atomic(self.owner_file, f"pid {os.getpid()} on {socket.gethostname()}")
        except OSError as exc:
            lock.release()
            raise RunError(f"cannot write in the output folder {self.root}: {exc}") from None
        return lock

    def _make_root(self) -> None:
        store_for(self.root).make_root(self.root)

    def _check_is_ours(self) -> None:
        """Refuse a file, or a non-empty folder without run.json that holds anything a build
        would not have put there (a crash before run.json leaves only the build's own names)."""
        own = {p.name for p in (self.plans, self.shards, self.failed, self.cache, self.lock_file, self.owner_file)}
        kind = FolderKind(
            noun="output folder",
            what="a factory build",
            marker=self.run_json.name,
            fix="choose a new or empty folder with --out (or dataset.out), nothing was written",
            error=RunError,
            leftover=lambda name: name in own or name.endswith(TEMP_SUFFIX),
        )
        claim_folder(self.root, kind)

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
            if diff and not any(self.shards.glob("*.stats.json")):  # any dataset name's committed shard
                return self._restart(recorded, recipe, bank_fingerprint, diff)
            if diff:
                raise RunError(
                    f"{self.root} was started with a different recipe; differing fields: "
                    f"{', '.join(diff)}. Resume with the original recipe or build into a new --out"
                )
            if recorded["recipe"] != current:  # only resumable fields changed: keep a record
                recorded.setdefault("resumed_with", []).append({"at": time.time(), "recipe": current})
                write_text_atomic(self.run_json, json.dumps(recorded, indent=2))
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
        write_text_atomic(self.run_json, json.dumps(info, indent=2))
        return info

    def _restart(
        self, recorded: dict[str, Any], recipe: Recipe, bank_fingerprint: str | None, diff: list[str]
    ) -> dict[str, Any]:
        """Take a changed recipe on a run that has no shard written yet (a first start that
        failed before any shard, e.g. on a missing model): its plans and failure records came
        from the old recipe and go; the change is recorded in run.json's ``recipe_changes``."""
        for folder in (self.plans, self.failed):
            for path in folder.iterdir():
                path.unlink()
        change = {"at": time.time(), "fields": diff, "previous_fingerprint": recorded.get("fingerprint")}
        info = {
            **recorded,
            "dataset": self.dataset,
            "recipe": recipe.model_dump(mode="json"),
            "fingerprint": recipe.fingerprint(),
            "seed": recipe.dataset.seed,
            "identity_bank": bank_fingerprint,
            "recipe_changes": [*recorded.get("recipe_changes", []), change],
        }
        write_text_atomic(self.run_json, json.dumps(info, indent=2))
        return info

    def is_held(self) -> bool:
        """True while a build holds the lock (probe without waiting; for object storage only a
        build on this machine is seen, see ``RunLayout.build_lock``)."""
        lock = FileLock(self.build_lock)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return True
        lock.release()
        return False

    # --- the multi-node probe -------------------------------------------------------------
    def write_probe(self) -> str | None:
        """Write this build's probe (a random token) for every worker to find (:func:`check_probe`);
        the token, or ``None`` for object storage, where no node can write to a private copy."""
        if not store_for(self.root).local:
            return None
        for old in self.root.glob("probe-*.json"):  # a killed build's
            old.unlink(missing_ok=True)
        token = uuid.uuid4().hex
        doc = {"token": token, "host": socket.gethostname(), "pid": os.getpid(), "at": time.time()}
        write_text_atomic(self.probe_file(token), json.dumps(doc))
        return token

    def remove_probe(self, token: str | None) -> None:
        if token is not None:
            self.probe_file(token).unlink(missing_ok=True)

    # --- plans -----------------------------------------------------------------------
    def load_or_write_plan(self, shard: int, make: Callable[[int], pa.Table]) -> pa.Table:
        """The recorded plan of ``shard``; planned with ``make(shard)`` and written first."""
        path = self.plan_path(shard)
        if path.exists():
            return read_table(path)
        table = make(shard)
        write_parquet_atomic(path, table)
        return table

    # --- failures --------------------------------------------------------------------
    def record_failure(self, shard: int, error: str) -> int:
        """Append an attempt's error; returns the number of failed attempts so far."""
        path = self.failure_path(shard)
        record = json.loads(path.read_text()) if path.exists() else {"shard": shard, "errors": []}
        record["errors"].append({"at": time.time(), "error": error[-4000:]})
        write_text_atomic(path, json.dumps(record, indent=2))
        return len(record["errors"])

    def failures(self) -> dict[int, dict[str, Any]]:
        out = {}
        for p in sorted(self.failed.glob("*.json")) if self.failed.exists() else []:
            try:
                rec = json.loads(p.read_text())
                out[int(rec["shard"])] = rec
                _ = [str(e["error"]) for e in rec["errors"]]  # every reader of a record needs these
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise RunError(
                    f"failure record {p} is unreadable ({type(exc).__name__}: {exc})",
                    fix="delete it: it only records failed attempts (its shard is then tried afresh)",
                ) from None
        return out

    def clear_failure(self, shard: int) -> None:
        self.failure_path(shard).unlink(missing_ok=True)

    def clean_temps(self) -> list[Path]:
        """Remove temp files a crash left behind (call while holding the lock)."""
        removed: list[Path] = []
        for folder in (self.plans, self.root, self.failed, self.shards):
            removed += clean_temps(folder)
        store_for(self.root).abort_partial_uploads(self.root)  # a writer killed mid-upload: parts invisible but kept
        return removed

    # --- workers (for `factory status`) ---------------------------------------------------
    def write_workers(self, rows: list[dict[str, Any]]) -> None:
        """Record the running build's workers; best effort: status is not worth failing a build."""
        with contextlib.suppress(OSError):
            write_text_atomic(self.workers, json.dumps({"updated_at": time.time(), "workers": rows}), sync_dir=False)

    def read_workers(self) -> tuple[float, list[dict[str, Any]]]:
        """(when written, the workers) of the last record, or (0, []) without one."""
        try:
            data = json.loads(self.workers.read_text())
            return float(data["updated_at"]), list(data["workers"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0.0, []

    # --- shards ----------------------------------------------------------------------
    def done_shards(self) -> dict[int, dict[str, Any]]:
        """Planned / accepted counts and drop reasons of every committed shard."""
        return {
            shard: brief_stats(read_stats(self.shards, self.dataset, shard))
            for shard in self.stats_shards()
            if is_done(self.shards, self.dataset, shard)
        }


def open_run(path: Path) -> tuple[RunDir, dict[str, Any]]:
    """The run directory at ``path`` and its recorded start info, or a clear error."""
    info_path = RunLayout(path, "").run_json
    if not path.exists():
        raise RunError(f"{path} does not exist; pass the --out of a build")
    if not info_path.exists():
        raise RunError(f"{path} is not a build directory (no run.json); pass the --out of a build")
    try:
        info = json.loads(info_path.read_text())
    except (OSError, ValueError) as exc:
        raise RunError(f"{info_path} is unreadable ({exc}); it is not a usable build directory") from None
    if (
        not isinstance(info, dict)
        or not isinstance(info.get("dataset"), str)
        or not isinstance(info.get("recipe"), dict)
    ):
        raise RunError(
            f"{info_path} lacks the dataset name or the recipe a build records; it is not a usable build directory"
        )
    return RunDir(path, info["dataset"]), info

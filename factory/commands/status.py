"""`factory status`: what a run directory holds: planned / running / done / failed shards and counts,
while a build runs, its workers (host, GPU, current shard, samples/s) from ``workers.json``, and
the delivered balance: per AU, intensity level, emotion and demographic group the share of the
indexed samples (while the build runs: of the kept samples of the committed prefix) against the
recipe's target and ``[balance]`` tolerance, met or missed, and the infeasible cells.

A committed shard whose files no longer read (a stats file that does not parse or match its
tar and manifest, a manifest without Parquet's magic bytes, an indexed shard not done) is
named with the commands that restore it (``verify --repair``, then ``retry``): exit 1. Failure
records of shards that committed after all are history, not counted."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pyarrow as pa

from factory.commands.rounds_status import round_summary
from factory.engine.balance import balance_targets
from factory.engine.rundir import RunDir, open_run
from factory.recipe import RecipeError, recipe_from_dict
from manifests.balance import read_surplus, read_targets
from manifests.balance_report import balance_report, causes_from, delivered_cells, shard_manifests
from manifests.balance_targets import BalanceTargets
from manifests.bank import open_bank
from manifests.dataset import index_shards_dir, read_index
from manifests.errors import FailedError
from manifests.layout import shard_paths
from manifests.store import open_parquet, store_for
from manifests.verify import verify as verify_index
from manifests.writer import read_stats

__all__ = ["WORKERS_STALE_S", "DamagedRunError", "damage_error", "damaged_shards", "delivered_balance", "run_status"]

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
        # a balanced build that ended short at its waste bound is complete too (``short`` says why)
        "complete": not damaged
        and bool(index)
        and (index.get("accepted", 0) >= index.get("target", 1) or bool(index.get("short"))),
        "workers": [],
    }
    if running:
        updated, workers = run.read_workers()
        if time.time() - updated < WORKERS_STALE_S:
            status["workers"] = workers
    # Damaged shards first: the balance of a run whose files do not read is not worth a crash.
    status["balance"] = None if damaged else delivered_balance(run, info, index, sorted(done))
    status["rounds"] = [] if damaged else round_summary(run, info, sorted(done))
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


_BALANCE_COLUMNS = ["au_intensity", "emotion", "ethnicity", "age_band", "gender"]


def _kept_rows(run: RunDir, index: dict[str, Any], done: list[int]) -> tuple[pa.Table | None, list[int], Path]:
    """The samples delivered so far: the index's rows, else the kept samples of the committed
    prefix (done shards from 0, accepted, surplus left out); with the shards and their folder."""
    if index:
        if not run.index_parquet.exists():
            return None, [], run.shards  # index.json without its rows: `factory verify` names it
        with open_parquet(run.index_parquet) as rows:
            return rows.read(columns=_BALANCE_COLUMNS), list(index["shards"]), index_shards_dir(run.root, index)
    prefix = [s for i, s in enumerate(done) if s == i]
    tables = []
    for shard in prefix:
        paths = run.shard_paths(shard)
        with open_parquet(paths.parquet) as manifest:
            table = manifest.read(columns=["key", "accepted", *_BALANCE_COLUMNS], use_threads=False)
        surplus = read_surplus(paths)
        keep = [
            a and k not in surplus for k, a in zip(table["key"].to_pylist(), table["accepted"].to_pylist(), strict=True)
        ]
        tables.append(table.filter(pa.array(keep, pa.bool_())).select(_BALANCE_COLUMNS))
    return (pa.concat_tables(tables) if tables else None), prefix, run.shards


def _targets(run: RunDir, info: dict[str, Any], shards: list[int], shards_dir: Path) -> BalanceTargets | None:
    """The targets the last shard was decided under (a balanced build), else the recipe's."""
    if shards:
        decided = read_targets(shard_paths(shards_dir, run.dataset, shards[-1]))
        if decided is not None:
            return decided
    try:
        recipe = recipe_from_dict(info["recipe"], source="run.json")
    except RecipeError:
        return None  # a recipe this version no longer loads: no targets to compare against
    bank = open_bank(recipe.identities.bank) if recipe.identities.bank != "none" else None
    return balance_targets(recipe, bank.records() if bank is not None else None)


def delivered_balance(
    run: RunDir, info: dict[str, Any], index: dict[str, Any], done: list[int]
) -> dict[str, Any] | None:
    """Delivered vs target per cell (see module docstring); ``None`` before any sample is kept."""
    rows, shards, shards_dir = _kept_rows(run, index, done)
    targets = _targets(run, info, shards, shards_dir)
    if rows is None or rows.num_rows == 0 or targets is None:
        return None
    report = balance_report(delivered_cells(rows, targets.units), rows.num_rows, targets)
    return {
        "samples": rows.num_rows,
        "met": all(r.met for r in report if not r.infeasible),
        "infeasible": sorted(targets.infeasible),
        # why each is: the bank, or given up during the build (the stage and reason that dropped it)
        "causes": causes_from(shard_manifests(shards_dir, run.dataset, shards), targets),
        "cells": [
            {
                "cell": r.cell,
                "samples": r.samples,
                "share": round(r.share, 4),
                "target": round(r.target, 4),
                "tolerance": round(r.tolerance, 4),
                "met": r.met,
                "infeasible": r.infeasible,
            }
            for r in report
        ],
    }

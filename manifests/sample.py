"""One sample of a dataset, whole: its manifest row, its image bytes and its recorded plan.

Planner keys name their shard (``{shard:06d}_{index:05d}``), so a sample is found by reading
one shard's manifest; a key of another form is looked up across the indexed manifests with
DuckDB. A subset finds only its own samples.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.compute as pc

from manifests.dataset import DatasetRef, open_dataset
from manifests.errors import UserError
from manifests.files import exists
from manifests.layout import RunLayout, shard_paths
from manifests.store import read_table, register_duckdb
from manifests.tar import ShardImages

__all__ = ["SampleNotFoundError", "StoredSample", "read_plan_row", "read_sample"]

_PLANNER_KEY = re.compile(r"^(\d{6})_\d+$")


class SampleNotFoundError(UserError, KeyError):
    """No sample with that key in the dataset; the message says where it looked."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class StoredSample:
    dataset: DatasetRef
    row: dict[str, Any]  # every manifest column, as stored
    image: bytes | None  # None when the build kept no image (a rejected sample)
    plan: dict[str, Any] | None  # the recorded plan row (None when the plan file is gone)

    @property
    def shard(self) -> int:
        return int(self.row["shard"])


def _row_in_shard(dataset: DatasetRef, shard: int, key: str) -> dict[str, Any] | None:
    path = shard_paths(dataset.shards_dir, dataset.name, shard).parquet
    if not exists(path):
        return None
    table = read_table(path)
    found = table.filter(pc.equal(table["key"], key))
    return found.to_pylist()[0] if found.num_rows else None


def _row_anywhere(dataset: DatasetRef, key: str) -> dict[str, Any] | None:
    files = [str(p) for p in dataset.manifests() if exists(p)]
    if not files:
        return None
    con = duckdb.connect()
    register_duckdb(con, dataset.root, dataset.shards_dir)
    try:
        (shard,) = con.execute("SELECT shard FROM read_parquet(?) WHERE key = ? LIMIT 1", [files, key]).fetchone() or (
            None,
        )
    finally:
        con.close()
    return None if shard is None else _row_in_shard(dataset, int(shard), key)


def _in_subset(dataset: DatasetRef, key: str) -> bool:
    if dataset.subset_keys is None:
        return True
    table = read_table(dataset.subset_keys, columns=["key"])
    return bool(pc.any(pc.equal(table["key"], key)).as_py())


def read_plan_row(root: Path, dataset: str, shard: int, key: str) -> dict[str, Any] | None:
    """The sample's row of ``plans/{dataset}-{shard}.plan.parquet`` under the build ``root``."""
    path = RunLayout(root, dataset).plan_path(shard)
    if not exists(path):
        return None
    table = read_table(path)
    found = table.filter(pc.equal(table["key"], key))
    return found.to_pylist()[0] if found.num_rows else None


def read_sample(run_dir: Path, key: str) -> StoredSample:
    """The sample ``key`` of the dataset (or subset) in ``run_dir``, accepted or not."""
    dataset = open_dataset(run_dir)
    match = _PLANNER_KEY.match(key)
    row = None
    if match and int(match.group(1)) in dataset.shards:
        row = _row_in_shard(dataset, int(match.group(1)), key)
    if row is None and not match:
        row = _row_anywhere(dataset, key)
    if row is None or not _in_subset(dataset, key):
        raise SampleNotFoundError(f"no sample {key!r} in the dataset {run_dir} (its indexed shards)")
    image = None
    if row.get("image_member"):
        images = ShardImages(dataset.tar(int(row["shard"])))
        try:
            image = images.get(row["image_member"])
        finally:
            images.close()
    plan = read_plan_row(dataset.source_root, dataset.name, int(row["shard"]), key)
    return StoredSample(dataset=dataset, row=row, image=image, plan=plan)

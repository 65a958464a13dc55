"""Verify a committed dataset: every indexed shard's files against its stats and the index.

Checks: index present and parseable; every indexed shard's stats, tar and Parquet present
with the recorded sizes and sha256; Parquet readable with the recorded counts; tar readable
by webdataset with exactly the images the manifest names; keys unique in the dataset;
index.parquet row count.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from manifests.index import KeyTracker, index_shards_dir, read_index
from manifests.layout import RunLayout, shard_paths
from manifests.writer import read_stats

__all__ = ["verify"]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_tar(tar: Path, expected_members: set[str]) -> tuple[list[str], list[str]]:
    """(problems, sample keys) of one tar read with webdataset."""
    import webdataset as wds  # deferred: importing webdataset imports torch (~1.2 s)

    problems: list[str] = []
    keys: list[str] = []
    members: set[str] = set()
    try:
        for sample in wds.WebDataset(str(tar), shardshuffle=False, empty_check=False):
            keys.append(sample["__key__"])
            exts = {k for k in sample if not k.startswith("__")}
            if "json" not in exts:
                problems.append(f"{tar.name}: sample {sample['__key__']} has no .json member")
            members.update(f"{sample['__key__']}.{ext}" for ext in exts - {"json"})
    except Exception as exc:  # webdataset raises assorted types for a broken tar
        return [f"{tar}: unreadable by webdataset ({type(exc).__name__}: {exc})"], keys
    missing = expected_members - members
    extra = members - expected_members
    if missing:
        problems.append(f"{tar.name}: {len(missing)} image(s) named in the manifest are missing")
    if extra:
        problems.append(f"{tar.name}: {len(extra)} image(s) not named in the manifest")
    return problems, keys


def _check_shard(shards_dir: Path, dataset: str, shard: int, recorded: dict[str, Any]) -> tuple[list[str], list[str]]:
    paths = shard_paths(shards_dir, dataset, shard)
    try:
        stats = read_stats(shards_dir, dataset, shard)
    except (FileNotFoundError, ValueError) as exc:
        return [f"shard {shard}: {exc}"], []
    problems = []
    for path, size_key, sha_key in (
        (paths.tar, "tar_bytes", "tar_sha256"),
        (paths.parquet, "parquet_bytes", "parquet_sha256"),
    ):
        if not path.exists():
            problems.append(f"shard {shard}: {path} is missing")
            continue
        size = path.stat().st_size
        if size != stats.get(size_key) or (recorded and size != recorded.get(size_key)):
            problems.append(
                f"shard {shard}: {path.name} is {size} bytes, stats record {stats.get(size_key)}"
                f" and the index {recorded.get(size_key)}"
            )
        elif stats.get(sha_key) and _sha256(path) != stats[sha_key]:
            problems.append(f"shard {shard}: {path.name} does not match its recorded sha256 (corrupt)")
    if problems:
        return problems, []
    try:
        table = pq.read_table(paths.parquet, columns=["key", "accepted", "image_member"])
    except (OSError, pa.ArrowException) as exc:
        return [f"shard {shard}: {paths.parquet} is not readable Parquet ({exc})"], []
    if table.num_rows != stats.get("planned") or pc.sum(table["accepted"]).as_py() != stats.get("accepted"):
        problems.append(f"shard {shard}: {paths.parquet.name} row counts differ from its stats")
    members = {m for m in table["image_member"].to_pylist() if m}
    tar_problems, _ = _check_tar(paths.tar, members)
    problems += tar_problems
    return problems, table["key"].to_pylist()


def verify(run_dir: Path) -> list[str]:
    """Problems with a committed dataset (empty list = healthy); reads every file once."""
    run_dir = Path(run_dir)
    try:
        index = read_index(run_dir)
    except ValueError as exc:
        return [str(exc)]
    if index is None:
        missing = RunLayout(run_dir, "").index_json
        return [f"{missing} does not exist: the dataset was never committed; run `factory build`"]
    shards_dir = index_shards_dir(run_dir, index)
    problems: list[str] = []
    keys = KeyTracker()
    for shard in index["shards"]:
        recorded = index.get("shard_stats", {}).get(str(shard), {})
        shard_problems, shard_keys = _check_shard(shards_dir, index["dataset"], int(shard), recorded)
        problems += shard_problems
        keys.add(int(shard), shard_keys)
    duplicates = keys.duplicates(
        lambda: (_check_shard(shards_dir, index["dataset"], int(s), {})[1] for s in index["shards"])
    )
    if duplicates:
        problems.append(f"{len(duplicates)} key(s) appear more than once (first: {duplicates[0]!r})")
    parquet_path = RunLayout(run_dir, index["dataset"]).index_parquet
    try:
        rows = pq.ParquetFile(parquet_path).metadata.num_rows
    except (OSError, pa.ArrowException) as exc:
        problems.append(f"{parquet_path} is missing or unreadable ({exc}); rerun `factory build` to rewrite it")
    else:
        if rows != index.get("accepted"):
            problems.append(f"{parquet_path.name} has {rows} rows, index.json records {index.get('accepted')}")
    return problems

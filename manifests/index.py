"""The dataset index: the commit point of a build, written after every indexed shard is done.

``run_dir/index.parquet`` has one row per accepted sample of the indexed shards (key,
shard, tar file, image member and the label columns a user trains on);
``run_dir/index.json`` names the dataset, its target, the indexed / surplus / failed shards
and each indexed shard's recorded sizes and checksums. Both are written temp-then-rename and
``index.json`` last: if it exists, the dataset is complete and consistent.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from manifests.schema import MANIFEST_SCHEMA, SCHEMA_VERSION
from manifests.writer import (
    ShardWriteError,
    fsync_dir,
    is_done,
    json_default,
    read_stats,
    shard_paths,
    temp_path,
    write_bytes_atomic,
)

__all__ = [
    "INDEX_COLUMNS",
    "SHARDS_SUBDIR",
    "index_paths",
    "indexed_parquet_files",
    "read_index",
    "verify",
    "write_index",
]

SHARDS_SUBDIR = "shards"  # factory.state.RunDir.shards
# Manifest columns copied into index.parquet (besides the added "tar" column).
INDEX_COLUMNS = (
    "key",
    "shard",
    "image_member",
    "emotion",
    "identity_id",
    "ethnicity",
    "age_band",
    "gender",
    "label_source",
    "au_occurrence",
    "au_intensity",
    "description",
    "agreement_score",
    "label_jaccard",
    "realism_score",
    "identity_similarity",
    "prompt_jaccard",
)
_INDEX_SCHEMA = pa.schema(
    [MANIFEST_SCHEMA.field(c) for c in INDEX_COLUMNS[:3]]
    + [pa.field("tar", pa.string(), nullable=False)]
    + [MANIFEST_SCHEMA.field(c) for c in INDEX_COLUMNS[3:]],
    metadata={"mifa_schema_version": SCHEMA_VERSION},
)
INDEX_ROW_GROUP_ROWS = 8_192
_STAT_KEYS = ("planned", "accepted", "tar_bytes", "parquet_bytes", "tar_sha256", "parquet_sha256")


def index_paths(run_dir: Path) -> tuple[Path, Path]:
    """``(index.parquet, index.json)`` of a run directory."""
    run_dir = Path(run_dir)
    return run_dir / "index.parquet", run_dir / "index.json"


def _accepted_rows(parquet: Path, tar_name: str) -> pa.Table:
    # One thread: a shard manifest is small, and Arrow's I/O threads each leave a malloc
    # arena behind (measured: ~40 MiB more RSS over a 1,000-shard index pass).
    with pq.ParquetFile(parquet) as manifest:
        table = manifest.read(columns=[*INDEX_COLUMNS, "accepted"], use_threads=False)
    table = table.filter(table["accepted"]).drop_columns(["accepted"])
    tar = pa.array([tar_name] * table.num_rows, pa.string())
    return table.add_column(3, pa.field("tar", pa.string(), nullable=False), tar).cast(_INDEX_SCHEMA)


class _KeyTracker:
    """Finds keys that repeat in a dataset without holding its keys.

    The planner names every sample ``{shard:06d}_{index}``: the digits before the first
    ``_`` are the shard, so keys of two different shards cannot be equal, and a repeat can
    only sit inside one shard (checked exactly, shard by shard). Only if some shard holds a
    key without its own prefix (another planner's naming) does :meth:`duplicates` fall back
    to comparing 64-bit hashes of every key, in two passes over ``all_keys``.
    """

    def __init__(self) -> None:
        self._repeated: set[str] = set()
        self._prefixed = True

    def add(self, shard: int, keys: list[str]) -> None:
        if len(set(keys)) != len(keys):
            self._repeated.update(k for k, n in Counter(keys).items() if n > 1)
        prefix = f"{shard:06d}_"
        if self._prefixed and not all(k.startswith(prefix) for k in keys):
            self._prefixed = False

    def duplicates(self, all_keys: Callable[[], Iterable[list[str]]]) -> list[str]:
        """Repeated keys, sorted; ``all_keys`` re-reads the keys shard by shard when needed."""
        if self._prefixed:
            return sorted(self._repeated)
        return _hashed_duplicates(all_keys)


def _key_hashes(keys: list[str]) -> np.ndarray:
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(k.encode(), digest_size=8).digest(), "little") for k in keys),
        dtype=np.uint64,
        count=len(keys),
    )


def _hashed_duplicates(all_keys: Callable[[], Iterable[list[str]]]) -> list[str]:
    """Repeated keys from 8 bytes per key (key strings in a Counter: ~100 bytes each);
    only keys whose hash repeats are compared as strings, in a second pass."""
    hashes = np.concatenate([_key_hashes(keys) for keys in all_keys()] or [np.empty(0, np.uint64)])
    hashes.sort()
    suspects = set(hashes[1:][hashes[1:] == hashes[:-1]].tolist())
    if not suspects:
        return []
    counts: Counter[str] = Counter()
    for keys in all_keys():
        counts.update(k for k, h in zip(keys, _key_hashes(keys).tolist(), strict=True) if h in suspects)
    return sorted(k for k, n in counts.items() if n > 1)


def write_index(
    run_dir: Path,
    dataset: str,
    shards: list[int],
    *,
    target: int,
    surplus: list[int],
    failed: dict[int, str],
    shards_dir: Path | None = None,
) -> dict[str, Any]:
    """Index the done ``shards`` (in the given order) and commit the dataset; returns index.json.

    Raises ``ValueError`` naming the shard if one is not done, or the first key that repeats.
    """
    run_dir = Path(run_dir)
    shards_dir = Path(shards_dir) if shards_dir is not None else run_dir / SHARDS_SUBDIR
    parquet_path, json_path = index_paths(run_dir)
    not_done = [s for s in shards if not is_done(shards_dir, dataset, s)]
    if not_done:
        raise ValueError(
            f"cannot index {dataset}: shard(s) {not_done} in {shards_dir} are not done "
            "(no valid .stats.json); rebuild them before writing the index"
        )
    # Drop the old commit point first: while index.parquet is replaced no index is valid.
    json_path.unlink(missing_ok=True)
    # Temps of an index write that was killed (one build at a time holds the run directory).
    for stale in run_dir.glob(".index.*.tmp"):
        stale.unlink(missing_ok=True)
    tmp = temp_path(parquet_path)
    shard_stats = {str(s): {k: read_stats(shards_dir, dataset, s).get(k) for k in _STAT_KEYS} for s in shards}
    keys = _KeyTracker()
    accepted = 0
    try:
        # Streamed in row groups of ~INDEX_ROW_GROUP_ROWS: the index of a million samples
        # never sits in memory, and the footer stays small (one row group per 1,000-sample
        # shard gave a 2 MB footer at 1M samples, held in memory until the file closed).
        with pq.ParquetWriter(tmp, _INDEX_SCHEMA, compression="zstd") as out:
            pending: list[pa.Table] = []
            for shard in shards:
                paths = shard_paths(shards_dir, dataset, shard)
                rows = _accepted_rows(paths.parquet, paths.tar.name)
                keys.add(shard, rows["key"].to_pylist())
                pending.append(rows)
                accepted += rows.num_rows
                if sum(t.num_rows for t in pending) >= INDEX_ROW_GROUP_ROWS:
                    out.write_table(pa.concat_tables(pending))
                    pending = []
            if pending:
                out.write_table(pa.concat_tables(pending))
        duplicates = keys.duplicates(
            lambda: (_accepted_rows(shard_paths(shards_dir, dataset, s).parquet, "")["key"].to_pylist() for s in shards)
        )
        if duplicates:
            raise ValueError(
                f"cannot index {dataset}: {len(duplicates)} key(s) appear more than once "
                f"(first: {duplicates[0]!r}); the plan must give every sample a unique key"
            )
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, parquet_path)
        fsync_dir(run_dir)
    except OSError as exc:
        raise ShardWriteError(
            f"could not write {parquet_path}: {exc.strerror or exc}; free space / fix permissions "
            "on that disk and run the build again (the shards are kept; only the index is rewritten)",
            parquet_path,
            exc.errno,
        ) from exc
    finally:
        tmp.unlink(missing_ok=True)
    # Shard commits skip the directory fsync (a lost rename only means a rebuilt shard);
    # the dataset commit must not outlive its shards' renames, so flush them here.
    fsync_dir(shards_dir)
    index = {
        "dataset": dataset,
        "schema_version": SCHEMA_VERSION,
        "target": target,
        "accepted": accepted,
        "planned": sum(int(s["planned"]) for s in shard_stats.values()),
        "shards": list(shards),
        "shards_dir": os.path.relpath(shards_dir, run_dir),
        "shard_stats": shard_stats,
        "surplus_shards": sorted(surplus),
        "failed_shards": {str(s): err for s, err in sorted(failed.items())},
        "index_parquet": parquet_path.name,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_bytes_atomic(json_path, json.dumps(index, indent=1, default=json_default).encode())
    return index


def read_index(run_dir: Path) -> dict[str, Any] | None:
    """index.json of ``run_dir``, or ``None`` if the dataset was never committed."""
    _, json_path = index_paths(run_dir)
    try:
        text = json_path.read_text()
    except FileNotFoundError:
        return None
    try:
        index = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{json_path} is not valid JSON ({exc}); rerun `factory build` on this directory to rewrite it"
        ) from exc
    if not isinstance(index, dict) or "shards" not in index:
        raise ValueError(f"{json_path} is not a MIFA index; rerun `factory build` on this directory")
    return index


def _shards_dir(run_dir: Path, index: dict[str, Any]) -> Path:
    return Path(run_dir) / index.get("shards_dir", SHARDS_SUBDIR)


def indexed_parquet_files(run_dir: Path) -> list[Path]:
    """The shard manifests of the committed dataset (raises if there is no index)."""
    index = read_index(run_dir)
    if index is None:
        raise FileNotFoundError(
            f"{Path(run_dir) / 'index.json'} does not exist: the dataset in {run_dir} is not built "
            "(or not finished); run `factory build` first"
        )
    shards_dir = _shards_dir(run_dir, index)
    return [shard_paths(shards_dir, index["dataset"], int(s)).parquet for s in index["shards"]]


def _sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_tar(tar: Path, expected_members: set[str]) -> tuple[list[str], list[str]]:
    """(problems, sample keys) of one tar read with webdataset."""
    import webdataset as wds

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
    """Problems with a committed dataset (empty list = healthy); reads every file once.

    Checks: index present and parseable; every indexed shard's stats, tar and Parquet present
    with the recorded sizes and sha256; Parquet readable with the recorded counts; tar readable
    by webdataset with exactly the images the manifest names; keys unique in the dataset;
    index.parquet row count.
    """
    run_dir = Path(run_dir)
    try:
        index = read_index(run_dir)
    except ValueError as exc:
        return [str(exc)]
    if index is None:
        return [f"{run_dir / 'index.json'} does not exist: the dataset was never committed; run `factory build`"]
    shards_dir = _shards_dir(run_dir, index)
    problems: list[str] = []
    keys = _KeyTracker()
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
    parquet_path, _ = index_paths(run_dir)
    try:
        rows = pq.ParquetFile(parquet_path).metadata.num_rows
    except (OSError, pa.ArrowException) as exc:
        problems.append(f"{parquet_path} is missing or unreadable ({exc}); rerun `factory build` to rewrite it")
    else:
        if rows != index.get("accepted"):
            problems.append(f"{parquet_path.name} has {rows} rows, index.json records {index.get('accepted')}")
    return problems

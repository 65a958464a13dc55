"""The dataset index: the commit point of a build, written after every indexed shard is done.

``run_dir/index.parquet`` has one row per accepted sample of the indexed shards (an
identity bank's near-duplicates, ``manifests.dedup``, and the balance surplus,
``manifests.balance``, left out) (key,
shard, tar file, image member and the label columns a user trains on, ``INDEX_SCHEMA``);
``run_dir/index.json`` names the dataset, its target, the indexed / surplus / failed shards
and each indexed shard's recorded sizes and checksums. Both are written temp-then-rename and
``index.json`` last: if it exists, the dataset is complete and consistent. The dataset card
(``manifests.card``) is written right after it, with every index. Reading an index
(:func:`read_index`) belongs to ``manifests.dataset``, below the card, and is re-exported here.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from manifests.atomic import atomic_output, fsync_dir, write_bytes_atomic
from manifests.balance import read_surplus
from manifests.card import write_card
from manifests.dataset import index_shards_dir, read_index  # read here, committed by write_index
from manifests.dedup import read_duplicates
from manifests.killpoint import reached
from manifests.layout import RunLayout, key_prefix, shard_paths
from manifests.records import json_default
from manifests.schema import INDEX_COLUMNS, INDEX_SCHEMA, SCHEMA_VERSION
from manifests.store import location, open_parquet, relative_path
from manifests.writer import is_done, read_stats

__all__ = [
    "INDEX_ROW_GROUP_ROWS",
    "KeyTracker",
    "index_shards_dir",
    "read_index",
    "write_index",
]

INDEX_ROW_GROUP_ROWS = 8_192
_STAT_KEYS = ("planned", "accepted", "tar_bytes", "parquet_bytes", "tar_sha256", "parquet_sha256")


def _layout(run_dir: Path) -> RunLayout:
    return RunLayout(run_dir, "")


def accepted_rows(parquet: Path, tar_name: str) -> pa.Table:
    """The accepted samples of one shard manifest as index rows (``tar`` column added)."""
    # One thread: a shard manifest is small, and Arrow's I/O threads each leave a malloc
    # arena behind (measured: ~40 MiB more RSS over a 1,000-shard index pass).
    with open_parquet(parquet) as manifest:
        table = manifest.read(columns=[*INDEX_COLUMNS, "accepted"], use_threads=False)
    table = table.filter(table["accepted"]).drop_columns(["accepted"])
    tar = pa.array([tar_name] * table.num_rows, pa.string())
    return table.add_column(3, pa.field("tar", pa.string(), nullable=False), tar).cast(INDEX_SCHEMA)


class KeyTracker:
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
        prefix = key_prefix(shard)
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


def _unique_rows(rows: pa.Table, duplicates: set[str]) -> pa.Table:
    """``rows`` without the keys ``duplicates`` (an identity bank's near-duplicates,
    ``manifests.dedup``, or the balance surplus, ``manifests.balance``)."""
    if not duplicates:
        return rows
    return rows.filter(pc.invert(pc.is_in(rows["key"], pa.array(sorted(duplicates), pa.string()))))


def _stream_index(tmp: Path, shards_dir: Path, dataset: str, shards: list[int]) -> tuple[int, list[str], int, int]:
    """Write the index rows of ``shards`` to ``tmp``; returns (accepted, repeated keys,
    near-duplicate identities left out, balance surplus left out).

    Streamed in row groups of ~INDEX_ROW_GROUP_ROWS: the index of a million samples never
    sits in memory, and the footer stays small (one row group per 1,000-sample shard gave a
    2 MB footer at 1M samples, held in memory until the file closed).
    """
    keys = KeyTracker()
    accepted = left_out = surplus = 0
    with pq.ParquetWriter(tmp, INDEX_SCHEMA, compression="zstd") as out:
        pending: list[pa.Table] = []
        for shard in shards:
            paths = shard_paths(shards_dir, dataset, shard)
            rows = accepted_rows(paths.parquet, paths.tar.name)
            unique = _unique_rows(rows, read_duplicates(paths))
            left_out += rows.num_rows - unique.num_rows
            rows = _unique_rows(unique, read_surplus(paths))
            surplus += unique.num_rows - rows.num_rows
            keys.add(shard, rows["key"].to_pylist())
            pending.append(rows)
            accepted += rows.num_rows
            if sum(t.num_rows for t in pending) >= INDEX_ROW_GROUP_ROWS:
                out.write_table(pa.concat_tables(pending))
                pending = []
        if pending:
            out.write_table(pa.concat_tables(pending))
    duplicates = keys.duplicates(
        lambda: (accepted_rows(shard_paths(shards_dir, dataset, s).parquet, "")["key"].to_pylist() for s in shards)
    )
    return accepted, duplicates, left_out, surplus


def write_index(
    run_dir: Path,
    dataset: str,
    shards: list[int],
    *,
    target: int,
    surplus: list[int],
    failed: dict[int, str],
    shards_dir: Path | None = None,
    short: str | None = None,
) -> dict[str, Any]:
    """Index the done ``shards`` (in the given order) and commit the dataset; returns index.json.
    ``short``: why a balanced build ended short of ``target`` (its waste bound), else None.

    Raises ``ValueError`` naming the shard if one is not done, or the first key that repeats.
    """
    layout = RunLayout(run_dir, dataset)
    shards_dir = location(shards_dir) if shards_dir is not None else layout.shards
    not_done = [s for s in shards if not is_done(shards_dir, dataset, s)]
    if not_done:
        raise ValueError(
            f"cannot index {dataset}: shard(s) {not_done} in {shards_dir} are not done "
            "(no valid .stats.json); rebuild them before writing the index"
        )
    # Drop the old commit point first: while index.parquet is replaced no index is valid.
    layout.index_json.unlink(missing_ok=True)
    # Temps of an index write that was killed (one build at a time holds the run directory).
    for stale in layout.root.glob(".index.*.tmp"):
        stale.unlink(missing_ok=True)
    shard_stats = {str(s): {k: read_stats(shards_dir, dataset, s).get(k) for k in _STAT_KEYS} for s in shards}
    fix = (
        "free space / fix permissions on that disk and run the build again "
        "(the shards are kept; only the index is rewritten)"
    )
    with atomic_output(layout.index_parquet, fix=fix) as tmp:
        accepted, duplicates, near_duplicates, balance_surplus = _stream_index(tmp, shards_dir, dataset, shards)
        if duplicates:
            raise ValueError(
                f"cannot index {dataset}: {len(duplicates)} key(s) appear more than once "
                f"(first: {duplicates[0]!r}); the plan must give every sample a unique key"
            )
    # Shard commits skip the directory fsync (a lost rename only means a rebuilt shard);
    # the dataset commit must not outlive its shards' renames, so flush them here.
    fsync_dir(shards_dir)
    reached("index")
    index = {
        "dataset": dataset,
        "schema_version": SCHEMA_VERSION,
        "target": target,
        "accepted": accepted,
        "planned": sum(int(s["planned"]) for s in shard_stats.values()),
        "shards": list(shards),
        "shards_dir": relative_path(shards_dir, layout.root),
        "shard_stats": shard_stats,
        "surplus_shards": sorted(surplus),
        "failed_shards": {str(s): err for s, err in sorted(failed.items())},
        "near_duplicates": near_duplicates,  # identity banks: portraits left out as another's duplicate
        "balance_surplus": balance_surplus,  # [balance]: accepted samples held back (manifests.balance)
        "index_parquet": layout.index_parquet.name,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        # [balance]: ended short of the target at the waste bound, and why (no key otherwise)
        **({"short": short} if short else {}),
    }
    write_bytes_atomic(layout.index_json, json.dumps(index, indent=1, default=json_default).encode())
    write_card(layout.root)
    return index

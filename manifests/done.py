"""Is a shard done? Its stats file (``.stats.json``, written last by ``manifests.writer``)
parses and the tar and Parquet it names have the byte sizes it records. The same check on a
folder and on object storage (where the stats object is the last PUT of a shard's commit).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from manifests.layout import shard_paths

__all__ = ["is_done", "read_stats"]


def read_stats(shards_dir: Path, dataset: str, shard: int) -> dict[str, Any]:
    """The stats of a committed shard; ``FileNotFoundError``/``ValueError`` name the file."""
    path = shard_paths(shards_dir, dataset, shard).stats
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise FileNotFoundError(f"shard stats {path} does not exist: the shard is not done") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"shard stats {path} is not text ({exc.reason}); delete it to rebuild the shard") from None
    try:
        stats = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"shard stats {path} is not valid JSON ({exc}); delete it to rebuild the shard") from exc
    if not isinstance(stats, dict):
        raise ValueError(f"shard stats {path} is not a JSON object; delete it to rebuild the shard")
    return stats


def is_done(shards_dir: Path, dataset: str, shard: int) -> bool:
    """Stats parse and the tar and Parquet exist with the byte sizes the stats record."""
    paths = shard_paths(shards_dir, dataset, shard)
    try:
        stats = read_stats(shards_dir, dataset, shard)
        return paths.tar.stat().st_size == stats["tar_bytes"] and paths.parquet.stat().st_size == stats["parquet_bytes"]
    except (OSError, ValueError, KeyError, TypeError):
        return False

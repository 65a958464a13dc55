"""A small dataset of chosen identities, written without Ray: shard tars, manifests and index
through the project's own writer (``ShardWriter``) and ``write_index``, 32 px images."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from manifests.index import write_index
from manifests.writer import ShardWriter
from tests.manifests import make_record

__all__ = ["synthetic_dataset"]


def synthetic_dataset(
    run_dir: Path,
    identities: dict[str, int],
    *,
    per_shard: int = 8,
    seed: int = 0,
    name: str = "mifa",
    agreement: float = 0.75,
) -> Path:
    """``identities``: id -> sample count; samples interleaved across identities, in shards of
    ``per_shard``; every label certain (0/1 occurrence, 0-5 intensity), ``agreement`` the
    detectors' agreement score of every sample (1.0: full consensus)."""
    rng = np.random.default_rng(seed)
    order = [identity for identity, n in identities.items() for _ in range(n)]
    rng.shuffle(order)
    shards = []
    for shard, start in enumerate(range(0, len(order), per_shard)):
        with ShardWriter(run_dir / "shards", name, shard) as writer:
            for index, identity in enumerate(order[start : start + per_shard]):
                record = make_record(shard, index, rng, size=32)
                record["identity_id"] = identity
                record["agreement_score"] = np.float32(agreement)
                writer.add(record)
            writer.commit()
        shards.append(shard)
    write_index(run_dir, name, shards, target=len(order), surplus=[], failed={})
    return run_dir

"""Tests of manifests/; ``make_record`` and ``write_shard`` build shards for them (and for
tests/factory/test_evaluate.py) from ``manifests.schema`` field names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from manifests.schema import MANIFEST_SCHEMA, N_AUS
from manifests.writer import ShardWriter

__all__ = ["make_record", "write_shard"]


def make_record(
    shard: int,
    index: int,
    rng: np.random.Generator,
    *,
    dropped_by: str | None = None,
    drop_reason: str | None = None,
    size: int = 64,
    detectors: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A full in-flight record: every manifest column, a random 64x64 image, two votes."""
    occurrence = rng.integers(0, 2, N_AUS).astype(np.int8)
    intensity = (occurrence * rng.integers(1, 6, N_AUS)).astype(np.int8)
    record: dict[str, Any] = {name: None for name in MANIFEST_SCHEMA.names}
    record.update(
        key=f"{shard:06d}_{index:05d}",
        shard=shard,
        index=index,
        seed=int(rng.integers(0, 2**31)),
        emotion=str(rng.choice(["happiness", "sadness", "mixed"])),
        planned_intensity=intensity.copy(),
        identity_id=f"id{index % 3}",
        ethnicity="white",
        age_band="adult",
        gender=str(rng.choice(["female", "male"])),
        identity_match="exact",
        description=f"a face {index}",
        label_source="planned",
        au_occurrence=occurrence,
        au_intensity=intensity,
        consensus_occurrence=occurrence.copy(),
        consensus_intensity=intensity.astype(np.float32),
        agreement_score=np.float32(0.75),
        realism_score=0.9,
        prompt_jaccard=1.0,
        image=rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
        landmarks=np.zeros((68, 2), np.float32),
        detector_votes=detectors
        if detectors is not None
        else {
            "geometric": {"occurrence": occurrence.astype(np.float32), "intensity": intensity.astype(float)},
            "appearance": {"occurrence": [0.9] * N_AUS, "intensity": [None] * 6 + [1.0] * 6},
        },
    )
    del record["votes"], record["accepted"]
    for name in ("image_member", "image_format", "width", "height"):
        del record[name]
    if dropped_by:
        record.update(dropped_by=dropped_by, drop_reason=drop_reason)
    return record


def write_shard(
    shards_dir: Path,
    dataset: str,
    shard: int,
    n: int,
    *,
    rng: np.random.Generator,
    drop_every: int = 0,
    **writer_options: Any,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Write shard ``shard`` with ``n`` records (every ``drop_every``-th dropped)."""
    records = []
    with ShardWriter(shards_dir, dataset, shard, **writer_options) as writer:
        for i in range(n):
            dropped = drop_every and i % drop_every == drop_every - 1
            record = make_record(
                shard,
                i,
                rng,
                dropped_by="realism" if dropped else None,
                drop_reason="low" if dropped else None,
            )
            writer.add(record)
            records.append(record)
        stats = writer.commit({"attempt": 1})
    return records, stats

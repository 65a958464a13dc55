"""verify finds each kind of damage by shard, and repair sets exactly those shards aside."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from manifests.index import write_index
from manifests.layout import RunLayout, ShardPaths, shard_paths
from manifests.repair import RepairError, repair
from manifests.subset import Selection, make_subset
from manifests.verify import verify_dataset
from manifests.writer import is_done
from tests.manifests import write_shard


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    for shard in range(6):
        write_shard(tmp_path / "shards", "mifa", shard, 4, rng=rng)
    write_index(tmp_path, "mifa", [0, 1, 2, 3, 4], target=20, surplus=[5], failed={})
    (tmp_path / "run.json").write_text(json.dumps({"dataset": "mifa", "recipe": {}}))
    return tmp_path


def _paths(run_dir: Path, shard: int) -> ShardPaths:
    return shard_paths(run_dir / "shards", "mifa", shard)


def _damage(run_dir: Path) -> None:
    tar = _paths(run_dir, 0).tar
    tar.write_bytes(tar.read_bytes()[:-3000])  # truncated
    tar = _paths(run_dir, 1).tar
    data = bytearray(tar.read_bytes())
    data[1500] ^= 0x01  # one flipped bit inside an image: same size
    tar.write_bytes(bytes(data))
    _paths(run_dir, 2).parquet.unlink()  # deleted manifest
    for path in (_paths(run_dir, 3).tar, _paths(run_dir, 3).parquet, _paths(run_dir, 3).stats):
        path.unlink()  # the whole shard gone
    shutil.copy(_paths(run_dir, 4).tar, run_dir / "shards" / "mifa-000009.tar")  # a shard nobody indexed


def test_a_whole_dataset_verifies(run_dir: Path) -> None:
    report = verify_dataset(run_dir)
    assert report.ok and report.shards_checked == 5 and report.samples == 20
    # A shard a build committed after its index (in flight when the target was reached) is
    # surplus, not damage.
    write_shard(run_dir / "shards", "mifa", 6, 4, rng=np.random.default_rng(1))
    report = verify_dataset(run_dir)
    assert report.ok and report.late_surplus == [6]


def test_each_kind_of_damage_is_found_by_shard(run_dir: Path) -> None:
    _damage(run_dir)
    report = verify_dataset(run_dir)
    assert not report.ok
    assert report.shards("corrupt") == [0, 1]
    assert report.shards("missing") == [2, 3]
    assert report.shards("extra") == [9]  # surplus shard 5 is known, not extra
    messages = "\n".join(report.messages())
    assert "truncated" in messages and "sha256" in messages
    assert "mifa-000002.parquet is missing" in messages
    assert report.bad_shards == [0, 1, 2, 3]


def test_a_damaged_header_is_found_even_with_matching_stats(run_dir: Path) -> None:
    paths = _paths(run_dir, 0)
    data = bytearray(paths.tar.read_bytes())
    data[5] ^= 0x20  # a byte of the first member's name
    paths.tar.write_bytes(bytes(data))
    stats = json.loads(paths.stats.read_text())
    stats["tar_sha256"] = None  # no checksum to catch it: only reading the headers can
    paths.stats.write_text(json.dumps(stats))
    report = verify_dataset(run_dir)
    assert report.shards("corrupt") == [0]
    assert "unreadable as a tar" in report.messages()[0] and "checksum" in report.messages()[0]


def test_repair_moves_exactly_the_bad_shards_aside(run_dir: Path) -> None:
    _damage(run_dir)
    layout = RunLayout(run_dir, "mifa")
    good = {p: p.read_bytes() for s in (4, 5) for p in (_paths(run_dir, s).tar, _paths(run_dir, s).parquet)}
    result = repair(verify_dataset(run_dir))
    assert result.shards == [0, 1, 2, 3]
    assert result.quarantine is not None and result.quarantine.parent == layout.quarantine
    # The bad shards are not done any more (the next build redoes them), the good ones untouched.
    assert not any(is_done(run_dir / "shards", "mifa", s) for s in range(4))
    assert all(path.read_bytes() == data for path, data in good.items())
    assert not (run_dir / "shards" / "mifa-000009.tar").exists()
    # The commit point is withdrawn; everything moved is kept, with a record of why.
    assert not layout.index_json.exists() and (result.quarantine / "index.json").exists()
    record = json.loads((result.quarantine / "repair.json").read_text())
    assert record["shards_to_rebuild"] == [0, 1, 2, 3]
    assert (result.quarantine / "shards" / "mifa-000001.tar").exists()


def test_repair_refuses_what_no_build_can_restore(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    subset = tmp_path_factory.mktemp("subset") / "s"
    make_subset(run_dir, subset, Selection(where="shard = 0"))
    _paths(run_dir, 0).parquet.unlink()
    with pytest.raises(RepairError, match="is a subset"):
        repair(verify_dataset(subset))
    (run_dir / "run.json").unlink()
    with pytest.raises(RepairError, match="not made by `factory build`"):
        repair(verify_dataset(run_dir))

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from manifests.export import export
from manifests.index import write_index
from manifests.layout import shard_paths
from manifests.query import query
from manifests.verify import verify
from manifests.vocab import DISFA_AUS
from tests.manifests import write_shard


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict]]:
    run_dir = tmp_path_factory.mktemp("src")
    rng = np.random.default_rng(0)
    accepted: dict[str, dict] = {}
    for shard in range(3):
        records, _ = write_shard(run_dir / "shards", "mifa", shard, 6, rng=rng, drop_every=3)
        accepted.update({r["key"]: r for r in records if not r.get("dropped_by")})
    write_index(run_dir, "mifa", [0, 1, 2], target=12, surplus=[], failed={})
    return run_dir, accepted


def _source_images(run_dir: Path) -> dict[str, bytes]:
    out = {}
    for shard in range(3):
        for sample in wds.WebDataset(str(shard_paths(run_dir / "shards", "mifa", shard).tar), shardshuffle=False):
            out[sample["__key__"]] = sample["jpg"]
    return out


def test_export_webdataset_reshards_selection(source: tuple[Path, dict], tmp_path: Path) -> None:
    run_dir, accepted = source
    out = tmp_path / "out"
    where = "au_occ(12) = 1"
    expected = sorted(k for k, r in accepted.items() if r["au_occurrence"][DISFA_AUS.index(12)] == 1)
    assert len(expected) > 3
    report = export(run_dir, out, where=where, shard_size=3)
    assert report["samples"] == len(expected)
    assert report["shards"] == -(-len(expected) // 3)
    images = _source_images(run_dir)
    keys = []
    for shard in range(report["shards"]):
        tar = shard_paths(out, "mifa", shard).tar
        for sample in wds.WebDataset(str(tar), shardshuffle=False):
            keys.append(sample["__key__"])
            assert sample["jpg"] == images[sample["__key__"]]  # copied, not re-encoded
        manifest = pq.read_table(shard_paths(out, "mifa", shard).parquet)
        assert manifest.num_rows <= 3
    assert keys == expected
    # The export is a dataset of its own: indexed, verifiable, queryable.
    assert verify(out) == []
    assert sorted(query(out)["key"].to_pylist()) == expected
    assert (out / "export.json").exists()


def test_export_folder_with_limit(source: tuple[Path, dict], tmp_path: Path) -> None:
    run_dir, accepted = source
    out = tmp_path / "folder"
    report = export(run_dir, out, limit=5, format="folder", shard_size=2)
    assert report["samples"] == 5 and report["folders"] == 3
    with open(out / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    first_five = sorted(accepted)[:5]
    assert [r["key"] for r in rows] == first_five
    images = _source_images(run_dir)
    for row in rows:
        record = accepted[row["key"]]
        assert (out / row["file"]).read_bytes() == images[row["key"]]
        assert [int(row[f"AU{a:02d}"]) for a in DISFA_AUS] == record["au_occurrence"].tolist()
        assert [int(row[f"AU{a:02d}_intensity"]) for a in DISFA_AUS] == record["au_intensity"].tolist()
        assert row["description"] == record["description"]
    assert rows[2]["file"].startswith("images/000001/")


def test_export_refuses_non_empty_out(source: tuple[Path, dict], tmp_path: Path) -> None:
    run_dir, _ = source
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        export(run_dir, foreign, limit=1)
    with pytest.raises(FileExistsError, match="not a previous export"):
        export(run_dir, foreign, limit=1, overwrite=True)
    assert (foreign / "keep.txt").read_text() == "mine"
    # A previous export may be replaced when asked.
    out = tmp_path / "again"
    export(run_dir, out, limit=2)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export(run_dir, out, limit=1)
    assert export(run_dir, out, limit=1, format="folder", overwrite=True)["samples"] == 1
    assert not (out / "mifa-000000.tar").exists()


def test_bad_where_changes_nothing(source: tuple[Path, dict], tmp_path: Path) -> None:
    import duckdb

    with pytest.raises(duckdb.Error):
        export(source[0], tmp_path / "x", where="no_such_column = 1")
    assert not (tmp_path / "x").exists()

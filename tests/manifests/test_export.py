from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from manifests.export import Exporter, ExportError, Sample, export
from manifests.index import write_index
from manifests.layout import shard_paths
from manifests.query import QueryError, query
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
    _mark_identity_bank(run_dir)
    return run_dir, accepted


def _mark_identity_bank(run_dir: Path) -> None:
    """The run.json an identity-bank build leaves (the identity-bank format reads its recipe)."""
    shares = {"ethnicity": {"white": 1.0}, "age_band": {"20-29": 1.0}, "gender": {"female": 1.0}}
    recipe = {"dataset": {"kind": "identity-bank"}, "demographics": shares, "bank": {"licence": "test"}}
    (run_dir / "run.json").write_text(json.dumps({"dataset": "mifa", "recipe": recipe}))


def _source_images(run_dir: Path) -> dict[str, bytes]:
    out = {}
    for shard in range(3):
        for sample in wds.WebDataset(str(shard_paths(run_dir / "shards", "mifa", shard).tar), shardshuffle=False):
            out[sample["__key__"]] = sample["jpg"]
    return out


def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_export_webdataset_reshards_selection(source: tuple[Path, dict], tmp_path: Path) -> None:
    run_dir, accepted = source
    out = tmp_path / "out"
    expected = sorted(k for k, r in accepted.items() if r["au_occurrence"][DISFA_AUS.index(12)] == 1)
    assert len(expected) > 3
    report = export(run_dir, out, where="au_occ(12) = 1", shard_size=3)
    assert report["samples"] == len(expected)
    assert report["shards"] == -(-len(expected) // 3)
    images = _source_images(run_dir)
    keys = []
    for shard in range(report["shards"]):
        for sample in wds.WebDataset(str(shard_paths(out, "mifa", shard).tar), shardshuffle=False):
            keys.append(sample["__key__"])
            assert sample["jpg"] == images[sample["__key__"]]  # copied, not re-encoded
        manifest = pq.read_table(shard_paths(out, "mifa", shard).parquet)
        assert manifest.num_rows <= 3
        assert set(manifest["shard"].to_pylist()) == {shard}  # where the sample is now
    assert keys == expected
    assert len(list(wds.WebDataset(report["urls"], shardshuffle=False))) == len(expected)  # the range it prints
    # The export is a dataset of its own: indexed, verifiable, queryable, with a card.
    assert verify(out) == []
    assert sorted(query(out)["key"].to_pylist()) == expected
    assert (out / "export.json").exists() and (out / "DATASET_CARD.md").exists()
    # ... and exportable again (its shard/index columns point at its own tars).
    again = export(out, tmp_path / "again", format="folder")
    assert again["samples"] == len(expected)


def test_webdataset_reshard_by_bytes(source: tuple[Path, dict], tmp_path: Path) -> None:
    run_dir, accepted = source
    one = len(next(iter(_source_images(run_dir).values())))
    limit = 3 * one + 10240  # about three samples per shard, and tar's closing record
    report = export(run_dir, tmp_path / "out", shard_bytes=limit, shard_size=1000)
    assert report["samples"] == len(accepted)
    sizes = [shard_paths(tmp_path / "out", "mifa", s).tar.stat().st_size for s in range(report["shards"])]
    assert report["shards"] > 2
    # A shard's tar, end-of-archive record included, never exceeds the limit; and a shard is
    # closed only when the next sample would not fit (each holds close to the limit).
    assert max(sizes) <= limit
    assert min(sizes[:-1]) > limit - one - 2048 - 10240
    assert verify(tmp_path / "out") == []


def test_a_sample_larger_than_the_byte_cap_gets_a_shard_of_its_own(source: tuple[Path, dict], tmp_path: Path) -> None:
    report = export(source[0], tmp_path / "out", shard_bytes=1000, limit=3)
    assert report["shards"] == 3  # one sample each: the only case a shard exceeds the cap


def test_export_folder_labels_csv(source: tuple[Path, dict], tmp_path: Path) -> None:
    run_dir, accepted = source
    out = tmp_path / "folder"
    report = export(run_dir, out, limit=5, format="folder", shard_size=2)
    assert report["samples"] == 5 and report["folders"] == 3
    with open(out / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["key"] for r in rows] == sorted(accepted)[:5]  # one row per image, source order
    header = list(rows[0])
    occurrence = [c for c in header if c.startswith("AU") and not c.endswith("_intensity")]
    intensity = [c for c in header if c.endswith("_intensity")]
    assert occurrence == [f"AU{a:02d}" for a in DISFA_AUS] and len(intensity) == 12
    images = _source_images(run_dir)
    for row in rows:
        record = accepted[row["key"]]
        assert (out / row["file"]).read_bytes() == images[row["key"]]
        assert [int(row[c]) for c in occurrence] == record["au_occurrence"].tolist()
        assert [int(row[c]) for c in intensity] == record["au_intensity"].tolist()
    assert rows[2]["file"].startswith("images/000001/")
    assert not (out / ".parts").exists()


def test_export_huggingface_loads_with_datasets(source: tuple[Path, dict], tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets", reason="datasets is a [dev] dependency")
    run_dir, accepted = source
    out = tmp_path / "hf"
    report = export(run_dir, out, format="huggingface", shard_size=4, format_options={"shares": "0.5,0.5"})
    readme = (out / "README.md").read_text()
    assert readme.startswith("---\nconfigs:") and "data/train-*.parquet" in readme and "data/test-*.parquet" in readme
    loaded = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "cache"))
    assert sorted(loaded) == ["test", "train"]  # two identities: one in each split
    assert loaded["train"].num_rows + loaded["test"].num_rows == len(accepted) == report["samples"]
    first = loaded["train"][0]
    assert [first[f"AU{a:02d}"] for a in DISFA_AUS] == first["au_occurrence"]
    record = accepted[first["key"]]
    assert first["image"].size == (64, 64)  # decoded to a PIL image
    assert first["au_occurrence"] == record["au_occurrence"].tolist()
    assert first["au_intensity"] == record["au_intensity"].tolist()


def test_export_maugen_sample_data(source: tuple[Path, dict], tmp_path: Path) -> None:
    run_dir, accepted = source
    out = tmp_path / "maugen"
    export(run_dir, out, format="maugen", shard_size=4)
    entries = json.loads((out / "sample_data.json").read_text())
    assert len(entries) == len(accepted)
    by_key = {Path(e["image"]).stem: e for e in entries}
    for key, record in accepted.items():
        entry = by_key[key]
        assert set(entry) == {"image", "intensity", "prompt", "identity_id"}
        assert entry["identity_id"] == record["identity_id"]
        assert entry["intensity"] == record["au_intensity"].tolist()
        assert entry["prompt"] == record["description"]
        assert (out / entry["image"]).is_file()


def test_export_graphau_lists_split_by_identity(source: tuple[Path, dict], tmp_path: Path) -> None:
    run_dir, accepted = source
    out = tmp_path / "graphau"
    report = export(run_dir, out, format="graphau", shard_size=4, format_options={"folds": 2})
    lists = out / "list"
    eight = [DISFA_AUS.index(a) for a in (1, 2, 4, 6, 9, 12, 25, 26)]
    key_identity = {k: r["identity_id"] for k, r in accepted.items()}
    for fold in (1, 2):
        train = (lists / f"DISFA_train_img_path_fold{fold}.txt").read_text().split()
        test = (lists / f"DISFA_test_img_path_fold{fold}.txt").read_text().split()
        assert len(train) + len(test) == len(accepted)
        ids = {
            split: {key_identity[Path(p).stem] for p in paths} for split, paths in (("train", train), ("test", test))
        }
        assert not ids["train"] & ids["test"]  # no identity on both sides of a fold
        labels = np.loadtxt(lists / f"DISFA_train_label_fold{fold}.txt", ndmin=2)
        assert labels.shape == (len(train), 8)
        for path, row in zip(train, labels, strict=True):
            assert (out / "img" / path).is_file()
            assert row.tolist() == [accepted[Path(path).stem]["au_occurrence"][i] for i in eight]
        relation = np.loadtxt(lists / f"DISFA_train_AU_relation_fold{fold}.txt", ndmin=2)
        assert relation.shape == (len(train), 64)
        assert relation[0, 9] == 2 * labels[0, 1] + labels[0, 1]  # 2 * a_j + a_k, j = k = 1
        weights = np.loadtxt(lists / f"DISFA_weight_fold{fold}.txt")
        assert weights.shape == (8,) and weights.sum() == pytest.approx(8.0, abs=1e-3)
    test_sets = [set((lists / f"DISFA_test_img_path_fold{f}.txt").read_text().split()) for f in (1, 2)]
    assert sum(len(t) for t in test_sets) == len(accepted)  # every sample is tested in exactly one fold
    assert report["aus"] == [1, 2, 4, 6, 9, 12, 25, 26]


class _Killed(Exception):
    pass


@pytest.mark.parametrize("fmt", ["webdataset", "folder", "maugen", "identity-bank", "graphau", "libreface"])
def test_killed_export_resumes_without_duplicates(source: tuple[Path, dict], tmp_path: Path, fmt: str) -> None:
    run_dir, accepted = source
    out = tmp_path / fmt
    options = {"folds": 2, "split_by": "sample"} if fmt in ("graphau", "libreface") else {}

    def die_after_two_parts(done: int, total: int) -> None:
        if done >= 4:
            raise _Killed

    with pytest.raises(_Killed):
        export(run_dir, out, format=fmt, shard_size=2, progress=die_after_two_parts, format_options=options)
    assert not (out / "export.json").exists()
    seen: list[int] = []
    report = export(
        run_dir, out, format=fmt, shard_size=2, progress=lambda done, total: seen.append(done), format_options=options
    )
    assert seen[0] == 4  # resumed after the two committed parts
    assert report["samples"] == len(accepted)
    if options:  # a resumed split by sample places every sample where an unbroken export does
        whole = export(run_dir, tmp_path / "whole", format=fmt, shard_size=2, format_options=options)
        assert whole["folds"] == report["folds"]
    if fmt == "webdataset":
        keys = query(out)["key"].to_pylist()
        assert verify(out) == []
    elif fmt == "folder":
        with open(out / "labels.csv", newline="") as fh:
            keys = [r["key"] for r in csv.DictReader(fh)]
        assert len(list((out / "images").rglob("*.jpg"))) == len(accepted)
    elif fmt == "identity-bank":
        with open(out / "identities.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert all((out / r["image"]).is_file() for r in rows)
        assert sorted(r["identity_id"] for r in rows) == sorted(r["identity_id"] for r in accepted.values())
        assert json.loads((out / "bank-stats.json").read_text())["identities"] == len(accepted)
        keys = list(accepted)  # rows carry no key: one row per selected sample is checked above
    elif fmt == "graphau":
        lists = [(out / "list" / f"DISFA_test_img_path_fold{f}.txt").read_text() for f in (1, 2)]
        keys = [Path(p).stem for text in lists for p in text.split()]
    elif fmt == "libreface":
        tests = [(out / "DISFA" / "labels" / f / "test.csv").read_text() for f in ("0", "1")]
        keys = [Path(r["image_path"]).stem for text in tests for r in csv.DictReader(text.splitlines())]
    else:
        keys = [Path(e["image"]).stem for e in json.loads((out / "sample_data.json").read_text())]
    assert sorted(keys) == sorted(accepted) and len(keys) == len(set(keys))


def test_export_refuses_to_overwrite_unless_told(source: tuple[Path, dict], tmp_path: Path) -> None:
    run_dir, _ = source
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(ExportError, match="not a previous export"):
            export(run_dir, foreign, limit=1, overwrite=overwrite)
    assert (foreign / "keep.txt").read_text() == "mine"
    out = tmp_path / "again"
    export(run_dir, out, limit=2)
    with pytest.raises(ExportError, match="finished export; pass --overwrite"):
        export(run_dir, out, limit=2)
    assert export(run_dir, out, limit=1, format="folder", overwrite=True)["samples"] == 1
    assert not (out / "mifa-000000.tar").exists()
    with pytest.raises(ExportError, match="would contain the source"):
        export(run_dir, run_dir.parent, limit=1, overwrite=True)
    # An unfinished export of other options is not resumed by accident.
    with pytest.raises(_Killed):
        export(run_dir, tmp_path / "half", shard_size=1, progress=_die_at(1))
    with pytest.raises(ExportError, match="unfinished export with other options"):
        export(run_dir, tmp_path / "half", shard_size=2)


def _die_at(n: int) -> Any:
    def progress(done: int, total: int) -> None:
        if done >= n:
            raise _Killed

    return progress


def test_keys_and_ids_cannot_escape_the_export(tmp_path: Path) -> None:
    run_dir = tmp_path / "evil"
    rng = np.random.default_rng(1)
    write_shard(run_dir / "shards", "mifa", 0, 2, rng=rng)
    # A dataset written by someone else: keys and identity ids that look like paths.
    from manifests.writer import ShardWriter
    from tests.manifests import make_record

    with ShardWriter(run_dir / "shards", "mifa", 1) as writer:
        for i, key in enumerate(("../../escaped", "/abs/olute", "a/../../b")):
            record = make_record(1, i, rng)
            record.update(key=key, identity_id=f"../../{key}")
            writer.add(record)
        writer.commit()
    write_index(run_dir, "mifa", [0, 1], target=5, surplus=[], failed={})
    _mark_identity_bank(run_dir)
    before = _tree(tmp_path)
    for fmt in ("folder", "maugen", "graphau", "libreface", "huggingface", "webdataset", "identity-bank"):
        export(run_dir, tmp_path / "out" / fmt, format=fmt)
    created = set(_tree(tmp_path)) - set(before)
    assert all(p.startswith("out") for p in created), sorted(p for p in created if not p.startswith("out"))
    names = [p.name for p in (tmp_path / "out" / "folder" / "images").rglob("*.jpg")]
    assert len(names) == 5 and all("/" not in n and not n.startswith(".") for n in names)
    bank = tmp_path / "out" / "identity-bank"
    images = [p.relative_to(bank).as_posix() for p in (bank / "images").iterdir()]
    assert len(images) == 5 and all(i.count("/") == 1 and not i.split("/")[1].startswith(".") for i in images)
    with open(bank / "identities.csv", newline="") as fh:
        assert sorted(r["image"] for r in csv.DictReader(fh)) == sorted(images)


def test_inside_refuses_traversal(tmp_path: Path) -> None:
    exporter = Exporter(tmp_path, tmp_path / "out", "mifa", 10)
    assert exporter.inside("images", "a.jpg") == tmp_path / "out" / "images" / "a.jpg"
    with pytest.raises(ExportError, match="outside the export folder"):
        exporter.inside("..", "x.jpg")


def test_bad_where_changes_nothing(source: tuple[Path, dict], tmp_path: Path) -> None:
    with pytest.raises(QueryError, match="no_such_column") as refused:
        export(source[0], tmp_path / "x", where="no_such_column = 1")
    assert isinstance(refused.value.__cause__, duckdb.Error)
    assert not (tmp_path / "x").exists()


def test_sample_names_are_safe() -> None:
    sample = Sample({"key": "../x/y", "image_format": "jpg"}, b"")
    assert "/" not in sample.name and not sample.name.startswith(".")
    assert Sample({"key": "000001_00002", "image_format": "png"}, b"").name == "000001_00002"


@pytest.mark.parametrize("fmt", ["maugen", "graphau"])
def test_label_formats_refuse_unlabelled_samples_before_writing(tmp_path: Path, fmt: str) -> None:
    # A build without AU detectors (a stand-in generator with no labels) has null label columns.
    from manifests.writer import ShardWriter
    from tests.manifests import make_record

    run_dir = tmp_path / "unlabelled"
    rng = np.random.default_rng(2)
    with ShardWriter(run_dir / "shards", "mifa", 0) as writer:
        for i in range(3):
            record = make_record(0, i, rng)
            if i == 1:
                record.update(au_occurrence=None, au_intensity=None)
            writer.add(record)
        writer.commit()
    write_index(run_dir, "mifa", [0], target=3, surplus=[], failed={})
    with pytest.raises(ExportError, match=r"sample 000000_00001 has no au_.*IS NOT NULL"):
        export(run_dir, tmp_path / "out", format=fmt)
    assert not (tmp_path / "out").exists()
    # Selecting the labelled samples is the fix the message names.
    column = "au_intensity" if fmt == "maugen" else "au_occurrence"
    folds = {"folds": 2} if fmt == "graphau" else {}  # two identities are left
    export(run_dir, tmp_path / "out", format=fmt, where=f"{column} IS NOT NULL", format_options=folds)
    assert json.loads((tmp_path / "out" / "export.json").read_text())["samples"] == 2

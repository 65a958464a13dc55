from __future__ import annotations

import errno
import io
import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

from manifests import writer as writer_module
from manifests.atomic import WriteError, clean_temps, temp_path
from manifests.layout import shard_paths
from manifests.schema import MANIFEST_SCHEMA, SCHEMA_VERSION
from manifests.tar import BackgroundSha256
from manifests.writer import ShardWriter, is_done, read_stats
from tests.manifests import make_record, write_shard


def _files(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir() if p.is_file()}


def test_round_trip_tar_parquet_and_stats(tmp_path: Path) -> None:
    records, stats = write_shard(tmp_path, "mifa", 7, 9, rng=np.random.default_rng(1), drop_every=3, image_format="png")
    paths = shard_paths(tmp_path, "mifa", 7)
    assert _files(tmp_path) == {"mifa-000007.tar", "mifa-000007.parquet", "mifa-000007.stats.json"}
    assert is_done(tmp_path, "mifa", 7)

    # The tar is a WebDataset shard: accepted samples only, lossless PNG decodes to the input.
    accepted = {r["key"]: r for r in records if not r.get("dropped_by")}
    samples = list(wds.WebDataset(str(paths.tar), shardshuffle=False).decode("rgb8"))
    assert [s["__key__"] for s in samples] == list(accepted)
    for sample in samples:
        record = accepted[sample["__key__"]]
        np.testing.assert_array_equal(sample["png"], record["image"])
        label = sample["json"]
        assert label["au_occurrence"] == record["au_occurrence"].tolist()
        assert label["au_intensity"] == record["au_intensity"].tolist()
        assert label["identity_id"] == record["identity_id"]
        assert label["scores"]["agreement_score"] == pytest.approx(0.75)
        assert label["scores"]["label_jaccard"] is None
        assert label["accepted"] is True

    # One manifest row per added record, in order, with the schema and filled columns.
    table = pq.read_table(paths.parquet)
    assert table.schema.equals(MANIFEST_SCHEMA, check_metadata=False)
    rows = table.to_pylist()
    assert [r["key"] for r in rows] == [r["key"] for r in records]
    for row, record in zip(rows, records, strict=True):
        assert row["accepted"] == (not record.get("dropped_by"))
        assert row["au_intensity"] == record["au_intensity"].tolist()
        assert [v["detector"] for v in row["votes"]] == ["geometric", "appearance"]
        assert row["votes"][1]["intensity"][:6] == [None] * 6
        if row["accepted"]:
            assert (row["image_member"], row["image_format"], row["width"], row["height"]) == (
                f"{record['key']}.png",
                "png",
                64,
                64,
            )
        else:
            assert row["image_member"] is None
            assert row["drop_reason"] == "low"

    assert stats == read_stats(tmp_path, "mifa", 7)
    assert (stats["planned"], stats["accepted"], stats["rejected"]) == (9, 6, 3)
    assert stats["drop_reasons"] == {"realism": {"low": 3}}
    assert stats["tar_bytes"] == paths.tar.stat().st_size
    assert stats["parquet_bytes"] == paths.parquet.stat().st_size
    assert stats["schema_version"] == SCHEMA_VERSION
    assert stats["attempt"] == 1


def test_keep_rejected_images_and_preencoded_bytes(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    kept = make_record(0, 0, rng, dropped_by="filters", drop_reason="jaccard")
    image = kept.pop("image")
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="WEBP", quality=80)
    kept["image_bytes"] = buf.getvalue()
    with ShardWriter(tmp_path, "d", 0, keep_rejected_images=True) as writer:
        writer.add(kept)
        stats = writer.commit()
    row = pq.read_table(shard_paths(tmp_path, "d", 0).parquet).to_pylist()[0]
    # The member extension follows the bytes actually stored, not the writer default.
    assert (row["accepted"], row["image_member"], row["image_format"], row["width"]) == (
        False,
        "000000_00000.webp",
        "webp",
        64,
    )
    (sample,) = list(wds.WebDataset(str(shard_paths(tmp_path, "d", 0).tar), shardshuffle=False))
    assert sample["webp"] == kept["image_bytes"]
    assert json.loads(sample["json"])["dropped_by"] == "filters"
    assert stats["rejected_images_kept"] == 1


def test_refuses_to_overwrite_a_done_shard(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    write_shard(tmp_path, "d", 1, 2, rng=rng)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        ShardWriter(tmp_path, "d", 1)
    _, stats = write_shard(tmp_path, "d", 1, 3, rng=rng, overwrite=True)
    assert stats["planned"] == 3
    assert pq.read_table(shard_paths(tmp_path, "d", 1).parquet).num_rows == 3


def test_second_racing_writer_loses_at_commit(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    first = ShardWriter(tmp_path, "d", 0)
    second = ShardWriter(tmp_path, "d", 0)
    for writer in (first, second):
        writer.add(make_record(0, 0, rng))
    first.commit()
    with pytest.raises(FileExistsError, match="another writer"):
        second.commit()
    assert is_done(tmp_path, "d", 0)
    assert _files(tmp_path) == {"d-000000.tar", "d-000000.parquet", "d-000000.stats.json"}


def test_crash_before_stats_leaves_shard_not_done(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Crash(BaseException):
        """Stands in for the process dying (not an Exception, so nothing handles it)."""

    def crash(self: ShardWriter, data: bytes) -> None:
        # Leave a temp behind as a killed process would, then die before the stats rename.
        temp_path(self.paths.stats).write_bytes(data[:10])
        raise Crash

    monkeypatch.setattr(ShardWriter, "_write_stats", crash)
    monkeypatch.setattr(ShardWriter, "abort", lambda self: None)  # a dead process cleans nothing
    writer = ShardWriter(tmp_path, "d", 2)
    writer.add(make_record(2, 0, np.random.default_rng(5)))
    with pytest.raises(Crash):
        writer.commit()
    paths = shard_paths(tmp_path, "d", 2)
    assert paths.tar.exists() and paths.parquet.exists() and not paths.stats.exists()
    assert not is_done(tmp_path, "d", 2)
    temps = {p for p in tmp_path.iterdir() if p.name.endswith(".tmp")}
    assert len(temps) == 1
    assert set(clean_temps(tmp_path)) == temps
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())
    monkeypatch.undo()
    # The retry is not refused (the shard is not done) and completes it.
    write_shard(tmp_path, "d", 2, 2, rng=np.random.default_rng(6))
    assert is_done(tmp_path, "d", 2)


def test_exception_inside_with_removes_everything(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"), ShardWriter(tmp_path, "d", 0) as writer:
        writer.add(make_record(0, 0, np.random.default_rng(7)))
        raise RuntimeError("boom")
    assert _files(tmp_path) == set()


def test_leaving_without_commit_is_loud(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="without commit"), ShardWriter(tmp_path, "d", 0):
        pass
    assert _files(tmp_path) == set()


def test_enospc_during_add_names_the_shard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    writer = ShardWriter(tmp_path, "d", 4)

    def full(data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer._fh, "write", full)
    with pytest.raises(WriteError) as info, writer:
        # A big sample so tarfile's stream buffer spills to the file.
        writer.add(make_record(4, 0, np.random.default_rng(8), size=256))
    assert info.value.errno == errno.ENOSPC
    assert "d-000004.tar" in str(info.value) and "free space" in str(info.value)
    assert _files(tmp_path) == set()


@pytest.mark.parametrize("failing", ["d-000005.tar", "d-000005.parquet", "d-000005.stats.json"])
def test_enospc_during_commit_leaves_nothing_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        # The disk fills up while this file (its temp, named .{final}.*.tmp) is flushed.
        if Path(os.readlink(f"/proc/self/fd/{fd}")).name.startswith(f".{failing}."):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(writer_module.os, "fsync", fsync)
    with pytest.raises(WriteError, match=rf"{failing}: no space left on device; free space") as info:
        write_shard(tmp_path, "d", 5, 2, rng=np.random.default_rng(9))
    assert info.value.errno == errno.ENOSPC
    assert not is_done(tmp_path, "d", 5)
    # Files renamed earlier in this commit are removed too: no half shard remains.
    assert _files(tmp_path) == set()


def test_bad_column_value_names_sample_and_column(tmp_path: Path) -> None:
    record = make_record(0, 3, np.random.default_rng(10))
    record["au_intensity"] = [1, 2, 3]  # 3 values, the schema wants 12
    with pytest.raises(ValueError, match=r"000000_00003.*'au_intensity'"), ShardWriter(tmp_path, "d", 0) as w:
        w.add(record)
        w.commit()
    assert _files(tmp_path) == set()


def test_missing_required_field_and_bad_image(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    record = make_record(0, 0, rng)
    del record["identity_id"]
    with ShardWriter(tmp_path, "d", 0) as writer:
        with pytest.raises(ValueError, match="identity_id"):
            writer.add(record)
        bad = make_record(0, 1, rng)
        bad["image"] = bad["image"].astype(np.float32)
        with pytest.raises(ValueError, match="uint8 RGB"):
            writer.add(bad)
        writer.abort()


def test_is_done_detects_truncated_tar(tmp_path: Path) -> None:
    write_shard(tmp_path, "d", 0, 2, rng=np.random.default_rng(12))
    tar = shard_paths(tmp_path, "d", 0).tar
    tar.write_bytes(tar.read_bytes()[:-512])
    assert not is_done(tmp_path, "d", 0)
    shard_paths(tmp_path, "d", 0).stats.write_text("{not json")
    assert not is_done(tmp_path, "d", 0)
    with pytest.raises(ValueError, match="not valid JSON"):
        read_stats(tmp_path, "d", 0)


def test_nan_votes_become_null(tmp_path: Path) -> None:
    record = make_record(0, 0, np.random.default_rng(13))
    occurrence = np.full(12, 0.7, np.float32)
    occurrence[3] = np.nan  # a detector's "not covered"
    record["detector_votes"] = {"d": {"occurrence": occurrence, "intensity": None}}
    with ShardWriter(tmp_path, "d", 0) as writer:
        writer.add(record)
        stats = writer.commit()
    (vote,) = pq.read_table(shard_paths(tmp_path, "d", 0).parquet)["votes"].to_pylist()[0]
    assert vote["occurrence"][3] is None and vote["occurrence"][0] == pytest.approx(0.7)
    assert vote["intensity"] is None
    assert "ignored_keys" not in stats


def test_a_key_no_schema_field_knows_is_refused(tmp_path: Path) -> None:
    rng = np.random.default_rng(13)
    record = make_record(0, 0, rng)
    record["realism_scor"] = 0.9  # a misspelt realism_score
    record["landmarks"] = np.zeros((68, 2), np.float32)  # a transient field: known, not written
    with (
        pytest.raises(ValueError, match=r"sample 000000_00000: .*\['realism_scor'\].*declare"),
        ShardWriter(tmp_path, "d", 0) as writer,
    ):
        writer.add(record)
    assert not is_done(tmp_path, "d", 0)
    dropped = {**make_record(0, 1, rng), "dropped_by": "filters", "drop_reason": "x", "debug_note": "?"}
    with (
        pytest.raises(ValueError, match=r"\['debug_note'\].*dropped by stage 'filters'"),
        ShardWriter(tmp_path, "d", 0) as writer,
    ):
        writer.add(dropped)


def test_same_input_gives_identical_tar(tmp_path: Path) -> None:
    digests = []
    for name in ("a", "b"):
        _, stats = write_shard(tmp_path, name, 0, 3, rng=np.random.default_rng(14))
        digests.append(stats["tar_sha256"])
    assert digests[0] == digests[1]
    assert (tmp_path / "a-000000.tar").read_bytes() == (tmp_path / "b-000000.tar").read_bytes()
    _, unchecked = write_shard(tmp_path, "c", 0, 3, rng=np.random.default_rng(14), checksum=False)
    assert unchecked["tar_sha256"] is None and unchecked["tar_bytes"] > 0


def test_tar_is_standard_for_tarfile(tmp_path: Path) -> None:
    import tarfile

    write_shard(tmp_path, "d", 0, 2, rng=np.random.default_rng(15))
    with tarfile.open(shard_paths(tmp_path, "d", 0).tar) as tar:
        names = tar.getnames()
        label = json.loads(tar.extractfile("000000_00001.json").read())
    assert names == ["000000_00000.jpg", "000000_00000.json", "000000_00001.jpg", "000000_00001.json"]
    assert label["key"] == "000000_00001"


def test_tar_sha256_matches_file_across_hash_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib

    # Tiny batches: the background hasher must feed every byte, in order, across many batches.
    monkeypatch.setattr(BackgroundSha256, "BATCH_BYTES", 3000)
    _, stats = write_shard(tmp_path, "d", 0, 6, rng=np.random.default_rng(16))
    paths = shard_paths(tmp_path, "d", 0)
    assert stats["tar_sha256"] == hashlib.sha256(paths.tar.read_bytes()).hexdigest()
    assert stats["parquet_sha256"] == hashlib.sha256(paths.parquet.read_bytes()).hexdigest()


@pytest.mark.parametrize("name", ["k.jpg", "000123_00042.json", "é漢字.webp", "x" * 100, "d/" * 60 + "k.jpg"])
@pytest.mark.parametrize("size", [0, 1, 511, 512, 19_321, 8**11 - 1])
def test_ustar_header_is_tarfiles_header(name: str, size: int) -> None:
    import tarfile

    from manifests.tar import ustar_header

    info = tarfile.TarInfo(name)
    info.size, info.mode, info.uname, info.gname = size, 0o444, "mifa", "mifa"
    assert ustar_header(name, size) == info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")

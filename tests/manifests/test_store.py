"""Shards, objects and URLs on object storage (moto's S3 server on 127.0.0.1, the real s3fs
client): the writer's commit order on a store without rename, and URL validation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from factory.recipe import RecipeError, load_recipe
from manifests.done import is_done, read_stats
from manifests.layout import shard_paths
from manifests.store import abort_partial_uploads, check_url, location
from manifests.writer import ShardWriter
from tests.manifests import make_record, write_shard
from tests.s3server import SECRET, S3Server, s3_server


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with s3_server() as server:
        yield server


@pytest.fixture(autouse=True)
def staging(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "staging"
    monkeypatch.setenv("MIFA_STAGING_DIR", str(folder))
    return folder


def test_shard_on_s3_is_the_same_bytes_as_on_disk(s3: S3Server, tmp_path: Path, staging: Path) -> None:
    url = s3.url("same/shards")
    write_shard(location(url), "d", 3, 7, rng=np.random.default_rng(2), drop_every=3)
    write_shard(tmp_path / "local", "d", 3, 7, rng=np.random.default_rng(2), drop_every=3)
    fs = s3.fs()
    remote, local = shard_paths(location(url), "d", 3), shard_paths(tmp_path / "local", "d", 3)
    assert is_done(url, "d", 3)
    assert fs.cat(remote.tar.path) == local.tar.read_bytes()
    assert fs.cat(remote.parquet.path) == local.parquet.read_bytes()
    stats = read_stats(url, "d", 3)
    assert stats["tar_bytes"] == local.tar.stat().st_size and stats["accepted"] == 5
    # Only the three objects: nothing under a temp name on the store, no staged file left.
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.find(f"{s3.bucket}/same")) == [
        "d-000003.parquet",
        "d-000003.stats.json",
        "d-000003.tar",
    ]
    assert not [p for p in staging.rglob("*") if p.is_file() and not p.name.endswith(".lock")]


def test_killed_commit_leaves_objects_that_are_not_done_and_a_retry_replaces_them(
    s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Crash(BaseException):
        """Stands in for the process dying after the tar and manifest uploads."""

    def crash(self: ShardWriter, data: bytes) -> None:
        raise Crash

    url = s3.url("killed/shards")
    monkeypatch.setattr(ShardWriter, "_write_stats", crash)
    monkeypatch.setattr(ShardWriter, "abort", lambda self: None)  # a dead process cleans nothing
    writer = ShardWriter(url, "d", 1)
    writer.add(make_record(1, 0, np.random.default_rng(5)))
    with pytest.raises(Crash):
        writer.commit()
    paths = shard_paths(location(url), "d", 1)
    assert paths.tar.exists() and paths.parquet.exists() and not paths.stats.exists()
    assert not is_done(url, "d", 1)
    monkeypatch.undo()
    _, stats = write_shard(url, "d", 1, 4, rng=np.random.default_rng(6))
    assert is_done(url, "d", 1) and stats["planned"] == 4
    assert paths.tar.stat().st_size == stats["tar_bytes"]


def test_incomplete_multipart_uploads_under_the_prefix_are_aborted(s3: S3Server) -> None:
    fs = s3.fs()
    ours = fs.call_s3("create_multipart_upload", Bucket=s3.bucket, Key="run/shards/d-000000.tar")
    other = fs.call_s3("create_multipart_upload", Bucket=s3.bucket, Key="runner/x.tar")
    assert abort_partial_uploads(location(s3.url("run"))) == 1
    left = {u["UploadId"] for u in fs.list_multipart_uploads(s3.bucket)}
    assert ours["UploadId"] not in left and other["UploadId"] in left
    # A dataset at the bucket's root (s3://bucket): every unfinished upload in it is the build's.
    assert abort_partial_uploads(location(f"s3://{s3.bucket}")) == 1
    assert not fs.list_multipart_uploads(s3.bucket)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        (f"s3://AKIAEXAMPLE:{SECRET}@bucket/prefix", "must not hold credentials"),
        (f"s3://bucket/prefix?X-Amz-Signature={SECRET}", "query string"),
        ("s3:///prefix", "names no bucket"),
        ("nosuchscheme://bucket/prefix", "no filesystem for nosuchscheme://"),
    ],
    ids=["credentials", "signature", "no-bucket", "unknown-scheme"],  # the secret differs per process (xdist)
)
def test_bad_urls_are_refused_without_repeating_a_secret(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=says) as caught:
        check_url(url)
    assert SECRET not in str(caught.value)


def test_recipe_refuses_credentials_in_dataset_out_without_echoing_them(tmp_path: Path) -> None:
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'[dataset]\nout = "s3://AKIAEXAMPLE:{SECRET}@bucket/prefix"\n')
    with pytest.raises(RecipeError, match=r"dataset\.out") as caught:
        load_recipe(recipe)
    assert SECRET not in str(caught.value)
    assert load_recipe(recipe, out="s3://bucket/prefix").dataset.out == "s3://bucket/prefix"

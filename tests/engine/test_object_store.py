"""Builds to object storage (moto's S3 server on 127.0.0.1, the real client, the CLI as a user
runs it): the dataset equals the same build on local disk, a kill -9 mid-build (at a named
point, or inside a PUT) then the same command gives the dataset an uninterrupted build
gives, the tools read the bucket, and the secret in the environment never reaches a written
file or the output. The builds run in child processes (a kill needs one); the tools, and the
builds refused before Ray, run in this one through the CLI's edge (a child costs seconds of
imports each)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from manifests.store import location
from tests.cli_runner import run_cli
from tests.engine.cli_builds import build_cmd, build_killed_at, cli_env, dataset, run_build, write_recipe
from tests.s3server import SECRET, S3Server, forget_clients, s3_server

pytestmark = [pytest.mark.subprocess, pytest.mark.s3]


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    staging = tmp_path_factory.mktemp("staging")
    saved = os.environ.get("MIFA_STAGING_DIR")
    os.environ["MIFA_STAGING_DIR"] = str(staging)
    try:
        with s3_server() as server:
            yield server
    finally:
        if saved is None:
            os.environ.pop("MIFA_STAGING_DIR", None)
        else:
            os.environ["MIFA_STAGING_DIR"] = saved


def _factory(*args: str) -> tuple[int, str]:
    """A ``factory`` command run here through the CLI's edge: (exit code, all it printed)."""
    forget_clients()  # a new client: nothing listed before a child build wrote is cached
    return run_cli(*args)


@pytest.fixture(scope="module")
def reference(s3: S3Server, standin_reference: Path) -> Path:
    """The same recipe built uninterrupted on local disk (the session's, shared with the local
    kill test); after the server, so the module's client environment is in place."""
    return standin_reference


def _same_dataset(s3: S3Server, url: str, reference: Path) -> None:
    """Index rows, index.json's shards and every tar's bytes equal the local build's."""
    root = location(url)
    fs = s3.fs()
    index = json.loads(fs.cat(f"{root.path}/index.json"))
    ref_shards, _ = dataset(reference)
    assert index["shards"] == ref_shards
    with fs.open(f"{root.path}/index.parquet", "rb") as fh:
        assert pq.read_table(fh).equals(pq.read_table(reference / "index.parquet"))
    for shard in ref_shards:
        name = f"t-{shard:06d}.tar"
        assert fs.cat(f"{root.path}/shards/{name}") == (reference / "shards" / name).read_bytes(), name


def test_credentials_in_the_url_are_refused_and_not_repeated(s3: S3Server, tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path / "r.toml", tmp_path / "unused")
    code, said = _factory("build", str(recipe), "--out", f"s3://AKIAEXAMPLE:{SECRET}@{s3.bucket}/x", "--quiet")
    assert code == 2, said
    assert "must not hold credentials" in said and SECRET not in said
    code, said = _factory("build", str(recipe), "--out", "s3://no-such-bucket-here/x", "--quiet")
    assert code == 2 and "no-such-bucket-here" in said, said
    assert SECRET not in said


def _done_shards(fs: object, shards: str) -> set[int]:
    return {int(Path(key).name[2:8]) for key in fs.glob(f"{shards}/t-*.stats.json")}  # type: ignore[attr-defined]


def _kill_inside_the_first_tar_upload(recipe: Path, prefix: str) -> str:
    """Run the build until its first tar PUT, which the in-process server holds until the
    build's processes are dead and then drops (as a store does when the client vanishes
    mid-body): the key of the dropped upload."""
    from moto.s3.models import S3Backend  # deferred: a dev dependency, heavy to import; only this test patches it

    in_flight, killed = threading.Event(), threading.Event()
    held: list[str] = []
    original = S3Backend.put_object

    def put_object(self: S3Backend, bucket_name: str, key_name: str, *args: object, **kwargs: object) -> object:
        if key_name.startswith(f"{prefix}/shards/") and key_name.endswith(".tar") and not held:
            held.append(key_name)
            in_flight.set()
            killed.wait(120)
            raise ConnectionAbortedError("the client died mid-upload")
        return original(self, bucket_name, key_name, *args, **kwargs)

    S3Backend.put_object = put_object  # type: ignore[method-assign]
    try:
        proc = subprocess.Popen(
            build_cmd(recipe),
            env=cli_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        assert in_flight.wait(300), "no tar upload started"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        killed.set()
        S3Backend.put_object = original  # type: ignore[method-assign]
    return held[0]


def test_kill_9_inside_an_upload_and_between_uploads_then_resume_equals_the_local_build_and_the_tools_read_it(
    s3: S3Server, reference: Path, tmp_path: Path
) -> None:
    """Two kills where a store differs from a disk, then the same command once: inside a PUT
    (for certain: the server holds it), then between a shard's uploads and its stats object
    (the done marker) while other workers hold staged temps. The resumed bucket equals the
    local build, the tools read it, and the secret in the environment is nowhere."""
    url = s3.url("killed")
    recipe = write_recipe(tmp_path / "killed.toml", url, workers=2)  # a kill finds other workers' staged temps
    fs = s3.fs()
    shards = f"{s3.bucket}/killed/shards"

    dropped = _kill_inside_the_first_tar_upload(recipe, "killed")
    shard = dropped.rsplit("/", 1)[1].removesuffix(".tar")
    assert not fs.exists(f"{s3.bucket}/{dropped}") and not fs.exists(f"{shards}/{shard}.stats.json")
    assert not fs.exists(f"{s3.bucket}/killed/index.json")

    ref_shards, _ = dataset(reference)
    renamed = min(set(ref_shards) - _done_shards(fs, shards))
    build_killed_at(recipe, f"renamed:{renamed}")
    name = f"{shards}/t-{renamed:06d}"
    assert fs.exists(f"{name}.tar") and fs.exists(f"{name}.parquet") and not fs.exists(f"{name}.stats.json")
    assert not fs.exists(f"{s3.bucket}/killed/index.json")

    resumed = run_build(recipe)
    assert resumed.returncode == 0, resumed.stderr
    _same_dataset(s3, url, reference)
    assert fs.exists(f"{s3.bucket}/{dropped}")
    assert not [u for u in fs.list_multipart_uploads(s3.bucket) if u["Key"].startswith("killed/")]
    # The killed writers' staged files (local, beside no object) went with the resume's clean-up.
    assert not list(Path(os.environ["MIFA_STAGING_DIR"]).rglob("*.tmp"))

    said = {}
    for name, args in (
        ("status", ("status", url)),
        ("verify", ("verify", url)),
        ("query", ("query", url, "SELECT 'n=' || count(*) AS n FROM samples")),
        ("export", ("export", url, str(tmp_path / "export"))),
        ("export-local", ("export", str(reference), str(tmp_path / "export-local"))),
    ):
        code, said[name] = _factory(*args)
        assert code == 0, (name, said[name])
    assert "complete" in said["status"] and "whole" in said["verify"], said
    found = re.search(r"n=(\d+)", said["query"])
    assert found and int(found.group(1)) == pq.read_table(reference / "index.parquet").num_rows, said["query"]
    tars = sorted(p.name for p in (tmp_path / "export").glob("*.tar"))
    assert tars and tars == sorted(p.name for p in (tmp_path / "export-local").glob("*.tar"))
    for name in tars:
        assert (tmp_path / "export" / name).read_bytes() == (tmp_path / "export-local" / name).read_bytes()
    # The secret in the environment: in no object, no staged or exported file, no output.
    for key in fs.find(s3.bucket):
        assert SECRET.encode() not in fs.cat(key), key
    staged = Path(os.environ["MIFA_STAGING_DIR"])
    for path in [*staged.rglob("*"), *(tmp_path / "export").rglob("*")]:
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    assert SECRET not in resumed.stdout + resumed.stderr
    assert not [name for name, text in said.items() if SECRET in text]

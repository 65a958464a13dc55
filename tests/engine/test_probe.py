"""The multi-node probe: with a plain dataset.out the driver writes a token file there and
every shard worker (and the index writer) checks it before doing anything, so a node that
sees another folder (a failed shared-filesystem mount: its local disk) fails the build once,
naming the path and the host. A worker given another folder stands for that node."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from factory.engine.rundir import ProbeError, RunDir, check_probe
from factory.engine.worker import IndexWriter, ShardWorker
from factory.recipe import recipe_from_dict
from tests.engine.conftest import standin_doc


def test_a_worker_that_sees_another_folder_is_refused_naming_path_and_host(tmp_path: Path) -> None:
    shared, local = tmp_path / "shared", tmp_path / "node-local"
    shared.mkdir()
    run = RunDir(shared, "t")
    token = run.write_probe()
    assert token is not None
    check_probe(shared, token)  # the driver's own folder: passes
    with pytest.raises(ProbeError) as caught:
        check_probe(local, token)
    message = str(caught.value)
    assert str(local / f"probe-{token}.json") in message and socket.gethostname() in message
    # The same folder with a stale probe (another build's token) is not this build's folder either.
    with pytest.raises(ProbeError):
        check_probe(shared, "0" * 32)
    run.remove_probe(token)
    assert not list(shared.glob("probe-*"))


def test_a_new_probe_replaces_a_killed_builds_and_object_storage_needs_none(tmp_path: Path) -> None:
    run = RunDir(tmp_path, "t")
    first = run.write_probe()
    second = run.write_probe()
    assert first != second and [p.name for p in tmp_path.glob("probe-*")] == [f"probe-{second}.json"]
    check_probe(tmp_path / "anywhere", None)  # no token: nothing to check (s3:// outputs)


def test_shard_worker_and_index_writer_check_the_probe_before_any_work(tmp_path: Path) -> None:
    shared, local = tmp_path / "shared", tmp_path / "node-local"
    shared.mkdir()
    recipe = recipe_from_dict(standin_doc(shared))
    token = RunDir(shared, "t").write_probe()
    ShardWorker(recipe, str(shared), token)  # sees the probe: starts
    with pytest.raises(ProbeError, match="cannot see"):
        ShardWorker(recipe, str(local), token)
    with pytest.raises(ProbeError, match="cannot see"):
        IndexWriter().write(str(local), "t", [], probe=token, target=1, surplus=[], failed={})
    assert not (local / "index.json").exists()

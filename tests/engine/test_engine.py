"""The engine on one shared local Ray cluster (8 logical GPUs, no real GPU needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import webdataset as wds

from bench.standin import STANDIN
from cluster.ray_cluster import ClusterError, connect
from factory.commands.status import run_status
from factory.engine.build import BuildError, build, worker_pool
from factory.engine.rundir import RunDir, RunError
from factory.recipe import recipe_from_dict
from tests.engine.conftest import standin_doc

pytestmark = pytest.mark.ray


def test_gpus_8_creates_8_workers_each_on_its_own_device(ray_cluster, tmp_path: Path) -> None:
    recipe = recipe_from_dict(standin_doc(tmp_path / "out", engine={"gpus": 8}))
    with worker_pool(recipe, tmp_path) as pool:
        workers = pool.shard_workers
        infos = ray_cluster.get([w.info.remote() for w in workers])
    devices = [i["cuda_visible_devices"] for i in infos]
    assert len(workers) == 8
    assert len(set(devices)) == 8 and all(d is not None for d in devices), devices
    assert sorted(int(i["gpu_ids"][0]) for i in infos) == list(range(8))
    assert {i["device"] for i in infos} == {"cpu"}  # logical GPUs only: code falls back to CPU


def test_asking_for_more_gpus_than_the_cluster_has_fails_at_once(ray_cluster) -> None:
    with pytest.raises(ClusterError, match="--gpus 9 asked for, but the Ray cluster has 8 GPU"):
        connect(gpus=9)


def test_second_build_into_a_held_directory_is_refused(ray_cluster, tmp_path: Path) -> None:
    out = tmp_path / "out"
    recipe = recipe_from_dict(standin_doc(out))
    lock = RunDir(out, "t").lock()
    try:
        with pytest.raises(RunError, match="held by a running build"):
            build(recipe, quiet=True)
    finally:
        lock.release()
    assert not (out / "run.json").exists()


def test_resume_with_a_different_recipe_is_refused_naming_fields(ray_cluster, tmp_path: Path) -> None:
    out = tmp_path / "out"
    build(recipe_from_dict(standin_doc(out)), quiet=True)
    changed = recipe_from_dict(standin_doc(out, dataset={"seed": 6}, output={"image_size": 48}))
    with pytest.raises(RunError) as info:
        build(changed, quiet=True)
    assert "dataset.seed" in str(info.value) and "output.image_size" in str(info.value)
    # a larger target is a resume, not a different dataset: it extends the index
    bigger = build(recipe_from_dict(standin_doc(out, dataset={"target": 36})), quiet=True)
    assert bigger.indexed_shards == [0, 1, 2, 3, 4, 5]
    recorded = json.loads((out / "run.json").read_text())
    assert recorded["seed"] == 5 and "ray" in recorded["versions"]


def test_injected_failure_is_retried_then_marked_failed_and_the_rest_completes(ray_cluster, tmp_path: Path) -> None:
    out = tmp_path / "out"
    doc = standin_doc(out, generator={"name": STANDIN, "fail_on_shards": [1]})
    summary = build(recipe_from_dict(doc), quiet=True)
    assert list(summary.failed_shards) == [1]
    assert "injected failure on shard 1" in summary.failed_shards[1]
    assert 1 not in summary.indexed_shards and summary.accepted >= 24
    failure = json.loads((out / "failed" / "t-000001.json").read_text())
    assert len(failure["errors"]) == 2  # max_retries = 1: first try + one retry
    assert not (out / "shards" / "t-000001.stats.json").exists()
    status = run_status(out)
    assert list(status["failed_shards"]) == [1] and status["complete"]
    index = json.loads((out / "index.json").read_text())
    assert index["failed_shards"] and 1 not in index["shards"]


def test_acceptance_floor_stops_with_top_drop_reasons(ray_cluster, tmp_path: Path) -> None:
    doc = standin_doc(
        tmp_path / "out",
        filters={"name": "tests.engine.plugins:DropAll", "reason": "too blurry"},
        engine={"rate_check_after_shards": 2},
    )
    with pytest.raises(BuildError) as info:
        build(recipe_from_dict(doc), quiet=True)
    message = str(info.value)
    assert "acceptance rate 0.000" in message and "drop-all: too blurry" in message
    assert not (tmp_path / "out" / "index.json").exists()


def test_a_worker_that_dies_is_restarted_and_its_shard_redone(ray_cluster, tmp_path: Path) -> None:
    out = tmp_path / "out"
    doc = standin_doc(
        out,
        filters={"name": "tests.engine.plugins:DieOnce", "shard": 2, "marker_dir": str(tmp_path)},
        engine={"max_retries": 2},
    )
    summary = build(recipe_from_dict(doc), quiet=True)
    assert (tmp_path / "died-on-2").exists()
    assert summary.indexed_shards == [0, 1, 2, 3] and not summary.failed_shards
    keys = [s["__key__"] for s in wds.WebDataset(str(out / "shards" / "t-000002.tar"), shardshuffle=False)]
    assert len(keys) == 6


def test_a_stage_that_cannot_start_fails_the_build_once_with_its_message(ray_cluster, tmp_path: Path) -> None:
    doc = standin_doc(tmp_path / "out", detectors=[{"name": "tests.engine.plugins:MissingCheckpoint"}])
    with pytest.raises(BuildError, match=r"worker could not start: StageError: checkpoint /nowhere/model\.pth"):
        build(recipe_from_dict(doc), quiet=True)
    assert not list((tmp_path / "out" / "shards").glob("*.stats.json"))


def test_the_offline_demo_chain_builds_real_samples(ray_cluster, tmp_path: Path) -> None:
    """recipes/demo.toml's real stages (grammar, warp, dlib, two detectors, agreement,
    heuristic realism, filters), shrunk: every indexed sample is labelled and auditable."""
    import tomllib

    from factory.commands.evaluate import evaluate

    doc = tomllib.loads((Path(__file__).resolve().parents[2] / "recipes" / "demo.toml").read_text())
    doc["dataset"].update(target=10, shard_size=8, out=str(tmp_path / "out"))
    doc["output"]["image_size"] = 192
    doc["engine"]["cpu_workers"] = 1
    doc["balance"]["enabled"] = False  # 10 samples cannot hold shares to 0.01: open loop
    summary = build(recipe_from_dict(doc), quiet=True)
    assert summary.accepted >= 10
    manifest = pq.read_table(tmp_path / "out" / "shards" / "mifa_demo-000000.parquet").to_pylist()
    kept = [r for r in manifest if r["accepted"]]
    dropped = [r for r in manifest if not r["accepted"]]
    assert kept and all(r["label_source"] == "exact" and r["description"] for r in kept)
    assert all({v["detector"] for v in r["votes"]} == {"appearance", "geometric"} for r in kept)
    assert all(r["dropped_by"] and r["drop_reason"] for r in dropped)
    samples = list(wds.WebDataset(str(tmp_path / "out" / "shards" / "mifa_demo-000000.tar"), shardshuffle=False))
    labels = {s["__key__"]: json.loads(s["json"]) for s in samples}
    assert set(labels) == {r["key"] for r in kept}
    for r in kept:
        assert labels[r["key"]]["au_occurrence"] == r["au_occurrence"]
    report = evaluate(tmp_path / "out")
    assert report.to_markdown().count("consensus") >= 1


def test_index_writer_runs_beside_the_driver_and_its_errors_arrive_unwrapped(ray_cluster, tmp_path: Path) -> None:
    import os

    from manifests.index import read_index

    recipe = recipe_from_dict(standin_doc(tmp_path / "out", engine={"gpus": 0}))
    build(recipe, quiet=True)
    index = read_index(tmp_path / "out")
    with worker_pool(recipe, tmp_path / "pool") as pool:
        info = ray_cluster.get(pool.index_writer.info.remote())
        assert info["pid"] != os.getpid()  # the pass over the manifests runs outside the driver
        # Rewriting the committed index gives the same dataset.
        (tmp_path / "out" / "index.json").unlink()
        pool.write_index(tmp_path / "out", "t", index["shards"], target=index["target"], surplus=[], failed={})
        assert read_index(tmp_path / "out")["accepted"] == index["accepted"]
        # A shard that is not done: the index's own ValueError, not a Ray wrapper.
        with pytest.raises(ValueError, match=r"shard\(s\) \[99\].*not done") as caught:
            pool.write_index(tmp_path / "out", "t", [*index["shards"], 99], target=1, surplus=[], failed={})
        assert type(caught.value) is ValueError

"""Losing a worker node mid-build does not stop the build (a multi-node Ray cluster on
one machine, every node on 127.0.0.1)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from bench.standin import STANDIN
from factory.engine.build import build
from factory.recipe import recipe_from_dict
from tests.engine.conftest import REPO, standin_doc

pytestmark = pytest.mark.ray


def test_build_survives_losing_the_node_its_gpu_worker_runs_on(
    no_shared_ray: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ray
    from ray.cluster_utils import Cluster

    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0, "node_ip_address": "127.0.0.1"}
    )
    doomed = cluster.add_node(num_cpus=1, num_gpus=1, node_ip_address="127.0.0.1")  # the only GPU node
    ray.init(address=cluster.address, _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        out = tmp_path / "out"
        doc = standin_doc(
            out,
            dataset={"target": 24, "shard_size": 6},
            generator={"name": STANDIN, "seconds_per_batch": 0.5},
            engine={"gpus": 1, "max_retries": 3},
        )
        result: dict = {}

        def run_build() -> None:  # Ray's node management needs the main thread
            try:
                result["summary"] = build(recipe_from_dict(doc), quiet=True)
            except Exception as exc:  # surfaced by the assertion below
                result["error"] = exc

        builder = threading.Thread(target=run_build, daemon=True)
        builder.start()
        deadline = time.time() + 300
        while time.time() < deadline and not list((out / "shards").glob("*.stats.json")):
            time.sleep(0.2)
        # The GPU worker's node dies right after its first commit, before a second GPU node
        # exists: what is left can only be committed by a worker restarted on the new node
        # (adding the node first raced with the doomed worker finishing every shard).
        cluster.remove_node(doomed)
        cluster.add_node(num_cpus=1, num_gpus=1, node_ip_address="127.0.0.1")
        builder.join(timeout=300)
        assert "error" not in result, result.get("error")
        summary = result["summary"]
        assert summary.accepted >= 24 and summary.indexed_shards == list(range(4))
        assert not summary.failed_shards
        pids = {json.loads(p.read_text())["worker"]["pid"] for p in (out / "shards").glob("*.stats.json")}
        assert len(pids) >= 2  # shards were committed by the restarted worker on the new node
    finally:
        ray.shutdown()
        cluster.shutdown()

"""A closed-loop balanced build (rounds of 2 shards, lag 1) is one dataset whatever the run:
built in-process on 8 logical GPUs, and by the ``factory`` CLI on 1 GPU killed -9 after a
closed-loop round's shard committed, then resumed: the same plans, shards, balance decisions
and index, byte for byte."""

from __future__ import annotations

import json
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

from factory.engine.build import build
from factory.recipe import recipe_from_dict
from manifests.balance import balance_path
from manifests.layout import RunLayout
from tests.engine.cli_builds import build_cmd, build_killed_at, cli_env
from tests.engine.conftest import standin_doc

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.subprocess]

BALANCE = {"enabled": True, "round_shards": 2, "round_lag_shards": 1, "max_generated_per_accepted": 20.0}


def _doc(out: Path, gpus: int) -> dict[str, Any]:
    return standin_doc(
        out,
        dataset={"target": 36, "shard_size": 6},
        aus={"units": [12, 25], "active_share": 0.4},
        engine={"gpus": gpus},
        balance=BALANCE,
    )


def _toml(doc: dict[str, Any], path: Path) -> Path:
    lines = [f"{k} = {json.dumps(v)}" for k, v in doc.items() if isinstance(v, list)]
    for section, body in doc.items():
        if isinstance(body, dict):
            lines += [f"[{section}]", *(f"{k} = {json.dumps(v)}" for k, v in body.items())]
    path.write_text("\n".join(lines) + "\n")
    tomllib.loads(path.read_text())
    return path


def _files(out: Path, shards: list[int]) -> dict[str, bytes]:
    """Every file of the dataset the index names: plans, tars, manifests, balance decisions."""
    layout = RunLayout(out, "t")
    found = {"index.parquet": (out / "index.parquet").read_bytes()}
    for shard in shards:
        paths = layout.shard_paths(shard)
        for path in (paths.tar, paths.parquet, balance_path(paths), layout.plan_path(shard)):
            found[path.name] = path.read_bytes()
    return found


def test_closed_loop_on_8_gpus_equals_1_gpu_killed_and_resumed(ray_cluster: Any, tmp_path: Path) -> None:
    eight = build(recipe_from_dict(_doc(tmp_path / "eight", 8)), quiet=True)
    assert max(eight.indexed_shards) >= 4  # past round 1: shards planned from measured yields

    recipe = _toml(_doc(tmp_path / "one", 1), tmp_path / "one.toml")
    build_killed_at(recipe, "committed:3", ("--local-gpus", "1"))  # shard 3: round 1's
    resumed = subprocess.run(
        [*build_cmd(recipe), "--local-gpus", "1"], env=cli_env(), capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr

    index = json.loads((tmp_path / "one" / "index.json").read_text())
    assert index["shards"] == eight.indexed_shards
    assert _files(tmp_path / "one", eight.indexed_shards) == _files(tmp_path / "eight", eight.indexed_shards)

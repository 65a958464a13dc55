"""A closed-loop balanced build (rounds of 2 shards, lag 1) is the pure function of its committed
prefix whatever the run: built by the ``factory`` CLI on 1 logical GPU, killed -9 after a
closed-loop round's shard committed, and resumed in-process on 8 logical GPUs, every plan and
balance decision on disk is what a fresh policy computes from the committed manifests alone,
byte for byte, and the index holds exactly the kept samples; ``show --regenerate`` reproduces
a closed-loop sample whose plan file is gone. An uninterrupted build, on any
number of GPUs, is that same function of the same prefix."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from factory.commands.show import regenerate
from factory.engine.balance import balance_policy
from factory.engine.build import build
from factory.engine.policy import CommittedPrefix
from factory.plan import Planner
from factory.recipe import recipe_from_dict
from manifests.balance import balance_path, read_surplus
from manifests.layout import RunLayout
from tests.engine.cli_builds import build_killed_at
from tests.engine.conftest import standin_doc

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.subprocess]

BALANCE = {
    "enabled": True,
    "round_shards": 2,
    "round_lag_shards": 1,
    "emotion_tolerance": 0.1,  # shares a build of 48 samples can meet
    "demographic_tolerance": 0.1,
    "au_share_tolerance": 0.1,
}


def _doc(out: Path, gpus: int) -> dict[str, Any]:
    return standin_doc(
        out,
        dataset={"target": 48, "shard_size": 6},
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


def _reviewed(out: Path) -> list[int]:
    """The shards the build's balance policy decided: done, with a balance file, from 0 with no gap."""
    layout = RunLayout(out, "t")
    shards = []
    while balance_path(layout.shard_paths(len(shards))).exists():
        shards.append(len(shards))
    return shards


def test_closed_loop_killed_on_1_gpu_resumed_on_8_is_its_committed_prefix(ray_cluster: Any, tmp_path: Path) -> None:
    out = tmp_path / "run"
    recipe_path = _toml(_doc(out, 1), tmp_path / "one.toml")
    build_killed_at(recipe_path, "committed:3", ("--local-gpus", "1"))  # shard 3: round 1's, planned from shard 0
    summary = build(recipe_from_dict(_doc(out, 8)), quiet=True)  # the resume, on 8 GPUs
    assert max(summary.indexed_shards) >= 6  # rounds 1 and 2 at least: planned from measured yields

    recipe = recipe_from_dict(_doc(out, 8))
    layout = RunLayout(out, "t")
    done = _reviewed(out)
    decisions = {s: balance_path(layout.shard_paths(s)).read_bytes() for s in done}
    fresh = balance_policy(recipe, out, None, Planner(recipe))
    assert fresh is not None
    fresh.review(CommittedPrefix(tuple(done), {}, recipe.dataset.target, len(done)))
    assert {s: balance_path(layout.shard_paths(s)).read_bytes() for s in done} == decisions
    plannable = fresh.rounds.send_below(len(done)) or 0
    planned = sorted(s for p in (out / "plans").glob("t-*.plan.parquet") if (s := int(p.name[2:8])) < plannable)
    assert planned[-1] >= 6
    for shard in planned:
        assert pq.read_table(layout.plan_path(shard)).equals(fresh.shard(shard)), shard

    kept = []
    for shard in summary.indexed_shards:
        table = pq.read_table(layout.shard_paths(shard).parquet)
        surplus = read_surplus(layout.shard_paths(shard))
        kept += [
            k
            for k, a in zip(table["key"].to_pylist(), table["accepted"].to_pylist(), strict=True)
            if a and k not in surplus
        ]
    assert pq.read_table(out / "index.parquet")["key"].to_pylist() == kept[: recipe.dataset.target]

    # show --regenerate of a closed-loop sample whose plan file is gone: its manifest row is its plan
    shard = summary.indexed_shards[-1]
    layout.plan_path(shard).unlink()
    key = next(k for k in kept if k.startswith(f"{shard:06d}_"))
    assert regenerate(out, key)[1].identical

"""The shard worker in process (it is plain Python; Ray only places it): progress per
micro-batch, a dropped copy that cleans up after itself, and first commit wins."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from bench.standin import STANDIN
from factory.engine.pipeline import make_context, recipe_pipeline
from factory.engine.worker import ShardWorker
from factory.plan import Planner
from factory.recipe import Recipe, recipe_from_dict
from manifests.writer import is_done
from tests.engine.conftest import standin_doc


def _recipe(out: Path, **sections: Any) -> Recipe:
    return recipe_from_dict(standin_doc(out, **sections))


def _described(recipe: Recipe, shard: int) -> tuple[list[dict], float]:
    plan = Planner(recipe).shard(shard)
    prompt = recipe_pipeline(recipe, make_context(recipe, Path(recipe.dataset.out)), ["prompt"])
    return prompt.run(plan.to_pylist()), 0.0


def _temps(out: Path) -> list[Path]:
    return [p for p in (out / "shards").glob(".*") if p.name != ".locks"]


def test_progress_counts_micro_batches_while_a_shard_runs(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path / "out", generator={"name": STANDIN, "seconds_per_batch": 0.3})
    worker = ShardWorker(recipe, str(tmp_path / "out"))
    described = _described(recipe, 0)
    seen: list[dict] = []
    runner = threading.Thread(target=lambda: seen.append(worker.run_shard(0, described, 1, ticket=7)))
    runner.start()
    steps = []
    while runner.is_alive():
        calls = worker.progress()["calls"]
        if 7 in calls:
            steps.append(calls[7]["steps"])
            assert calls[7]["shard"] == 0 and calls[7]["planned"] == 6
        time.sleep(0.05)
    runner.join()
    assert seen[0]["accepted"] == 6
    assert len(set(steps)) >= 2 and steps == sorted(steps)  # steps grow while the shard runs
    assert worker.progress()["calls"] == {}  # a finished call is no longer reported


def test_a_dropped_copy_stops_at_its_next_batch_and_leaves_no_temp_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    recipe = _recipe(out, generator={"name": STANDIN, "seconds_per_batch": 0.5})
    worker = ShardWorker(recipe, str(out))
    described = _described(recipe, 0)
    seen: list[dict] = []
    runner = threading.Thread(target=lambda: seen.append(worker.run_shard(0, described, 1, ticket=3)))
    runner.start()
    deadline = time.time() + 30
    while worker.progress()["calls"].get(3, {}).get("state") != "running" and time.time() < deadline:
        time.sleep(0.01)
    assert _temps(out)  # the shard's tar is being written
    worker.abandon(3)
    runner.join(timeout=30)
    assert seen == [{"shard": 0, "superseded": True, "reason": "shard 0: another copy was committed first"}]
    assert not _temps(out) and not is_done(out / "shards", "t", 0)


def test_the_first_commit_wins_and_the_late_copy_reports_itself_superseded(tmp_path: Path) -> None:
    out = tmp_path / "out"
    recipe = _recipe(out)
    first, second = ShardWorker(recipe, str(out)), ShardWorker(recipe, str(out))
    described = _described(recipe, 2)
    stats = first.run_shard(2, described, 1, ticket=1)
    before = (out / "shards" / "t-000002.stats.json").read_bytes()
    assert second.run_shard(2, described, 1, ticket=2)["superseded"] is True
    assert (out / "shards" / "t-000002.stats.json").read_bytes() == before  # never replaced
    assert stats["accepted"] == 6 and not _temps(out)


def test_a_stage_error_is_not_taken_for_a_lost_race(tmp_path: Path) -> None:
    out = tmp_path / "out"
    recipe = _recipe(out, generator={"name": STANDIN, "fail_on_shards": [4]})
    with pytest.raises(RuntimeError, match="injected failure on shard 4"):
        ShardWorker(recipe, str(out)).run_shard(4, _described(recipe, 4), 1, ticket=1)
    assert not _temps(out)

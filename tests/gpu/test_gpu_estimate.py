"""`factory plan --from-bench`'s arithmetic on a stated cost model (no models, no bench run)."""

from __future__ import annotations

from pathlib import Path

import pytest

from factory.commands.gpu_estimate import BenchFile, BenchFileError, gpu_estimates, read_bench
from factory.recipe import Recipe, read_recipe_file, recipe_from_dict

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "mifa-1m.toml"
BENCH = BenchFile.model_validate(
    {
        "kind": "mifa-bench-gpu",
        "size": "full",
        "device": {"name": "NVIDIA H100 80GB HBM3"},
        "cost_model": {"fineface": {"unet_s_per_sample_step": 0.01, "other_s_per_sample": 0.5}},
    }
)


def _recipe(out: Path, balance: bool) -> Recipe:
    doc = read_recipe_file(RECIPE)
    doc["dataset"].update(target=1000, out=str(out))
    doc["engine"]["batch_size"] = 16
    doc["balance"] = {"enabled": balance}
    return recipe_from_dict(doc)


def test_gpu_hours_follow_the_cost_model_and_the_closed_loop_bound(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path / "run", balance=False)
    found = gpu_estimates(recipe, BENCH, gpus=8, acceptance=0.5, steps=(50, 20))
    fifty, twenty = found
    assert fifty.batch_seconds == pytest.approx(16 * (0.5 + 0.01 * 50))  # 16 s
    assert twenty.batch_seconds == pytest.approx(16 * (0.5 + 0.01 * 20))
    assert fifty.open_loop.samples == 2000  # target / acceptance
    assert fifty.open_loop.gpu_hours == pytest.approx(125 * 16 / 3600)  # 125 batches of 16 s
    assert fifty.open_loop.wall_hours == pytest.approx(fifty.open_loop.gpu_hours / 8)
    assert fifty.closed_loop_bound_hours is None  # mifa-1m builds open loop

    closed = _recipe(tmp_path / "run", balance=True)
    bound = gpu_estimates(closed, BENCH, gpus=8, acceptance=0.5, steps=(50,))[0].closed_loop_bound_hours
    assert bound == pytest.approx(3000 / 16 * 16 / 3600)  # max_generated_per_accepted 3 x target planned


def test_a_bench_file_that_is_not_json_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bench.json"
    path.write_text("{not json")
    with pytest.raises(BenchFileError, match=r"--from-bench .*bench.json: not JSON \(line 1"):
        read_bench(path)
    with pytest.raises(BenchFileError, match="cannot be read"):
        read_bench(tmp_path / "missing.json")

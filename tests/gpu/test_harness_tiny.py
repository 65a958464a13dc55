"""The GPU harness at tiny size on the CPU: the smoke test's checks, the bench's rows and result
file, the overlapped chain writing what the serial one writes, and `factory plan --from-bench`
on the file the harness wrote. Correctness of the harness, not speed."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from bench.bench_gpu import FULL_STEPS, markdown, measure
from bench.gpu_models import ModelFolders
from factory.cli import app
from manifests.layout import shard_paths
from tests.gpu.smoke import check_smoke, device_guard, run_smoke

# One batch size and one variant keep the test short; the device run measures them all.
# The tests that build the tiny models and run diffusion on them take tens of seconds, not a
# fast-tier second: `slow` (they start nothing a tier kind names; make test still runs them).
HARNESS = pytest.mark.slow

TINY_SETTINGS = {"batches": (2,), "variant_batch": 2, "chain_batch": 2, "steps": 2, "variants": ("bfloat16",)}


@HARNESS
def test_the_smoke_harness_runs_the_shard_worker_at_tiny_size_on_cpu(tiny_models: ModelFolders, tmp_path: Path) -> None:
    smoke = run_smoke(tiny_models, tmp_path / "out", batch_size=2, steps=2)
    check_smoke(smoke, "cpu", generator_dtype="float32")
    assert smoke.onnx_providers and all("CPUExecutionProvider" in p for p in smoke.onnx_providers.values())


def test_the_device_guard_sees_an_input_on_another_device() -> None:
    holder = SimpleNamespace(net=torch.nn.Linear(2, 2, device="meta"))
    pipeline: Any = SimpleNamespace(stages=[SimpleNamespace(name="stage", **vars(holder))])
    with device_guard([pipeline]) as seen, pytest.raises((RuntimeError, NotImplementedError)):
        holder.net(torch.zeros(1, 2))
    assert seen == ["stage.net: a cpu input to a meta module"]


@pytest.fixture(scope="module")
def tiny_bench(tiny_models: ModelFolders, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    work = tmp_path_factory.mktemp("bench_gpu")
    result = measure("tiny", work, "cpu", settings=TINY_SETTINGS, folders=tiny_models)
    path = work / "bench_gpu.json"
    path.write_text(json.dumps(result))
    return result, path


@HARNESS
def test_the_bench_measures_both_generators_the_variants_and_the_chain(tiny_bench: tuple[dict[str, Any], Path]) -> None:
    result, _ = tiny_bench
    rows = {(r["generator"], r["variant"], r["batch"]) for r in result["rows"]}
    assert rows == {
        ("diffusers", "float16", 2),
        ("fineface", "float16", 2),
        ("fineface", "bfloat16", 2),
    }
    for r in result["rows"]:
        assert r["images_per_s"] > r[f"images_per_s_at_{FULL_STEPS}_steps"] > 0
        assert 0 < r["unet_share"] < 1
    chain = result["chain"]
    for mode in ("serial", "overlapped"):
        assert 0 < chain[mode]["outside_generator_share"] < 1
        assert chain[mode]["generator_s"] >= chain[mode]["unet_s"] > 0
    assert set(result["cost_model"]) == {"diffusers", "fineface"}
    text = markdown(result, "python -m bench.bench_gpu --size tiny")
    assert "| fineface | bfloat16 (float32 on a CPU) | 2 |" in text and "overlapped (as the shard worker)" in text


@HARNESS
def test_the_overlapped_chain_writes_what_the_serial_chain_writes(tiny_bench: tuple[dict[str, Any], Path]) -> None:
    _, path = tiny_bench
    chain = path.parent / "chain"
    serial, overlapped = (shard_paths(chain / mode / "shards", "gpu", 0) for mode in ("serial", "overlapped"))
    assert pq.read_table(serial.parquet).num_rows == 4
    assert pq.read_table(serial.parquet).equals(pq.read_table(overlapped.parquet))
    assert serial.tar.read_bytes() == overlapped.tar.read_bytes()


@HARNESS
def test_plan_estimates_gpu_hours_from_the_bench_file(tiny_bench: tuple[dict[str, Any], Path], tmp_path: Path) -> None:
    _, path = tiny_bench
    recipe = Path(__file__).resolve().parents[2] / "recipes" / "mifa-1m.toml"
    args = ["plan", str(recipe), "--estimate", "--measure", "--from-bench", str(path), "--acceptance", "0.5"]
    args += ["--target", "10000"]  # the plan's statistics for 1M samples would take the test's time
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("estimate")]
    rows = [line for line in lines if "| fineface |" in line]
    assert [row.split("|")[2].strip() for row in rows] == ["50", "30", "20"]
    hours = [float(row.split("|")[4].replace(",", "")) for row in rows]
    assert hours[0] > hours[1] > hours[2] > 0
    assert "20,000 samples to generate" in result.output and "8 GPUs" in result.output
    assert "cannot be measured here" in result.output and "tiny models" in result.output


def test_plan_names_a_bench_file_that_is_not_one(tmp_path: Path) -> None:
    bad = tmp_path / "bench.json"
    bad.write_text(json.dumps({"kind": "mifa-bench-gpu", "size": "full", "device": {}, "cost_model": {}}))
    recipe = Path(__file__).resolve().parents[2] / "recipes" / "mifa-1m.toml"
    result = CliRunner().invoke(app, ["plan", str(recipe), "--target", "100", "--from-bench", str(bad)])
    assert result.exit_code == 2
    assert f"--from-bench {bad}: field cost_model" in result.output
    assert "Traceback" not in result.output

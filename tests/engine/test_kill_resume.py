"""kill -9 of a build at a random moment, then the same command: the dataset equals an
uninterrupted build's (same shards, same keys, no duplicates, every tar readable)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import webdataset as wds

from bench.standin import STANDIN
from tests.engine.conftest import REPO, standin_doc

pytestmark = pytest.mark.ray


def _write_recipe(path: Path, out: Path) -> Path:
    doc = standin_doc(
        out, dataset={"target": 60, "shard_size": 6}, generator={"name": STANDIN, "seconds_per_batch": 0.5}
    )
    lines = []
    for section, body in doc.items():
        if isinstance(body, list):
            lines.insert(0, f"{section} = {json.dumps(body)}")
    for section, body in doc.items():
        if isinstance(body, dict):
            lines.append(f"[{section}]")
            lines += [f"{k} = {json.dumps(v)}" for k, v in body.items()]
    path.write_text("\n".join(lines) + "\n")
    tomllib.loads(path.read_text())  # the helper writes valid TOML
    return path


def _build_cmd(recipe: Path) -> list[str]:
    return [sys.executable, "-m", "factory.cli", "build", str(recipe), "--quiet"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def _dataset(out: Path) -> tuple[list[int], list[str]]:
    index = json.loads((out / "index.json").read_text())
    keys = pq.read_table(out / "index.parquet").column("key").to_pylist()
    return index["shards"], keys


def _tar_keys(out: Path, shards: list[int]) -> list[str]:
    keys: list[str] = []
    for shard in shards:
        tar = out / "shards" / f"t-{shard:06d}.tar"
        keys += [s["__key__"] for s in wds.WebDataset(str(tar), shardshuffle=False)]
    return keys


def test_kill_9_then_resume_equals_uninterrupted_build(tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    ref = subprocess.run(
        _build_cmd(_write_recipe(tmp_path / "ref.toml", reference)),
        env=_env(),
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    # What a user sees: no Ray start-up notice about token authentication, no traceback.
    assert "Token authentication" not in ref.stderr and "Traceback" not in ref.stderr, ref.stderr
    ref_shards, ref_keys = _dataset(reference)

    out = tmp_path / "killed"
    recipe = _write_recipe(tmp_path / "killed.toml", out)
    seed = random.randrange(1_000_000)
    delay = random.Random(seed).uniform(0.0, 2.5)  # after the first commit; the build runs ~5 s more
    proc = subprocess.Popen(
        _build_cmd(recipe), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    # Ray's start-up time varies with load: time the kill from the first committed shard.
    deadline = time.time() + 300
    while time.time() < deadline and not list((out / "shards").glob("*.stats.json")):
        time.sleep(0.05)
    time.sleep(delay)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and everything it started
    proc.wait()
    assert not (out / "index.json").exists(), f"the build finished before the kill at +{delay:.1f}s (seed {seed})"

    resumed = subprocess.run(_build_cmd(recipe), env=_env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    shards, keys = _dataset(out)
    assert shards == ref_shards, f"kill at +{delay:.1f}s (seed {seed})"
    assert keys == ref_keys
    assert len(set(keys)) == len(keys)
    tar_keys = _tar_keys(out, shards)
    assert sorted(tar_keys) == sorted(ref_keys) and len(set(tar_keys)) == len(tar_keys)
    assert not list((out / "shards").glob("*.tmp*")) and not list((out / "shards").glob(".*tmp*"))

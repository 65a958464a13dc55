"""The stand-in recipe built by the ``factory`` CLI in a child process, as a user runs it, and
killed with SIGKILL at a named point (``manifests.killpoint``): the helpers of the kill -9
tests on local disk and on S3."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import pyarrow.parquet as pq
import webdataset as wds

from bench.standin import STANDIN
from tests.engine.conftest import REPO, standin_doc


def write_recipe(path: Path, out: Path | str, workers: int = 1) -> Path:
    """10 shards of 6 stand-in samples into ``out`` (a folder or an s3:// URL), as TOML, built by
    ``workers`` CPU workers (the dataset is the same for any number)."""
    doc = standin_doc(
        out,  # type: ignore[arg-type]
        dataset={"target": 60, "shard_size": 6},
        generator={"name": STANDIN, "seconds_per_batch": 0.0},
        engine={"cpu_workers": workers},
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


def build_cmd(recipe: Path) -> list[str]:
    return [sys.executable, "-m", "factory.cli", "build", str(recipe), "--quiet"]


def cli_env(kill_at: str | None = None) -> dict[str, str]:
    """The child's environment; ``kill_at`` names its kill point (``MIFA_TEST_KILL_AT``)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    env.pop("MIFA_TEST_KILL_AT", None)
    if kill_at is not None:
        env["MIFA_TEST_KILL_AT"] = kill_at
    return env


def run_build(recipe: Path) -> subprocess.CompletedProcess[str]:
    """An uninterrupted ``factory build`` (or a resume): its result, output captured."""
    return subprocess.run(build_cmd(recipe), env=cli_env(), capture_output=True, text=True, timeout=600)


def build_killed_at(recipe: Path, point: str, extra: tuple[str, ...] = ()) -> None:
    """``factory build`` in a new session (its process group: the driver, Ray and its workers),
    SIGKILLed by the first of its processes to reach ``point``; fails if it ended otherwise.
    ``extra``: more options of the command."""
    with tempfile.TemporaryFile() as err:  # a file, not a pipe: no reader to wait for
        proc = subprocess.Popen(
            [*build_cmd(recipe), *extra],
            env=cli_env(kill_at=point),
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )
        try:
            proc.wait(timeout=600)
        finally:
            with contextlib.suppress(ProcessLookupError):  # what outlived the driver (none, if the point fired)
                os.killpg(proc.pid, signal.SIGKILL)
        err.seek(0)
        printed = err.read().decode(errors="replace")[-2000:]
    assert proc.returncode == -signal.SIGKILL, f"the build was not killed at {point} ({proc.returncode}): {printed}"


def dataset(out: Path) -> tuple[list[int], list[str]]:
    """(index.json's shards, index.parquet's keys) of a committed dataset."""
    index = json.loads((out / "index.json").read_text())
    keys = pq.read_table(out / "index.parquet").column("key").to_pylist()
    return index["shards"], keys


def tar_keys(out: Path, shards: list[int]) -> list[str]:
    """Every sample key in the tars of ``shards``, in order."""
    keys: list[str] = []
    for shard in shards:
        tar = out / "shards" / f"t-{shard:06d}.tar"
        keys += [s["__key__"] for s in wds.WebDataset(str(tar), shardshuffle=False)]
    return keys

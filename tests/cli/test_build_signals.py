"""SIGTERM stops a build cleanly: exit 130 as Ctrl-C does (typer's code for an interrupt), no
traceback, Ray shut down (nothing of
the build's process group left), the lock free, no temp file left; the same command then
resumes it to a complete dataset."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from bench.standin import STANDIN
from factory.engine.rundir import RunDir
from tests.engine.conftest import REPO, standin_doc

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.subprocess]


def _recipe(path: Path, out: Path) -> Path:
    doc = standin_doc(
        out, dataset={"target": 36, "shard_size": 6}, generator={"name": STANDIN, "seconds_per_batch": 0.5}
    )
    lines = [f"{k} = {json.dumps(v)}" for k, v in doc.items() if isinstance(v, list)]
    for section, body in doc.items():
        if isinstance(body, dict):
            lines += [f"[{section}]", *(f"{k} = {json.dumps(v)}" for k, v in body.items())]
    path.write_text("\n".join(lines) + "\n")
    return path


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_sigterm_stops_a_build_cleanly_and_the_same_command_resumes_it(tmp_path: Path) -> None:
    out = tmp_path / "run"
    command = [sys.executable, "-m", "factory.cli", "build", str(_recipe(tmp_path / "r.toml", out)), "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    proc = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    deadline = time.time() + 300  # Ray's start-up time varies with load: signal once a shard is committed
    while time.time() < deadline and not list((out / "shards").glob("*.stats.json")) and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the build ended before it could be interrupted"
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "unexpected" not in stderr, stderr
    gone = time.time() + 60  # Ray's own processes, started in the build's process group, stop too
    while _group_alive(proc.pid) and time.time() < gone:
        time.sleep(0.2)
    assert not _group_alive(proc.pid), "processes of the interrupted build are still running"
    assert not RunDir(out, "t").is_held()
    assert not (out / "index.json").exists()
    assert not list((out / "shards").glob("*.tmp*")) and not list((out / "shards").glob(".*tmp*"))

    resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    keys = pq.read_table(out / "index.parquet").column("key").to_pylist()
    assert len(keys) == len(set(keys)) and json.loads((out / "index.json").read_text())["target"] == 36

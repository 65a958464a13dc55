"""The kill points of the crash tests (``manifests.killpoint``): inert unless named, and where
named, the process dies by SIGKILL with the shard's files exactly as the point says (a
plain Python child in a session of its own, so the kill reaches nothing else)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from manifests import killpoint
from manifests.layout import shard_paths

REPO = Path(__file__).resolve().parents[2]

WRITE_TWO_SHARDS = (
    "import sys; from pathlib import Path; import numpy as np; from tests.manifests import write_shard; "
    "out = Path(sys.argv[1]); rng = np.random.default_rng(0); "
    "write_shard(out, 'd', 0, 4, rng=rng); print('shard 0 done', flush=True); "
    "write_shard(out, 'd', 1, 4, rng=rng); print('shard 1 done', flush=True)"
)


def _write_two_shards(out: Path, kill_at: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "MIFA_TEST_KILL_AT": kill_at}
    return subprocess.run(
        [sys.executable, "-c", WRITE_TWO_SHARDS, str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        start_new_session=True,
    )


def test_only_the_named_point_and_shard_kill(monkeypatch: pytest.MonkeyPatch) -> None:
    kills: list[tuple[int, int]] = []
    monkeypatch.setattr(os, "killpg", lambda group, sig: kills.append((group, sig)))
    monkeypatch.setattr(killpoint, "_POINT", "")  # unset: what every real build sees
    for point in killpoint.KILL_POINTS:
        killpoint.reached(point, 2)
    assert kills == []
    monkeypatch.setattr(killpoint, "_POINT", "renamed")
    monkeypatch.setattr(killpoint, "_SHARD", "2")
    killpoint.reached("renamed", 1)
    killpoint.reached("committed", 2)
    assert kills == []
    killpoint.reached("renamed", 2)
    # The session leader's group (the build's driver), then this process's own group.
    assert kills == [(os.getsid(0), signal.SIGKILL), (os.getpgid(0), signal.SIGKILL)]


@pytest.mark.parametrize(
    ("kill_at", "tar", "stats"),
    [("commit:1", False, False), ("renamed:1", True, False), ("committed:1", True, True)],
)
def test_the_writer_dies_at_the_named_point_of_the_named_shard(
    tmp_path: Path, kill_at: str, tar: bool, stats: bool
) -> None:
    done = _write_two_shards(tmp_path, kill_at)
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert done.stdout == "shard 0 done\n"  # shard 0 passed the same point: only shard 1's kills
    paths = shard_paths(tmp_path, "d", 1)
    assert paths.tar.exists() is tar and paths.parquet.exists() is tar
    assert paths.stats.exists() is stats
    assert shard_paths(tmp_path, "d", 0).stats.exists()


def test_a_point_that_does_not_exist_is_refused_at_import(tmp_path: Path) -> None:
    done = _write_two_shards(tmp_path, "comitted:1")
    assert done.returncode == 1 and "MIFA_TEST_KILL_AT='comitted'" in done.stderr, done.stderr
    assert not list(tmp_path.iterdir())

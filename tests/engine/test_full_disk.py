"""A real full disk (issue 21, class 4): the kill tests' stand-in recipe built by the ``factory``
CLI into a 2 MiB tmpfs that a filler file leaves a few shards of room on. The build stops with
one line naming the run folder and the fix; the shards it committed stay as they were; after
the filler is deleted the same command resumes to the uninterrupted build's dataset.

No root needed: the tmpfs is mounted in a user + mount namespace of our own (``unshare -Urm``,
held open by a ``sleep``), the builds run in it through ``nsenter``, and this test reads the
folder through ``/proc/<holder>/root``. The mount goes when the holder does. Without user
namespaces (or util-linux's unshare / nsenter) the test fails saying so: it never skips.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.engine.cli_builds import build_cmd, cli_env, dataset, tar_keys, write_recipe

pytestmark = [pytest.mark.slow, pytest.mark.subprocess]

SIZE = 2 * 1024 * 1024
ROOM = 320 * 1024  # run.json, the plans (~40 KB) and a few of the ~47 KB shards, not all ten


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[tuple[list[str], Path, Path]]:
    """(command prefix that runs inside the namespace, the tmpfs as the namespace sees it, the
    same folder as this process reaches it)."""
    missing = [tool for tool in ("unshare", "nsenter") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"the full-disk test needs util-linux's {' and '.join(missing)} on PATH", pytrace=False)
    mount = tmp_path / "disk"
    mount.mkdir()
    script = f"mount -t tmpfs -o size={SIZE} tmpfs '{mount}' && exec sleep 3600"
    holder = subprocess.Popen(
        ["unshare", "-Urm", "sh", "-c", script], stderr=subprocess.PIPE, start_new_session=True, text=True
    )
    try:
        deadline = time.monotonic() + 30
        while f" {mount} tmpfs " not in Path(f"/proc/{holder.pid}/mounts").read_text(errors="replace"):
            if holder.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    "could not mount a tmpfs in a user namespace of our own (`unshare -Urm`: are user "
                    f"namespaces enabled? kernel.unprivileged_userns_clone, user.max_user_namespaces): "
                    f"{holder.stderr.read() if holder.poll() is not None else 'timed out'}",  # type: ignore[union-attr]
                    pytrace=False,
                )
            time.sleep(0.1)
        enter = ["nsenter", "--target", str(holder.pid), "--user", "--mount", "--preserve-credentials", "--"]
        yield enter, mount, Path(f"/proc/{holder.pid}/root") / mount.relative_to("/")
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)


def _committed(view: Path) -> dict[str, str]:
    """sha256 of every file of the shards that are done (their stats written last)."""
    done = [json.loads(p.read_text())["shard"] for p in (view / "shards").glob("t-*.stats.json")]
    files = [f for shard in done for f in (view / "shards").glob(f"t-{shard:06d}.*")]
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def test_a_full_disk_stops_with_one_line_then_the_same_command_resumes(
    small_disk: tuple[list[str], Path, Path], standin_reference: Path, tmp_path: Path
) -> None:
    enter, mount, view = small_disk
    (view / "filler").write_bytes(bytes(SIZE - ROOM))
    command = [*enter, *build_cmd(write_recipe(tmp_path / "full.toml", mount / "out"))]
    out = view / "out"

    stopped = subprocess.run(command, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert stopped.returncode == 1, stopped.stderr[-3000:]
    assert "Traceback" not in stopped.stderr
    line = stopped.stderr.strip().splitlines()[-1]
    assert stopped.stderr.count("error: ") == 1 and line.startswith("error: build stopped: the disk is full"), line
    assert f"the disk holding {mount / 'out'} has no space left; free space on it" in line
    assert "run the same `factory build` command again" in line and "worker process or node died" not in line
    committed = _committed(out)
    assert committed, "no shard fitted before the disk filled: make ROOM larger"
    assert not (out / "index.json").exists()

    (view / "filler").unlink()  # make room, as the line says
    resumed = subprocess.run(command, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    assert {name: digest for name, digest in _committed(out).items() if name in committed} == committed
    shards, keys = dataset(out)
    assert (shards, keys) == dataset(standin_reference) and len(set(keys)) == len(keys)
    assert sorted(tar_keys(out, shards)) == sorted(keys)
    for shard in shards:
        tar = f"shards/t-{shard:06d}.tar"
        assert (out / tar).read_bytes() == (standin_reference / tar).read_bytes(), tar

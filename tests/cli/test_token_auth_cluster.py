"""Issue 21 class 6, followed for real: a Ray head started with token authentication on
(``RAY_AUTH_MODE=token``, its own token, temp dir and port on 127.0.0.1), a ``factory build
--address`` without the token (or with a wrong one) refused with our one line naming what to set
(exit 2), and the same command with the advised environment builds on that cluster.

The head runs as a plain ``ray start --head`` in a session of its own, with ``HOME`` pointed
at a scratch folder (so neither side finds a token in the user's ``~/.ray``); it is stopped by
signalling that session's process group only, never with ``ray stop``, which would stop every
Ray cluster on the machine.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.commands.conftest import REPO, demo_recipe

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.subprocess]

RAY = Path(sys.executable).with_name("ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def _stop(group: int) -> None:
    """SIGTERM to the head's process group, then SIGKILL to whatever of it is left."""
    for sig, wait_s in ((signal.SIGTERM, 5), (signal.SIGKILL, 10)):
        try:
            os.killpg(group, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                os.killpg(group, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)


def _head_log(scratch: Path) -> str:
    """What the head printed, and which of its processes exited (for a failing assertion)."""
    exits = "".join(p.read_text() for p in (scratch / "ray").glob("session_*/logs/ray_process_exit.log"))
    return ((scratch / "head.log").read_text() + exits)[-3000:]


@pytest.fixture
def token_head() -> Iterator[tuple[str, str, Path, dict[str, str]]]:
    """(address, token, scratch folder, base environment) of a token-auth head; stopped after."""
    scratch = Path(tempfile.mkdtemp(prefix="rayauth", dir="/tmp"))  # Ray's socket paths must stay short
    token, port = secrets.token_hex(16), _free_port()
    base = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")},
        "HOME": str(scratch / "home"),
        "PYTHONPATH": str(REPO),
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    }
    (scratch / "home").mkdir()
    argv = [str(RAY), "start", "--head", "--port", str(port), "--node-ip-address", "127.0.0.1"]
    argv += ["--temp-dir", str(scratch / "ray"), "--num-cpus", "4", "--num-gpus", "0", "--include-dashboard", "false"]
    head = subprocess.Popen(
        argv,
        env={**base, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token},
        stdout=subprocess.DEVNULL,
        stderr=open(scratch / "head.log", "wb"),  # noqa: SIM115 (the child owns it)
        start_new_session=True,
    )
    try:
        assert head.wait(timeout=180) == 0 and _answers(port), _head_log(scratch)  # started, then returned
        yield f"127.0.0.1:{port}", token, scratch, base
    finally:
        if head.poll() is None:  # `ray start` itself hung
            head.kill()
            head.wait()
        _stop(head.pid)  # its processes keep the process group of the session it started
        shutil.rmtree(scratch, ignore_errors=True)


def _build(recipe: Path, address: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "factory.cli", "build", str(recipe), "--gpus", "0", "--quiet", "--address", address]
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)


def test_a_token_auth_cluster_refuses_then_builds_with_the_advised_environment(
    token_head: tuple[str, str, Path, dict[str, str]], tmp_path: Path
) -> None:
    address, token, scratch, base = token_head
    out = tmp_path / "run"
    recipe = demo_recipe(out, tmp_path / "demo.toml")
    recipe.write_text(recipe.read_text().replace("target = 13", "target = 4"))
    refused = _build(recipe, address, base)
    assert refused.returncode == 2, refused.stderr[-3000:]
    line = refused.stderr.strip()
    assert line.startswith("error: ") and "\n" not in line, refused.stderr[-3000:]  # no Ray retry lines either
    assert address in line and "RAY_AUTH_MODE=token" in line and "RAY_AUTH_TOKEN" in line, line
    assert not (out / "index.json").exists()
    wrong = _build(recipe, address, {**base, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)})
    assert wrong.returncode == 2 and "the token set does not match the head's" in wrong.stderr, wrong.stderr[-3000:]
    token_file = tmp_path / "token"
    token_file.write_text(token)
    advised = {**base, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file)}
    built = _build(recipe, address, advised)
    assert built.returncode == 0, built.stderr[-3000:] + _head_log(scratch)
    assert (out / "index.json").is_file()

"""Fixtures of the dataset-tool tests: a small demo build, and headless Chromium."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def demo_recipe(out: Path, path: Path) -> Path:
    """recipes/demo.toml (grammar prompts, warp, dlib, two detectors, agreement, realism,
    filters) made small: shards of 4, target 13, so the dataset has at least 4 shards."""
    text = (REPO / "recipes" / "demo.toml").read_text()
    for old, new in (
        ("target = 300", "target = 13"),
        ("shard_size = 50", "shard_size = 4"),
        ("batch_size = 10", "batch_size = 4"),
        ('out = "runs/demo"', f"out = {str(out)!r}".replace("'", '"')),
    ):
        assert old in text, f"recipes/demo.toml no longer has {old!r}; update this fixture"
        text = text.replace(old, new)
    path.write_text(text)
    return path


def build(recipe: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """`factory build` in its own process (it starts and stops a local Ray cluster)."""
    return subprocess.run(
        [sys.executable, "-m", "factory.cli", "build", str(recipe), "--quiet", *extra],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"},
    )


@pytest.fixture(scope="session")
def demo_build(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(run directory, recipe) of a small demo build, made once per session."""
    folder = tmp_path_factory.mktemp("demo")
    recipe = demo_recipe(folder / "run", folder / "demo.toml")
    result = build(recipe)
    assert result.returncode == 0, result.stderr[-3000:]
    return folder / "run", recipe


def _install_chromium() -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"]
    result = subprocess.run(install, env=env, capture_output=True, text=True, timeout=1200)
    if result.returncode != 0:  # stale package lists: refresh them once
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, text=True, timeout=600)
        result = subprocess.run(install, env=env, capture_output=True, text=True, timeout=1200)
    if result.returncode != 0:
        pytest.fail(f"could not install Debian's chromium for the report test:\n{result.stderr[-2000:]}")


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's headless Chromium; installed with apt-get when missing (CI runs as root). Never skipped."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.geteuid() != 0:
            pytest.fail(
                "the report test needs headless Chromium: run `apt-get install -y chromium` "
                "(Debian), or run the tests as root so they install it themselves"
            )
        _install_chromium()
        found = shutil.which("chromium")
    assert found, "chromium installed but not on PATH"
    return found

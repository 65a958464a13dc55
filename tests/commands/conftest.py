"""Fixtures of the dataset-tool tests: a small demo build, and headless Chromium (installed by
`make test-deps`, not here)."""

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
    filters) made small: shards of 4, target 13, so the dataset has at least 4 shards, built by
    one CPU worker, open loop."""
    text = (REPO / "recipes" / "demo.toml").read_text()
    for old, new in (
        ("target = 300", "target = 13"),
        ("shard_size = 50", "shard_size = 4"),
        ("batch_size = 10", "batch_size = 4"),
        ("cpu_workers = 2", "cpu_workers = 1"),  # one worker process to start: the same dataset
        # open loop: 13 samples cannot hold shares to 0.01 (the closed loop has its own build tests)
        ("enabled = true", "enabled = false"),
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


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's headless Chromium, which `make test-deps` installs (a prerequisite of `make test`).
    Missing, the test fails saying so: never skipped, never installed from here."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail(
            "the report test needs headless Chromium and none is on PATH: run `make test-deps` "
            "(apt-get install chromium; Debian), or use `make test`, which runs it first",
            pytrace=False,
        )
    return found

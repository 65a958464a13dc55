"""Following the errors' advice works (issue 21, classes 3 and 4): one small Ray build that
fails on a bad bank image before Ray, is fixed as told, builds into the same --out over an
earlier recipe, is damaged, and is restored with exactly the commands status and verify name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import ray
from PIL import Image

from factory.cli import edge
from factory.engine.rundir import RunDir
from factory.recipe import load_recipe
from manifests.bank import open_bank
from tests.cli.conftest import error_line
from tests.cli.test_bad_inputs_run import _random_bytes, bank_folder
from tests.commands.conftest import build, demo_recipe


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.subprocess
def test_following_the_advice_into_the_same_out_builds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A first start that failed after run.json (an earlier recipe), then a bank image that is not
    an image: exit 2 before Ray; replacing the image as told and rerunning into the same --out
    builds, with the earlier recipe's change recorded."""
    out = tmp_path / "run"
    recipe = demo_recipe(out, tmp_path / "demo.toml")
    text = recipe.read_text().replace("target = 13", "target = 4")
    recipe.write_text(text.replace('bank = "builtin"', f'bank = "{bank_folder(tmp_path / "bank", b"not a png")}"'))
    earlier = load_recipe(recipe, seed=1)
    RunDir(out, earlier.dataset.name).start(earlier, None)
    assert edge.run(["build", str(recipe), "--gpus", "0", "--quiet"]) == 2
    assert "a.png" in error_line(capsys) and not ray.is_initialized()
    Image.fromarray(open_bank("builtin").image("builtin-astronaut")).save(tmp_path / "bank" / "a.png")
    result = build(recipe, "--gpus", "0")
    assert result.returncode == 0, result.stderr[-3000:]
    recorded = json.loads((out / "run.json").read_text())
    assert "dataset.seed" in recorded["recipe_changes"][0]["fields"]
    assert (out / "index.json").is_file()
    # Damage the manifest: status names it and what to run; each advised command works in turn.
    _random_bytes(RunDir(out, "mifa_demo").shard_paths(0).parquet)
    capsys.readouterr()
    assert edge.run(["status", str(out)]) == 1
    assert f"factory verify {out} --repair" in error_line(capsys)
    assert edge.run(["verify", str(out), "--repair"]) == 1
    capsys.readouterr()
    assert edge.run(["verify", str(out)]) == 1
    said = capsys.readouterr().out
    assert "moved" in said and f"factory retry {out}" in said, said
    assert "never committed" not in said and f"factory verify {out} --repair" not in said
    retried = subprocess.run(
        [sys.executable, "-m", "factory.cli", "retry", str(out), "--quiet"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
    )  # fmt: skip
    assert retried.returncode == 0, retried.stderr[-3000:]
    assert edge.run(["status", str(out), "--verify"]) == 0
    assert "verified:" in capsys.readouterr().out

"""`factory identities calibrate`: the identity check's thresholds measured on labelled real photos.

The measurement (a child process, as a user runs it) reproduces both defaults of
``stages.filters.DEFAULT_MIN_IDENTITY`` on the calibration set of ``identity_photos``: each is
the highest 0.05-grid threshold that keeps every same-person pair (dlib 0.9 with 12 of 109
different-person pairs passing; ArcFace 0.35, measured with insightface's w600k_mbf, none
passing). The arithmetic and the bad inputs are checked in process.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from factory.cli import app
from stages.faces.calibration import calibrate
from stages.filters import DEFAULT_MIN_IDENTITY
from tests.commands.identity_photos import arcface_mbf, write_photos
from tests.engine.cli_builds import cli_env


def test_thresholds_from_the_two_score_distributions() -> None:
    unit = [np.array([1.0, 0.0]), np.array([0.6, 0.8]), np.array([0.0, 1.0])]
    scored = calibrate(["a", "a", "b"], unit)  # a-a 0.6; a-b 0.0 and 0.8
    assert sorted(scored.same) == [0.6] and sorted(scored.different) == [0.0, 0.8]
    assert (scored.faces, scored.people, scored.keep_all) == (3, 2, 0.6)
    assert scored.threshold_at(0.0) == 0.81 and scored.passing(0.81) == 0 and scored.dropped_at(0.81) == 1
    assert scored.threshold_at(0.5) == 0.01 and scored.passing(0.01) == 1  # one of the two may pass
    assert scored.threshold_at(1.0) == -1.0 and scored.passing(scored.keep_all) == 1
    with pytest.raises(ValueError, match="two photos of at least one person"):
        calibrate(["a", "b"], unit[:2])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{tmp}/nowhere"], "is not a folder"),
        (["{tmp}"], "0 usable photos of 0 people"),
        (["{tmp}", "--embedder", "facenet"], "--embedder facenet: not one of dlib, arcface"),
        (["{tmp}", "--embedder", "arcface", "--arcface-onnx", "{tmp}/none.onnx"], "none.onnx does not exist"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["identities", "calibrate", *(a.format(tmp=tmp_path) for a in args)])
    assert result.exit_code == 2 and message in result.output and len(result.output.strip().splitlines()) == 1


def _kept_all(output: str, name: str) -> tuple[float, int, int]:
    """(threshold keeping every same-person pair, different pairs passing it, different pairs) of ``name``."""
    section = output.split(f"{name}: ")[1]
    found = re.search(r"every same-person pair kept: threshold ([\d.]+) \((\d+)/(\d+) different pass", section)
    assert found, output
    return float(found[1]), int(found[2]), int(found[3])


@pytest.mark.slow
@pytest.mark.subprocess
def test_both_default_thresholds_are_measured_on_real_photos(tmp_path: Path) -> None:
    photos, model = write_photos(tmp_path / "photos"), arcface_mbf(tmp_path)
    cmd = [sys.executable, "-m", "factory.cli", "identities", "calibrate", str(photos)]
    cmd += ["--embedder", "dlib", "--embedder", "arcface", "--arcface-onnx", str(model)]
    result = subprocess.run(cmd, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("17 faces of 8 people") == 2 and "left out" not in result.stdout
    assert "same-person pairs: 27, lowest 0.912" in result.stdout  # dlib's, as stages.filters says
    assert _kept_all(result.stdout, "dlib") == (DEFAULT_MIN_IDENTITY["dlib"], 12, 109)
    assert _kept_all(result.stdout, "arcface") == (DEFAULT_MIN_IDENTITY["arcface"], 0, 109)

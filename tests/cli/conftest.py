from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from manifests.index import write_index
from tests.manifests import write_shard

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _crash_files_in_tmp(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tracebacks of unexpected errors (a bug these tests would report) go to a temp folder."""
    monkeypatch.setenv("MIFA_CRASH_DIR", str(tmp_path_factory.mktemp("crashes")))


def error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """What the command printed on stderr, checked to be one line without a traceback."""
    captured = capsys.readouterr()
    text = captured.err
    assert "Traceback" not in text and "Traceback" not in captured.out
    assert text.endswith("\n") and text.count("\n") == 1, f"not one line: {text!r}"
    assert text.startswith("error: ")
    return text.rstrip("\n")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A committed dataset of two small shards, written without a build."""
    run_dir = tmp_path_factory.mktemp("run")
    rng = np.random.default_rng(0)
    for shard in range(2):
        write_shard(run_dir / "shards", "mifa", shard, 6, rng=rng, drop_every=3)
    write_index(run_dir, "mifa", [0, 1], target=8, surplus=[], failed={})
    return run_dir

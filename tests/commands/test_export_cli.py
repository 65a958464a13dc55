from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from factory.cli import app
from factory.cli.export import parse_size
from tests.manifests.synthetic import synthetic_dataset


@pytest.mark.parametrize(
    ("text", "size"),
    [("1GB", 10**9), ("500MB", 5 * 10**8), ("512MiB", 512 * 2**20), ("1.5 GiB", int(1.5 * 2**30)), ("4096", 4096)],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["lots", "1XB", "-1GB", ""])
def test_parse_size_names_the_option(text: str) -> None:
    with pytest.raises(ValueError, match="--shard-bytes"):
        parse_size(text)


@pytest.fixture(scope="module")
def two_identities(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Demo-like: two identities, written without a build."""
    return synthetic_dataset(tmp_path_factory.mktemp("two"), {"a": 5, "b": 4}, per_shard=4)


def test_too_few_identities_is_one_line_and_exit_2(two_identities: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["export", str(two_identities), str(tmp_path / "out"), "--format", "graphau"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert (
        len(lines) == 1 and "2 identities" in lines[0] and "--folds 2" in lines[0] and "--split-by sample" in lines[0]
    )
    assert not (tmp_path / "out").exists()
    ok = CliRunner().invoke(
        app, ["export", str(two_identities), str(tmp_path / "ok"), "--format", "graphau", "--folds", "2", "-q"]
    )
    assert ok.exit_code == 0, ok.output
    assert json.loads((tmp_path / "ok" / "export.json").read_text())["identities"] == 2


def test_libreface_landmarks_where_their_loader_looks(two_identities: Path, tmp_path: Path) -> None:
    out = tmp_path / "lf"
    args = ["export", str(two_identities), str(out), "--format", "libreface", "--folds", "2", "--landmarks", "-q"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(out / "DISFA" / "labels" / "0" / "train.csv")
    for image_path in frame["image_path"]:
        image_name = os.path.join(out, image_path)  # LibreFace data_utils.au2heatmap's path:
        lmk = np.load(image_name.replace("images", "landmarks")[:-4] + ".npy")
        assert lmk.shape == (68, 2) and lmk.dtype == np.float32
    report = json.loads((out / "export.json").read_text())
    assert report["landmarks_without_face"] == report["samples"]  # noise images: dlib finds no face

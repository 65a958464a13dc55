"""OpenGraphAU's stage 2 on our ``--layout opengraphau`` export, read as their ``dataset.py``
``HybridDataset(stage=2)`` reads it (``open(...).readlines()``, ``np.loadtxt`` of the label and
``hybrid_train_AU_relation.txt`` lists, ``label_list[i, :]``, ``au_relation[i, :]``), and the
relation values checked against ME-GraphAU's ``tool/DISFA_deal_AU_relation.py`` formula."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from manifests.export import export
from manifests.export.graphau import OPENGRAPHAU_AUS
from tests.manifests.synthetic import synthetic_dataset

MAIN = 27  # OpenGraphAU's main AUs: the nodes (and 27 x 27 edges) of their stage-2 model


def _hybrid_stage2_train(root: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """HybridDataset.__init__ with phase='train', stage=2, then make_dataset's tuples."""
    image_list = open(os.path.join(root, "list", "hybrid_train_img_path.txt")).readlines()  # noqa: SIM115 (their call)
    label_list = np.loadtxt(os.path.join(root, "list", "hybrid_train_label.txt"))
    au_relation = np.loadtxt(os.path.join(root, "list", "hybrid_train_AU_relation.txt"))
    return [(image_list[i].strip(), label_list[i, :], au_relation[i, :]) for i in range(len(image_list))]


def _expected_relation(label: np.ndarray) -> list[float]:
    """ME-GraphAU's ``new_aus[:, j * n + k] = 2 * aus[:, j] + aus[:, k]`` over the main AUs;
    a pair with an unlabelled AU carries CrossEntropyLoss's ignore_index."""
    a = label[:MAIN]
    return [2 * a[j] + a[k] if a[j] >= 0 and a[k] >= 0 else -100.0 for j in range(MAIN) for k in range(MAIN)]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    root = tmp_path_factory.mktemp("ogau")
    run_dir = synthetic_dataset(root / "src", {"p0": 6, "p1": 4, "p2": 3, "p3": 2}, seed=3)
    out = root / "hybrid"
    return out, export(run_dir, out, format="graphau", format_options={"layout": "opengraphau"})


def test_stage2_train_reads_one_relation_row_per_image(exported: tuple[Path, dict[str, Any]]) -> None:
    out, report = exported
    data = _hybrid_stage2_train(out)
    assert len(data) == report["splits"]["train"] > 1
    labelled = {OPENGRAPHAU_AUS.index(au) for au in ("1", "2", "4", "5", "6", "9", "12", "15", "17", "20", "25", "26")}
    for path, label, relation in data:
        assert (out / "img" / path).is_file() and label.shape == (41,) and relation.shape == (MAIN * MAIN,)
        assert relation.tolist() == _expected_relation(label)
        assert set(np.flatnonzero(relation != -100)) == {j * MAIN + k for j in labelled for k in labelled}
        assert set(relation[relation != -100].tolist()) <= {0.0, 1.0, 2.0, 3.0}  # their 4 edge classes
    pairs = np.stack([relation for _, _, relation in data])
    assert {1.0, 2.0} <= set(pairs.ravel().tolist())  # ordered pairs: (1, 0) -> 2, (0, 1) -> 1


def test_export_readme_points_at_both_stages(exported: tuple[Path, dict[str, Any]]) -> None:
    readme = (exported[0] / "README.md").read_text()
    assert "config/hybrid_config.yaml" in readme and "train_stage2.py" in readme
    assert "hybrid_train_AU_relation.txt" in readme and "Stage 1 only" not in readme


def test_a_one_sample_train_split_loads_for_stage2(tmp_path: Path) -> None:
    run_dir = synthetic_dataset(tmp_path / "src", {"t": 1, "v": 4, "w": 4}, seed=4)
    out = tmp_path / "hybrid"
    report = export(run_dir, out, format="graphau", format_options={"layout": "opengraphau", "shares": "0.1,0.45,0.45"})
    assert report["splits"]["train"] == 1
    data = _hybrid_stage2_train(out)  # np.loadtxt of a one-row file would be 1-D and fail [i, :]
    assert len(data) == 1 and data[0][2].tolist() == _expected_relation(data[0][1])

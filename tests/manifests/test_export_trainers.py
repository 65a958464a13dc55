"""The trainers' own reading steps, run on our exports: ME-GraphAU's ``DISFA`` and OpenGraphAU's
``HybridDataset`` (``open(...).readlines()``, ``np.loadtxt(...)``, ``label_list[i, :]``),
LibreFace's ``MyDataset`` (``pd.read_csv``, ``file_list['image_path']``, ``file_list['au1']``
.., ``float(...)``) and ``datasets.load_dataset`` for the Hugging Face folder; on a synthetic
dataset of six identities and on a demo-like one of two."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from manifests.export import ExportError, export
from manifests.export.folds import assign_groups, sample_group
from manifests.export.graphau import OPENGRAPHAU_AUS
from manifests.query import query
from manifests.vocab import DISFA_AUS
from tests.manifests.synthetic import synthetic_dataset

SIX = {"p0": 9, "p1": 7, "p2": 5, "p3": 4, "p4": 3, "p5": 2}
DISFA8 = (1, 2, 4, 6, 9, 12, 25, 26)
LIBREFACE_DISFA = ["au1", "au2", "au4", "au5", "au6", "au9", "au12", "au15", "au17", "au20", "au25", "au26"]


@pytest.fixture(scope="module")
def six(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, Any]]]:
    run_dir = synthetic_dataset(tmp_path_factory.mktemp("six"), SIX)
    rows = {r["key"]: r for r in query(run_dir).to_pylist()}
    return run_dir, rows


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Demo-like: two identities."""
    return synthetic_dataset(tmp_path_factory.mktemp("two"), {"a": 6, "b": 5}, per_shard=4, seed=1)


def _pil_loader(path: str) -> Image.Image:
    with open(path, "rb") as f, Image.open(f) as img:
        return img.convert("RGB")


def _me_graphau_disfa(root: Path, train: bool, fold: int, stage: int = 1) -> list[tuple[Any, ...]]:
    """ME-GraphAU dataset.py class DISFA.__init__ and __getitem__'s loader, step by step."""
    side = "train" if train else "test"
    image_list = open(os.path.join(root, "list", f"DISFA_{side}_img_path_fold{fold}.txt")).readlines()  # noqa: SIM115 (their call)
    label_list = np.loadtxt(os.path.join(root, "list", f"DISFA_{side}_label_fold{fold}.txt"))
    if train and stage == 2:
        relation = np.loadtxt(os.path.join(root, "list", f"DISFA_train_AU_relation_fold{fold}.txt"))
        data = [(image_list[i].strip(), label_list[i, :], relation[i, :]) for i in range(len(image_list))]
    else:
        data = [(image_list[i].strip(), label_list[i, :]) for i in range(len(image_list))]
    for item in data:
        _pil_loader(os.path.join(root, "img", item[0]))
    return data


def _hybrid(root: Path, phase: str) -> list[tuple[str, np.ndarray]]:
    """OpenGraphAU dataset.py class HybridDataset, stage 1."""
    image_list = open(os.path.join(root, "list", f"hybrid_{phase}_img_path.txt")).readlines()  # noqa: SIM115 (their call)
    label_list = np.loadtxt(os.path.join(root, "list", f"hybrid_{phase}_label.txt"))
    data = [(image_list[i].strip(), label_list[i, :]) for i in range(len(image_list))]
    for path, _ in data:
        _pil_loader(os.path.join(root, "img", path))
    return data


def _libreface(data_root: Path, tree: str, fold: str, side: str) -> tuple[pd.DataFrame, list[list[float]]]:
    """LibreFace AU_Recognition / AU_Detection data.py MyDataset with data == 'DISFA'."""
    file_list = pd.read_csv(os.path.join(data_root, "DISFA", tree, fold, f"{side}.csv"))
    images = file_list["image_path"]
    labels = [file_list[c] for c in LIBREFACE_DISFA]
    rows = []
    for index in range(len(images)):
        _pil_loader(os.path.join(data_root, images[index]))
        rows.append([float(labels[i][index]) for i in range(len(labels))])
    return file_list, rows


def _ids(root: Path, name: str) -> list[str]:
    return (root / "list" / name).read_text().split()


def test_assignment_balances_and_fills_every_group() -> None:
    groups = assign_groups({"a": 10, "b": 10, "c": 10}, (0.6, 0.2, 0.2))
    assert sorted(groups.values()) == [0, 1, 2]  # greedy alone would leave test empty
    folds = assign_groups(SIX, (1 / 3,) * 3)
    totals = [sum(n for i, n in SIX.items() if folds[i] == g) for g in range(3)]
    assert max(totals) - min(totals) <= 2 and assign_groups(SIX, (1 / 3,) * 3) == folds
    assert {sample_group(p, (0.5, 0.5)) for p in range(4)} == {0, 1}


def test_me_graphau_disfa_reads_every_fold(six: tuple[Path, dict], tmp_path: Path) -> None:
    run_dir, rows = six
    out = tmp_path / "graphau"
    report = export(run_dir, out, format="graphau", shard_size=7, format_options={"occurrence_threshold": 2})
    positions = [DISFA_AUS.index(a) for a in DISFA8]
    tested: list[str] = []
    for fold in (1, 2, 3):
        train, test = _me_graphau_disfa(out, True, fold, stage=2), _me_graphau_disfa(out, False, fold)
        assert train and test and len(train) + len(test) == len(rows) == report["samples"]
        train_ids, test_ids = (set(_ids(out, f"DISFA_{s}_identity_fold{fold}.txt")) for s in ("train", "test"))
        assert train_ids and test_ids and not train_ids & test_ids
        for path, label, *_ in train + test:
            row = rows[Path(path).stem]
            intensity = [row["au_intensity"][i] for i in positions]
            assert label.tolist() == [float(v >= 2) for v in intensity]  # ME-GraphAU's DISFA threshold
        tested += [Path(p).stem for p, _ in test]
    assert sorted(tested) == sorted(rows)  # every sample tested in exactly one fold
    assert report["occurrence_threshold"] == 2 and "intensity >= 2" in (out / "README.md").read_text()
    assert "config/DISFA_config.yaml" in (out / "README.md").read_text()


def test_opengraphau_hybrid_lists(six: tuple[Path, dict], tmp_path: Path) -> None:
    run_dir, rows = six
    out = tmp_path / "hybrid"
    report = export(run_dir, out, format="graphau", format_options={"layout": "opengraphau"})
    phases = {phase: _hybrid(out, phase) for phase in ("train", "val", "test")}
    assert all(phases.values()) and sum(len(p) for p in phases.values()) == len(rows)
    ids = [set(_ids(out, f"hybrid_{phase}_identity.txt")) for phase in phases]
    assert ids[0].isdisjoint(ids[1]) and ids[0].isdisjoint(ids[2]) and ids[1].isdisjoint(ids[2])
    ours = {OPENGRAPHAU_AUS.index(str(au)): i for i, au in enumerate(DISFA_AUS)}
    for path, label in phases["train"]:
        assert label.shape == (41,)
        for column, value in enumerate(label):
            expected = rows[Path(path).stem]["au_occurrence"][ours[column]] if column in ours else -1
            assert value == expected
    assert np.loadtxt(out / "list" / "hybrid_train_weight.txt").shape == (41,)
    assert report["splits"] == {phase: len(p) for phase, p in phases.items()}


def test_libreface_intensity_and_occurrence_folds(six: tuple[Path, dict], tmp_path: Path) -> None:
    run_dir, rows = six
    out = tmp_path / "libreface"
    report = export(run_dir, out, format="libreface", shard_size=10)
    for fold in ("0", "1", "2"):
        sides = {}
        for side in ("train", "test"):
            frame, intensity = _libreface(out, "labels_intensity_5", fold, side)
            _, occurrence = _libreface(out, "labels", fold, side)
            assert intensity and len(intensity) == len(occurrence)
            for path, level, present in zip(frame["image_path"], intensity, occurrence, strict=True):
                row = rows[Path(path).stem]
                assert level == [float(v) for v in row["au_intensity"]]
                assert present == [float(v) for v in row["au_occurrence"]]
            sides[side] = set(frame["identity_id"])
        assert not sides["train"] & sides["test"]
    assert sum(f["test"] for f in report["folds"]) == len(rows)


def test_huggingface_splits_by_identity(six: tuple[Path, dict], tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets", reason="datasets is a [dev] dependency")
    run_dir, rows = six
    out = tmp_path / "hf"
    export(run_dir, out, format="huggingface", shard_size=8)
    loaded = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "cache"))
    assert sorted(loaded) == ["test", "train", "validation"]
    ids = {split: set(loaded[split]["identity_id"]) for split in loaded}
    assert all(ids.values()) and not (ids["train"] & ids["test"] or ids["train"] & ids["validation"])
    assert sum(loaded[split].num_rows for split in loaded) == len(rows)
    first = loaded["test"][0]
    assert first["AU12_intensity"] == rows[first["key"]]["au_intensity"][DISFA_AUS.index(12)]
    assert "AU01" in loaded["train"].features and "order AU 1, 2, 4" in (out / "README.md").read_text()


def test_two_identities_refuse_three_folds_and_take_two(two: Path, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"holds 2 identities.*--folds 2, or --split-by sample"):
        export(two, tmp_path / "three", format="graphau")
    assert not (tmp_path / "three").exists()
    report = export(two, tmp_path / "twofold", format="libreface", format_options={"folds": 2})
    assert [f["train"] > 0 and f["test"] > 0 for f in report["folds"]] == [True, True]
    mixed = export(two, tmp_path / "mixed", format="graphau", format_options={"split_by": "sample"})
    assert "seen" in mixed["warning"] or "same identities" in mixed["warning"]
    assert all(f["train"] and f["test"] for f in mixed["folds"])


def test_a_one_sample_side_loads_with_their_loadtxt(tmp_path: Path) -> None:
    run_dir = synthetic_dataset(tmp_path / "src", {"big": 5, "one": 1}, seed=2)
    out = tmp_path / "graphau"
    export(run_dir, out, format="graphau", format_options={"folds": 2})
    sizes = {len(_me_graphau_disfa(out, train, fold)) for train in (True, False) for fold in (1, 2)}
    assert sizes == {1, 5}  # the one-sample sides load, as one sample
    single = next(f for f in (1, 2) if len(_me_graphau_disfa(out, False, f)) == 1)
    assert _me_graphau_disfa(out, False, single)[0][1].shape == (8,)

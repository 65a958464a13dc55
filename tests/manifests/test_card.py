"""The dataset card: written with every index, licence verdict on its first line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from manifests.card import is_non_commercial, licence_verdict, render_card
from manifests.index import write_index
from tests.manifests import write_shard


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    for shard in range(2):
        write_shard(tmp_path / "shards", "mifa", shard, 6, rng=rng, drop_every=3)
    return tmp_path


def _provenance(run_dir: Path, *licences: str) -> None:
    stages = [
        {"path": f"detectors[{i}]", "name": f"det{i}", "licence": text, "models": {}} for i, text in enumerate(licences)
    ]
    recipe = {"emotions": {"mix": {"happiness": 1.0, "sadness": 1.0}}, "aus": {"active_share": 0.3, "units": [1, 2]}}
    doc = {"stages": stages, "recipe": recipe, "seed": 7, "fingerprint": "abc", "versions": {"python": "3.11"}}
    (run_dir / "provenance.json").write_text(json.dumps(doc))


def test_card_is_written_with_the_index_and_says_what_it_does_not_know(run_dir: Path) -> None:
    write_index(run_dir, "mifa", [0, 1], target=8, surplus=[], failed={})
    card = (run_dir / "DATASET_CARD.md").read_text()
    assert card.splitlines()[0].startswith("**Licence: UNKNOWN.**")
    assert "| generated | 12 |" in card and "| dropped by realism | 4 | low (4) |" in card
    assert "| accepted | 8 | acceptance rate 0.667 |" in card


def test_a_non_commercial_model_is_on_the_first_line(run_dir: Path) -> None:
    _provenance(run_dir, "MIT (weights)", "USC Research License (non-commercial)")
    write_index(run_dir, "mifa", [0, 1], target=8, surplus=[], failed={})
    lines = (run_dir / "DATASET_CARD.md").read_text().splitlines()
    assert lines[0].startswith("**Licence: NON-COMMERCIAL USE ONLY.**")
    assert "det1 (detectors[1])" in lines[0] and "det0" not in lines[0]
    card = "\n".join(lines)
    assert "- **det0** (detectors[0]): MIT (weights)" in card
    assert "| AU1 |" in card and "| AU4 |" in card and "off |" in card  # AU4 is not in the recipe's units


def test_permissive_and_undeclared_verdicts() -> None:
    ok = {"stages": [{"name": "a", "path": "generator", "licence": "Apache-2.0"}]}
    assert "no stage declares non-commercial terms" in licence_verdict(ok)
    undeclared = {"stages": [{"name": "b", "path": "face", "licence": "UNDECLARED: this stage ..."}]}
    assert "UNDECLARED licence for: b (face)" in licence_verdict(undeclared)
    for text in ("non-commercial research use only", "CC BY-NC 4.0", "for research only"):
        assert is_non_commercial(text)
    assert not is_non_commercial("MIT; Apache-2.0; CC0")


def test_card_balance_counts(run_dir: Path) -> None:
    _provenance(run_dir, "MIT")
    write_index(run_dir, "mifa", [0, 1], target=8, surplus=[], failed={})
    card = render_card(run_dir)
    emotion_rows = [line for line in card.splitlines() if line.startswith(("| happiness", "| sadness", "| mixed"))]
    assert sum(int(row.split("|")[2]) for row in emotion_rows) == 8
    assert "| happiness |" in card and "0.500 |" in card  # the recipe's share

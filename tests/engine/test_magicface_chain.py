"""The public multi-identity chain end to end on CPU: bank build -> `factory export --format
identity-bank` -> a multi-identity MagicFace build over that bank -> graphau and huggingface
exports split by identity.

Step 1 is an identity-bank build as in ``test_identity_bank``, on the two real photographs it
keeps (Grace Hopper and Jin), through the face stage, the portrait filters and the
deduplication. Step 3 runs the real
MagicFace stage on tiny random-weight UNets in the release layout, with BiSeNet (full size,
random weights, the release's checkpoint layout) for the bg image; its noise images are laid
over the identity's face crop (``tests.engine.magicface_chain``) so the face stage, the AU
detector and the identity check run on a face. Images are not meaningful; the test checks the
plumbing and the records (resume is the engine tests'; a second build here would cost a
worker start for nothing new).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from bench.tiny_models import build_tiny_magicface
from factory.cli import app
from factory.engine.build import build
from factory.recipe import recipe_from_dict
from manifests.bank import open_bank
from manifests.query import query
from stages.nets.bisenet import BiSeNet
from tests.engine.test_identity_bank import CELL

pytestmark = [pytest.mark.slow, pytest.mark.ray]

EXPRESSIONS = 2


def _bank_doc(out: Path) -> dict[str, object]:
    return {
        "dataset": {"name": "bank", "kind": "identity-bank", "target": 2, "shard_size": 2, "out": str(out)},
        "demographics": CELL,
        "identities": {"bank": "none"},
        "bank": {"licence": "test-licence"},
        "generator": {"name": "tests.engine.magicface_chain:TwoPortraits"},
        "face": {"name": "dlib", "max_secondary_area_ratio": 0.0},
        "detectors": [{"name": "geometric"}],
        "filters": {"name": "portrait-filters"},
        "output": {"image_size": 256},
        "engine": {"cpu_workers": 1, "batch_size": 2},
    }


def _chain_doc(out: Path, bank: Path, models: Path, bisenet: Path) -> dict[str, object]:
    return {
        "dataset": {"name": "chain", "target": 4, "shard_size": 4, "seed": 3, "out": str(out)},
        "identities": {"bank": str(bank), "expressions_per_identity": EXPRESSIONS},
        "generator": {
            "name": "tests.engine.magicface_chain:MagicFaceOverSource",
            "sd_dir": str(models / "stable-diffusion-v1-5"),
            "weights_dir": str(models / "magicface"),
            "bisenet_file": str(bisenet),
            "parse_size": 64,
            "steps": 2,
            "batch_size": 4,
        },
        "face": {"name": "dlib"},
        "detectors": [{"name": "geometric"}],
        "agreement": {"name": "agreement", "min_agree": 1},
        "filters": {"name": "filters", "min_label_jaccard": None},  # the identity check: on for a bank folder
        "output": {"image_size": 128},
        "engine": {"cpu_workers": 1, "batch_size": 4},
    }


def test_bank_export_multi_identity_magicface_build_and_exports(ray_cluster, tmp_path: Path) -> None:
    bank_run, bank = tmp_path / "bank-run", tmp_path / "my-bank"
    assert build(recipe_from_dict(_bank_doc(bank_run)), quiet=True).accepted == 2
    exported = CliRunner().invoke(app, ["export", str(bank_run), str(bank), "--format", "identity-bank"])
    assert exported.exit_code == 0, exported.output
    bank_ids = {r.identity_id for r in open_bank(str(bank)).records()}
    assert len(bank_ids) == 2

    models = build_tiny_magicface(tmp_path / "models")
    bisenet = tmp_path / "79999_iter.pth"
    torch.manual_seed(0)
    torch.save(BiSeNet().state_dict(), bisenet)
    doc = _chain_doc(tmp_path / "mifa", bank, models, bisenet)
    summary = build(recipe_from_dict(doc), quiet=True)
    assert summary.failed_shards == {} and summary.planned_samples == 4
    sql = "SELECT key, identity_id, planned_intensity, identity_similarity, identity_model, generator FROM samples"
    rows = query(tmp_path / "mifa", sql=sql, include_rejected=True).to_pylist()
    assert len(rows) == 4 and {r["generator"] for r in rows} == {"magicface"}
    assert {r["identity_id"] for r in rows} == bank_ids  # every sample is a bank identity, each of them used
    for identity in bank_ids:
        vectors = [tuple(r["planned_intensity"]) for r in rows if r["identity_id"] == identity]
        assert len(vectors) == EXPRESSIONS and len(set(vectors)) == EXPRESSIONS  # repeats, other AU vectors
    assert all(r["identity_similarity"] is not None and r["identity_model"] for r in rows)
    assert summary.accepted == 4 and all(r["identity_similarity"] >= 0.9 for r in rows)
    provenance = (tmp_path / "mifa" / "provenance.json").read_text()
    assert "bg: BiSeNet face parsing" in provenance
    assert list((bank / ".magicface-cache").glob("*-bisenet-128.npz"))

    graphau, hf = tmp_path / "export-graphau", tmp_path / "export-huggingface"
    for fmt, out, options in (("graphau", graphau, ["--folds", "2"]), ("huggingface", hf, ["--shares", "0.5,0.5"])):
        result = CliRunner().invoke(
            app, ["export", str(tmp_path / "mifa"), str(out), "--format", fmt, "--split-by", "identity", *options]
        )
        assert result.exit_code == 0, (fmt, result.output)
    for fold in (1, 2):  # each fold's train and test identities are disjoint and together the bank
        train, test = (
            set((graphau / "list" / f"DISFA_{split}_identity_fold{fold}.txt").read_text().split())
            for split in ("train", "test")
        )
        assert train and test and not train & test and train | test == bank_ids
    train, test = (
        set(pq.read_table(hf / "data" / f"{split}-00000.parquet")["identity_id"].to_pylist())
        for split in ("train", "test")
    )
    assert not train & test and train | test == bank_ids

"""The public multi-identity chain end to end on CPU: bank build -> `factory export --format
identity-bank` -> a multi-identity MagicFace build over that bank, killed -9 and resumed by the
same command -> graphau and huggingface exports split by identity.

Step 1 is an identity-bank build as in ``test_identity_bank``, on the two real photographs it
keeps (Grace Hopper and Jin), through the face stage, the portrait filters and the
deduplication. Step 3 runs the real MagicFace stage on tiny random-weight UNets in the release
layout, with BiSeNet (full size, random weights, the release's checkpoint layout) for the bg
image; its noise images are laid over the identity's face crop (``tests.engine.magicface_chain``)
so the face stage, the AU detector and the identity check run on a face. Images are not
meaningful; the test checks the plumbing, the resume and the records.

Step 3 is ``factory build`` in a child process, SIGKILLed as its last shard's commit begins
(``MIFA_TEST_KILL_AT=commit:1``: shard 0, identity A's two expressions, committed; shard 1,
identity B's, generated but not renamed), then the same recipe resumed, here on the shared
cluster (the CLI's own resume is the kill tests'; a second child would start a second Ray
cluster): shard 0 is kept as it was, shard 1 is made again from B's crop and bg read back
from the cache beside the bank (no bg computed by the resume), and the dataset holds exactly
the planned samples. No uninterrupted reference build: the expected records are the
planner's, from the bank.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from bench.tiny_models import build_tiny_magicface
from factory.cli import app
from factory.engine.build import build
from factory.plan import Planner
from factory.recipe import load_recipe, recipe_from_dict
from manifests.bank import open_bank
from manifests.layout import RunLayout
from manifests.query import query
from stages.generators.magicface.cache import CACHE_DIR
from stages.nets.bisenet import BiSeNet
from tests.engine.cli_builds import build_killed_at
from tests.engine.test_identity_bank import CELL

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.subprocess]

EXPRESSIONS = 2
SHARDS = (0, 1)  # identity-major: shard 0 is identity A's two expressions, shard 1 identity B's


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


def _chain_doc(out: Path, bank: Path, models: Path, bisenet: Path, bg_log: Path) -> dict[str, Any]:
    return {
        "dataset": {"name": "chain", "target": 4, "shard_size": EXPRESSIONS, "seed": 3, "out": str(out)},
        "identities": {"bank": str(bank), "expressions_per_identity": EXPRESSIONS},
        "generator": {
            "name": "tests.engine.magicface_chain:MagicFaceOverSource",
            "sd_dir": str(models / "stable-diffusion-v1-5"),
            "weights_dir": str(models / "magicface"),
            "bisenet_file": str(bisenet),
            "parse_size": 64,
            "steps": 2,
            "batch_size": 2,
            "bg_log": str(bg_log),
        },
        "face": {"name": "dlib"},
        "detectors": [{"name": "geometric"}],
        "agreement": {"name": "agreement", "min_agree": 1},
        "filters": {"name": "filters", "min_label_jaccard": 0.0},  # the identity check: on for a bank folder
        "output": {"image_size": 128},
        # One shard at a time (no commit overlapping the next shard): the kill finds shard 0 done.
        "engine": {"cpu_workers": 1, "batch_size": 2, "inflight_per_actor": 1},
    }


def _toml(doc: dict[str, Any], path: Path) -> Path:
    """``doc`` as the recipe file a user writes (JSON scalars are TOML scalars; lists of tables as [[x]])."""
    lines: list[str] = []
    for section, body in doc.items():
        tables = body if isinstance(body, list) else [body]
        for table in tables:
            lines.append(f"[[{section}]]" if isinstance(body, list) else f"[{section}]")
            lines += [f"{k} = {json.dumps(v)}" for k, v in table.items()]
    path.write_text("\n".join(lines) + "\n")
    assert tomllib.loads(path.read_text()) == doc
    return path


def _files(folder: Path, pattern: str) -> dict[str, tuple[int, int, bytes]]:
    """name -> (inode, mtime_ns, bytes) of the files matching ``pattern``: a rewrite changes them."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.glob(pattern))}


def _bg_computed(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def _build_killed_then_resumed(recipe: Path, out: Path, bank: Path, log: Path) -> None:
    """Kill -9 as shard 1's commit begins; the same recipe resumes without recomputing any bg."""
    build_killed_at(recipe, "commit:1")
    layout = RunLayout(out, "chain")
    assert layout.stats_shards() == [0] and not (out / "index.json").exists()
    assert _bg_computed(log) == 2  # identities A and B, once each: both shards were generated
    cache = _files(bank / CACHE_DIR, "*.npz")
    assert len(cache) == 2 and all(name.endswith("-bisenet-128.npz") for name in cache)
    committed = _files(out / "shards", "chain-000000*")

    resumed = build(load_recipe(recipe), quiet=True)
    assert resumed.indexed_shards == list(SHARDS) and not resumed.failed_shards
    assert _bg_computed(log) == 2  # shard 1 again: B's crop and bg read back from the cache
    assert _files(bank / CACHE_DIR, "*.npz") == cache  # and not rewritten
    assert _files(out / "shards", "chain-000000*") == committed  # the committed shard kept as it was
    assert layout.stats_shards() == list(SHARDS)
    assert not [p for p in (out / "shards").iterdir() if "tmp" in p.name]


def _check_records(out: Path, doc: dict[str, Any], bank_ids: set[str]) -> None:
    """The resumed dataset holds exactly the planner's samples, each once, all kept."""
    recipe = recipe_from_dict(doc)
    planner = Planner(recipe, open_bank(recipe.identities.bank).records())
    planned = {
        r["key"]: r
        for s in SHARDS
        for r in planner.shard(s).select(["key", "identity_id", "planned_intensity"]).to_pylist()
    }
    sql = (
        "SELECT key, identity_id, planned_intensity, accepted, dropped_by, drop_reason, identity_similarity, "
        "identity_model, generator FROM samples"
    )
    rows = query(out, sql=sql, include_rejected=True).to_pylist()
    assert sorted(r["key"] for r in rows) == sorted(planned)  # each planned sample once, no duplicate
    for row in rows:
        assert {k: row[k] for k in planned[row["key"]]} == planned[row["key"]]  # its plan's identity and AUs
        assert row["accepted"] or (row["dropped_by"] and row["drop_reason"]), row
    index = json.loads((out / "index.json").read_text())
    keys = pq.read_table(out / "index.parquet").column("key").to_pylist()
    assert index["shards"] == list(SHARDS) and sorted(keys) == sorted(planned) and index["accepted"] == 4
    assert {r["generator"] for r in rows} == {"magicface"}
    assert {r["identity_id"] for r in rows} == bank_ids  # every sample is a bank identity, each of them used
    for identity in bank_ids:
        vectors = [tuple(r["planned_intensity"]) for r in rows if r["identity_id"] == identity]
        assert len(vectors) == EXPRESSIONS and len(set(vectors)) == EXPRESSIONS  # repeats, other AU vectors
    assert all(r["identity_similarity"] >= 0.9 and r["identity_model"] == "dlib" for r in rows)


def _check_exports(run: Path, tmp_path: Path, bank_ids: set[str]) -> None:
    graphau, hf = tmp_path / "export-graphau", tmp_path / "export-huggingface"
    for fmt, out, options in (("graphau", graphau, ["--folds", "2"]), ("huggingface", hf, ["--shares", "0.5,0.5"])):
        result = CliRunner().invoke(
            app, ["export", str(run), str(out), "--format", fmt, "--split-by", "identity", *options]
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


def test_bank_export_multi_identity_magicface_killed_resumed_and_exports(ray_cluster: Any, tmp_path: Path) -> None:
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
    run = tmp_path / "mifa"
    log = tmp_path / "bg-computed.log"
    doc = _chain_doc(run, bank, models, bisenet, log)
    _build_killed_then_resumed(_toml(doc, tmp_path / "mifa.toml"), run, bank, log)
    _check_records(run, doc, bank_ids)
    assert "bg: BiSeNet face parsing" in (run / "provenance.json").read_text()
    _check_exports(run, tmp_path, bank_ids)

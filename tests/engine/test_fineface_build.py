"""`factory build` with the fineface generator on tiny release-layout weights, through the engine on CPU.

The images are noise (random weights); the point is the plumbing: planned AU vectors in,
labelled samples out, valid shards and manifest.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
import webdataset as wds

from bench.tiny_models import build_tiny_fineface
from factory.commands.status import run_status
from factory.engine.build import build
from factory.recipe import recipe_from_dict
from tests.engine.conftest import standin_doc

pytestmark = pytest.mark.ray


def test_fineface_build_writes_valid_shards(ray_cluster, tmp_path: Path) -> None:
    models = build_tiny_fineface(tmp_path / "models")
    generator = {
        "name": "fineface",
        "base_dir": str(models / "stable-diffusion-2-1-base"),
        "weights_dir": str(models / "fineface"),
        "steps": 2,
        "batch_size": 3,
    }
    doc = standin_doc(
        tmp_path / "out",
        dataset={"target": 6, "shard_size": 3},
        output={"image_size": 64},
        engine={"cpu_workers": 1, "batch_size": 3},
    )
    doc["generator"] = generator  # replaces the stand-in section whole
    summary = build(recipe_from_dict(doc), quiet=True)
    assert summary.accepted >= 6 and summary.selected_from is None  # open loop: no policy chose among them
    status = run_status(tmp_path / "out", verify=True)
    assert status["problems"] == [] and status["complete"]
    rows = pq.read_table(tmp_path / "out" / "shards" / "t-000000.parquet").to_pylist()
    assert len(rows) == 3 and all(r["generator"] == "fineface" and r["label_source"] == "planned" for r in rows)
    for r in rows:  # no detectors here: the labels are the plan, as the generator reports it
        assert r["description"] and (r["width"], r["height"]) == (64, 64)
        assert r["generator_intensity"] == [float(x) for x in r["planned_intensity"]]
    samples = list(wds.WebDataset(str(tmp_path / "out" / "shards" / "t-000000.tar"), shardshuffle=False))
    assert {s["__key__"] for s in samples} == {r["key"] for r in rows}
    assert all(len(next(v for k, v in s.items() if k in ("jpg", "webp", "png"))) > 100 for s in samples)

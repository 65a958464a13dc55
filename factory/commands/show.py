"""``factory show RUN KEY [--regenerate]``: one sample, whole, and whether it is reproducible.

Showing reads the sample's manifest row, image and recorded plan (``manifests.sample``).
Regenerating runs that plan through the recipe's stages in this process, built as a shard
worker builds them (``factory.engine.pipeline``: the same context, the same stage order,
prompt first), encodes the image as the shard writer does and turns the record into a
manifest row the same way, then compares field by field with what the dataset stores:
identical, or how far each differing field is (for the image: max and mean absolute pixel
difference and PSNR). Same software and device give identical results for deterministic
generators (warp); the software versions and device of the build are shown beside ours.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from factory.engine.pipeline import make_context, recipe_pipeline
from factory.engine.rundir import RunError, open_run, software_versions
from factory.plan import Planner
from factory.recipe import recipe_from_dict
from manifests.bank import open_bank
from manifests.records import encode_image, manifest_row, manifest_table
from manifests.sample import StoredSample, read_sample
from manifests.schema import PLAN_SCHEMA
from manifests.writer import read_stats

__all__ = ["Difference", "Regeneration", "regenerate", "show_sample"]

# Columns that describe the run, not the sample (a regeneration need not match them).
_NOT_COMPARED = frozenset({"shard", "index"})


@dataclass(frozen=True)
class Difference:
    field: str
    stored: Any
    regenerated: Any
    detail: str


@dataclass
class Regeneration:
    key: str
    identical: bool
    image_identical: bool | None  # None: the dataset stores no image for this sample
    differences: list[Difference] = field(default_factory=list)
    build_versions: dict[str, str] = field(default_factory=dict)
    our_versions: dict[str, str] = field(default_factory=dict)
    build_device: str | None = None
    our_device: str = "cpu"

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "identical": self.identical,
            "image_identical": self.image_identical,
            "differences": [d.__dict__ for d in self.differences],
            "build_device": self.build_device,
            "our_device": self.our_device,
            "version_changes": {
                k: [self.build_versions.get(k), v]
                for k, v in self.our_versions.items()
                if self.build_versions.get(k) != v
            },
        }


def _device() -> str:
    """'cuda' when torch sees a GPU, as a shard worker decides (without importing the Ray worker)."""
    try:
        import torch  # deferred: optional and heavy; only a regeneration asks
    except ImportError:
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def show_sample(run_dir: Path, key: str) -> StoredSample:
    return read_sample(run_dir, key)


def _image_difference(stored: bytes, regenerated: bytes) -> str:
    a = np.asarray(Image.open(io.BytesIO(stored)).convert("RGB"), dtype=np.float64)
    b = np.asarray(Image.open(io.BytesIO(regenerated)).convert("RGB"), dtype=np.float64)
    if a.shape != b.shape:
        return f"sizes differ: stored {a.shape[1]}x{a.shape[0]}, regenerated {b.shape[1]}x{b.shape[0]}"
    diff = np.abs(a - b)
    mse = float(np.mean(diff**2))
    psnr = "inf" if mse == 0 else f"{10 * math.log10(255.0**2 / mse):.1f} dB"
    return f"max abs pixel difference {diff.max():.0f}, mean {diff.mean():.3f}, PSNR {psnr}"


def _value_difference(stored: Any, regenerated: Any) -> str:
    try:
        a = np.asarray(stored, dtype=np.float64)
        b = np.asarray(regenerated, dtype=np.float64)
        if a.shape == b.shape and a.size:
            return f"max abs difference {np.nanmax(np.abs(a - b)):.4g}"
    except (TypeError, ValueError):
        pass
    return "differs"


def _plan_row(sample: StoredSample, recipe: Any) -> dict[str, Any]:
    if sample.plan is not None:
        return dict(sample.plan)
    balance = recipe.balance
    if balance.enabled and balance.round_shards and sample.shard >= balance.round_shards:
        # A closed-loop round was planned from the yields of the shards before it: not from the
        # recipe alone. The manifest row holds every plan column as planned.
        return {f.name: sample.row[f.name] for f in PLAN_SCHEMA}
    # The plan file is gone: the planner is deterministic, so plan the shard again.
    bank = open_bank(recipe.identities.bank)
    table = Planner(recipe, bank.records() if bank is not None else None).shard(sample.shard)
    rows = [r for r in table.to_pylist() if r["key"] == sample.row["key"]]
    if not rows:
        raise RunError(f"the planner does not plan {sample.row['key']!r} for shard {sample.shard}")
    return rows[0]


def _regenerated_row(sample: StoredSample, recipe: Any, record: dict[str, Any]) -> tuple[dict[str, Any], bytes | None]:
    """The record as the shard writer would store it: (manifest row, encoded image)."""
    accepted = not record.get("dropped_by")
    data = None
    if record.get("image") is not None and sample.row.get("image_member"):
        out = recipe.output
        data = encode_image(record["image"], out.image_format, out.image_quality, sample.row["key"])
        height, width = record["image"].shape[:2]
    else:
        width, height = sample.row.get("width"), sample.row.get("height")
    member = sample.row.get("image_member") if data is not None else None
    fmt = sample.row.get("image_format") if data is not None else None
    row = manifest_row(
        record,
        key=sample.row["key"],
        accepted=accepted,
        member=member,
        image_format=fmt,
        width=width,
        height=height,
        shard=sample.shard,
        index=int(sample.row["index"]),
    )
    return manifest_table([row], "regenerated sample").to_pylist()[0], data


def regenerate(run_dir: Path, key: str) -> tuple[StoredSample, Regeneration]:
    """Run the sample's recorded plan through the recipe's stages in process and compare."""
    sample = read_sample(run_dir, key)
    run, info = open_run(sample.dataset.source_root)
    recipe = recipe_from_dict(info["recipe"], source=str(run.run_json))
    device = _device()
    pipeline = recipe_pipeline(recipe, make_context(recipe, run.root, device))
    record = _plan_row(sample, recipe)
    pipeline.run([record])
    row, image = _regenerated_row(sample, recipe, record)
    differences = [
        Difference(name, sample.row.get(name), value, _value_difference(sample.row.get(name), value))
        for name, value in row.items()
        if name not in _NOT_COMPARED and sample.row.get(name) != value
    ]
    image_identical = None
    if sample.image is not None:
        image_identical = image == sample.image
        if not image_identical:
            detail = "not generated" if image is None else _image_difference(sample.image, image)
            differences.append(Difference("image", f"{len(sample.image)} bytes", "", detail))
    try:
        build_device = read_stats(sample.dataset.shards_dir, sample.dataset.name, sample.shard)["worker"]["device"]
    except (OSError, ValueError, KeyError, TypeError):
        build_device = None
    return sample, Regeneration(
        key=key,
        identical=not differences,
        image_identical=image_identical,
        differences=differences,
        build_versions=dict(info.get("versions", {})),
        our_versions=software_versions(),
        build_device=build_device,
        our_device=device,
    )

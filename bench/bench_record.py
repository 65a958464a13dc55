"""What the record's shape costs: a ``dict`` with a declared key set, a slotted dataclass, a pydantic model.

One pass of a 10k-record batch through what the pipeline does to a record besides the stages'
own work: the plan's rows become records (``pyarrow.Table.to_pylist`` then the shape's
constructor), the stages set 30 fields (a numpy image among them), and the shard writer
checks the keys and reads one value per manifest column (``manifests.records.manifest_row``).
The dataclass and pydantic shapes also convert back to a dict at the writer's edge, as they
would have to for the exports and the JSON member. Also: ``Pipeline.check`` of the demo
recipe, the cost a recipe load pays for the declared data flow.

Run: ``.venv/bin/python -m bench.bench_record [--records N] [--repeat R]`` (prints markdown;
best of R, milliseconds per batch). Four runs on the shared 2-core development machine (load
average 4-22, so wide ranges), 10k records, best of 7-9: dict + declared key set 208-316 ms,
dict with no key check 120-255 ms, slotted dataclass 429-752 ms, pydantic model 517-1359 ms;
``Pipeline.check`` of the demo recipe 0.04-0.08 ms. The writer made a key check before too (a
set difference, to collect ``ignored_keys``); it is now ``issuperset``, half that cost. The
demo's slowest stage takes ~0.5 s a sample.
"""

from __future__ import annotations

import argparse
import sys
import time
import tomllib
from collections.abc import Callable
from dataclasses import fields, make_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, create_model

from factory.recipe import recipe_from_dict
from manifests.records import manifest_row
from manifests.schema import MANIFEST_SCHEMA, PLAN_SCHEMA, RECORD_FIELDS
from stages.pipeline import Pipeline

__all__ = ["main"]

REPO = Path(__file__).resolve().parents[1]
IMAGE = np.zeros((8, 8, 3), np.uint8)
# What the stages of the demo recipe set on a kept record (values of the right shape).
STAGE_FIELDS: dict[str, Any] = {
    "description": "a face smiling",
    "prompt_backend": "grammar",
    "prompt_version": "g1",
    "prompt_jaccard": 1.0,
    "prompt_intensity_agreement": 1.0,
    "image": IMAGE,
    "generator": "warp",
    "label_source": "exact",
    "generator_occurrence": [0.0] * 12,
    "generator_intensity": [0.0] * 12,
    "face_score": 1.0,
    "face_box": [0.0, 0.0, 8.0, 8.0],
    "landmarks": np.zeros((68, 2), np.float32),
    "face_crop": IMAGE,
    "detector_votes": {"geometric": {"occurrence": [0.1] * 12, "intensity": [0.0] * 12}},
    "votes": [],
    "consensus_occurrence": [0] * 12,
    "consensus_intensity": [0.0] * 12,
    "agreement_score": 1.0,
    "au_occurrence": [0] * 12,
    "au_intensity": [0] * 12,
    "realism_score": 0.9,
    "realism_scorer": "heuristic-v1",
    "label_jaccard": 1.0,
    "dropped_by": None,
    "drop_reason": None,
    "identity_similarity": None,
    "prompt_note": None,
    "image_member": None,
    "image_format": None,
}
ROW_OPTIONS: dict[str, Any] = dict(
    key="k", accepted=True, member="k.jpg", image_format="jpg", width=8, height=8, shard=0, index=0
)


def plan_table(n: int) -> pa.Table:
    rng = np.random.default_rng(0)
    columns = {
        "key": [f"000000_{i:05d}" for i in range(n)],
        "shard": [0] * n,
        "index": list(range(n)),
        "seed": rng.integers(0, 2**31, n).tolist(),
        "emotion": ["happiness"] * n,
        "planned_intensity": rng.integers(0, 6, (n, 12)).tolist(),
        "identity_id": ["builtin-astronaut"] * n,
        "ethnicity": ["white"] * n,
        "age_band": ["adult"] * n,
        "gender": ["female"] * n,
        "identity_match": ["exact"] * n,
    }
    return pa.table(columns, schema=PLAN_SCHEMA)


def as_dicts(table: pa.Table) -> None:
    for record in table.to_pylist():
        record.update(STAGE_FIELDS)  # the stages' writes
        if not RECORD_FIELDS.issuperset(record):  # the writer's check
            raise ValueError("unknown key")
        manifest_row(record, **ROW_OPTIONS)


def as_unchecked_dicts(table: pa.Table) -> None:
    for record in table.to_pylist():
        record.update(STAGE_FIELDS)
        manifest_row(record, **ROW_OPTIONS)


def as_dataclasses(table: pa.Table) -> None:
    record_type = make_dataclass("RecordData", [(n, Any, None) for n in sorted(RECORD_FIELDS)], slots=True)
    names = [f.name for f in fields(record_type)]
    for row in table.to_pylist():
        record = record_type(**row)
        for name, value in STAGE_FIELDS.items():
            setattr(record, name, value)
        manifest_row({n: getattr(record, n) for n in names}, **ROW_OPTIONS)  # the dict edge


def as_pydantic(table: pa.Table) -> None:
    config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)
    model: type[BaseModel] = create_model(  # type: ignore[call-overload]
        "RecordModel", __config__=config, **{n: (Any, None) for n in sorted(RECORD_FIELDS)}
    )
    for row in table.to_pylist():
        record = model.model_validate(row)
        for name, value in STAGE_FIELDS.items():
            setattr(record, name, value)
        manifest_row(record.__dict__, **ROW_OPTIONS)  # the dict edge, without a copy


def best_ms(run: Callable[[], None], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return min(times) * 1000.0


def main(argv: list[str] | None = None) -> str:
    """The section for BENCHMARKS.md (``make bench`` calls it with no options)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv if argv is not None else sys.argv[1:])
    table = plan_table(args.records)
    assert set(STAGE_FIELDS) <= set(MANIFEST_SCHEMA.names) | RECORD_FIELDS
    shapes = {
        "dict + declared key set (chosen)": as_dicts,
        "dict, no key check": as_unchecked_dicts,
        "slotted dataclass, dict at the edges": as_dataclasses,
        "pydantic model (validated), dict at the edges": as_pydantic,
    }
    lines = [
        "### The record's shape (`python -m bench.bench_record`)",
        "",
        f"A {args.records:,}-record batch from plan rows to manifest rows (best of {args.repeat}).",
        "",
        f"| record shape | ms per {args.records:,} records |",
        "|---|---:|",
    ]
    for label, run in shapes.items():
        lines.append(f"| {label} | {best_ms(lambda run=run: run(table), args.repeat):.1f} |")
    recipe = recipe_from_dict(tomllib.loads((REPO / "recipes" / "demo.toml").read_text()))
    specs = recipe.stage_specs()
    check_ms = best_ms(lambda: Pipeline.check(specs), args.repeat)
    lines += ["", f"`Pipeline.check` of recipes/demo.toml ({len(specs)} stages): {check_ms:.2f} ms"]
    return "\n".join(lines)


if __name__ == "__main__":
    print(main())

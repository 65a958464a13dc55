"""BENCHMARK STAND-IN generator: fixed cost per batch, no model. Not a real generator.

It exists so the engine's own overhead can be measured against a bare loop of the same
work (``make bench``) and so engine tests can run at a known cost. Its images are seeded
noise, its labels are the planned vector (``label_source = "planned"``).
"""

from __future__ import annotations

import time

import numpy as np
from pydantic import Field

from stages.base import Record, Stage, StageConfig

__all__ = ["STANDIN", "StandInConfig", "StandInGenerator", "standin_image"]

# How a recipe names this stage: a plugin path, not a registry name (it is not a real generator).
STANDIN = "bench.standin:StandInGenerator"


class StandInConfig(StageConfig):
    seconds_per_batch: float = Field(0.0, ge=0.0, description="sleep per process() call (GPU-bound stand-in)")
    image_size: int | None = Field(None, ge=8, le=2048, description="default: output.image_size")
    fail_on_shards: tuple[int, ...] = Field((), description="raise on these shards (failure injection)")


def standin_image(seed: int, size: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)


class StandInGenerator(Stage[StandInConfig]):
    name = "bench-standin"
    kind = "generator"
    reads = frozenset({"shard", "seed", "planned_intensity"})
    writes = frozenset({"image", "generator", "label_source", "generator_intensity", "generator_occurrence"})

    def process(self, batch: list[Record]) -> list[Record]:
        cfg = self.config
        bad = [r["shard"] for r in batch if r["shard"] in cfg.fail_on_shards]
        if bad:
            raise RuntimeError(f"injected failure on shard {bad[0]} (bench-standin fail_on_shards)")
        time.sleep(cfg.seconds_per_batch)
        size = cfg.image_size or self.context.image_size
        for r in batch:
            r["image"] = standin_image(r["seed"], size)
            r["generator"] = self.name
            r["label_source"] = "planned"
            planned = [float(x) for x in r["planned_intensity"]]
            r["generator_intensity"] = planned
            r["generator_occurrence"] = [1.0 if x > 0 else 0.0 for x in planned]
        return batch

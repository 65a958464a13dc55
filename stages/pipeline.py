"""The in-process pipeline: stages built from their specs, set up once, run on one batch at a time.

This is the local executor every caller shares: the shard worker (one per GPU), ``factory
calibrate``, ``factory doctor`` and the benchmarks. A stage spec is ``(path, name, options)``
as a recipe gives it (``factory.recipe.Recipe.stage_specs``); this module knows nothing
about recipes, so stages stay below the configuration layer.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from stages import stage_class
from stages.base import Record, Stage, StageContext, StageError

__all__ = ["Pipeline", "StageSpec", "StageTimings", "build_stage", "path_kind"]


def path_kind(path: str) -> str:
    """The stage kind a recipe path holds: ``detectors[0]`` -> ``detector``, ``filters`` -> ``filter``."""
    head = path.split("[", 1)[0]
    return {"detectors": "detector", "filters": "filter"}.get(head, head)


@dataclass(frozen=True)
class StageSpec:
    """One stage as a recipe chooses it: where it sits, which stage, and its raw options."""

    path: str  # recipe path, e.g. "generator" or "detectors[1]"
    name: str  # registry name, or "package.module:Class" for a plugin
    options: dict[str, Any] = field(default_factory=dict)


def build_stage(spec: StageSpec, context: StageContext) -> Stage[Any]:
    """Instantiate the stage of ``spec`` with its validated config and run its ``setup()``."""
    cls = stage_class(spec.name)
    stage = cls(cls.config_model(**spec.options), context)
    stage.setup()
    return stage


@dataclass
class StageTimings:
    """Seconds and live samples per stage name, summed over the batches a pipeline ran."""

    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    samples: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def add(self, name: str, seconds: float, samples: int) -> None:
        self.seconds[name] += seconds
        self.samples[name] += samples


class Pipeline:
    """Stages in pipeline order, each set up once; :meth:`run` maps one batch through all of them."""

    def __init__(self, stages: list[Stage[Any]]) -> None:
        self.stages = stages

    @classmethod
    def build(cls, specs: Iterable[StageSpec], context: StageContext) -> Pipeline:
        return cls([build_stage(spec, context) for spec in specs])

    def __iter__(self) -> Any:
        return iter(self.stages)

    def __len__(self) -> int:
        return len(self.stages)

    def run(self, batch: list[Record], timings: StageTimings | None = None) -> list[Record]:
        """Run every stage on ``batch`` in place (dropped records are skipped by each stage)."""
        for stage in self.stages:
            live = sum(1 for r in batch if not r.get("dropped_by"))
            if not live:
                break
            t0 = time.perf_counter()
            out = stage.process(batch)
            if out is not batch and len(out) != len(batch):
                raise StageError(f"stage {stage.name!r} returned {len(out)} records for {len(batch)}")
            if out is not batch:
                batch[:] = out
            if timings is not None:
                timings.add(stage.name, time.perf_counter() - t0, live)
        return batch

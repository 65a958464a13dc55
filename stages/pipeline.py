"""The in-process pipeline: stages built from their specs, set up once, run on one batch at a time.

This is the local executor every caller shares: the shard worker (one per GPU), ``factory
calibrate``, ``factory doctor`` and the benchmarks. A stage spec is ``(path, name, options)``
as a recipe gives it (``factory.recipe.Recipe.stage_specs``); this module knows nothing
about recipes, so stages stay below the configuration layer.

:meth:`Pipeline.check` walks a chain of specs through the stages' declared data flow
(``stages.base``) from stage classes alone (no model is built): starting from the plan's
fields, each stage's ``reads`` must have been written before it, and every field a stage
declares must be one ``manifests.schema`` knows. ``factory.recipe`` runs it whenever a
recipe is loaded, so a broken chain is a recipe error before any worker starts.
"""

from __future__ import annotations

import difflib
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from manifests.schema import PLAN_KEYS, RECORD_FIELDS, WRITER_COLUMNS
from stages import REGISTRY, stage_class
from stages.base import DROP_FIELDS, UNDECLARED, Record, Stage, StageContext, StageError, is_dropped

__all__ = ["ChainError", "Pipeline", "StageSpec", "StageTimings", "build_stage", "path_kind"]


class ChainError(StageError):
    """A chain of stages whose declared data flow does not hold; ``str()`` is one line naming
    the stage (recipe path and name) and the field."""

    def __init__(self, message: str, path: str, field: str | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.field = field


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


def _writers_of(field_name: str) -> list[str]:
    """Registered stages that declare ``field_name`` in ``writes`` (for the error message only)."""
    found = []
    for name in REGISTRY:
        try:
            cls = stage_class(name)
        except StageError:  # its optional dependency is not installed here
            continue
        if field_name in cls.writes:
            found.append(name)
    return found


def _unknown_field(spec: StageSpec, cls: type[Stage[Any]]) -> ChainError | None:
    """The error for a stage whose declarations do not hold on their own, or ``None``."""
    where = f"stage {spec.path} ({spec.name})"
    if cls.writes is UNDECLARED:
        return ChainError(
            f"{where} does not declare the record fields it writes; set its class's `writes` (and `reads`, "
            "`optional_reads`) to the manifests.schema fields it sets (and needs)",
            spec.path,
        )
    declared = (("reads", cls.reads), ("optional_reads", cls.optional_reads), ("writes", cls.writes))
    for what, fields in declared:
        unknown = sorted(fields - RECORD_FIELDS)
        if unknown:
            close = difflib.get_close_matches(unknown[0], sorted(RECORD_FIELDS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            return ChainError(
                f"{where} declares field {unknown[0]!r} in `{what}`, which is no manifest column or "
                f"transient field of manifests.schema{hint}",
                spec.path,
                unknown[0],
            )
    claimed = sorted(cls.writes & WRITER_COLUMNS)
    if claimed:
        return ChainError(
            f"{where} declares it writes {claimed[0]!r}, which only the shard writer sets", spec.path, claimed[0]
        )
    return None


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

    @classmethod
    def check(cls, specs: Iterable[StageSpec], provided: frozenset[str] = PLAN_KEYS) -> None:
        """Raise :class:`ChainError` unless every stage of ``specs``, in order, reads only fields
        ``provided`` at the start (default: the plan's) or written by a stage before it, and
        declares only fields ``manifests.schema`` knows. Builds no stage (classes only)."""
        written = set(provided) | DROP_FIELDS
        for spec in specs:
            stage_cls = stage_class(spec.name)
            problem = _unknown_field(spec, stage_cls)
            if problem is not None:
                raise problem
            for name in sorted(stage_cls.reads - written):
                writers = ", ".join(_writers_of(name)) or "none registered"
                raise ChainError(
                    f"stage {spec.path} ({spec.name}) reads field {name!r}, which neither the plan nor "
                    f"an earlier stage writes (stages that write it: {writers}); add one before it",
                    spec.path,
                    name,
                )
            written |= stage_cls.writes

    def __iter__(self) -> Any:
        return iter(self.stages)

    def __len__(self) -> int:
        return len(self.stages)

    def run(self, batch: list[Record], timings: StageTimings | None = None) -> list[Record]:
        """Run every stage on ``batch`` in place (dropped records are skipped by each stage)."""
        for stage in self.stages:
            live = sum(1 for r in batch if not is_dropped(r))
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

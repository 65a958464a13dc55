"""The stage interface: small on purpose.

A stage declares its name and resources, loads its models once in ``setup()`` and maps a
batch of sample records to a batch of records. A record is a plain ``dict`` whose keys are
the columns of ``manifests.schema`` plus, while a sample is in flight, the transient keys
listed there (decoded image array, landmarks, ...).

A stage drops a record with :func:`drop`; the engine stops feeding dropped records to later
stages but keeps them, with the stage name and reason, for the shard manifest.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

__all__ = [
    "Record",
    "Resources",
    "Stage",
    "StageConfig",
    "StageContext",
    "StageError",
    "drop",
    "is_dropped",
]

Record = dict[str, Any]


class StageError(RuntimeError):
    """A stage cannot run at all (missing model file, missing package, ...).

    The message names the file or package and says how to fix it.
    """


class StageConfig(BaseModel):
    """Base for a stage's recipe section; unknown keys are refused (typos surface early)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class Resources:
    num_gpus: float = 0.0
    num_cpus: float = 1.0


@dataclass
class StageContext:
    """What a stage may know about the run it is part of."""

    run_dir: Path
    device: str = "cpu"  # "cuda" inside a GPU actor that sees a device, else "cpu"
    seed: int = 0
    identity_bank: Any = None  # factory.identities.IdentityBank or None
    image_size: int = 512
    extra: dict[str, Any] = field(default_factory=dict)


class Stage(ABC):
    """One step of the pipeline.

    Subclasses set ``name`` (the registry key), ``kind`` and ``config_model``, and
    implement :meth:`process`. ``setup`` is called once per worker before the first batch.
    """

    name: ClassVar[str]
    kind: ClassVar[str]  # prompt | generator | face | detector | agreement | filter | realism
    resources: ClassVar[Resources] = Resources()
    config_model: ClassVar[type[StageConfig]] = StageConfig

    def __init__(self, config: StageConfig, context: StageContext) -> None:
        self.config = config
        self.context = context

    def setup(self) -> None:  # noqa: B027 - optional hook
        """Load models once; the default stage has none."""

    @abstractmethod
    def process(self, batch: list[Record]) -> list[Record]:
        """Map live records to records (same order, same length); drop with :func:`drop`."""


def drop(record: Record, stage: str, reason: str) -> Record:
    """Mark ``record`` as rejected by ``stage`` for ``reason`` (first drop wins)."""
    if not record.get("dropped_by"):
        record["dropped_by"] = stage
        record["drop_reason"] = reason
    return record


def is_dropped(record: Record) -> bool:
    return bool(record.get("dropped_by"))

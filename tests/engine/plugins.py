"""Stages used only by the engine tests, loaded as plugins ("tests.engine.plugins:Class")."""

from __future__ import annotations

import os
from pathlib import Path

from stages.base import Record, Stage, StageConfig, drop


class DropAllConfig(StageConfig):
    reason: str = "test filter drops everything"


class DropAll(Stage):
    """A filter that rejects every sample (drives the acceptance-floor stop)."""

    name = "drop-all"
    kind = "filter"
    config_model = DropAllConfig

    def process(self, batch: list[Record]) -> list[Record]:
        for r in batch:
            drop(r, self.name, self.config.reason)  # type: ignore[attr-defined]
        return batch


class DieOnceConfig(StageConfig):
    shard: int = 1
    marker_dir: str = "/tmp"


class DieOnce(Stage):
    """Kills its worker process the first time it sees ``shard`` (a marker file remembers)."""

    name = "die-once"
    kind = "filter"
    config_model = DieOnceConfig

    def process(self, batch: list[Record]) -> list[Record]:
        cfg: DieOnceConfig = self.config  # type: ignore[assignment]
        marker = Path(cfg.marker_dir) / f"died-on-{cfg.shard}"
        if any(r["shard"] == cfg.shard for r in batch) and not marker.exists():
            marker.write_text(str(os.getpid()))
            os._exit(1)
        return batch


class MissingCheckpoint(Stage):
    """A stage whose model file is missing: setup() fails the way real stages do."""

    name = "missing-checkpoint"
    kind = "detector"

    def setup(self) -> None:
        from stages.base import StageError

        raise StageError("checkpoint /nowhere/model.pth does not exist; run `factory models pull x`")

    def process(self, batch: list[Record]) -> list[Record]:
        return batch

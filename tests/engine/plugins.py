"""Stages used only by the engine tests, loaded as plugins ("tests.engine.plugins:Class")."""

from __future__ import annotations

import os
import time
from pathlib import Path

from stages.base import Record, Stage, StageConfig, StageError, drop


class DropAllConfig(StageConfig):
    reason: str = "test filter drops everything"


class DropAll(Stage[DropAllConfig]):
    """A filter that rejects every sample (drives the acceptance-floor stop)."""

    name = "drop-all"
    kind = "filter"
    writes = frozenset()  # only drops

    def process(self, batch: list[Record]) -> list[Record]:
        for r in batch:
            drop(r, self.name, self.config.reason)
        return batch


class DieOnceConfig(StageConfig):
    shard: int = 1
    marker_dir: str = "/tmp"


class DieOnce(Stage[DieOnceConfig]):
    """Kills its worker process the first time it sees ``shard`` (a marker file remembers)."""

    name = "die-once"
    kind = "filter"
    reads = frozenset({"shard"})
    writes = frozenset()

    def process(self, batch: list[Record]) -> list[Record]:
        cfg = self.config
        marker = Path(cfg.marker_dir) / f"died-on-{cfg.shard}"
        if any(r["shard"] == cfg.shard for r in batch) and not marker.exists():
            marker.write_text(str(os.getpid()))
            os._exit(1)
        return batch


class MissingCheckpoint(Stage):
    """A stage whose model file is missing: setup() fails the way real stages do."""

    name = "missing-checkpoint"
    kind = "detector"
    writes = frozenset()

    def setup(self) -> None:
        raise StageError("checkpoint /nowhere/model.pth does not exist; run `factory models pull x`")

    def process(self, batch: list[Record]) -> list[Record]:
        return batch


class HangOnceConfig(StageConfig):
    shard: int = 1
    seconds: float = 600.0
    marker_dir: str = "/tmp"


class HangOnce(Stage[HangOnceConfig]):
    """Hangs (sleeps ``seconds``) the first time any worker sees ``shard``: a stuck GPU or a
    dead mount, as the engine sees it. A marker file makes every later attempt healthy."""

    name = "hang-once"
    kind = "filter"
    reads = frozenset({"shard"})
    writes = frozenset()

    def process(self, batch: list[Record]) -> list[Record]:
        cfg = self.config
        marker = Path(cfg.marker_dir) / f"hung-on-{cfg.shard}"
        if any(r["shard"] == cfg.shard for r in batch) and not marker.exists():
            marker.write_text(str(os.getpid()))
            time.sleep(cfg.seconds)
        return batch


class AlwaysFailsConfig(StageConfig):
    path: str = "/bank/portrait-0007.jpg"


class AlwaysFails(Stage[AlwaysFailsConfig]):
    """Fails every batch the way an unreadable identity-bank image does, on every worker."""

    name = "always-fails"
    kind = "filter"
    reads = frozenset({"shard"})
    writes = frozenset()

    def process(self, batch: list[Record]) -> list[Record]:
        raise OSError(f"cannot read identity image {self.config.path} (shard {batch[0]['shard']}): unreadable")

"""Live progress for a build (rich), or plain log lines in quiet mode (CI)."""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

__all__ = ["BuildProgress"]


class BuildProgress:
    """counted / target, samples/s per stage, ETA; quiet mode prints one line per shard.

    The count is of the samples that count toward the target: accepted ones, or with
    ``selects`` (a closed-loop balance or an identity bank's dedup) the ones the policy kept,
    which is what the build stops at; a selecting build accepts more than it keeps."""

    def __init__(self, target: int, *, quiet: bool = False) -> None:
        self.target = target
        self.counts = "accepted"
        self.quiet = quiet or not sys.stderr.isatty()
        self.console = Console(stderr=True)
        self.seconds: dict[str, float] = defaultdict(float)
        self.samples: dict[str, int] = defaultdict(int)
        self.counted = 0
        self.t0 = time.perf_counter()
        self._progress: Progress | None = None
        self._task: Any = None

    def start(self, counted: int, done: list[int], *, selects: bool = False) -> None:
        self.counted = counted
        self.counts = "kept" if selects else "accepted"
        if self.quiet:
            self.console.print(f"build: {len(done)} shards already done, {counted}/{self.target} {self.counts}")
            return
        self._progress = Progress(
            TextColumn(f"[bold]{self.counts}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.description}"),
            console=self.console,
            transient=False,
        )
        self._task = self._progress.add_task("", total=self.target, completed=min(counted, self.target))
        self._progress.start()

    def stage_rates(self) -> dict[str, float]:
        """Samples per second of busy time, per stage (summed over workers)."""
        return {k: self.samples[k] / v for k, v in self.seconds.items() if v > 0}

    def _rates_text(self) -> str:
        return " ".join(f"{k} {v:.1f}/s" for k, v in self.stage_rates().items())

    def shard_done(self, stats: dict[str, Any]) -> None:
        """A shard committed with ``stats`` (the build's count is set by :meth:`count` first)."""
        for k, v in stats.get("stage_seconds", {}).items():
            self.seconds[k] += float(v)
        for k, v in stats.get("stage_samples", {}).items():
            self.samples[k] += int(v)
        if self.quiet:
            rates = self._rates_text()
            self.console.print(
                f"shard {stats.get('shard')}: {stats['accepted']}/{stats['planned']} accepted; "
                f"total {self.counted}/{self.target} {self.counts}" + (f"; {rates}" if rates else "")
            )
        elif self._progress is not None:
            self._progress.update(self._task, description=self._rates_text())

    def count(self, counted: int) -> None:
        """Shards committed or a policy decided some: the build's count is now ``counted``."""
        self.counted = counted
        if self._progress is not None:
            self._progress.update(self._task, completed=min(counted, self.target))

    def note(self, message: str) -> None:
        self.console.print(message)

    def refresh(self) -> None:
        if self._progress is not None:
            self._progress.refresh()

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

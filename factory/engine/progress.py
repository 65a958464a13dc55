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
    """accepted / target, samples/s per stage, ETA; quiet mode prints one line per shard."""

    def __init__(self, target: int, *, quiet: bool = False) -> None:
        self.target = target
        self.quiet = quiet or not sys.stderr.isatty()
        self.console = Console(stderr=True)
        self.seconds: dict[str, float] = defaultdict(float)
        self.samples: dict[str, int] = defaultdict(int)
        self.accepted = 0
        self.t0 = time.perf_counter()
        self._progress: Progress | None = None
        self._task: Any = None

    def start(self, accepted: int, done: dict[int, Any]) -> None:
        self.accepted = accepted
        if self.quiet:
            self.console.print(f"build: {len(done)} shards already done, {accepted}/{self.target} accepted")
            return
        self._progress = Progress(
            TextColumn("[bold]accepted"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.description}"),
            console=self.console,
            transient=False,
        )
        self._task = self._progress.add_task("", total=self.target, completed=min(accepted, self.target))
        self._progress.start()

    def stage_rates(self) -> dict[str, float]:
        """Samples per second of busy time, per stage (summed over workers)."""
        return {k: self.samples[k] / v for k, v in self.seconds.items() if v > 0}

    def _rates_text(self) -> str:
        return " ".join(f"{k} {v:.1f}/s" for k, v in self.stage_rates().items())

    def shard_done(self, stats: dict[str, Any]) -> None:
        self.accepted += int(stats["accepted"])
        for k, v in stats.get("stage_seconds", {}).items():
            self.seconds[k] += float(v)
        for k, v in stats.get("stage_samples", {}).items():
            self.samples[k] += int(v)
        if self.quiet:
            self.console.print(
                f"shard {stats.get('shard')}: {stats['accepted']}/{stats['planned']} accepted; "
                f"total {self.accepted}/{self.target}; {self._rates_text()}"
            )
        elif self._progress is not None:
            self._progress.update(self._task, completed=min(self.accepted, self.target), description=self._rates_text())

    def note(self, message: str) -> None:
        self.console.print(message)

    def refresh(self) -> None:
        if self._progress is not None:
            self._progress.refresh()

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

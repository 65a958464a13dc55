"""``factory export``: the library's streaming export (``manifests.export``) with a progress bar."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from manifests.export import FORMATS, ExportError, export

__all__ = ["FORMATS", "ExportError", "ExportProgress", "run_export"]


class ExportProgress:
    """A live bar on a terminal; a line every 10 % (or 30 s) in logs; nothing when quiet."""

    def __init__(self, console: Console, *, quiet: bool = False) -> None:
        self.console = console
        self.quiet = quiet
        self.live = not quiet and console.is_terminal
        self._bar: Progress | None = None
        self._task: Any = None
        self._last = (0.0, -1)

    def __enter__(self) -> ExportProgress:
        if self.live:
            self._bar = Progress(
                TextColumn("[bold]export"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=self.console,
            )
            self._task = self._bar.add_task("", total=None)
            self._bar.start()
        return self

    def update(self, done: int, total: int) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=done, total=total)
            return
        if self.quiet:
            return
        now, tenth = time.monotonic(), (10 * done // total if total else 10)
        if tenth != self._last[1] or now - self._last[0] > 30:
            self.console.print(f"export: {done}/{total} samples", highlight=False)
            self._last = (now, tenth)

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._bar is not None:
            self._bar.stop()


def dlib_landmarks(image: bytes) -> tuple[np.ndarray, bool]:
    """The 68 points of the largest face dlib finds (the model our ``dlib`` stage uses, upsampled
    once as LibreFace's own fallback does), and True; with no face found, the points dlib
    predicts in the whole image's box (MIFA's images are face crops), and False."""
    import io  # deferred: only --landmarks decodes images

    from PIL import Image  # deferred: only --landmarks decodes images

    from stages.faces.landmarks import detect_faces, landmarks_for_box  # deferred: loads dlib

    with Image.open(io.BytesIO(image)) as decoded:
        pixels = np.asarray(decoded.convert("RGB"))
    faces = detect_faces(pixels, upsample=1)
    if faces:
        return faces[0].landmarks, True
    height, width = pixels.shape[:2]
    return landmarks_for_box(pixels, (0.0, 0.0, float(width - 1), float(height - 1))), False


def run_export(run_dir: Path, out: Path, *, quiet: bool = False, **options: Any) -> dict[str, Any]:
    """Export with a progress display on stderr; ``options`` are :func:`manifests.export.export`'s
    (``--landmarks`` gets dlib's landmarker here: the library layer cannot import stages)."""
    console = Console(stderr=True, force_terminal=None if sys.stderr.isatty() else False)
    if (options.get("format_options") or {}).get("landmarks"):
        options["landmarker"] = dlib_landmarks
    with ExportProgress(console, quiet=quiet) as progress:
        return export(run_dir, out, progress=progress.update, **options)

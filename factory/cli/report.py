"""`factory report`: one self-contained HTML page (plots embedded, works offline)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from factory.cli.common import RunArg, out
from manifests.errors import UserError


def report(
    run_dir: RunArg,
    out_file: Annotated[
        Path | None, typer.Option("--out", help="HTML file to write (default: report.html in the dataset folder).")
    ] = None,
    per_emotion: Annotated[int, typer.Option("--per-emotion", help="Thumbnails per emotion's contact sheet.")] = 8,
) -> None:
    """AU occurrence and intensity against the plan, co-occurrence, balance, funnel, detector
    agreement, label fidelity and contact sheets, in one offline HTML page."""
    try:
        from factory.commands.report import build_report  # deferred: matplotlib (~0.4 s), only this command draws
    except ImportError as exc:
        raise UserError(
            f"factory report needs {exc.name}", fix="install it with: pip install 'mifa-factory[report]'"
        ) from exc
    path = build_report(run_dir, out_file, per_emotion=per_emotion)
    out.print(f"[bold green]report[/] {path}")

"""A ``factory`` command run in the test's own process, through the CLI's edge (typer's
``CliRunner`` on ``factory.cli.app``): no interpreter and imports to start, unlike a child."""

from __future__ import annotations

from typer.testing import CliRunner

from factory.cli import app

__all__ = ["run_cli"]


def run_cli(*args: object, columns: int | None = None) -> tuple[int, str]:
    """(exit code, all it printed: stdout and stderr) of ``factory *args``; ``columns`` widens
    rich's tables so a test can read a row whole."""
    env = {"COLUMNS": str(columns)} if columns is not None else None
    result = CliRunner().invoke(app, [str(a) for a in args], env=env)
    return result.exit_code, result.output

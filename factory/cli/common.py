"""What every command of the CLI shares: consoles, argument types, the one-line error exit."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from factory.recipe import Recipe, RecipeError, load_recipe
from manifests.store import check_url, is_url, location

__all__ = ["OutOpt", "RecipeArg", "RunArg", "SeedOpt", "TargetOpt", "err", "fail", "load", "out", "print_error"]

# Wide tables in logs and CI (a pipe has no terminal width to follow).
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


def _run_location(text: str) -> Path:
    """A folder, or a dataset on object storage (``s3://bucket/prefix``: a ``UPath``)."""
    return location(check_url(text) if is_url(text) else text)


def _out_text(text: str) -> str:
    """``--out`` as the recipe spells dataset.out: a plain path normalised as ``Path`` would,
    a URL kept as it is (``Path`` would fold its ``//``)."""
    return text if is_url(text) else str(Path(text))


RecipeArg = Annotated[Path, typer.Argument(help="Recipe TOML file, e.g. recipes/demo.toml.")]
RunArg = Annotated[
    Path, typer.Argument(help="A build's output directory (its --out, or s3://bucket/prefix).", parser=_run_location)
]
TargetOpt = Annotated[
    int | None, typer.Option("--target", help="Accepted samples to build (overrides dataset.target).")
]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Master seed (overrides dataset.seed).")]
OutOpt = Annotated[
    str | None,
    typer.Option("--out", help="Output directory or s3://bucket/prefix (overrides dataset.out).", parser=_out_text),
]


def print_error(message: str, *, lines: bool = False) -> None:
    """The error on stderr, on one line: a line break or control character that a user's input
    carried (a field name, a path) is spelled out, and nothing is read as rich markup;
    ``lines`` keeps the lines of a report (a failed build lists its failures by cause)."""
    safe = message.encode("utf-8", "backslashreplace").decode("utf-8")
    if not lines:
        safe = "".join(c if c.isprintable() else repr(c)[1:-1] for c in safe)
    err.print(f"[bold red]error:[/] {escape(safe)}", highlight=False, soft_wrap=True)


def fail(message: str, code: int = 1) -> NoReturn:
    """Print one error line (no traceback) and exit with ``code`` (2: bad input)."""
    print_error(message)
    raise typer.Exit(code)


def load(recipe: Path, **overrides: Any) -> Recipe:
    """The validated recipe with CLI overrides, or exit 2 naming the field."""
    try:
        return load_recipe(recipe, **{k: (str(v) if isinstance(v, Path) else v) for k, v in overrides.items()})
    except RecipeError as exc:
        fail(str(exc), code=2)

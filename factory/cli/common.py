"""What every command of the CLI shares: consoles, argument types, how an error is printed."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from factory.recipe import Recipe, load_recipe
from manifests.errors import UserError
from manifests.store import check_url, is_url, location, probe_location

__all__ = [
    "OutOpt",
    "RecipeArg",
    "RunArg",
    "SeedOpt",
    "StorageUnreachable",
    "TargetOpt",
    "check_reachable",
    "err",
    "load",
    "out",
    "print_error",
]

# Wide tables in logs and CI (a pipe has no terminal width to follow).
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


class StorageUnreachable(UserError, ConnectionError):
    """Object storage that does not answer: the environment to fix, not a bug."""


def check_reachable(url: str) -> None:
    """Refuse a ``s3://...`` whose endpoint does not answer, naming the endpoint (its host only:
    a URL's path or query may hold a secret)."""
    if not is_url(url):
        return
    from urllib.parse import urlsplit  # deferred: only object-storage paths are probed

    from botocore.exceptions import ConnectionError as EndpointError  # deferred: the [s3] extra's client

    folder = probe_location(url)
    try:
        folder.fs.exists(folder.path)
    except EndpointError as exc:
        parts = urlsplit(str(getattr(exc, "kwargs", {}).get("endpoint_url") or ""))
        endpoint = f"{parts.scheme}://{parts.netloc}" if parts.netloc else "the default S3 endpoint"
        bucket = f"{url.split('://')[0]}://{folder.path.split('/')[0]}"
        raise StorageUnreachable(
            f"cannot reach the object storage endpoint {endpoint} for {bucket}; "
            "check the network, AWS_ENDPOINT_URL and that the storage server is up"
        ) from None


def _run_location(text: str) -> Path:
    """A folder, or a dataset on object storage (``s3://bucket/prefix``: a ``UPath``) whose
    endpoint answers."""
    if is_url(text):
        check_reachable(check_url(text))
    return location(check_url(text) if is_url(text) else text)


def _out_text(text: str) -> str:
    """``--out`` as the recipe spells dataset.out: a plain path normalised as ``Path`` would,
    a URL kept as it is (``Path`` would fold its ``//``), an empty one kept empty (``Path``
    would make it ``.``) for the recipe to refuse."""
    return text if is_url(text) or not text.strip() else str(Path(text))


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
    ``lines`` keeps the line breaks of a report the factory composed (a failed build's causes,
    DuckDB's pointer under a query), each line spelled out the same way."""
    safe = message.encode("utf-8", "backslashreplace").decode("utf-8")
    parts = safe.split("\n") if lines else [safe]
    safe = "\n".join("".join(c if c.isprintable() else repr(c)[1:-1] for c in part) for part in parts)
    err.print(f"[bold red]error:[/] {escape(safe)}", highlight=False, soft_wrap=True)


def load(recipe: Path, **overrides: Any) -> Recipe:
    """The validated recipe with CLI overrides (a ``RecipeError`` names the field)."""
    return load_recipe(recipe, **{k: (str(v) if isinstance(v, Path) else v) for k, v in overrides.items()})

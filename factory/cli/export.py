"""`factory export`: a dataset or subset in the formats trainers read, streamed and resumable."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated

import typer

from factory.cli.common import RunArg, out
from factory.commands.bank import export_identity_bank
from factory.commands.export import FORMATS, ExportError, run_export

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30}


def parse_size(text: str) -> int:
    """``"1GB"`` -> 10**9, ``"512MiB"`` -> 512 * 2**20; an ``ExportError`` naming the option."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _UNITS:
        raise ExportError(f"--shard-bytes {text!r}: write a size such as 1GB, 500MB or 512MiB")
    return int(float(match.group(1)) * _UNITS[unit])


def export(
    run_dir: RunArg,
    dest: Annotated[Path, typer.Argument(help="Output folder (new or empty; an unfinished export resumes).")],
    fmt: Annotated[str, typer.Option("--format", help=f"One of: {', '.join(FORMATS)}.")] = "webdataset",
    where: Annotated[str | None, typer.Option("--where", help="SQL filter over `samples`.")] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="The first N selected samples (source order).")] = None,
    shard_size: Annotated[
        int | None, typer.Option("--shard-size", help="Samples per output shard / folder (default 1000).")
    ] = None,
    shard_bytes: Annotated[
        str | None, typer.Option("--shard-bytes", help="Close a WebDataset shard at this size, e.g. 1GB.")
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="Dataset name of a WebDataset export.")] = None,
    aus: Annotated[str, typer.Option("--aus", help="graphau: disfa8 (ME-GraphAU's DISFA AUs) or disfa12.")] = "disfa8",
    list_name: Annotated[str, typer.Option("--list-name", help="graphau: list file prefix (DISFA).")] = "DISFA",
    layout: Annotated[
        str, typer.Option("--layout", help="graphau: disfa (ME-GraphAU) or opengraphau (hybrid lists).")
    ] = "disfa",
    folds: Annotated[
        int, typer.Option("--folds", help="graphau / libreface: identity-disjoint folds (DISFA's protocol: 3).")
    ] = 3,
    split_by: Annotated[
        str, typer.Option("--split-by", help="identity (disjoint folds and splits) or sample (identities shared).")
    ] = "identity",
    occurrence_threshold: Annotated[
        int,
        typer.Option("--occurrence-threshold", help="An AU is present at intensity >= 1 (MIFA) or 2 (ME-GraphAU)."),
    ] = 1,
    shares: Annotated[
        str, typer.Option("--shares", help="huggingface / opengraphau: train,validation,test shares.")
    ] = "0.6,0.2,0.2",
    landmarks: Annotated[
        bool, typer.Option("--landmarks", help="libreface: write the 68 dlib landmarks as .npy beside images/.")
    ] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a finished or different export.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")] = False,
) -> None:
    """Export samples as WebDataset shards, a folder + labels.csv, a Hugging Face dataset folder,
    MAUGen's sample_data.json, ME-GraphAU / OpenGraphAU lists or LibreFace's csv folds
    (identity-disjoint); in constant memory, resumable. An
    identity-bank build exports as a bank folder (identity-bank), indexed and ready for
    identities.bank."""
    if fmt == "identity-bank":
        _export_bank(run_dir, dest, where, limit, overwrite)
        return
    split = {"folds": folds, "split_by": split_by, "occurrence_threshold": occurrence_threshold}
    options = {
        "graphau": {"aus": aus, "list_name": list_name, "layout": layout, "shares": shares, **split},
        "libreface": {**split, "landmarks": landmarks},
        "huggingface": {"split_by": split_by, "shares": shares},
    }.get(fmt, {})
    result = run_export(
        run_dir,
        dest,
        quiet=quiet,
        format=fmt,
        where=where,
        limit=limit,
        shard_size=shard_size,
        shard_bytes=parse_size(shard_bytes) if shard_bytes else None,
        name=name,
        format_options=options,
        overwrite=overwrite,
    )
    out.print_json(json.dumps(result, default=str))


def _export_bank(run_dir: Path, dest: Path, where: str | None, limit: int | None, overwrite: bool) -> None:
    bank = export_identity_bank(run_dir, dest, where=where, limit=limit, overwrite=overwrite)
    for line in bank.balance_lines():
        out.print(line, highlight=False)
    out.print(bank.index.summary(), highlight=False)

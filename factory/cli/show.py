"""`factory show`: one sample, whole; `--regenerate` checks it is reproducible from the dataset."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from factory.cli.common import RunArg, out
from factory.commands.show import Regeneration, regenerate, show_sample
from manifests.sample import StoredSample
from manifests.schema import SCORE_KEYS
from manifests.vocab import AU_INFO, DISFA_AUS


def _cell(values: Any, i: int) -> str:
    if values is None:
        return ""
    value = values[i]
    if value is None:
        return "-"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def _labels_table(row: dict[str, Any]) -> Table:
    table = Table(title="labels (occurrence / intensity; -1 = uncertain, - = not covered)")
    columns = [("planned", "planned_intensity", None), ("label", "au_occurrence", "au_intensity")]
    columns += [("consensus", "consensus_occurrence", "consensus_intensity")]
    columns += [("generator", "generator_occurrence", "generator_intensity")]
    for name in ("AU", "FACS name", *[c[0] for c in columns]):
        table.add_column(name)
    votes = row.get("votes") or []
    for vote in votes:
        table.add_column(str(vote["detector"]))
    for i, au in enumerate(DISFA_AUS):
        cells = [f"AU{au}", AU_INFO[au].facs_name]
        for _, occ, inten in columns:
            cells.append(_cell(row.get(occ), i) + (f" / {_cell(row.get(inten), i)}" if inten else ""))
        cells += [f"{_cell(v['occurrence'], i)} / {_cell(v['intensity'], i)}" for v in votes]
        table.add_row(*cells)
    return table


def _print_sample(sample: StoredSample) -> None:
    row = sample.row
    state = "[green]accepted[/]" if row["accepted"] else f"[red]dropped by {row['dropped_by']}[/]: {row['drop_reason']}"
    out.print(f"[bold]{row['key']}[/] in {sample.dataset.root} (shard {row['shard']}, index {row['index']}): {state}")
    out.print(
        f"  emotion {row['emotion']}; identity {row['identity_id']} ({row['ethnicity']}, {row['age_band']}, "
        f"{row['gender']}, match {row['identity_match']}); generator {row['generator']}, labels {row['label_source']}; "
        f"seed {row['seed']}",
        highlight=False,
    )
    out.print(f"  description: {row['description']}", highlight=False)
    if sample.image is not None:
        out.print(
            f"  image: {row['image_member']}, {row['width']}x{row['height']} {row['image_format']}, "
            f"{len(sample.image)} bytes"
        )
    else:
        out.print("  image: not stored (a rejected sample; output.keep_rejected_images keeps them)")
    scores = ", ".join(
        f"{k} {row.get(k):.3f}" if row.get(k) is not None else f"{k} -" for k in (*SCORE_KEYS, "face_score")
    )
    out.print(f"  scores: {scores}", highlight=False)
    out.print(f"  plan: {'recorded' if sample.plan is not None else 'plan file missing'}")
    out.print(_labels_table(row))


def _print_regeneration(result: Regeneration) -> None:
    if result.identical:
        out.print(f"[bold green]regenerated identically[/]: image and every label of {result.key} match the dataset")
    else:
        out.print(f"[bold red]regenerated with differences[/] ({len(result.differences)} field(s)):")
        for d in result.differences:
            out.print(f"  {d.field}: {d.detail}", highlight=False)
    changed = result.to_dict()["version_changes"]
    out.print(
        f"  device: build {result.build_device}, here {result.our_device}; "
        f"software changed since the build: {changed or 'none'}",
        highlight=False,
    )


def show(
    run_dir: RunArg,
    key: Annotated[str, typer.Argument(help="The sample's key, e.g. 000003_00012.")],
    regenerate_it: Annotated[
        bool, typer.Option("--regenerate", help="Re-run its recorded plan through the same stages and compare.")
    ] = False,
    image: Annotated[Path | None, typer.Option("--image", help="Write the sample's image to this file.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """One sample: image, labels, planned vector, description, every detector's votes, scores and drop reason."""
    if regenerate_it:
        sample, result = regenerate(run_dir, key)
    else:
        sample, result = show_sample(run_dir, key), None
    if image is not None and sample.image is not None:
        image.write_bytes(sample.image)
    if as_json:
        doc = {"row": sample.row, "plan": sample.plan, "regeneration": result.to_dict() if result else None}
        out.print_json(json.dumps(doc, default=str))
    else:
        _print_sample(sample)
        if result is not None:
            _print_regeneration(result)
    if result is not None and not result.identical:
        raise typer.Exit(1)

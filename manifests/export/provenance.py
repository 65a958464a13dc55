"""The card and provenance of an export: the source's ``provenance.json`` travels with it
(so the licences of the models that shaped the data stay attached), and the export's card is
the source's card with a note saying what was exported."""

from __future__ import annotations

import json
from pathlib import Path

from manifests.atomic import write_text_atomic
from manifests.card import read_provenance, render_card
from manifests.dataset import open_dataset
from manifests.files import copy_file, exists
from manifests.layout import ExportLayout, RunLayout

__all__ = ["derived_card_text", "write_derived_card"]


def _copy_provenance(source: Path, out: Path) -> None:
    dataset = open_dataset(source)
    origin = dataset.layout.provenance
    if exists(origin) and read_provenance(dataset.root) is not None:
        copy_file(origin, RunLayout(out, dataset.name).provenance)


def derived_card_text(source: Path, out: Path, extra: str | None = None) -> str:
    """The source's card with a note on this export (its job from ``.mifa-export``)."""
    _copy_provenance(source, out)
    try:
        job = json.loads(ExportLayout(out).marker.read_text())
    except (OSError, ValueError):
        job = {}
    note = (
        f"This folder is a `{job.get('format')}` export of the dataset in {job.get('source', source)} "
        f"(where: {job.get('where') or 'all samples with an image'}; limit: {job.get('limit')}). "
        "The counts and balance below describe the source dataset; export.json gives this export's."
    )
    if extra:
        note += "\n\n" + extra
    return render_card(source, note=note)


def write_derived_card(source: Path, out: Path, *, before_index: bool = False) -> None:
    """Copy the source's provenance into ``out``; unless ``out`` is about to get an index of
    its own (whose card is written with it), write ``out/DATASET_CARD.md`` too."""
    _copy_provenance(source, out)
    if not before_index:
        write_text_atomic(RunLayout(out, "").card, derived_card_text(source, out))

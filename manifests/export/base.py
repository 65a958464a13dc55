"""The export format base: what a format receives and what it writes.

A format is one small :class:`Exporter` subclass in this folder plus one line in
``manifests.export.FORMATS``. The loop (``manifests.export.run``) owns everything else: the
selection, reading images from the source tars, cutting the stream into parts, the target
folder rules, resuming, progress and ``export.json``.

The contract, in three methods:

- :meth:`Exporter.write_part` receives one part's samples (``shard_size`` of them, or fewer
  once :meth:`Exporter.part_bytes` reaches ``shard_bytes``) in source order, writes that
  part's files so that each appears whole or not at all (temp + rename), and returns a
  small JSON-able summary (the loop adds ``rows``). After a crash the same part is written
  again with the same number, the same samples and therefore the same file names, so a
  resumed export never holds a sample twice.
- :meth:`Exporter.finish` writes the files that cover every part (a ``labels.csv``, list
  files, an index), from the summaries or from per-part fragments the format left in
  ``self.layout.parts``, and returns what goes into ``export.json``.
- ``columns``: the manifest columns the format reads (``None``: all of them), given to it as
  ``Sample.row``. A format that copies whole rows (WebDataset) sets ``row_columns`` to the few
  it needs as Python values and ``copies_members``: it then gets each row in Arrow
  (``Sample.source``) and the source's ``{key}.json`` member (``Sample.label_json``), so
  nothing is converted per sample.

File names made from keys or identity ids go through :meth:`Sample.name` /
``manifests.layout.safe_component`` and :meth:`Exporter.inside`, so nothing a dataset holds
can point a file outside the export folder.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from manifests.errors import UserError
from manifests.layout import ExportLayout, safe_component
from manifests.store import location

__all__ = ["ExportError", "ExportOptions", "Exporter", "Sample"]


class ExportError(UserError, ValueError):
    """Bad export options or an unusable target folder; the message names the option or file."""


@dataclass(frozen=True)
class ExportOptions:
    """Everything that decides an export's content (a resume must match it exactly)."""

    format: str = "webdataset"
    where: str | None = None
    limit: int | None = None
    shard_size: int = 1000  # samples per part (an output shard, an image folder); a cap with shard_bytes
    shard_bytes: int | None = None  # a part also closes once it holds this many bytes
    name: str | None = None  # dataset name of a WebDataset export (default: the source's)
    format_options: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        if self.shard_size < 1:
            raise ExportError(f"--shard-size must be >= 1, got {self.shard_size}")
        if self.shard_bytes is not None and self.shard_bytes < 1:
            raise ExportError(f"--shard-bytes must be >= 1, got {self.shard_bytes}")
        if self.limit is not None and self.limit < 0:
            raise ExportError(f"--limit must be >= 0, got {self.limit}")


@dataclass(frozen=True)
class Sample:
    """One selected sample: its manifest row and its image bytes, as stored in the source;
    for a format that ``copies_members``, also its label JSON member and its Arrow row."""

    row: dict[str, Any]
    image: bytes
    label_json: bytes | None = None
    source: tuple[Any, int] | None = None  # (pyarrow.RecordBatch, row position) of the full manifest row
    blocks: tuple[bytes, bytes] | None = None  # the image and label members as the source tar stores them

    @property
    def key(self) -> str:
        return str(self.row["key"])

    @property
    def name(self) -> str:
        """A file stem for this sample that stays inside any folder it is joined to."""
        return safe_component(self.key)

    @property
    def extension(self) -> str:
        return safe_component(str(self.row.get("image_format") or "jpg"), 8)


class Exporter:
    """One export format (see the module docstring for the contract)."""

    name: ClassVar[str]
    columns: ClassVar[tuple[str, ...] | None] = None
    row_columns: ClassVar[tuple[str, ...] | None] = None  # as Python values (None: every selected column)
    copies_members: ClassVar[bool] = False
    required: ClassVar[tuple[str, ...]] = ()  # columns every selected sample must have (labels)

    def __init__(
        self, run_dir: Path, out: Path, dataset: str, shard_size: int, options: ExportOptions | None = None
    ) -> None:
        self.run_dir = location(run_dir)
        self.out = Path(out)
        self.dataset = dataset
        self.shard_size = shard_size
        self.options = options or ExportOptions(format=getattr(self, "name", "?"), shard_size=shard_size)
        self.layout = ExportLayout(self.out)
        self.part_image_bytes = 0  # image bytes handed to the current part (the loop counts)

    def write_part(self, part: int, samples: Iterator[Sample]) -> dict[str, Any]:
        raise NotImplementedError(f"export format {self.name!r} does not implement write_part()")

    def part_bytes(self) -> int:
        """Bytes the current part holds so far, for ``shard_bytes`` (default: its images' bytes)."""
        return self.part_image_bytes

    def sample_bytes(self, sample: Sample) -> int:
        """Bytes ``sample`` adds to a part (default: its image's)."""
        return len(sample.image)

    def closed_bytes(self, written: int) -> int:
        """A part's size once closed, after ``written`` bytes (default: the same)."""
        return written

    def finish(self, parts: list[dict[str, Any]]) -> dict[str, Any]:
        """Write the files that cover every part; returns what goes into export.json."""
        return {"parts": len(parts)}

    def required_columns(self) -> tuple[str, ...]:
        """Columns every selected sample must have with these options (default: ``required``)."""
        return self.required

    def missing_message(self, key: str, required: tuple[str, ...]) -> str:
        """The one-line refusal of a sample without a ``required`` column, and the fix."""
        return (
            f"sample {key} has no {' / '.join(required)} (its build ran no AU detector and its "
            f"generator gives no labels); the {self.name} format writes labels: select labelled samples "
            f'with --where "{required[0]} IS NOT NULL" or export --format webdataset / folder'
        )

    def inside(self, *parts: str) -> Path:
        """``out/part/...`` after checking the result stays inside ``out`` (no traversal)."""
        path = self.out.joinpath(*parts)
        root = self.out.resolve()
        if not path.resolve().is_relative_to(root):
            raise ExportError(f"refusing to write {path}: it is outside the export folder {self.out}")
        return path

    def option(self, key: str, default: Any) -> Any:
        return self.options.format_options.get(key, default)

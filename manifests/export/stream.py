"""The selection of an export and its image stream, in constant memory.

Rows come from one DuckDB query over the dataset's ``samples`` view (a subset's too), in
source order (``shard, index``), fetched in record batches; DuckDB runs with a memory cap
and spills its sort to disk. Images come from the source tars read forward, one tar open at
a time, one member in memory at a time (``manifests.tar.iter_members`` skips the rest by
seeking). Whatever the dataset size, the process holds one batch of rows and one image.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from manifests.dataset import DatasetRef
from manifests.export.base import ExportOptions, Sample
from manifests.files import open_read
from manifests.query import expand_au_shorthand
from manifests.schema import MANIFEST_SCHEMA
from manifests.tar import TarFormatError, iter_members

__all__ = ["BATCH_ROWS", "ShardImages", "count_sql", "iter_samples", "select_sql"]

BATCH_ROWS = 2048
# Columns every format gets, whatever it declares (the loop and the image reader need them).
BASE_COLUMNS = ("key", "shard", "index", "image_member", "image_format", "accepted")


def _columns(wanted: tuple[str, ...] | None) -> str:
    if wanted is None:
        return "*"
    names = list(dict.fromkeys([*BASE_COLUMNS, *wanted]))
    unknown = [n for n in names if n not in MANIFEST_SCHEMA.names]
    if unknown:
        raise ValueError(f"export format asks for unknown manifest column(s) {unknown}")
    return ", ".join(names)


def _filtered(options: ExportOptions) -> str:
    where = "image_member IS NOT NULL"
    if options.where:
        where += f" AND ({expand_au_shorthand(options.where)})"
    return f"FROM samples WHERE {where}"


def count_sql(options: ExportOptions) -> str:
    return f"SELECT count(*) {_filtered(options)}"


def select_sql(options: ExportOptions, columns: tuple[str, ...] | None, skip: int = 0) -> str:
    """The export's rows in source order; ``skip`` rows already exported are left out."""
    sql = f"SELECT {_columns(columns)} {_filtered(options)} ORDER BY shard, index"
    if options.limit is not None:
        sql += f" LIMIT {max(0, int(options.limit) - skip)}"
    if skip:
        sql += f" OFFSET {int(skip)}"
    return sql


class ShardImages:
    """The members of one source tar, read forward in member order (others skipped by seeking)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: BinaryIO = open_read(path)
        self._wanted: tuple[str, ...] = ()
        self._members = iter_members(self._fh, lambda name: name in self._wanted)

    def get(self, member: str) -> bytes:
        return self.get_all((member,))[0]

    def get_all(self, members: tuple[str, ...]) -> list[bytes]:
        """The data of ``members`` (in any order within the tar, after the previous ones)."""
        self._wanted = members
        found: dict[str, bytes] = {}
        try:
            for name, _, data in self._members:
                if data is not None and name in members:
                    found[name] = data
                    if len(found) == len(members):
                        return [found[m] for m in members]
        except TarFormatError as exc:
            raise OSError(f"cannot read source shard {self.path} ({exc}); run `factory verify` on the source") from exc
        missing = [m for m in members if m not in found]
        raise FileNotFoundError(
            f"{self.path} has no member {missing[0]} after the previous one (the manifest names it); "
            "run `factory verify` on the source dataset"
        )

    def close(self) -> None:
        self._fh.close()


def _rows(batch: Any, columns: tuple[str, ...] | None) -> Iterator[dict[str, Any]]:
    """The batch's rows as dicts of ``columns`` (column by column: far faster than row by row)."""
    names = [n for n in (columns or batch.schema.names) if n in batch.schema.names]
    values = [batch.column(n).to_pylist() for n in names]
    return (dict(zip(names, row, strict=True)) for row in zip(*values, strict=True))


def iter_samples(
    dataset: DatasetRef, batches: Iterator[Any], columns: tuple[str, ...] | None = None, *, copies: bool = False
) -> Iterator[Sample]:
    """Rows (Arrow record batches in shard order) with their image bytes; with ``copies``,
    also each row's label JSON member and its place in the batch (see ``Exporter.copies_members``)."""
    images: ShardImages | None = None
    shard: int | None = None
    wanted = tuple(dict.fromkeys([*BASE_COLUMNS, *columns])) if columns is not None else None
    try:
        for batch in batches:
            for position, row in enumerate(_rows(batch, wanted)):
                if row["shard"] != shard:
                    if images is not None:
                        images.close()
                    shard = row["shard"]
                    images = ShardImages(dataset.tar(int(row["shard"])))
                assert images is not None
                if copies:
                    image, label = images.get_all((row["image_member"], f"{row['key']}.json"))
                    yield Sample(row, image, label, (batch, position))
                else:
                    yield Sample(row, images.get(row["image_member"]))
    finally:
        if images is not None:
            images.close()

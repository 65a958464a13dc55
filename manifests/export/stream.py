"""The selection of an export and its image stream, in constant memory.

Rows come in source order (``shard, index``) from one small DuckDB query per group of shard
manifests (the selection's conditions; for a subset, the subset's keys of those shards), so
nothing is sorted globally and memory holds one group's rows whatever the dataset size (a
single sorted query over a million wide rows took ~560 MiB of DuckDB memory). Images come
from the source tars read forward, one tar open at a time, one member in memory at a time
(``manifests.tar.iter_members`` skips the rest by seeking).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from manifests.dataset import DatasetRef
from manifests.export.base import ExportOptions, Sample
from manifests.files import exists
from manifests.query import expand_au_shorthand, sql_string, with_dedup
from manifests.schema import MANIFEST_SCHEMA
from manifests.store import read_table
from manifests.tar import ShardImages  # re-exported: the report's contact sheets read through it

__all__ = ["BATCH_ROWS", "ShardImages", "count_sql", "iter_rows", "iter_samples", "shard_batches", "unlabelled_sql"]

BATCH_ROWS = 2048
# Shard manifests per DuckDB query: enough to amortise a query's cost (~20 ms), few enough
# that their rows (16,000 at 1,000 per shard) are small to sort and to hold.
SHARDS_PER_QUERY = 16
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


def _conditions(options: ExportOptions) -> str:
    where = "image_member IS NOT NULL"
    if options.where:
        where += f" AND ({expand_au_shorthand(options.where)})"
    return where


def count_sql(options: ExportOptions) -> str:
    """How many samples the export selects (over the ``samples`` view: a streaming count)."""
    return f"SELECT count(*) FROM samples WHERE {_conditions(options)}"


def unlabelled_sql(options: ExportOptions, required: tuple[str, ...]) -> str:
    """The first selected sample missing one of ``required`` (a format that writes labels
    cannot write a sample without them), or no row."""
    missing = " OR ".join(f"{column} IS NULL" for column in required)
    return f"SELECT key FROM samples WHERE {_conditions(options)} AND ({missing}) LIMIT 1"


def _subset_keys(dataset: DatasetRef) -> tuple[np.ndarray, pa.Array] | None:
    """A subset's (shard of each row, key of each row), in shard order as ``factory filter`` wrote them."""
    if dataset.subset_keys is None:
        return None
    table = read_table(dataset.subset_keys, columns=["shard", "key"])
    return table["shard"].to_numpy(), table["key"].combine_chunks()


def shard_batches(
    con: Any, dataset: DatasetRef, options: ExportOptions, columns: tuple[str, ...] | None, skip: int = 0
) -> Iterator[pa.RecordBatch]:
    """The selected rows in source order, a few shard manifests at a time; the first ``skip``
    (already exported) left out, at most ``options.limit`` in all."""
    where = _conditions(options)
    if dataset.subset_keys is None:
        where += " AND accepted"
    subset = _subset_keys(dataset)
    wanted = None if options.limit is None else options.limit - skip
    shards, manifests = dataset.shards, dataset.manifests()
    for start in range(0, len(shards), SHARDS_PER_QUERY):
        if wanted is not None and wanted <= 0:
            return
        group, files = shards[start : start + SHARDS_PER_QUERY], manifests[start : start + SHARDS_PER_QUERY]
        missing = [f for f in files if not exists(f)]
        if missing:
            raise FileNotFoundError(f"{missing[0]} is missing; run `factory verify` on the source dataset")
        group_where = where
        if subset is not None:
            rows = subset[0]
            first, last = int(np.searchsorted(rows, group[0], "left")), int(np.searchsorted(rows, group[-1], "right"))
            if first == last:
                continue
            con.register("group_keys", pa.table({"key": subset[1][first:last]}))
            group_where += " AND key IN (SELECT key FROM group_keys)"
        # An identity bank's near-duplicates are not accepted (manifests.dedup), as in `samples`.
        source = with_dedup(
            "read_parquet([" + ", ".join(sql_string(str(f)) for f in files) + "])", dataset.dedup_files(group)
        )
        sql = f"SELECT {_columns(columns)} FROM {source} WHERE {group_where} ORDER BY shard, index"
        table = con.sql(sql).to_arrow_table()
        if skip:
            dropped = min(skip, table.num_rows)
            table, skip = table.slice(dropped), skip - dropped
        if wanted is not None:
            table = table.slice(0, wanted)
            wanted -= table.num_rows
        yield from table.to_batches(max_chunksize=BATCH_ROWS)


def _rows(batch: Any, columns: tuple[str, ...] | None) -> Iterator[dict[str, Any]]:
    """The batch's rows as dicts of ``columns`` (column by column: far faster than row by row)."""
    names = [n for n in (columns or batch.schema.names) if n in batch.schema.names]
    values = [batch.column(n).to_pylist() for n in names]
    return (dict(zip(names, row, strict=True)) for row in zip(*values, strict=True))


def iter_rows(batches: Iterator[Any]) -> Iterator[dict[str, Any]]:
    """The rows of ``batches`` as dicts (every column of each batch)."""
    for batch in batches:
        yield from _rows(batch, None)


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
                    images = ShardImages(dataset.tar(int(row["shard"])), blocks=copies)
                assert images is not None
                if copies:
                    image, label = images.get_all((row["image_member"], f"{row['key']}.json"))
                    blocks = (image.block, label.block) if image.block and label.block else None
                    yield Sample(row, image.data or b"", label.data, (batch, position), blocks)
                else:
                    yield Sample(row, images.get(row["image_member"]))
    finally:
        if images is not None:
            images.close()

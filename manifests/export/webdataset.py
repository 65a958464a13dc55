"""WebDataset export: ``out/{dataset}-{n:06d}.tar|.parquet|.stats.json`` written by
:class:`manifests.writer.ShardWriter` (atomic per shard, stats last), resharded by count
(``shard_size``) or by bytes (``shard_bytes``: a shard's tar never exceeds it, unless a single
sample's members and tar's end-of-archive record do), then
``out/index.parquet`` + ``out/index.json`` and the dataset card: an export is itself a
dataset that ``factory query``, ``verify``, ``report`` and ``export`` open.

A sample is copied, not rebuilt: its image and its ``{key}.json`` label member go into the
new tar byte for byte (the stored members, headers and all, when the names stay the same),
and its manifest row travels in Arrow (the batch DuckDB returned), so
no row becomes Python objects. In the new manifest ``shard`` and ``index`` are the export's
own (where the sample now is); ``key`` stays the source's, except a key unsafe as a
WebDataset member name (a dot or a slash), which is made safe and gets a new label member.
"""

from __future__ import annotations

import tarfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from manifests.export.base import Exporter, ExportOptions, Sample
from manifests.export.provenance import write_derived_card
from manifests.export.stream import BASE_COLUMNS
from manifests.index import write_index
from manifests.layout import safe_component
from manifests.records import sample_json
from manifests.schema import MANIFEST_SCHEMA
from manifests.writer import ShardWriter

__all__ = ["WebDatasetExporter", "webdataset_key"]

BLOCK, RECORD = tarfile.BLOCKSIZE, tarfile.RECORDSIZE


def webdataset_key(key: str) -> str:
    """WebDataset splits a member name at the first dot of its basename: keys carry none."""
    safe = safe_component(key)
    return safe.replace(".", "_") if "." in safe else safe


class _CopyingShardWriter(ShardWriter):
    """A ShardWriter fed with stored samples: members copied as they are, the manifest built
    from the source rows in Arrow. It keeps the writer's whole commit protocol (temp files,
    fsync, sha256, stats last) by filling the same counters ``add`` fills."""

    def __init__(self, out: Path, dataset: str, shard: int) -> None:
        # overwrite=True: after a crash this part's shard may be committed but not recorded.
        super().__init__(out, dataset, shard, overwrite=True, buffer_bytes=1 << 20)
        self._sources: list[tuple[Any, int]] = []
        self._new_keys: dict[int, str] = {}  # position -> new key, for the few keys made safe

    def copy(self, sample: Sample) -> None:
        key = webdataset_key(sample.key)
        member = f"{key}.{sample.extension}"
        if key == sample.key and sample.blocks is not None and sample.row.get("image_member") == member:
            # Same names: the source's stored members (headers included) are this tar's members.
            self._sink.add_block(sample.blocks[0])
            self._sink.add_block(sample.blocks[1])
            self._count(sample)
            return
        self._write_member(member, sample.image)
        label = sample.label_json
        if key != sample.key or label is None:
            row = sample.source[0].slice(sample.source[1], 1).to_pylist()[0] if sample.source else sample.row
            label = sample_json({**row, "key": key}, bool(row.get("accepted", True)))
            self._new_keys[len(self._sources)] = key
        self._write_member(f"{key}.json", label)
        self._count(sample)

    def _count(self, sample: Sample) -> None:
        assert sample.source is not None
        self._sources.append(sample.source)
        if sample.row.get("accepted", True):
            self._accepted += 1
        else:
            self._kept_rejected += 1

    def _manifest_table(self) -> pa.Table:
        pieces: list[pa.RecordBatch] = []
        start = 0
        while start < len(self._sources):
            batch = self._sources[start][0]
            end = start
            while end < len(self._sources) and self._sources[end][0] is batch:
                end += 1
            pieces.append(batch.take(pa.array([position for _, position in self._sources[start:end]])))
            start = end
        table = pa.Table.from_batches(pieces).select(MANIFEST_SCHEMA.names)
        n = table.num_rows
        keys = table["key"].to_pylist()
        for position, key in self._new_keys.items():
            keys[position] = key
        formats = table["image_format"].to_pylist()
        replaced = {
            "key": pa.array(keys, pa.string()),
            "shard": pa.array([self.shard] * n, pa.int32()),
            "index": pa.array(range(n), pa.int32()),
            "image_member": pa.array([f"{k}.{f}" for k, f in zip(keys, formats, strict=True)], pa.string()),
        }
        for name, column in replaced.items():
            table = table.set_column(table.schema.get_field_index(name), name, column)
        self._count_drops(table)
        return table.cast(MANIFEST_SCHEMA)

    def _count_drops(self, table: pa.Table) -> None:
        rejected = table.filter(pc.invert(table["accepted"]))
        if rejected.num_rows:
            pairs = zip(rejected["dropped_by"].to_pylist(), rejected["drop_reason"].to_pylist(), strict=True)
            for (stage, reason), n in Counter(pairs).items():
                self._drops[str(stage)][str(reason)] += n


class WebDatasetExporter(Exporter):
    name = "webdataset"
    columns = None  # the whole manifest row travels with the sample, in Arrow
    row_columns = BASE_COLUMNS
    copies_members = True

    def __init__(
        self, run_dir: Path, out: Path, dataset: str, shard_size: int, options: ExportOptions | None = None
    ) -> None:
        super().__init__(run_dir, out, dataset, shard_size, options)
        self._writer: _CopyingShardWriter | None = None

    def part_bytes(self) -> int:
        return self._writer.tar_bytes if self._writer is not None else 0

    def sample_bytes(self, sample: Sample) -> int:
        """The sample's two tar members: a 512-byte header each, data padded to 512 bytes."""
        if sample.blocks is not None:
            return len(sample.blocks[0]) + len(sample.blocks[1])
        label = len(sample.label_json or b"") or 2048  # a label rebuilt from the row: about 2 kB
        return sum(BLOCK + -(-n // BLOCK) * BLOCK for n in (len(sample.image), label))

    def closed_bytes(self, written: int) -> int:
        """The tar once closed: two zero blocks, then padded to tar's 10,240-byte record."""
        return -(-(written + 2 * BLOCK) // RECORD) * RECORD

    def write_part(self, part: int, samples: Iterator[Sample]) -> dict[str, Any]:
        with _CopyingShardWriter(self.out, self.dataset, part) as writer:
            self._writer = writer
            for sample in samples:
                writer.copy(sample)
            stats = writer.commit({"exported_from": str(self.run_dir)})
        self._writer = None
        return {"shard": part, "accepted": stats["accepted"], "tar_bytes": stats["tar_bytes"]}

    def finish(self, parts: list[dict[str, Any]]) -> dict[str, Any]:
        shards = [int(p["shard"]) for p in parts]
        accepted = sum(int(p["accepted"]) for p in parts)
        write_derived_card(self.run_dir, self.out, before_index=True)
        write_index(self.out, self.dataset, shards, target=accepted, surplus=[], failed={}, shards_dir=self.out)
        last = f"{max(shards):06d}" if shards else "000000"
        return {
            "shards": len(shards),
            "tar_bytes": sum(int(p["tar_bytes"]) for p in parts),
            "urls": str(self.out / f"{self.dataset}-{{000000..{last}}}.tar"),  # webdataset's brace range
        }

"""WebDataset export: ``out/{dataset}-{n:06d}.tar|.parquet|.stats.json`` written by
:class:`manifests.writer.ShardWriter` (atomic per shard, stats last), resharded by count
(``shard_size``) or by bytes (``shard_bytes``: a shard closes once its tar reaches it), then
``out/index.parquet`` + ``out/index.json`` and the dataset card: an export is itself a
dataset that ``factory query``, ``verify``, ``report`` and ``export`` open.

Images are copied byte for byte. Each row keeps its manifest columns; ``shard`` and
``index`` become the export's own (where the sample now is), ``key`` stays the source's
(a key unsafe as a WebDataset member name, with a dot or a slash, is made safe).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from manifests.export.base import Exporter, ExportOptions, Sample
from manifests.export.provenance import write_derived_card
from manifests.index import write_index
from manifests.layout import safe_component
from manifests.writer import ShardWriter

__all__ = ["WebDatasetExporter", "webdataset_key"]


def webdataset_key(key: str) -> str:
    """WebDataset splits a member name at the first dot of its basename: keys carry none."""
    safe = safe_component(key)
    return safe.replace(".", "_") if "." in safe else safe


class WebDatasetExporter(Exporter):
    name = "webdataset"
    columns = None  # the whole manifest row travels with the sample

    def __init__(
        self, run_dir: Path, out: Path, dataset: str, shard_size: int, options: ExportOptions | None = None
    ) -> None:
        super().__init__(run_dir, out, dataset, shard_size, options)
        self._writer: ShardWriter | None = None

    def part_bytes(self) -> int:
        return self._writer.tar_bytes if self._writer is not None else 0

    def write_part(self, part: int, samples: Iterator[Sample]) -> dict[str, Any]:
        # overwrite=True: after a crash this part's shard may be committed but not recorded.
        with ShardWriter(self.out, self.dataset, part, overwrite=True) as writer:
            self._writer = writer
            for position, sample in enumerate(samples):
                row = {**sample.row, "key": webdataset_key(sample.key), "shard": part, "index": position}
                row["image_bytes"] = sample.image  # copied as is, never re-encoded
                writer.add(row)
            stats = writer.commit({"exported_from": str(self.run_dir)})
        self._writer = None
        return {"shard": part, "accepted": stats["accepted"], "tar_bytes": stats["tar_bytes"]}

    def finish(self, parts: list[dict[str, Any]]) -> dict[str, Any]:
        shards = [int(p["shard"]) for p in parts]
        accepted = sum(int(p["accepted"]) for p in parts)
        write_derived_card(self.run_dir, self.out, before_index=True)
        write_index(self.out, self.dataset, shards, target=accepted, surplus=[], failed={}, shards_dir=self.out)
        return {"shards": len(shards), "tar_bytes": sum(int(p["tar_bytes"]) for p in parts)}

"""WebDataset export: ``out/{dataset}-{n:06d}.tar|.parquet|.stats.json`` written by
:class:`manifests.writer.ShardWriter` (atomic per shard, stats last), then ``out/index.parquet``
+ ``out/index.json``: an export is itself a dataset that ``factory query`` and
``factory status --verify`` can open."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from typing import Any

from manifests.export.base import Exporter
from manifests.index import write_index
from manifests.writer import ShardWriter

__all__ = ["WebDatasetExporter"]


class WebDatasetExporter(Exporter):
    name = "webdataset"

    def write(self, samples: Iterator[tuple[dict[str, Any], bytes]], count: int) -> dict[str, Any]:
        shards = list(range(math.ceil(count / self.shard_size)))
        for shard in shards:
            with ShardWriter(self.out, self.dataset, shard) as writer:
                for row, data in itertools.islice(samples, self.shard_size):
                    # The row keeps its source shard/index (provenance); the bytes are copied as is.
                    writer.add({**row, "image_bytes": data})
                writer.commit({"exported_from": str(self.run_dir)})
        write_index(self.out, self.dataset, shards, target=count, surplus=[], failed={}, shards_dir=self.out)
        return {"shards": len(shards)}

"""Hugging Face dataset folder: ``data/train-{part:05d}.parquet`` with the images embedded
(``image`` = ``{bytes, path}``, the ``datasets.Image`` layout) and the labels as columns, and
a ``README.md`` dataset card whose front matter has the ``configs`` entry, so
``datasets.load_dataset(folder)`` reads it without a loading script (and the Hub shows it).

The Parquet schema carries the ``huggingface`` metadata ``datasets`` writes itself (the
features, ``image`` as an ``Image``), so the images decode to PIL on access. Label vectors
are fixed-size lists of 12 in ``manifests.vocab.DISFA_AUS`` order (the card says so).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from manifests.atomic import atomic_output, write_text_atomic
from manifests.export.base import Exporter, Sample
from manifests.export.provenance import derived_card_text
from manifests.files import make_dir
from manifests.schema import N_AUS, SCORE_KEYS
from manifests.vocab import DISFA_AUS

__all__ = ["HF_SCHEMA", "HuggingFaceExporter"]

_STRINGS = ("key", "emotion", "identity_id", "ethnicity", "age_band", "gender", "label_source", "description")
_FIELDS = [
    pa.field("image", pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])),
    *[pa.field(name, pa.string()) for name in _STRINGS],
    pa.field("au_occurrence", pa.list_(pa.int8(), N_AUS)),
    pa.field("au_intensity", pa.list_(pa.int8(), N_AUS)),
    *[pa.field(name, pa.float32()) for name in SCORE_KEYS],
]


def _features() -> dict[str, Any]:
    """The ``datasets`` feature spec of the columns (``Sequence`` with a length: read by old and new ``datasets``)."""
    features: dict[str, Any] = {"image": {"_type": "Image"}}
    for field in _FIELDS[1:]:
        if pa.types.is_fixed_size_list(field.type):
            value = {"dtype": "int8", "_type": "Value"}
            features[field.name] = {"feature": value, "length": N_AUS, "_type": "Sequence"}
        else:
            features[field.name] = {
                "dtype": "string" if pa.types.is_string(field.type) else "float32",
                "_type": "Value",
            }
    return features


HF_SCHEMA = pa.schema(_FIELDS, metadata={b"huggingface": json.dumps({"info": {"features": _features()}}).encode()})


class HuggingFaceExporter(Exporter):
    name = "huggingface"
    columns = (*_STRINGS, "au_occurrence", "au_intensity", *SCORE_KEYS)

    def write_part(self, part: int, samples: Iterator[Sample]) -> dict[str, Any]:
        columns: dict[str, list[Any]] = {f.name: [] for f in _FIELDS}
        for sample in samples:
            columns["image"].append({"bytes": sample.image, "path": f"{sample.name}.{sample.extension}"})
            for name in _FIELDS[1:]:
                columns[name.name].append(sample.row.get(name.name))
        table = pa.Table.from_pydict(columns, schema=HF_SCHEMA)
        make_dir(self.inside("data"))
        name = f"data/train-{part:05d}.parquet"
        with atomic_output(self.inside(name)) as tmp:
            # Small row groups: the Hub's viewer and streaming readers fetch one at a time.
            pq.write_table(table, tmp, row_group_size=256, compression="zstd")
        return {"file": name, "samples": table.num_rows}

    def finish(self, parts: list[dict[str, Any]]) -> dict[str, Any]:
        front = {
            "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*.parquet"}]}],
            "license": "other",
            "task_categories": ["image-classification"],
            "tags": ["facial-action-units", "synthetic", "mifa"],
            "pretty_name": f"{self.dataset} (MIFA export)",
        }
        columns = (
            "Columns: `image` (embedded, decodes to PIL), `key`, `emotion`, `identity_id`, `ethnicity`, "
            "`age_band`, `gender`, `label_source`, `description`, `au_occurrence` and `au_intensity` "
            f"(12 values in the order AU {', '.join(str(a) for a in DISFA_AUS)}; -1 = uncertain), "
            f"and the quality scores {', '.join(f'`{k}`' for k in SCORE_KEYS)}."
        )
        body = derived_card_text(self.run_dir, self.out, extra=columns)
        write_text_atomic(self.out / "README.md", "---\n" + yaml.safe_dump(front, sort_keys=False) + "---\n\n" + body)
        return {"files": [p["file"] for p in parts]}

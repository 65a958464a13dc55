"""Hugging Face dataset folder: ``data/{split}-{part:05d}.parquet`` with the images embedded
(``image`` = ``{bytes, path}``, the ``datasets.Image`` layout) and the labels as columns, and
a ``README.md`` dataset card whose front matter declares the splits in its ``configs`` entry,
so ``datasets.load_dataset(folder)`` reads them without a loading script (and the Hub shows it).

Splits ``train`` / ``validation`` / ``test`` (or ``train`` / ``test`` with two ``shares``)
hold disjoint identities (``manifests.export.folds``; ``split_by="sample"`` mixes them and
says so). The Parquet schema carries the ``huggingface`` metadata ``datasets`` writes itself
(the features, ``image`` as an ``Image``), so the images decode to PIL on access.

AU labels come twice: one ``int8`` column per AU (``AU01`` .. ``AU26`` occurrence,
``AU01_intensity`` ..), so the names are in the features and the Hub's viewer, and the
fixed-size vectors ``au_occurrence`` / ``au_intensity`` of 12 in ``manifests.vocab.DISFA_AUS``
order (what a model reads; a ``Sequence`` feature has no field for names, so the card gives
the order).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from manifests.atomic import atomic_output, write_text_atomic
from manifests.export.base import Sample
from manifests.export.folds import SplitExporter, parse_shares
from manifests.export.provenance import derived_card_text
from manifests.files import make_dir
from manifests.schema import N_AUS, SCORE_KEYS
from manifests.vocab import DISFA_AUS, au_column

__all__ = ["HF_SCHEMA", "HuggingFaceExporter"]

_STRINGS = ("key", "emotion", "identity_id", "ethnicity", "age_band", "gender", "label_source", "description")
_FIELDS = [
    pa.field("image", pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])),
    *[pa.field(name, pa.string()) for name in _STRINGS],
    pa.field("au_occurrence", pa.list_(pa.int8(), N_AUS)),
    pa.field("au_intensity", pa.list_(pa.int8(), N_AUS)),
    *[pa.field(au_column(au), pa.int8()) for au in DISFA_AUS],
    *[pa.field(f"{au_column(au)}_intensity", pa.int8()) for au in DISFA_AUS],
    *[pa.field(name, pa.float32()) for name in SCORE_KEYS],
]
_PER_AU = {au_column(au): ("au_occurrence", i) for i, au in enumerate(DISFA_AUS)} | {
    f"{au_column(au)}_intensity": ("au_intensity", i) for i, au in enumerate(DISFA_AUS)
}


def _features() -> dict[str, Any]:
    """The ``datasets`` feature spec of the columns (``Sequence`` with a length: read by old and new ``datasets``)."""
    features: dict[str, Any] = {"image": {"_type": "Image"}}
    for field in _FIELDS[1:]:
        if pa.types.is_fixed_size_list(field.type):
            value = {"dtype": "int8", "_type": "Value"}
            features[field.name] = {"feature": value, "length": N_AUS, "_type": "Sequence"}
        else:
            dtype = (
                "string" if pa.types.is_string(field.type) else "int8" if pa.types.is_int8(field.type) else "float32"
            )
            features[field.name] = {"dtype": dtype, "_type": "Value"}
    return features


HF_SCHEMA = pa.schema(_FIELDS, metadata={b"huggingface": json.dumps({"info": {"features": _features()}}).encode()})


class HuggingFaceExporter(SplitExporter):
    name = "huggingface"
    columns = (*_STRINGS, "au_occurrence", "au_intensity", *SCORE_KEYS)

    @property
    def split_names(self) -> tuple[str, ...]:
        return ("train", "validation", "test") if len(self.shares()) == 3 else ("train", "test")

    def shares(self) -> tuple[float, ...]:
        return parse_shares(self.option("shares", "0.6,0.2,0.2"), sizes=(2, 3))

    def noun(self) -> str:
        return "splits (" + " / ".join(self.split_names) + ")"

    def fewer_hint(self, identities: int) -> str:
        return "--shares 0.8,0.2 (train and test), or " if identities == 2 and len(self.shares()) == 3 else ""

    def write_part(self, part: int, samples: Iterator[Sample]) -> dict[str, Any]:
        splits = [{f.name: [] for f in _FIELDS} for _ in self.split_names]
        for sample in samples:
            columns: dict[str, list[Any]] = splits[self.group_of(sample.row)]
            columns["image"].append({"bytes": sample.image, "path": f"{sample.name}.{sample.extension}"})
            for name in _FIELDS[1:]:
                if name.name in _PER_AU:
                    vector, i = _PER_AU[name.name]
                    values = sample.row.get(vector)
                    columns[name.name].append(None if values is None else values[i])
                else:
                    columns[name.name].append(sample.row.get(name.name))
        make_dir(self.inside("data"))
        files, counts = [], []
        for split, columns in zip(self.split_names, splits, strict=True):
            table = pa.Table.from_pydict(columns, schema=HF_SCHEMA)
            counts.append(table.num_rows)
            if not table.num_rows:
                continue
            name = f"data/{split}-{part:05d}.parquet"
            with atomic_output(self.inside(name)) as tmp:
                # Small row groups: the Hub's viewer and streaming readers fetch one at a time.
                pq.write_table(table, tmp, row_group_size=256, compression="zstd")
            files.append(name)
        return {"files": files, "splits": counts}

    def finish(self, parts: list[dict[str, Any]]) -> dict[str, Any]:
        counts = {split: sum(int(p["splits"][i]) for p in parts) for i, split in enumerate(self.split_names)}
        self.check_sides({f"split {split}": n for split, n in counts.items()})
        data_files = [{"split": split, "path": f"data/{split}-*.parquet"} for split in self.split_names]
        front = {
            "configs": [{"config_name": "default", "data_files": data_files}],
            "license": "other",
            "task_categories": ["image-classification"],
            "tags": ["facial-action-units", "synthetic", "mifa"],
            "pretty_name": f"{self.dataset} (MIFA export)",
        }
        order = ", ".join(str(a) for a in DISFA_AUS)
        split_note = (
            "hold disjoint identities (`identity_id`)"
            if self.split_by == "identity"
            else "were drawn by sample: the same identities appear in several splits"
        )
        columns = (
            f"Splits {', '.join(f'`{k}` ({n})' for k, n in counts.items())} {split_note}. "
            "Columns: `image` (embedded, decodes to PIL), `key`, `emotion`, `identity_id`, `ethnicity`, "
            "`age_band`, `gender`, `label_source`, `description`; one column per AU, "
            f"{', '.join(f'`{au_column(a)}`' for a in DISFA_AUS)} (occurrence 0/1, -1 = uncertain) and "
            "`AU01_intensity` .. (0-5); the same labels as vectors `au_occurrence` and `au_intensity` "
            f"(12 values in the order AU {order}); and the quality scores {', '.join(f'`{k}`' for k in SCORE_KEYS)}. "
            "Occurrence is 1 at intensity >= 1 (MIFA's threshold); ME-GraphAU's DISFA preprocessing counts an AU "
            "present at intensity >= 2: apply that to the intensity columns to match it."
        )
        body = derived_card_text(self.run_dir, self.out, extra=columns)
        write_text_atomic(self.out / "README.md", "---\n" + yaml.safe_dump(front, sort_keys=False) + "---\n\n" + body)
        return {"files": [f for p in parts for f in p["files"]], "splits": counts, **self.split_report()}

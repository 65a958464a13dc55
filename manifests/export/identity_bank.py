"""Identity-bank export: an identity-bank build as the folder ``identities.bank`` reads.

Resumable part by part like every format: each part writes its portraits and leaves its
identities' rows in ``.parts/``; :meth:`IdentityBankExporter.finish` writes the bank's files
from them.

``out/images/{identity_id}.{ext}`` (the kept portraits, bytes as built; an id that is not a
safe file name is made one by ``manifests.layout.safe_component``, so no id leaves ``out``) and
``out/identities.csv`` (``manifests.bank``: identity id, image, the planned ethnicity / age
band / gender, ``source`` = the generating model and the portrait's seed, ``licence`` = the
model's licence from the recipe's ``[bank]``, ``expression = neutral`` since the portrait
filters kept only neutral faces), written last. Beside them ``bank-stats.json``: the bank's
balance (identities per ethnicity, age band, gender and cell against the recipe's planned
shares, and the cells it leaves empty), and ``duplicates.csv``: every portrait the bank-wide
deduplication left out, with the kept identity it repeats and their similarity.

Embedding and indexing the exported bank needs the face models (``stages``), so it is done
by the command layer after this writes the folder (``factory.commands.bank``).
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from collections.abc import Iterator
from itertools import product
from typing import Any

from manifests.atomic import fsync_dir, write_bytes_atomic
from manifests.bank import BANK_COLUMNS, NEUTRAL
from manifests.dataset import index_shards_dir, read_index
from manifests.dedup import read_dedup
from manifests.export.base import Exporter, Sample
from manifests.files import make_dir
from manifests.layout import RunLayout, safe_component, shard_paths
from manifests.store import read_table
from manifests.vocab import AGE_BANDS, ETHNICITIES, GENDERS

__all__ = ["BANK_STATS_FILE", "DUPLICATES_FILE", "IDENTITIES_FILE", "IdentityBankExporter", "balance"]

IDENTITIES_FILE = "identities.csv"
BANK_STATS_FILE = "bank-stats.json"
DUPLICATES_FILE = "duplicates.csv"
_MODEL_OPTIONS = ("pipeline", "checkpoint_dir", "checkpoint", "model")


def _recipe(run_dir: Any) -> dict[str, Any]:
    info = json.loads(RunLayout(run_dir, "").run_json.read_text())
    recipe = info["recipe"]
    if recipe.get("dataset", {}).get("kind") != "identity-bank":
        raise ValueError(
            f"{run_dir} is not an identity-bank build (dataset.kind = "
            f"{recipe.get('dataset', {}).get('kind', 'samples')!r}); build one with recipes/identity-bank.toml"
        )
    return recipe


def _source(recipe: dict[str, Any]) -> str:
    """The generating model: ``bank.source``, else the generator's name and model path."""
    if recipe.get("bank", {}).get("source"):
        return str(recipe["bank"]["source"])
    generator = recipe.get("generator", {})
    model = next((str(generator[k]) for k in _MODEL_OPTIONS if generator.get(k)), "")
    return f"{generator.get('name', 'unknown')} {model}".strip()


def balance(rows: list[dict[str, Any]], demographics: dict[str, dict[str, float]]) -> dict[str, Any]:
    """Identities per group and per cell against the recipe's planned shares."""
    n = len(rows)
    weights = {
        cell: demographics["ethnicity"].get(cell[0], 0)
        * demographics["age_band"].get(cell[1], 0)
        * demographics["gender"].get(cell[2], 0)
        for cell in product(ETHNICITIES, AGE_BANDS, GENDERS)
    }
    total = sum(weights.values()) or 1.0
    counts = Counter((r["ethnicity"], r["age_band"], r["gender"]) for r in rows)
    cells = {
        "/".join(cell): {
            "identities": counts.get(cell, 0),
            "share": counts.get(cell, 0) / max(n, 1),
            "planned": w / total,
        }
        for cell, w in weights.items()
        if w > 0 or counts.get(cell)
    }
    return {
        "identities": n,
        **{col: dict(Counter(r[col] for r in rows)) for col in ("ethnicity", "age_band", "gender")},
        "cells": cells,
        "empty_cells": sorted(name for name, c in cells.items() if c["planned"] > 0 and c["identities"] == 0),
        "largest_share_gap": max((abs(c["share"] - c["planned"]) for c in cells.values()), default=0.0),
    }


class IdentityBankExporter(Exporter):
    name = "identity-bank"

    def write_part(self, part: int, samples: Iterator[Sample]) -> dict[str, Any]:
        recipe = _recipe(self.run_dir)
        source, licence = _source(recipe), str(recipe.get("bank", {}).get("licence", ""))
        make_dir(self.inside("images"))
        rows: list[dict[str, Any]] = []
        for sample in samples:
            row = sample.row
            image = f"images/{safe_component(str(row['identity_id']))}.{sample.extension}"
            write_bytes_atomic(self.inside(image), sample.image, sync_dir=False)  # temp, fsync, rename
            rows.append(
                {
                    "identity_id": row["identity_id"],
                    "image": image,
                    **{col: row[col] for col in ("ethnicity", "age_band", "gender")},
                    "source": f"{source} seed {row['seed']}",
                    "licence": licence,
                    "expression": NEUTRAL,
                }
            )
        fsync_dir(self.out / "images")  # the part's renames are durable before the part is recorded
        make_dir(self.layout.parts)
        write_bytes_atomic(self._part_rows(part), json.dumps(rows).encode(), sync_dir=False)
        return {"identities": len(rows)}

    def finish(self, parts: list[dict[str, Any]]) -> dict[str, Any]:
        recipe = _recipe(self.run_dir)
        rows = [row for part in range(len(parts)) for row in json.loads(self._part_rows(part).read_text())]
        stats = balance(rows, recipe.get("demographics", {}))
        write_bytes_atomic(self.out / BANK_STATS_FILE, json.dumps(stats, indent=1).encode())
        duplicates = self._write_duplicates()
        write_bytes_atomic(self.out / IDENTITIES_FILE, _csv([*BANK_COLUMNS, "expression"], rows))
        return {"identities": len(rows), "duplicates_left_out": duplicates, "balance": stats}

    def _part_rows(self, part: int) -> Any:
        return self.layout.parts / f"identities-{part:06d}.json"

    def _write_duplicates(self) -> int:
        """``duplicates.csv``: each portrait left out, the kept identity it repeats, their cosine."""
        index = read_index(self.run_dir) or {"shards": []}
        shards_dir = index_shards_dir(self.run_dir, index)
        identity: dict[str, str] = {}
        found: list[dict[str, Any]] = []
        for shard in index["shards"]:
            paths = shard_paths(shards_dir, index["dataset"], int(shard))
            decided = read_dedup(paths)
            if decided is None:
                continue
            ids = read_table(paths.parquet, columns=["key", "identity_id"]).to_pylist()
            identity.update((r["key"], r["identity_id"]) for r in ids)
            found += [r for r in decided[0].to_pylist() if r["duplicate_of"]]
        rows = [
            {
                "identity_id": identity[r["key"]],
                "key": r["key"],
                "duplicate_of": identity[r["duplicate_of"]],
                "duplicate_of_key": r["duplicate_of"],
                "similarity": round(r["similarity"], 6),
            }
            for r in found
        ]
        columns = ["identity_id", "key", "duplicate_of", "duplicate_of_key", "similarity"]
        write_bytes_atomic(self.out / DUPLICATES_FILE, _csv(columns, rows))
        return len(rows)


def _csv(columns: list[str], rows: list[dict[str, Any]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode()

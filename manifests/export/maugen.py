"""MAUGen release layout: ``sample_data.json``, a JSON list of ``{"image", "intensity", "prompt"}``
(``image`` a path relative to the folder, ``intensity`` the 12 DISFA AU intensities 0-5 in
``manifests.vocab.DISFA_AUS`` order, ``prompt`` the description), as in XDLI13/MAUGen's
``sample_data.json``, with the images under ``output_images/{part:06d}/``; each entry also
has ``identity_id`` (a reader taking the three keys by name ignores it).

Each part leaves its entries in ``.parts/`` (one JSON per line); the list is written from
them at the end, so the file is never held in memory.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from manifests.atomic import atomic_output, write_bytes_atomic
from manifests.export.base import Exporter, Sample
from manifests.export.folder import write_image
from manifests.export.provenance import write_derived_card
from manifests.files import make_dir

__all__ = ["MaugenExporter"]


def _indented(entry: dict[str, Any]) -> str:
    """One list item as ``json.dumps(list, indent=4)`` writes it."""
    return "\n".join("    " + line for line in json.dumps(entry, indent=4, ensure_ascii=False).splitlines())


class MaugenExporter(Exporter):
    name = "maugen"
    columns = ("au_intensity", "description", "identity_id")
    required = ("au_intensity",)

    def write_part(self, part: int, samples: Iterator[Sample]) -> dict[str, Any]:
        make_dir(self.inside("output_images", f"{part:06d}"))
        lines = []
        for sample in samples:
            image = write_image(self, "output_images", part, sample)
            intensity = [int(v) for v in sample.row["au_intensity"]]
            entry = {
                "image": image,
                "intensity": intensity,
                "prompt": sample.row["description"] or "",
                "identity_id": sample.row["identity_id"],
            }
            lines.append(json.dumps(entry, ensure_ascii=False))
        make_dir(self.layout.parts)
        fragment = self.layout.parts / f"sample_data-{part:06d}.jsonl"
        write_bytes_atomic(fragment, ("\n".join(lines) + "\n").encode() if lines else b"", sync_dir=False)
        return {"folder": f"output_images/{part:06d}"}

    def finish(self, parts: list[dict[str, Any]]) -> dict[str, Any]:
        first = True
        with atomic_output(self.out / "sample_data.json") as tmp, open(tmp, "w", encoding="utf-8") as fh:
            fh.write("[")
            for part in range(len(parts)):
                with open(self.layout.parts / f"sample_data-{part:06d}.jsonl", encoding="utf-8") as fragment:
                    for line in fragment:
                        if line.strip():
                            fh.write(("\n" if first else ",\n") + _indented(json.loads(line)))
                            first = False
            fh.write("\n]" if not first else "]")
        write_derived_card(self.run_dir, self.out)
        return {"folders": len(parts)}

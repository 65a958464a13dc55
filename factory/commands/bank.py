"""``factory export RUN BANK --format identity-bank``: the export, then the bank made ready.

:mod:`manifests.export.identity_bank` writes the folder (images, ``identities.csv``,
``bank-stats.json``, ``duplicates.csv``); embedding needs the face models, which live above
``manifests``, so this command then indexes it (:func:`factory.commands.identities.index_bank`:
detect, align, embed every portrait, ``embeddings.parquet``) with the embedder the build's
portrait filters used, and checks that ``identities.bank`` opens it. The result is a bank a
dataset recipe can name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from factory.commands.identities import IndexReport, index_bank
from manifests.bank import open_bank
from manifests.export import export
from manifests.layout import RunLayout

__all__ = ["BankExport", "export_identity_bank"]


@dataclass(frozen=True)
class BankExport:
    report: dict[str, Any]  # what the export wrote (also out/export.json)
    index: IndexReport

    def balance_lines(self) -> list[str]:
        """The bank's balance, for the terminal (also in out/bank-stats.json)."""
        stats = self.report["balance"]
        n = max(stats["identities"], 1)
        lines = [f"{stats['identities']} identities; {self.report['duplicates_left_out']} near-duplicates left out"]
        for col in ("ethnicity", "age_band", "gender"):
            shares = ", ".join(f"{k} {v / n:.3f}" for k, v in sorted(stats[col].items()))
            lines.append(f"{col.replace('_', ' ')}: {shares}")
        lines.append(f"largest cell share gap to the plan: {stats['largest_share_gap']:.4f}")
        if stats["empty_cells"]:
            lines.append(f"empty cells ({len(stats['empty_cells'])}): {', '.join(stats['empty_cells'])}")
        return lines


def _embedder(run_dir: Path) -> tuple[str, Path | None]:
    """The embedder the build's portrait filters used (so the bank's embeddings match)."""
    recipe = json.loads(RunLayout(run_dir, "").run_json.read_text())["recipe"]
    filters = recipe.get("filters", {})
    onnx = filters.get("arcface_onnx")
    return str(filters.get("embedder", "dlib")), Path(onnx) if onnx else None


def export_identity_bank(
    run_dir: Path, out: Path, *, where: str | None = None, limit: int | None = None, overwrite: bool = False
) -> BankExport:
    """Export an identity-bank build to ``out`` and index it; raises ValueError / OSError
    (bad run, bad query, unusable folder) and ``BankIndexError`` (embedder unavailable)."""
    report = export(run_dir, out, where=where, limit=limit, format="identity-bank", overwrite=overwrite)
    embedder, onnx = _embedder(Path(run_dir))
    index = index_bank(Path(out), embedder=embedder, arcface_onnx=onnx if embedder == "arcface" else None)
    open_bank(str(out))  # what a dataset build will do with it
    return BankExport(report, index)

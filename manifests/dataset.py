"""What a dataset folder holds, whatever made it: a build, a WebDataset export, or a subset.

Every committed dataset has ``index.json`` (the commit point) and ``index.parquet``. A build
or an export keeps its shards in its own folder; a **subset** (``factory filter``) has no
shard of its own: its ``index.json`` names the source's shards folder and carries a
``subset`` entry, and its ``index.parquet`` lists the selected samples. :func:`open_dataset`
resolves either into a :class:`DatasetRef`, which ``manifests.query`` (the ``samples``
view), the exports, ``factory report``, ``show`` and ``eval`` read through, so a subset is
read like any dataset. :func:`read_index` reads (and checks) a committed ``index.json``;
``manifests.index`` writes it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from manifests.balance import balance_path
from manifests.errors import UserError
from manifests.files import exists
from manifests.layout import RunLayout, shard_paths
from manifests.store import is_url, location

__all__ = ["DatasetRef", "NotADatasetError", "index_shards_dir", "open_dataset", "read_index"]


class NotADatasetError(UserError, FileNotFoundError):
    """The folder holds no committed dataset; the message says what to run."""


@dataclass(frozen=True)
class DatasetRef:
    """A committed dataset: where its index and shards are, and (for a subset) its keys."""

    root: Path
    index: dict[str, Any]
    shards_dir: Path

    @property
    def name(self) -> str:
        return str(self.index["dataset"])

    @property
    def layout(self) -> RunLayout:
        return RunLayout(self.root, self.name)

    @property
    def shards(self) -> list[int]:
        return [int(s) for s in self.index["shards"]]

    @property
    def subset(self) -> dict[str, Any] | None:
        """The subset's definition (source, selection), or ``None`` for a dataset with its own shards."""
        found = self.index.get("subset")
        return found if isinstance(found, dict) else None

    @property
    def subset_keys(self) -> Path | None:
        """The Parquet file listing a subset's samples (``None``: every sample of the shards)."""
        return self.layout.index_parquet if self.subset is not None else None

    @property
    def source_root(self) -> Path:
        """The dataset whose shards these are: the root itself, or a subset's source."""
        if self.subset is None:
            return self.root
        return location(self.subset["source"])

    def manifests(self) -> list[Path]:
        """The shard manifests (Parquet) of the indexed shards, in shard order."""
        return [shard_paths(self.shards_dir, self.name, s).parquet for s in self.shards]

    def dedup_files(self, shards: Iterable[int] | None = None) -> list[Path]:
        """An identity bank's per-shard near-duplicate files (``manifests.dedup``) that exist,
        of every indexed shard or of ``shards``."""
        paths = (shard_paths(self.shards_dir, self.name, s).dedup for s in (self.shards if shards is None else shards))
        return [p for p in paths if exists(p)]

    def balance_files(self) -> list[Path]:
        """A balanced build's per-shard selection files (``manifests.balance``) that exist, of
        every indexed shard: they name the surplus the index leaves out."""
        paths = (balance_path(shard_paths(self.shards_dir, self.name, s)) for s in self.shards)
        return [p for p in paths if exists(p)]

    def tar(self, shard: int) -> Path:
        return shard_paths(self.shards_dir, self.name, shard).tar

    def samples(self) -> int:
        """Samples the dataset holds (a subset may include rejected samples whose image was kept)."""
        return int(self.index.get("samples", self.index.get("accepted", 0)))


def _shards_dir(root: Path, index: dict[str, Any]) -> Path:
    folder = index_shards_dir(root, index)
    subset = index.get("subset")
    if exists(folder) or not isinstance(subset, dict) or not subset.get("source_shards_dir"):
        return folder
    # A subset moved away from its source: fall back to the absolute path recorded at creation.
    return location(subset["source_shards_dir"])


def open_dataset(path: Path) -> DatasetRef:
    """The committed dataset in ``path``; :class:`NotADatasetError` when there is none,
    ``ValueError`` when its ``index.json`` is damaged (both name the file and the fix)."""
    root = location(path)
    index = read_index(root)
    if index is None:
        raise NotADatasetError(
            f"{RunLayout(root, '').index_json} does not exist: the dataset in {root} was never committed "
            "(run `factory build` to make one, or pass a build, export or subset folder)"
        )
    return DatasetRef(root=root, index=index, shards_dir=_shards_dir(root, index))


def read_index(run_dir: Path) -> dict[str, Any] | None:
    """index.json of ``run_dir``, or ``None`` if the dataset was never committed."""
    json_path = RunLayout(run_dir, "").index_json
    try:
        text = json_path.read_text()
    except FileNotFoundError:
        return None
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"{json_path} is not text ({exc.reason}); rerun `factory build` on this directory to rewrite it"
        ) from None
    try:
        index = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{json_path} is not valid JSON ({exc}); rerun `factory build` on this directory to rewrite it"
        ) from exc
    if not isinstance(index, dict) or "shards" not in index:
        raise ValueError(f"{json_path} is not a MIFA index; rerun `factory build` on this directory")
    return index


def index_shards_dir(run_dir: Path, index: dict[str, Any]) -> Path:
    """The folder holding the shards an index names."""
    folder = index.get("shards_dir", RunLayout(run_dir, "").shards.name)
    return location(folder) if is_url(folder) else location(run_dir) / folder

"""The run directory's layout and every name in it, in one place.

::

    OUT/
      run.json                  recipe, fingerprint, seed, software versions (first start)
      build.lock, build.owner   held by the running build (flock, freed if the process dies; for
                                an object-storage dataset the lock is local, see build_lock)
      probe-*.json              the driver's token every worker must see (plain paths, multi-node)
      plans/{name}-{shard}.plan.parquet     a shard's plan, written before it runs
      shards/{name}-{shard}.tar|.parquet    WebDataset tar + manifest (temp, then rename)
      shards/{name}-{shard}.stats.json      written last: the only proof a shard is done
      shards/{name}-{shard}.dedup.parquet   identity-bank builds: the shard's near-duplicates
                                            of earlier identities (written after it is done)
      failed/{name}-{shard}.json            attempts and errors of a failing shard
      cache/                                the stages' model hashes (provenance); the LLM reply
                                            cache lives on each node's disk (stages.prompt.cache)
      index.parquet, index.json             the dataset; index.json is the commit point
      DATASET_CARD.md                       written with every index (recipe, versions, counts, licences)
      provenance.json                       the stages' licences and model hashes the card reads
      build-summary.json                    the last build's counts and timings
      workers.json                          the running build's workers (for `factory status`)
      report.html                           `factory report` (default place)
      quarantine/{stamp}/                   shard files `factory verify --repair` moved aside

A subset (``factory filter``) is a folder with only ``index.parquet`` (the selected rows)
and ``index.json`` (naming the source's shards folder); an export folder has
``.mifa-export`` (the job), ``.export-state.json`` (committed parts), ``.parts/`` (per-part
fragments) and ``export.json`` (written last: the export is complete).

Shards are numbered from 0 and spelled with six digits; the planner's sample keys are
``{shard:06d}_{index:05d}``, so a key names its shard.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from manifests.store import location, store_for

__all__ = [
    "ExportLayout",
    "RunLayout",
    "ShardPaths",
    "generated_identity_id",
    "key_prefix",
    "parse_shard",
    "safe_component",
    "sample_key",
    "shard_name",
    "shard_paths",
]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def safe_component(text: str, max_length: int = 80) -> str:
    """``text`` as one safe path component (file or folder name) for exports.

    Keys and identity ids come from datasets and banks, so an export never puts them in a
    path as they are: anything outside ``[A-Za-z0-9._-]`` becomes ``_``, leading dots go (no
    ``..``, no hidden files) and the length is capped. A name that had to change gets 8 hex
    digits of its original's sha256, so two different keys never share a file.
    """
    cleaned = _UNSAFE.sub("_", text).lstrip(".")
    if cleaned == text and 0 < len(text) <= max_length:
        return text
    digest = hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{cleaned[: max_length - 9] or 'x'}-{digest}"


def shard_name(dataset: str, shard: int) -> str:
    """``{dataset}-{shard:06d}``, the stem of every file of one shard."""
    return f"{dataset}-{shard:06d}"


def parse_shard(dataset: str, filename: str) -> int | None:
    """The shard number of a file named after ``dataset``'s shards, or ``None``."""
    match = re.match(rf"^{re.escape(dataset)}-(\d+)\.", filename)
    return int(match.group(1)) if match else None


def sample_key(shard: int, index: int) -> str:
    return f"{key_prefix(shard)}{index:05d}"


def key_prefix(shard: int) -> str:
    """What every planner key of ``shard`` starts with (keys of two shards never collide)."""
    return f"{shard:06d}_"


def generated_identity_id(shard: int, index: int) -> str:
    """The identity of a sample planned without a bank (a new person per sample)."""
    return f"gen-{shard:06d}-{index:05d}"


@dataclass(frozen=True)
class ShardPaths:
    tar: Path
    parquet: Path
    stats: Path
    dedup: Path  # identity-bank builds only (manifests.dedup)


def shard_paths(shards_dir: Path, dataset: str, shard: int) -> ShardPaths:
    stem = location(shards_dir) / shard_name(dataset, shard)
    return ShardPaths(
        tar=stem.with_name(stem.name + ".tar"),
        parquet=stem.with_name(stem.name + ".parquet"),
        stats=stem.with_name(stem.name + ".stats.json"),
        dedup=stem.with_name(stem.name + ".dedup.parquet"),
    )


@dataclass(frozen=True)
class RunLayout:
    """Where each file of a run lives (no I/O; ``factory.engine.rundir.RunDir`` does the lifecycle).

    ``root`` is a ``Path``, or a ``UPath`` for a dataset on object storage (``manifests.store``):
    every name below is spelled the same on both."""

    root: Path
    dataset: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", location(self.root))

    @property
    def plans(self) -> Path:
        return self.root / "plans"

    @property
    def shards(self) -> Path:
        return self.root / "shards"

    @property
    def failed(self) -> Path:
        return self.root / "failed"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def run_json(self) -> Path:
        return self.root / "run.json"

    @property
    def lock_file(self) -> Path:
        return self.root / "build.lock"

    @property
    def build_lock(self) -> Path:
        """The file the build's flock is on: ``lock_file``, or for a dataset on object storage
        (no flock there) a local file keyed by the URL (``manifests.store.ObjectStore.lock_path``).
        That local lock stops a second build of the same URL on this machine (the usual
        mistake: the command run twice), not one started on another machine (one driver per
        URL); ``build.owner`` on the store still names the running build for `factory status`."""
        return store_for(self.root).lock_path(self.lock_file)

    @property
    def owner_file(self) -> Path:
        return self.root / "build.owner"

    def probe_file(self, token: str) -> Path:
        """The driver's probe for one build: every worker must see it (one shared ``dataset.out``)."""
        return self.root / f"probe-{token}.json"

    @property
    def index_parquet(self) -> Path:
        return self.root / "index.parquet"

    @property
    def index_json(self) -> Path:
        return self.root / "index.json"

    @property
    def build_summary(self) -> Path:
        return self.root / "build-summary.json"

    @property
    def workers(self) -> Path:
        return self.root / "workers.json"

    @property
    def card(self) -> Path:
        return self.root / "DATASET_CARD.md"

    @property
    def provenance(self) -> Path:
        return self.root / "provenance.json"

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    @property
    def quarantine(self) -> Path:
        return self.root / "quarantine"

    def shard_name(self, shard: int) -> str:
        return shard_name(self.dataset, shard)

    def shard_paths(self, shard: int) -> ShardPaths:
        return shard_paths(self.shards, self.dataset, shard)

    def plan_path(self, shard: int) -> Path:
        return self.plans / f"{self.shard_name(shard)}.plan.parquet"

    def failure_path(self, shard: int) -> Path:
        return self.failed / f"{self.shard_name(shard)}.json"

    def planned_shards(self) -> list[int]:
        """Shards whose plan is written, ascending."""
        return self._shards_in(self.plans, ".plan.parquet")

    def stats_shards(self) -> list[int]:
        """Shards with a stats file (done, if the files it names check out), ascending."""
        return self._shards_in(self.shards, ".stats.json")

    def _shards_in(self, folder: Path, suffix: str) -> list[int]:
        if not folder.is_dir():
            return []
        found = (parse_shard(self.dataset, p.name) for p in folder.glob(f"{self.dataset}-*{suffix}"))
        return sorted(s for s in found if s is not None)


@dataclass(frozen=True)
class ExportLayout:
    """The bookkeeping files of an export folder (the format's own files are the format's)."""

    root: Path
    MARKER = ".mifa-export"

    @property
    def marker(self) -> Path:
        """The export's job (format, selection, source); marks the folder as ours to replace."""
        return self.root / self.MARKER

    @property
    def state(self) -> Path:
        """The parts committed so far (what a resumed export skips)."""
        return self.root / ".export-state.json"

    @property
    def parts(self) -> Path:
        """Per-part fragments of files that cover the whole export (csv, lists), joined at the end."""
        return self.root / ".parts"

    @property
    def report(self) -> Path:
        """Written last: the export is complete."""
        return self.root / "export.json"

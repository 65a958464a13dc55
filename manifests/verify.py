"""Verify a committed dataset: every indexed shard's files against its stats, its manifest and the index.

Per indexed shard: stats present and parseable; tar and Parquet present with the sizes the
stats and the index record and the recorded sha256; the Parquet readable with the recorded
counts; the tar readable header by header (each header's checksum) with exactly the members
the manifest names (an image and a ``.json`` per stored sample). Then: keys unique in the
dataset, ``index.parquet`` holding the recorded row count, and shard files in the shards
folder that the index names neither as indexed nor as surplus (extra). A subset's check
reads the source shards it refers to and that every selected key is in them.

Each shard's tar is read once: the sha256 is computed on the same pass that walks its
headers. Shards are checked on a few threads (hashing and file reads release the GIL).
:func:`verify_dataset` returns a :class:`VerifyReport` (findings by kind: missing, corrupt,
extra, dataset); ``manifests.repair`` acts on it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from manifests.dataset import DatasetRef, NotADatasetError, open_dataset
from manifests.files import exists, file_sha256, file_size, list_dir, open_read
from manifests.index import KeyTracker
from manifests.layout import RunLayout, parse_shard, shard_paths
from manifests.store import location, open_parquet, register_duckdb
from manifests.tar import TarFormatError, iter_members
from manifests.writer import is_done, read_stats

__all__ = ["Finding", "FindingKind", "VerifyReport", "verify", "verify_dataset"]

FindingKind = Literal["missing", "corrupt", "extra", "dataset"]


@dataclass(frozen=True)
class Finding:
    """One thing wrong: ``shard`` is ``None`` for a dataset-level finding; ``files`` are the
    shard's files that exist (what a repair moves aside)."""

    kind: FindingKind
    shard: int | None
    message: str
    files: tuple[Path, ...] = ()


@dataclass
class VerifyReport:
    root: Path
    dataset: str | None
    subset: bool = False
    shards_checked: int = 0
    samples: int = 0
    findings: list[Finding] = field(default_factory=list)
    late_surplus: list[int] = field(default_factory=list)  # done shards beyond the index: fine
    pending_repair: dict[str, Any] | None = None  # the repair.json of a repair no build has finished

    @property
    def ok(self) -> bool:
        return not self.findings

    def shards(self, *kinds: FindingKind) -> list[int]:
        """Shards with a finding of one of ``kinds``, ascending."""
        return sorted({f.shard for f in self.findings if f.kind in kinds and f.shard is not None})

    @property
    def bad_shards(self) -> list[int]:
        """Indexed shards that are missing or corrupt: what a rebuild must redo."""
        return self.shards("missing", "corrupt")

    def messages(self) -> list[str]:
        return [f.message for f in self.findings]

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": str(self.root),
            "dataset": self.dataset,
            "subset": self.subset,
            "ok": self.ok,
            "shards_checked": self.shards_checked,
            "samples": self.samples,
            "missing_shards": self.shards("missing"),
            "corrupt_shards": self.shards("corrupt"),
            "extra_shards": self.shards("extra"),
            "late_surplus_shards": self.late_surplus,
            "findings": [{"kind": f.kind, "shard": f.shard, "message": f.message} for f in self.findings],
            "pending_repair": self.pending_repair,
        }


class _HashingReader:
    """A read-only stream that hashes every byte read through it."""

    def __init__(self, fh: BinaryIO) -> None:
        self.fh = fh
        self.hash = hashlib.sha256()
        self.position = 0

    def read(self, size: int = -1) -> bytes:
        data = self.fh.read(size)
        self.hash.update(data)
        self.position += len(data)
        return data

    def tell(self) -> int:
        return self.position

    def rest(self) -> None:
        for block in iter(lambda: self.read(4 << 20), b""):
            del block


@dataclass
class _ShardResult:
    findings: list[Finding]
    keys: list[str]
    samples: int


def _existing(dataset: DatasetRef, shard: int) -> tuple[Path, ...]:
    paths = shard_paths(dataset.shards_dir, dataset.name, shard)
    return tuple(p for p in (paths.tar, paths.parquet, paths.stats) if exists(p))


def _check_files(dataset: DatasetRef, shard: int, stats: dict[str, Any]) -> list[Finding]:
    """Presence, sizes (stats and index) and the Parquet's sha256; the tar's hash comes later."""
    paths = shard_paths(dataset.shards_dir, dataset.name, shard)
    recorded = dataset.index.get("shard_stats", {}).get(str(shard), {})
    found: list[Finding] = []
    for path, size_key in ((paths.tar, "tar_bytes"), (paths.parquet, "parquet_bytes")):
        if not exists(path):
            found.append(Finding("missing", shard, f"shard {shard}: {path} is missing", _existing(dataset, shard)))
            continue
        size = file_size(path)
        want = stats.get(size_key)
        if size != want or (recorded and size != recorded.get(size_key)):
            what = "truncated" if isinstance(want, int) and size < want else "wrong size"
            found.append(
                Finding(
                    "corrupt",
                    shard,
                    f"shard {shard}: {path.name} is {size} bytes ({what}); its stats record {want} "
                    f"and the index {recorded.get(size_key)}",
                    _existing(dataset, shard),
                )
            )
    if not found and stats.get("parquet_sha256") and file_sha256(paths.parquet) != stats["parquet_sha256"]:
        message = f"shard {shard}: {paths.parquet.name} does not match its recorded sha256 (corrupt)"
        found.append(Finding("corrupt", shard, message, _existing(dataset, shard)))
    return found


def _check_tar(tar: Path, expected: set[str], sha256: str | None) -> list[str]:
    """Problems of one tar: readable header by header, exactly ``expected`` members, sha256."""
    problems: list[str] = []
    members: set[str] = set()
    with open_read(tar) as raw:
        stream = _HashingReader(raw)
        try:
            for member in iter_members(stream, lambda _: False, seek=False):  # type: ignore[arg-type]
                members.add(member.name)
        except TarFormatError as exc:
            return [f"{tar.name}: unreadable as a tar ({exc})"]
        stream.rest()
    if sha256 and stream.hash.hexdigest() != sha256:
        problems.append(f"{tar.name} does not match its recorded sha256 (corrupt)")
    missing, extra = expected - members, members - expected
    if missing:
        problems.append(
            f"{tar.name}: {len(missing)} member(s) named in the manifest are missing (first: {min(missing)})"
        )
    if extra:
        problems.append(f"{tar.name}: {len(extra)} member(s) not named in the manifest (first: {min(extra)})")
    return problems


def _check_shard(dataset: DatasetRef, shard: int) -> _ShardResult:
    paths = shard_paths(dataset.shards_dir, dataset.name, shard)
    try:
        stats = read_stats(dataset.shards_dir, dataset.name, shard)
    except FileNotFoundError as exc:
        return _ShardResult([Finding("missing", shard, f"shard {shard}: {exc}", _existing(dataset, shard))], [], 0)
    except ValueError as exc:
        return _ShardResult([Finding("corrupt", shard, f"shard {shard}: {exc}", _existing(dataset, shard))], [], 0)
    found = _check_files(dataset, shard, stats)
    if found:
        return _ShardResult(found, [], 0)
    files = _existing(dataset, shard)
    try:
        with open_parquet(paths.parquet) as manifest:
            table = manifest.read(columns=["key", "accepted", "image_member"], use_threads=False)
    except (OSError, pa.ArrowException) as exc:
        return _ShardResult([Finding("corrupt", shard, f"shard {shard}: unreadable Parquet ({exc})", files)], [], 0)
    accepted = pc.sum(table["accepted"]).as_py() or 0
    if table.num_rows != stats.get("planned") or accepted != stats.get("accepted"):
        message = f"shard {shard}: {paths.parquet.name} row counts differ from its stats"
        found.append(Finding("corrupt", shard, message, files))
    keys = table["key"].to_pylist()
    expected = set()
    for key, member in zip(keys, table["image_member"].to_pylist(), strict=True):
        if member:
            expected.update((member, f"{key}.json"))
    found += [
        Finding("corrupt", shard, f"shard {shard}: {p}", files)
        for p in _check_tar(paths.tar, expected, stats.get("tar_sha256"))
    ]
    return _ShardResult(found, keys, int(accepted))


def _extra_shards(dataset: DatasetRef, late: list[int]) -> Iterator[Finding]:
    """Files named like this dataset's shards whose shard the index names neither as indexed,
    surplus nor failed (a subset's shards folder is its source's: not checked). A whole, done
    shard beyond the last indexed one is surplus a build committed after writing its index
    (work in flight when the target was reached): noted in ``late``, not a problem."""
    known = set(dataset.shards) | {int(s) for s in dataset.index.get("surplus_shards", [])}
    known |= {int(s) for s in dataset.index.get("failed_shards", {})}
    last = max(dataset.shards, default=-1)
    extra: dict[int, list[Path]] = {}
    for path in list_dir(dataset.shards_dir, f"{dataset.name}-*"):
        shard = parse_shard(dataset.name, path.name)
        if shard is not None and shard not in known and path.is_file():
            extra.setdefault(shard, []).append(path)
    for shard, files in sorted(extra.items()):
        if shard > last and is_done(dataset.shards_dir, dataset.name, shard):
            late.append(shard)
            continue
        names = ", ".join(p.name for p in files)
        yield Finding("extra", shard, f"shard {shard}: files the index does not name ({names})", tuple(files))


def _check_index_rows(dataset: DatasetRef) -> list[Finding]:
    path = dataset.layout.index_parquet
    try:
        rows = open_parquet(path).metadata.num_rows
    except (OSError, pa.ArrowException) as exc:
        return [
            Finding("dataset", None, f"{path} is missing or unreadable ({exc}); rerun `factory build` to rewrite it")
        ]
    if rows != dataset.samples():
        return [Finding("dataset", None, f"{path.name} has {rows} rows, index.json records {dataset.samples()}")]
    return []


def _check_subset_keys(dataset: DatasetRef) -> list[Finding]:
    """Every selected key is a sample with an image in the source shards."""
    files = [str(p) for p in dataset.manifests() if exists(p)]
    if not files or dataset.subset_keys is None:
        return []
    con = duckdb.connect()
    register_duckdb(con, dataset.root, dataset.shards_dir)
    try:
        (lost,) = con.execute(
            "SELECT count(*) FROM read_parquet(?) s WHERE s.key NOT IN "
            "(SELECT key FROM read_parquet(?) WHERE image_member IS NOT NULL)",
            [str(dataset.subset_keys), files],
        ).fetchone()
    finally:
        con.close()
    if lost:
        source = dataset.source_root
        return [Finding("dataset", None, f"{lost} selected sample(s) are no longer in the source {source}")]
    return []


def _pending_repair(run_dir: Path) -> dict[str, Any] | None:
    """The record of the latest ``--repair`` of a build whose index is withdrawn, if any: the
    build that finishes the repair writes the index again (the record stays as evidence)."""
    folder = RunLayout(run_dir, "").quarantine
    records = sorted(p / "repair.json" for p in list_dir(folder)) if exists(folder) else []
    for record in reversed(records):
        try:
            return json.loads(record.read_text())
        except (OSError, ValueError):
            continue
    return None


def verify_dataset(run_dir: Path, *, workers: int | None = None) -> VerifyReport:
    """Check every file of the committed dataset in ``run_dir``; reads each file once."""
    run_dir = location(run_dir)
    report = VerifyReport(root=run_dir, dataset=None)
    try:
        dataset = open_dataset(run_dir)
    except (NotADatasetError, ValueError) as exc:
        report.pending_repair = _pending_repair(run_dir) if isinstance(exc, NotADatasetError) else None
        if report.pending_repair is None:
            report.findings.append(Finding("dataset", None, str(exc)))
            return report
        repaired = report.pending_repair
        report.dataset = repaired.get("found", {}).get("dataset")
        message = (
            f"not whole yet: `factory verify --repair` moved {len(repaired.get('moved', []))} file(s) to "
            f"{repaired.get('quarantine')} and withdrew the index; shard(s) {repaired.get('shards_to_rebuild')} "
            "are to be rebuilt"
        )
        report.findings.append(Finding("dataset", None, message))
        return report
    report.dataset, report.subset = dataset.name, dataset.subset is not None
    keys = KeyTracker()
    threads = workers or min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="verify") as pool:
        for shard, result in zip(
            dataset.shards, pool.map(lambda s: _check_shard(dataset, s), dataset.shards), strict=True
        ):
            report.findings += result.findings
            report.samples += result.samples
            keys.add(shard, result.keys)
    report.shards_checked = len(dataset.shards)
    duplicates = keys.duplicates(lambda: (_check_shard(dataset, s).keys for s in dataset.shards))
    if duplicates and not report.subset:
        message = f"{len(duplicates)} key(s) appear more than once (first: {duplicates[0]!r})"
        report.findings.append(Finding("dataset", None, message))
    if report.subset:
        report.samples = dataset.samples()
        report.findings += _check_subset_keys(dataset)
    else:
        report.findings += list(_extra_shards(dataset, report.late_surplus))
    report.findings += _check_index_rows(dataset)
    return report


def verify(run_dir: Path) -> list[str]:
    """Problems with a committed dataset, one line each (empty list = healthy)."""
    return verify_dataset(run_dir).messages()

"""Atomic shard writer: ``{dataset}-{shard:06d}.tar`` + ``.parquet`` + ``.stats.json``.

A shard is done when, and only when, its stats JSON exists and the tar and Parquet files it
names have the byte sizes it records. Every file is written to a temp name unique to the
writer (``manifests.atomic``), flushed, fsynced and renamed; the stats file is written
last, so a crash at any point leaves either a done shard or a shard that :func:`is_done`
reports as not done (and leftover temps that ``manifests.atomic.clean_temps`` removes).

The tar is a WebDataset shard (``manifests.tar``): per sample ``{key}.{jpg|webp|png}`` and
``{key}.json`` (``manifests.records``). The Parquet manifest has one row per planned sample
(accepted or not) in ``manifests.schema.MANIFEST_SCHEMA``. A record holding a key that
``manifests.schema`` does not declare (no column, no transient field) is refused by
:meth:`ShardWriter.add`, naming the sample and the key: a misspelt field is an error, never
silently dropped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
from filelock import FileLock

from manifests.atomic import temp_path, write_bytes_atomic, write_error
from manifests.done import is_done, read_stats
from manifests.files import make_dir
from manifests.killpoint import reached
from manifests.layout import shard_paths
from manifests.records import (
    PIL_FORMATS,
    REQUIRED_KEYS,
    ImageFormat,
    encode_image,
    encoded_size,
    image_format_of,
    json_default,
    manifest_row,
    manifest_table,
    sample_json,
    unknown_keys_message,
)
from manifests.schema import RECORD_FIELDS, SCHEMA_VERSION
from manifests.store import location, store_for
from manifests.tar import TarSink

__all__ = ["ShardWriter", "is_done", "read_stats"]

# Keys of the stats JSON the writer owns; extra_stats may not replace them.
_RESERVED_STATS = frozenset(
    {
        "dataset",
        "shard",
        "schema_version",
        "planned",
        "accepted",
        "rejected",
        "rejected_images_kept",
        "drop_reasons",
        "tar",
        "parquet",
        "tar_bytes",
        "parquet_bytes",
        "tar_sha256",
        "parquet_sha256",
        "image_format",
        "committed_at",
    }
)


class ShardWriter:
    """Write one shard atomically; use as a context manager and call :meth:`commit`.

    Refuses to start on a done shard unless ``overwrite``. An exception inside the ``with``
    block (or leaving it without ``commit``) removes the temp files; nothing done-looking
    remains. ``checksum=False`` records sizes only (skips sha256 of tar and Parquet).
    """

    def __init__(
        self,
        shards_dir: Path,
        dataset: str,
        shard: int,
        *,
        image_format: ImageFormat = "jpg",
        image_quality: int = 95,
        keep_rejected_images: bool = False,
        overwrite: bool = False,
        checksum: bool = True,
        buffer_bytes: int = -1,  # the tar's write buffer (-1: Python's default)
    ) -> None:
        if image_format not in PIL_FORMATS:
            raise ValueError(f"image_format {image_format!r} is not one of {sorted(PIL_FORMATS)}")
        self.shards_dir = location(shards_dir)
        self.dataset = dataset
        self.shard = shard
        self.image_format = image_format
        self.image_quality = image_quality
        self.keep_rejected_images = keep_rejected_images
        self.overwrite = overwrite
        self.checksum = checksum
        self.paths = shard_paths(self.shards_dir, dataset, shard)
        if not overwrite and is_done(self.shards_dir, dataset, shard):
            raise FileExistsError(
                f"shard {self.paths.tar} is already done (see {self.paths.stats}); pass overwrite=True to rebuild it"
            )
        self._rows: list[list[Any]] = []  # one list per sample, in MANIFEST_SCHEMA order
        self._keys: set[str] = set()
        self._drops: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self._accepted = 0
        self._kept_rejected = 0
        self._temps: list[Path] = []
        self._renamed: list[Path] = []
        self._state: Literal["open", "committed", "aborted"] = "open"
        self._tar_tmp = temp_path(self.paths.tar)
        try:
            make_dir(self.shards_dir)
            self._temps.append(self._tar_tmp)
            self._fh = open(self._tar_tmp, "wb", buffering=buffer_bytes)  # noqa: SIM115 - closed in commit/abort
        except OSError as exc:
            self._remove_temps()
            raise write_error(self._tar_tmp, exc, "could not create") from exc
        self._sink = TarSink(self._fh, checksum)

    # -- context manager -------------------------------------------------------------
    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._state != "open":
            return
        self.abort()
        if exc_type is None:
            raise RuntimeError(
                f"ShardWriter for {self.paths.tar} left without commit(); its temp files were "
                "removed. Call writer.commit() (or writer.abort() to discard on purpose)"
            )

    @property
    def tar_bytes(self) -> int:
        """Bytes of the tar written so far (exports close a shard at a byte size)."""
        return self._sink.size

    # -- samples ---------------------------------------------------------------------
    def add(self, record: dict[str, Any]) -> None:
        """Add one planned sample (accepted or dropped) to the shard."""
        if self._state != "open":
            raise RuntimeError(f"ShardWriter for {self.paths.tar} is {self._state}; add() needs an open writer")
        key = record.get("key")
        if not isinstance(key, str) or not key:
            raise ValueError(f"shard {self.paths.tar}: record has no 'key' string (got {key!r})")
        if key in self._keys:
            raise ValueError(f"shard {self.paths.tar}: duplicate key {key!r}")
        if not RECORD_FIELDS.issuperset(record):  # half the cost of a set difference per record
            raise ValueError(unknown_keys_message(record, record.keys() - RECORD_FIELDS))
        missing = [k for k in REQUIRED_KEYS if record.get(k) is None]
        if missing:
            raise ValueError(f"sample {key}: missing required manifest field(s) {missing}")
        accepted = not record.get("dropped_by")
        width = record.get("width")
        height = record.get("height")
        member = fmt = None
        if accepted or self.keep_rejected_images:
            data, fmt = self._image_bytes(record, key)
            if data is not None:
                if record.get("image") is not None:
                    height, width = record["image"].shape[:2]
                elif width is None or height is None:
                    width, height = encoded_size(data)
                member = f"{key}.{fmt}"
                self._write_member(member, data)
                self._write_member(f"{key}.json", sample_json(record, accepted))
                if not accepted:
                    self._kept_rejected += 1
        if not accepted:
            self._drops[str(record.get("dropped_by"))][str(record.get("drop_reason"))] += 1
        else:
            self._accepted += 1
        self._keys.add(key)
        self._append_row(record, key, accepted, member, fmt, width, height)

    def _image_bytes(self, record: dict[str, Any], key: str) -> tuple[bytes | None, ImageFormat | None]:
        data = record.get("image_bytes")
        if data is not None:
            fmt = image_format_of(data)
            if fmt is None:
                raise ValueError(f"sample {key}: record['image_bytes'] is not a JPEG, PNG or WebP image")
            return bytes(data), fmt
        image = record.get("image")
        if image is None:
            return None, None
        return encode_image(image, self.image_format, self.image_quality, key), self.image_format

    def _write_member(self, name: str, data: bytes) -> None:
        try:
            self._sink.add(name, data)
        except OSError as exc:
            raise write_error(self.paths.tar, exc, "could not write shard") from exc

    def _append_row(
        self,
        record: dict[str, Any],
        key: str,
        accepted: bool,
        member: str | None,
        fmt: str | None,
        width: Any,
        height: Any,
    ) -> None:
        self._rows.append(
            manifest_row(
                record,
                key=key,
                accepted=accepted,
                member=member,
                image_format=fmt,
                width=width,
                height=height,
                shard=self.shard,
                index=len(self._rows),
            )
        )

    # -- commit / abort --------------------------------------------------------------
    def _manifest_table(self) -> pa.Table:
        return manifest_table(self._rows, str(self.paths.parquet))

    def commit(self, extra_stats: dict[str, Any] | None = None) -> dict[str, Any]:
        """Make the shard durable: tar, then Parquet, then the stats JSON (the done marker)."""
        if self._state != "open":
            raise RuntimeError(f"ShardWriter for {self.paths.tar} is {self._state}; commit() needs an open writer")
        extra = dict(extra_stats or {})
        clash = sorted(extra.keys() & _RESERVED_STATS)
        if clash:
            raise ValueError(f"extra_stats may not replace the writer's own stats keys {clash}")
        try:
            self._close_tar()
            # The tar's fsync and last hash batch run on a helper thread while this one
            # builds, validates and syncs the manifest: the two halves of a commit overlap.
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-commit") as pool:
                tar_synced = pool.submit(self._sync_tar)
                try:
                    table = self._manifest_table()  # validate before anything is renamed
                    parquet_tmp, parquet_bytes = self._write_manifest_temp(table)
                finally:
                    tar_synced.exception()  # let the tar's flush finish before any unwinding
                tar_sha256 = tar_synced.result()
            with FileLock(str(self._commit_lock())):
                # A writer racing on the same shard may have committed meanwhile: first wins.
                if not self.overwrite and is_done(self.shards_dir, self.dataset, self.shard):
                    raise FileExistsError(
                        f"shard {self.paths.tar} was committed by another writer meanwhile; "
                        "pass overwrite=True to replace it"
                    )
                stats = self._commit_files(table, parquet_tmp, parquet_bytes, tar_sha256, extra)
        except BaseException:
            self.abort()
            raise
        self._state = "committed"
        return stats

    def _commit_lock(self) -> Path:
        """The per-shard lock that makes the first committing copy win. On object storage it
        is local (no flock on a store): copies on one node still race safely; copies on two
        nodes (a backup of a slow shard) may both upload, each object whole, and the stats
        object written last names the sizes and checksums that ``is_done`` checks."""
        # Lock files live apart so a listing of the shards directory stays readable.
        return store_for(self.shards_dir).lock_path(self.shards_dir / ".locks" / f"{self.paths.stats.name}.lock")

    def _close_tar(self) -> None:
        """End the archive and flush it to the OS (fsync happens in :meth:`_sync_tar`)."""
        try:
            self._sink.close()
            self._fh.flush()
        except OSError as exc:
            raise write_error(self.paths.tar, exc, "could not write shard") from exc

    def _sync_tar(self) -> str | None:
        """fsync the tar temp file; returns its sha256 (None without checksum)."""
        try:
            os.fsync(self._fh.fileno())
        except OSError as exc:
            raise write_error(self.paths.tar, exc, "could not write shard") from exc
        return self._sink.hexdigest()

    def _write_manifest_temp(self, table: pa.Table) -> tuple[Path, bytes]:
        # A manifest is small (one row per sample): serialise in memory, then one write.
        buffer = pa.BufferOutputStream()
        pq.write_table(table, buffer, compression="zstd")
        parquet_bytes = buffer.getvalue().to_pybytes()
        parquet_tmp = temp_path(self.paths.parquet)
        self._temps.append(parquet_tmp)
        try:
            with open(parquet_tmp, "wb") as fh:
                fh.write(parquet_bytes)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            raise write_error(self.paths.parquet, exc, "could not write manifest") from exc
        return parquet_tmp, parquet_bytes

    def _commit_files(
        self, table: pa.Table, parquet_tmp: Path, parquet_bytes: bytes, tar_sha256: str | None, extra: dict[str, Any]
    ) -> dict[str, Any]:
        paths = self.paths
        reached("commit", self.shard)
        # Remove the old done marker first: from here until the new stats are written, the
        # shard must not look done, even if an old stats file recorded identical sizes.
        paths.stats.unlink(missing_ok=True)
        self._fh.close()
        self._rename(self._tar_tmp, paths.tar)
        self._rename(parquet_tmp, paths.parquet)
        reached("renamed", self.shard)
        # No directory fsync between these renames and the stats: if a crash loses a rename,
        # the sizes the stats record no longer match, is_done() says no and the shard is
        # rebuilt. write_index() fsyncs the shards directory before the dataset is committed.
        stats = {
            "dataset": self.dataset,
            "shard": self.shard,
            "schema_version": SCHEMA_VERSION,
            "planned": table.num_rows,
            "accepted": self._accepted,
            "rejected": table.num_rows - self._accepted,
            "rejected_images_kept": self._kept_rejected,
            "drop_reasons": {stage: dict(reasons) for stage, reasons in sorted(self._drops.items())},
            "image_format": self.image_format,
            "tar": paths.tar.name,
            "parquet": paths.parquet.name,
            "tar_bytes": self._sink.size,
            "parquet_bytes": len(parquet_bytes),
            "tar_sha256": tar_sha256,
            "parquet_sha256": hashlib.sha256(parquet_bytes).hexdigest() if self.checksum else None,
            "committed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **extra,
        }
        self._write_stats(json.dumps(stats, indent=1, default=json_default).encode())
        reached("committed", self.shard)
        return stats

    def _write_stats(self, data: bytes) -> None:
        write_bytes_atomic(self.paths.stats, data, sync_dir=False)

    def _rename(self, tmp: Path, final: Path) -> None:
        """Move a finished temp into place: a rename, or on object storage an upload of the
        local file (the object appears whole; a killed upload leaves no object, only parts
        ``RunDir.clean_temps`` aborts)."""
        try:
            store_for(final).put_file(tmp, final, sync_dir=False, synced=True)
        except OSError as exc:
            raise write_error(final, exc, "could not rename into") from exc
        self._temps.remove(tmp)
        self._renamed.append(final)

    def abort(self) -> None:
        """Discard the shard: close and remove temps and anything this commit renamed."""
        if self._state == "committed":
            raise RuntimeError(f"shard {self.paths.tar} is already committed; abort() cannot undo it")
        if self._state == "aborted":
            return
        self._state = "aborted"
        self._sink.discard()
        with contextlib.suppress(OSError):
            self._fh.close()  # without closing the tar stream: its end blocks are not wanted
        self._remove_temps()
        # Renamed files belong to an unfinished commit (the stats write is the last step
        # that can raise): remove them so no half shard is left behind.
        for path in self._renamed:
            path.unlink(missing_ok=True)

    def _remove_temps(self) -> None:
        for path in self._temps:
            path.unlink(missing_ok=True)
        self._temps.clear()

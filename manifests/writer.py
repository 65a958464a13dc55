"""Atomic shard writer: ``{dataset}-{shard:06d}.tar`` + ``.parquet`` + ``.stats.json``.

A shard is done when, and only when, its stats JSON exists and the tar and Parquet files it
names have the byte sizes it records. Every file is written to a temp name unique to the
writer (``.{final}.{pid}-{uuid}.tmp``), flushed, fsynced and renamed; the stats file is
written last, so a crash at any point leaves either a done shard or a shard that
:func:`is_done` reports as not done (and leftover temps that :func:`clean_stale_temps`
removes).

The tar is a WebDataset shard: per sample ``{key}.{jpg|webp|png}`` and ``{key}.json``.
The Parquet manifest has one row per planned sample (accepted or not) in
``manifests.schema.MANIFEST_SCHEMA``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import tarfile
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Literal

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from manifests.schema import MANIFEST_SCHEMA, SCHEMA_VERSION, TRANSIENT_KEYS

__all__ = [
    "ImageFormat",
    "ShardPaths",
    "ShardWriteError",
    "ShardWriter",
    "clean_stale_temps",
    "fsync_dir",
    "is_done",
    "json_default",
    "read_stats",
    "sample_json",
    "shard_paths",
    "temp_path",
    "ustar_header",
    "write_bytes_atomic",
]

ImageFormat = Literal["jpg", "webp", "png"]
TEMP_SUFFIX = ".tmp"
SCORE_KEYS = ("agreement_score", "label_jaccard", "realism_score", "identity_similarity", "prompt_jaccard")
JSON_KEYS = (
    "key",
    "au_occurrence",
    "au_intensity",
    "description",
    "emotion",
    "identity_id",
    "ethnicity",
    "age_band",
    "gender",
    "label_source",
)
# Columns a record must carry (non-nullable in the schema); shard and index are filled in.
REQUIRED_KEYS = tuple(
    f.name for f in MANIFEST_SCHEMA if not f.nullable and f.name not in ("shard", "index", "accepted")
)
_NAMES = tuple(MANIFEST_SCHEMA.names)
_POS = {name: i for i, name in enumerate(_NAMES)}
_KNOWN_KEYS = frozenset(_NAMES) | frozenset(TRANSIENT_KEYS)
_PIL_FORMAT = {"jpg": "JPEG", "webp": "WEBP", "png": "PNG"}
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
        "ignored_keys",
        "committed_at",
    }
)


class ShardWriteError(OSError):
    """Writing a shard file failed (disk full, permissions, ...); the shard is not done.

    ``errno`` is the errno of the underlying ``OSError``; ``path`` the file being written.
    """

    def __init__(self, message: str, path: Path, err: int | None) -> None:
        super().__init__(message)
        self.errno = err
        self.path = path


@dataclass(frozen=True)
class ShardPaths:
    tar: Path
    parquet: Path
    stats: Path


def shard_paths(shards_dir: Path, dataset: str, shard: int) -> ShardPaths:
    stem = Path(shards_dir) / f"{dataset}-{shard:06d}"
    return ShardPaths(
        tar=stem.with_name(stem.name + ".tar"),
        parquet=stem.with_name(stem.name + ".parquet"),
        stats=stem.with_name(stem.name + ".stats.json"),
    )


def temp_path(final: Path) -> Path:
    """A sibling temp name unique to this process and call (so racing writers never clash)."""
    return final.with_name(f".{final.name}.{os.getpid()}-{uuid.uuid4().hex[:12]}{TEMP_SUFFIX}")


def fsync_dir(directory: Path) -> None:
    """Make renames inside ``directory`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a directory; the rename is still atomic
    finally:
        os.close(fd)


def _write_error(path: Path, exc: OSError, what: str) -> ShardWriteError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = (
            f"free space on the disk holding {path.parent} (or point dataset.out at a larger disk) "
            "and run the build again; the shard was not committed and will be rebuilt"
        )
        reason = "no space left on device"
    else:
        fix = f"check that {path.parent} is writable and healthy, then run the build again"
        reason = exc.strerror or str(exc)
    return ShardWriteError(f"{what} {path}: {reason}; {fix}", path, exc.errno)


def write_bytes_atomic(path: Path, data: bytes, *, sync_dir: bool = True) -> None:
    """Write ``data`` to ``path`` via a unique temp file, fsync and atomic rename
    (then fsync the directory, so the rename itself survives a power loss, unless not asked)."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _write_error(path, exc, "could not write") from exc
    if sync_dir:
        fsync_dir(path.parent)


def read_stats(shards_dir: Path, dataset: str, shard: int) -> dict[str, Any]:
    """The stats of a committed shard; ``FileNotFoundError``/``ValueError`` name the file."""
    path = shard_paths(shards_dir, dataset, shard).stats
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise FileNotFoundError(f"shard stats {path} does not exist: the shard is not done") from None
    try:
        stats = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"shard stats {path} is not valid JSON ({exc}); delete it to rebuild the shard") from exc
    if not isinstance(stats, dict):
        raise ValueError(f"shard stats {path} is not a JSON object; delete it to rebuild the shard")
    return stats


def is_done(shards_dir: Path, dataset: str, shard: int) -> bool:
    """Stats parse and the tar and Parquet exist with the byte sizes the stats record."""
    paths = shard_paths(shards_dir, dataset, shard)
    try:
        stats = read_stats(shards_dir, dataset, shard)
        return paths.tar.stat().st_size == stats["tar_bytes"] and paths.parquet.stat().st_size == stats["parquet_bytes"]
    except (OSError, ValueError, KeyError, TypeError):
        return False


def clean_stale_temps(shards_dir: Path) -> list[Path]:
    """Remove temp files left by crashed writers; returns what was removed.

    Call it when no writer is running on ``shards_dir`` (at the start of a run or resume):
    a live writer's temps look the same as a dead one's.
    """
    shards_dir = Path(shards_dir)
    if not shards_dir.is_dir():
        return []
    removed = []
    for path in sorted(shards_dir.glob(f".*{TEMP_SUFFIX}")):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def json_default(value: Any) -> Any:
    """``json.dumps`` hook for numpy values inside records."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _score(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if value != value else value  # NaN (not valid JSON) -> null


def sample_json(record: dict[str, Any], accepted: bool) -> bytes:
    """The ``{key}.json`` member: labels, metadata and quality scores of one sample."""
    doc = {k: record.get(k) for k in JSON_KEYS}
    doc["scores"] = {k: _score(record.get(k)) for k in SCORE_KEYS}
    doc["accepted"] = accepted
    if not accepted:
        doc["dropped_by"] = record.get("dropped_by")
        doc["drop_reason"] = record.get("drop_reason")
    # orjson writes numpy vectors natively (several times faster than json + a default hook,
    # which the shard writer's throughput target noticed); json_default covers the rest
    # (non-contiguous arrays, numpy scalars nested in lists).
    return orjson.dumps(doc, default=json_default, option=orjson.OPT_SERIALIZE_NUMPY)


def votes_column(detector_votes: dict[str, Any]) -> list[dict[str, Any]]:
    """``record["detector_votes"]`` (name -> occurrence/intensity) -> a ``votes`` value.

    Vectors stay as given; NaN becomes null when the column is built (detectors often use
    NaN for "AU not covered", which the schema spells null).
    """
    return [
        {
            "detector": name,
            "occurrence": vote.get("occurrence"),
            "intensity": vote.get("intensity"),
        }
        for name, vote in detector_votes.items()
    ]


def image_format_of(data: bytes) -> ImageFormat | None:
    """Sniff the container of encoded image bytes."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def encode_image(image: Any, image_format: ImageFormat, quality: int, key: str) -> bytes:
    """uint8 RGB ``(H, W, 3)`` array -> encoded bytes (Pillow, libjpeg-turbo / libwebp)."""
    from PIL import Image

    is_rgb = isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3
    if not (is_rgb and image.dtype == np.uint8):
        got = f"{type(image).__name__} {getattr(image, 'dtype', '')} {getattr(image, 'shape', '')}"
        raise ValueError(f"sample {key}: record['image'] must be a uint8 RGB array (H, W, 3), got {got}")
    buf = io.BytesIO()
    # PNG: level 3 is several times faster than Pillow's default 6 for a few % more bytes.
    lossy = image_format in ("jpg", "webp")
    options: dict[str, Any] = {"quality": quality} if lossy else {"compress_level": 3}
    Image.fromarray(image, "RGB").save(buf, format=_PIL_FORMAT[image_format], **options)
    return buf.getvalue()


def _ustar_member_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o444
    info.uname = info.gname = "mifa"
    # mtime stays 0: identical input gives byte-identical tars (and checksums).
    return info


def _ustar_template() -> tuple[bytes, int]:
    """tarfile's own header for an empty name and size 0, and its checksum without the
    name and size fields (the only fields that differ between our members)."""
    header = bytearray(_ustar_member_info("", 0).tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape"))
    header[124:136] = bytes(12)
    header[148:156] = b" " * 8  # the checksum is computed with its own field as spaces
    return bytes(header), sum(header)


_USTAR_TEMPLATE, _USTAR_BASE_CHKSUM = _ustar_template()


def ustar_header(name: str, size: int) -> bytes:
    """The USTAR header ``tarfile`` writes for one of our members, byte for byte.

    ``TarInfo.tobuf`` takes ~25 us per header (about half a plain tarfile loop's time on
    small members); this splices name, size and checksum into a template built by tarfile
    itself. Names over 100 bytes (which USTAR splits into prefix + name) go to tarfile.
    """
    encoded = name.encode("utf-8", "surrogateescape")
    if len(encoded) > 100 or size >= 8**11:
        return _ustar_member_info(name, size).tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")
    size_field = b"%011o\0" % size
    chksum = _USTAR_BASE_CHKSUM + sum(encoded) + sum(size_field)
    return b"".join(
        (
            encoded,
            _USTAR_TEMPLATE[len(encoded) : 124],
            size_field,
            _USTAR_TEMPLATE[136:148],
            b"%06o\0 " % chksum,
            _USTAR_TEMPLATE[156:],
        )
    )


class _TarSink:
    """Streams USTAR members to a file, hashing and counting the bytes on the way.

    Why not ``webdataset.TarWriter``: ``import webdataset`` imports torch (about 8 s and
    hundreds of MB per process on this machine), and TarWriter ignores its ``format``
    argument, so every member gets a 1 kB PAX header for its float mtime. Why not
    ``tarfile.addfile``: it copies each member through 16 kB reads and spends ~25 us on each
    header; here a member is one write of header (:func:`ustar_header`, tarfile's bytes),
    data and padding, the same layout tarfile writes. webdataset and tarfile read the
    result (tested), and the sha256 is computed on a helper thread as the bytes go by.
    """

    def __init__(self, fh: BinaryIO, checksum: bool) -> None:
        self.fh = fh
        self.hash = _BackgroundSha256() if checksum else None
        self.size = 0
        self.discarded = False

    def _write(self, data: bytes) -> None:
        if self.discarded:
            return
        self.fh.write(data)
        if self.hash is not None:
            self.hash.update(data)
        self.size += len(data)

    def add(self, name: str, data: bytes) -> None:
        # One write per member: header, bytes and padding joined (a copy of a few kB is
        # cheaper than three trips through the buffered writer).
        padding = tarfile.NUL * (-len(data) % tarfile.BLOCKSIZE)
        self._write(b"".join((ustar_header(name, len(data)), data, padding)))

    def close(self) -> None:
        """End-of-archive blocks, padded to a full record (as tarfile does)."""
        self._write(tarfile.NUL * (2 * tarfile.BLOCKSIZE))
        remainder = self.size % tarfile.RECORDSIZE
        if remainder:
            self._write(tarfile.NUL * (tarfile.RECORDSIZE - remainder))

    def hexdigest(self) -> str | None:
        """sha256 of everything written (waits for the hashing thread); None without checksum."""
        return self.hash.hexdigest() if self.hash is not None else None

    def discard(self) -> None:
        self.discarded = True
        if self.hash is not None:
            self.hash.cancel()


class _BackgroundSha256:
    """sha256 of a byte stream, computed on one helper thread in batches of a few MB.

    hashlib releases the GIL on large buffers, so hashing overlaps the writer's own work
    (label JSON, tar headers, writes) instead of adding to it. Batches, not per-member
    hand-offs: one thread switch per ~4 MB costs nothing, one per member measured slower
    than hashing inline. One worker thread runs batches in submission order.
    """

    BATCH_BYTES = 4 << 20

    def __init__(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._hash = hashlib.sha256()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-sha256")
        self._pending: list[bytes] = []
        self._pending_bytes = 0

    def update(self, data: bytes) -> None:
        self._pending.append(data)
        self._pending_bytes += len(data)
        if self._pending_bytes >= self.BATCH_BYTES:
            self._submit()

    def _submit(self) -> None:
        if self._pending:
            self._pool.submit(self._consume, self._pending)
            self._pending = []
            self._pending_bytes = 0

    def _consume(self, pieces: list[bytes]) -> None:
        # One update per batch: each update releases the GIL and must win it back, which a
        # busy writer thread delays; thousands of small updates would queue on it.
        self._hash.update(b"".join(pieces))

    def hexdigest(self) -> str:
        self._submit()
        self._pool.shutdown(wait=True)
        return self._hash.hexdigest()

    def cancel(self) -> None:
        self._pending = []
        self._pool.shutdown(wait=False, cancel_futures=True)


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
    ) -> None:
        if image_format not in _PIL_FORMAT:
            raise ValueError(f"image_format {image_format!r} is not one of {sorted(_PIL_FORMAT)}")
        self.shards_dir = Path(shards_dir)
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
        self._ignored: set[str] = set()
        self._accepted = 0
        self._kept_rejected = 0
        self._temps: list[Path] = []
        self._renamed: list[Path] = []
        self._state: Literal["open", "committed", "aborted"] = "open"
        self._tar_tmp = temp_path(self.paths.tar)
        try:
            self.shards_dir.mkdir(parents=True, exist_ok=True)
            self._temps.append(self._tar_tmp)
            self._fh = open(self._tar_tmp, "wb")  # noqa: SIM115 - closed in commit/abort
        except OSError as exc:
            self._remove_temps()
            raise _write_error(self._tar_tmp, exc, "could not create") from exc
        self._sink = _TarSink(self._fh, checksum)

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
                    width, height = _encoded_size(data)
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
            raise _write_error(self.paths.tar, exc, "could not write shard") from exc

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
        unknown = record.keys() - _KNOWN_KEYS
        if unknown:
            self._ignored.update(unknown)
        # Values go in as they are (numpy arrays and scalars too): pyarrow converts whole
        # columns at commit, far faster than converting field by field here.
        row = [record.get(name) for name in _NAMES]
        row[_POS["key"]] = key
        row[_POS["accepted"]] = accepted
        row[_POS["image_member"]] = member
        row[_POS["image_format"]] = fmt
        row[_POS["width"]] = width
        row[_POS["height"]] = height
        if row[_POS["shard"]] is None:
            row[_POS["shard"]] = self.shard
        if row[_POS["index"]] is None:
            row[_POS["index"]] = len(self._rows)
        if row[_POS["votes"]] is None and record.get("detector_votes") is not None:
            row[_POS["votes"]] = votes_column(record["detector_votes"])
        self._rows.append(row)

    # -- commit / abort --------------------------------------------------------------
    def _manifest_table(self) -> pa.Table:
        columns = list(zip(*self._rows, strict=True)) if self._rows else [()] * len(_NAMES)
        arrays = []
        for field, values in zip(MANIFEST_SCHEMA, columns, strict=True):
            try:
                # from_pandas: NaN -> null in votes (the schema: null = AU not covered).
                arrays.append(pa.array(values, type=field.type, from_pandas=field.name == "votes"))
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError) as exc:
                raise ValueError(self._bad_value_message(field, columns[0], values, exc)) from exc
        return pa.Table.from_arrays(arrays, schema=MANIFEST_SCHEMA)

    def _bad_value_message(self, field: pa.Field, keys: Any, values: Any, exc: Exception) -> str:
        # Only on the error path: find the first offending row so the message names a key.
        for key, value in zip(keys, values, strict=True):
            try:
                pa.array([value], type=field.type, from_pandas=field.name == "votes")
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
                return (
                    f"shard {self.paths.parquet}: sample {key}: column {field.name!r} = {value!r} "
                    f"does not fit {field.type} ({exc}); fix the stage that sets it"
                )
        return f"shard {self.paths.parquet}: column {field.name!r} does not fit {field.type} ({exc})"

    def commit(self, extra_stats: dict[str, Any] | None = None) -> dict[str, Any]:
        """Make the shard durable: tar, then Parquet, then the stats JSON (the done marker)."""
        if self._state != "open":
            raise RuntimeError(f"ShardWriter for {self.paths.tar} is {self._state}; commit() needs an open writer")
        extra = dict(extra_stats or {})
        clash = sorted(extra.keys() & _RESERVED_STATS)
        if clash:
            raise ValueError(f"extra_stats may not replace the writer's own stats keys {clash}")
        from concurrent.futures import ThreadPoolExecutor

        from filelock import FileLock

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
            # Lock files live apart so a listing of the shards directory stays readable.
            lock_dir = self.shards_dir / ".locks"
            lock_dir.mkdir(exist_ok=True)
            lock = FileLock(str(lock_dir / f"{self.paths.stats.name}.lock"))
            with lock:
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

    def _close_tar(self) -> None:
        """End the archive and flush it to the OS (fsync happens in :meth:`_sync_tar`)."""
        try:
            self._sink.close()
            self._fh.flush()
        except OSError as exc:
            raise _write_error(self.paths.tar, exc, "could not write shard") from exc

    def _sync_tar(self) -> str | None:
        """fsync the tar temp file; returns its sha256 (None without checksum)."""
        try:
            os.fsync(self._fh.fileno())
        except OSError as exc:
            raise _write_error(self.paths.tar, exc, "could not write shard") from exc
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
            raise _write_error(self.paths.parquet, exc, "could not write manifest") from exc
        return parquet_tmp, parquet_bytes

    def _commit_files(
        self, table: pa.Table, parquet_tmp: Path, parquet_bytes: bytes, tar_sha256: str | None, extra: dict[str, Any]
    ) -> dict[str, Any]:
        paths = self.paths
        # Remove the old done marker first: from here until the new stats are written, the
        # shard must not look done, even if an old stats file recorded identical sizes.
        paths.stats.unlink(missing_ok=True)
        self._fh.close()
        self._rename(self._tar_tmp, paths.tar)
        self._rename(parquet_tmp, paths.parquet)
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
            "ignored_keys": sorted(self._ignored),
            "committed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **extra,
        }
        self._write_stats(json.dumps(stats, indent=1, default=json_default).encode())
        return stats

    def _write_stats(self, data: bytes) -> None:
        write_bytes_atomic(self.paths.stats, data, sync_dir=False)

    def _rename(self, tmp: Path, final: Path) -> None:
        try:
            os.replace(tmp, final)
        except OSError as exc:
            raise _write_error(final, exc, "could not rename into") from exc
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


def _encoded_size(data: bytes) -> tuple[int, int]:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:  # reads the header only
        return im.size

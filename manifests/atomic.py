"""Atomic file writes: a file appears whole or not at all, on a disk or on object storage.

Every durable file the factory writes (shard files, stats, plans, failure records, the index,
reports) goes through here, so a crash leaves either the old file or the new one, never a torn
one. The path's store (``manifests.store.store_for``) does the put: on a disk a unique temp file
beside the target, flush, fsync, rename; on object storage one PUT, or a local temp file uploaded
whole. Leftover temps are recognisable (``.{name}.{pid}-{uuid}.tmp``) and removed by
:func:`clean_temps` when no writer runs.
"""

from __future__ import annotations

import errno
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from manifests.errors import FailedError
from manifests.store import location, store_for

__all__ = [
    "TEMP_SUFFIX",
    "WriteError",
    "atomic_output",
    "clean_temps",
    "fsync_dir",
    "temp_path",
    "write_bytes_atomic",
    "write_error",
    "write_parquet_atomic",
    "write_text_atomic",
]

TEMP_SUFFIX = ".tmp"


class WriteError(FailedError, OSError):
    """Writing a file failed (disk full, permissions, ...); the file it was writing was not committed.

    ``errno`` is the errno of the underlying ``OSError``; ``path`` the file being written.
    The message names the file and says what to do.
    """

    def __init__(self, message: str, path: Path, err: int | None) -> None:
        super().__init__(message)
        self.errno = err
        self.path = path


def temp_path(final: Path) -> Path:
    """A temp name for ``final`` unique to this process and call (so racing writers never clash):
    a sibling on a disk, a local file for an object on a store (uploaded whole)."""
    return store_for(final).temp_for(final, f"{os.getpid()}-{uuid.uuid4().hex[:12]}{TEMP_SUFFIX}")


def fsync_dir(directory: Path) -> None:
    """Make renames inside ``directory`` durable (nothing to do on a store, or where directories
    cannot be opened)."""
    store_for(directory).sync_dir(directory)


def write_error(path: Path, exc: OSError, what: str) -> WriteError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = (
            f"free space on the disk holding {path.parent} (or point dataset.out at a larger disk) "
            "and run the build again (shards committed before are kept; this file is written again by the next build)"
        )
        reason = "no space left on device"
    else:
        fix = store_for(path).write_advice(path.parent)
        reason = exc.strerror or str(exc)
    return WriteError(f"{what} {path}: {reason}; {fix}", path, exc.errno)


def write_bytes_atomic(path: Path, data: bytes, *, sync_dir: bool = True) -> None:
    """Write ``data`` to ``path`` via a unique temp file, fsync and atomic rename
    (then fsync the directory, so the rename itself survives a power loss, unless not asked).
    On object storage one PUT of the whole object: it is there entire or not at all."""
    path = location(path)
    try:
        store_for(path).put_bytes(path, data, sync_dir=sync_dir)
    except OSError as exc:
        raise write_error(path, exc, "could not write") from exc


def write_text_atomic(path: Path, text: str, *, sync_dir: bool = True) -> None:
    """:func:`write_bytes_atomic` for UTF-8 text."""
    write_bytes_atomic(path, text.encode("utf-8"), sync_dir=sync_dir)


@contextmanager
def atomic_output(path: Path, *, fix: str | None = None) -> Iterator[Path]:
    """Yield a temp path to write ``path``'s new content to; on success fsync it and rename it
    into place (then fsync the directory), on any error remove it. An ``OSError`` becomes a
    :class:`WriteError` naming ``path`` (``fix`` replaces the default advice). On object
    storage the temp is a local file, uploaded whole on success."""
    path = location(path)
    tmp = temp_path(path)
    try:
        yield tmp
        store_for(path).put_file(tmp, path)
    except OSError as exc:
        error = write_error(path, exc, "could not write")
        if fix is not None:
            error = WriteError(f"could not write {path}: {exc.strerror or exc}; {fix}", path, exc.errno)
        raise error from exc
    finally:
        tmp.unlink(missing_ok=True)


def write_parquet_atomic(path: Path, table: pa.Table, **options: Any) -> None:
    """Write ``table`` as Parquet at ``path`` via a temp file and rename (``options`` go to pyarrow)."""
    with atomic_output(path) as tmp:
        pq.write_table(table, tmp, **options)


def clean_temps(directory: Path) -> list[Path]:
    """Remove temp files left by crashed writers in ``directory``; returns what was removed.

    Call it when no writer is running there (at the start of a run or resume): a live
    writer's temps look the same as a dead one's.
    """
    directory = location(directory)
    directory = store_for(directory).temps_dir(directory)  # a store's: its local staging folder
    if not directory.is_dir():
        return []
    removed = []
    for path in sorted(directory.glob(f".*{TEMP_SUFFIX}")):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed

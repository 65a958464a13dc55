"""The file operations the dataset tools use (verify, repair, subsets, exports, cards), in
one small place: a local path or an object on a store.

Each is a thin wrapper over ``pathlib`` (which a ``UPath`` shares) or the path's store
(``manifests.store.store_for``: a local disk or fsspec); writes that must be atomic go through
``manifests.atomic`` instead.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from manifests.store import location, store_for

__all__ = [
    "copy_file",
    "exists",
    "file_sha256",
    "file_size",
    "is_dir",
    "list_dir",
    "make_dir",
    "move",
    "open_read",
    "remove",
    "remove_tree",
]


def open_read(path: Path, buffer_bytes: int = 1 << 20) -> BinaryIO:
    """Open ``path`` for binary reading (raises ``FileNotFoundError`` naming it); a 1 MiB
    buffer: the tools read tars member by member, and Python's 8 kB one costs a system call
    every few small members. An object is read through fsspec's read-ahead buffer."""
    return store_for(path).open_read(path, buffer_bytes)


def exists(path: Path) -> bool:
    return location(path).exists()


def is_dir(path: Path) -> bool:
    return location(path).is_dir()


def file_size(path: Path) -> int:
    return location(path).stat().st_size


def list_dir(path: Path, pattern: str = "*") -> Iterator[Path]:
    """Entries of ``path`` matching ``pattern`` (none when the folder does not exist), sorted."""
    folder = location(path)
    if not folder.is_dir():
        return iter(())
    return iter(sorted(folder.glob(pattern)))


def make_dir(path: Path) -> None:
    """Create the folder ``path`` (on a store nothing: an object's key makes its prefix)."""
    store_for(path).make_dir(path)


def move(source: Path, target: Path) -> None:
    """Move a file (rename when on the same filesystem), creating the target's folder."""
    store_for(source, target).move(source, target)


def copy_file(source: Path, target: Path) -> None:
    """Copy one file; either side may be an object (read and written whole: small files only,
    a provenance or an index)."""
    store_for(source, target).copy_file(source, target)


def remove(path: Path) -> None:
    location(path).unlink(missing_ok=True)


def remove_tree(path: Path) -> None:
    store_for(path).remove_tree(path)


def file_sha256(path: Path) -> str:
    with open_read(path) as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()

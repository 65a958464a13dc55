"""The file operations the dataset tools use (verify, repair, subsets, exports, cards), in
one small place: a local path or an object on a store (``manifests.store``: a ``UPath``).

Each is a thin wrapper over ``pathlib``/``os`` (or the path's fsspec filesystem); writes that
must be atomic go through ``manifests.atomic`` instead.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from manifests.store import is_remote, location

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
    if is_remote(path):
        return path.open("rb")
    return open(path, "rb", buffering=buffer_bytes)


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
    if not is_remote(path):  # a store has no folders: an object's key makes its prefix
        Path(path).mkdir(parents=True, exist_ok=True)


def move(source: Path, target: Path) -> None:
    """Move a file (rename when on the same filesystem), creating the target's folder."""
    if is_remote(source) or is_remote(target):
        location(source).fs.mv(location(source).path, location(target).path)
        return
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    shutil.move(os.fspath(source), os.fspath(target))


def copy_file(source: Path, target: Path) -> None:
    """Copy one file; either side may be an object (read and written whole: small files only,
    a provenance or an index)."""
    if is_remote(source) or is_remote(target):
        location(target).write_bytes(location(source).read_bytes())
        return
    shutil.copyfile(source, target)


def remove(path: Path) -> None:
    location(path).unlink(missing_ok=True)


def remove_tree(path: Path) -> None:
    if is_remote(path):
        path.fs.rm(path.path, recursive=True)
        return
    shutil.rmtree(path, ignore_errors=False)


def file_sha256(path: Path) -> str:
    with open_read(path) as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()

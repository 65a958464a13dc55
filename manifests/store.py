"""The one storage seam every file operation of the factory goes through.

A dataset's location (``manifests.urls.location``) is a ``pathlib.Path`` or, for a URL, a
``upath.UPath`` (universal_pathlib over fsspec: s3fs, gcsfs) with the same methods (``/``,
``name``, ``exists``, ``glob``, ``read_text``, ``stat``, ``unlink``), so the layout and the
readers need no second spelling.

What differs between the two is behind :func:`store_for`: a :class:`LocalStore` (rename, fsync,
flock beside the files) or an :class:`ObjectStore` (no rename: a file is written locally and
uploaded whole; no flock: a local lock file keyed by the URL; multipart uploads a killed writer
left open are aborted). ``manifests.atomic``, ``manifests.files``, ``manifests.claim`` and the
writers call the store they are given and never ask which one it is; this module is the only
place that does.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from manifests.urls import check_url, is_url, location, probe_location  # the location helpers travel with the seam
from manifests.urls import is_remote as _is_remote

__all__ = [
    "LocalStore",
    "ObjectStore",
    "Store",
    "abort_partial_uploads",
    "absolute",
    "check_url",
    "is_inside",
    "is_url",
    "location",
    "node_cache_dir",
    "open_parquet",
    "probe_location",
    "read_table",
    "register_duckdb",
    "relative_path",
    "staging_dir",
    "store_for",
]


def _digest(text: object) -> str:
    return hashlib.sha256(str(text).rstrip("/").encode()).hexdigest()[:16]


def staging_dir(remote: object = None) -> Path:
    """A local folder for files on their way to object storage (a shard's tar while it grows):
    one per remote folder, so ``clean_temps`` of that folder finds a killed writer's leftovers
    (``$MIFA_STAGING_DIR``, default the system temp folder)."""
    folder = Path(os.environ.get("MIFA_STAGING_DIR") or tempfile.gettempdir()) / "mifa-staging"
    if remote is not None:
        folder = folder / _digest(remote)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def node_cache_dir(root: object, kind: str) -> Path:
    """A folder on this node's local disk for ``kind`` of cache of the dataset at ``root`` (a
    path or URL): ``$MIFA_CACHE_DIR``, else ``$XDG_CACHE_HOME/mifa-factory``, else
    ``~/.cache/mifa-factory``, then ``{kind}/{sha256 of root's absolute path or URL}``. The same
    ``root`` gives the same folder on every run on this node (a resumed build finds its cache),
    and nothing is written in the dataset (SQLite's WAL is not safe on a shared filesystem)."""
    base = os.environ.get("MIFA_CACHE_DIR")
    if not base:
        base = str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mifa-factory")
    folder = Path(base) / kind / _digest(absolute(location(root)))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def store_for(path: object, *others: object) -> Store:
    """The store that holds ``path``: :class:`ObjectStore` for a URL, :class:`LocalStore` else.
    With ``others`` (a copy or move between two places): the object store when any is on one,
    since fsspec reaches both."""
    return OBJECT_STORE if any(_is_remote(p) for p in (path, *others)) else LOCAL_STORE


class Store:
    """The file operations that differ between a local disk and an object store."""

    # Files here are on a filesystem of this node: opened by path and renamed, and a folder may be
    # this node's private disk (a shared mount that failed on it).
    local: bool = False

    def temp_for(self, final: Any, unique: str) -> Path:
        """The local file where ``final``'s new content is written before :meth:`put_file`."""
        raise NotImplementedError

    def put_bytes(self, path: Any, data: bytes, *, sync_dir: bool = True) -> None:
        """Write ``data`` at ``path`` so that it appears whole or not at all."""
        raise NotImplementedError

    def put_file(self, local: Path, path: Any, *, sync_dir: bool = True, synced: bool = False) -> None:
        """Move the finished local file ``local`` to ``path``, whole or not at all (``synced``:
        the caller has fsynced it already)."""
        raise NotImplementedError

    def sync_dir(self, folder: Any) -> None:
        """Make what :meth:`put_file` put in ``folder`` durable."""

    def write_advice(self, folder: Any) -> str:
        """What to check when a write in ``folder`` failed (not for a full disk)."""
        raise NotImplementedError

    def temps_dir(self, folder: Any) -> Path:
        """The local folder where temps for files in ``folder`` live."""
        raise NotImplementedError

    def make_dir(self, folder: Any) -> None:
        raise NotImplementedError

    def make_root(self, folder: Any) -> None:
        """Create ``folder`` for a new dataset (``OSError`` naming what is missing)."""
        self.make_dir(folder)

    def open_read(self, path: Any, buffer_bytes: int) -> BinaryIO:
        raise NotImplementedError

    def move(self, source: Any, target: Any) -> None:
        raise NotImplementedError

    def copy_file(self, source: Any, target: Any) -> None:
        raise NotImplementedError

    def remove_tree(self, folder: Any) -> None:
        raise NotImplementedError

    def lock_path(self, path: Any) -> Path:
        """The local file a flock standing for the lock file ``path`` is taken on."""
        raise NotImplementedError

    def abort_partial_uploads(self, root: Any) -> int:
        """Abort uploads a killed writer left open under ``root``; how many."""
        return 0

    def parquet_source(self, path: Any) -> Any:
        """What pyarrow reads ``path`` from (the path, or an open fsspec file)."""
        return path


class LocalStore(Store):
    """A local or shared-filesystem folder: rename, fsync and flock beside the files."""

    local = True

    def temp_for(self, final: Any, unique: str) -> Path:
        return Path(final).with_name(f".{final.name}.{unique}")

    def put_bytes(self, path: Any, data: bytes, *, sync_dir: bool = True) -> None:
        tmp = self.temp_for(path, f"{os.getpid()}-{os.urandom(6).hex()}.tmp")
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise
        if sync_dir:
            self.sync_dir(Path(path).parent)

    def put_file(self, local: Path, path: Any, *, sync_dir: bool = True, synced: bool = False) -> None:
        if not synced:
            fd = os.open(local, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(local, path)
        if sync_dir:
            self.sync_dir(Path(path).parent)

    def sync_dir(self, folder: Any) -> None:
        try:
            fd = os.open(folder, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass  # some filesystems refuse fsync on a directory; the rename is still atomic
        finally:
            os.close(fd)

    def write_advice(self, folder: Any) -> str:
        return f"check that {folder} is writable and healthy, then run the build again"

    def temps_dir(self, folder: Any) -> Path:
        return Path(folder)

    def make_dir(self, folder: Any) -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)

    def open_read(self, path: Any, buffer_bytes: int) -> BinaryIO:
        return open(path, "rb", buffering=buffer_bytes)

    def move(self, source: Any, target: Any) -> None:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(os.fspath(source), os.fspath(target))

    def copy_file(self, source: Any, target: Any) -> None:
        shutil.copyfile(source, target)

    def remove_tree(self, folder: Any) -> None:
        shutil.rmtree(folder, ignore_errors=False)

    def lock_path(self, path: Any) -> Path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return Path(path)


class ObjectStore(Store):
    """A prefix on object storage: objects are written whole (one PUT or a multipart upload of a
    local file), a store has no folders, no rename and no flock."""

    def temp_for(self, final: Any, unique: str) -> Path:
        return staging_dir(final.parent) / f".{final.name}.{unique}"

    def put_bytes(self, path: Any, data: bytes, *, sync_dir: bool = True) -> None:
        path.write_bytes(data)

    def put_file(self, local: Path, path: Any, *, sync_dir: bool = True, synced: bool = False) -> None:
        path.fs.put_file(os.fspath(local), path.path)  # one PUT or a multipart upload: whole when it returns
        local.unlink(missing_ok=True)

    def write_advice(self, folder: Any) -> str:
        return f"check that {folder} exists and the credentials in the environment may write it"

    def temps_dir(self, folder: Any) -> Path:
        return staging_dir(folder)  # nothing is written to a store under a temp name

    def make_dir(self, folder: Any) -> None:
        """Nothing: an object's key makes its prefix."""

    def make_root(self, folder: Any) -> None:
        bucket = folder.path.split("/", 1)[0]
        if not folder.fs.exists(bucket):  # s3fs would create it: a typo must not make a bucket
            raise OSError(f"the bucket {bucket!r} does not exist or these credentials cannot see it")

    def open_read(self, path: Any, buffer_bytes: int) -> BinaryIO:
        return path.open("rb")  # fsspec's read-ahead buffer

    def move(self, source: Any, target: Any) -> None:
        location(source).fs.mv(location(source).path, location(target).path)

    def copy_file(self, source: Any, target: Any) -> None:
        location(target).write_bytes(location(source).read_bytes())  # small files only (a provenance)

    def remove_tree(self, folder: Any) -> None:
        folder.fs.rm(folder.path, recursive=True)

    def lock_path(self, path: Any) -> Path:
        """A local file keyed by the URL: it stops a second writer on this machine only."""
        folder = staging_dir() / "locks"
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"{_digest(path.parent)}-{path.name}"

    def abort_partial_uploads(self, root: Any) -> int:
        """S3 only: other stores either have no such state or clean it themselves."""
        fs = getattr(root, "fs", None)
        if fs is None or not hasattr(fs, "list_multipart_uploads"):
            return 0
        bucket, _, prefix = str(root.path).partition("/")
        below = prefix.rstrip("/") + "/" if prefix.strip("/") else ""  # a dataset at the bucket's root owns it all
        aborted = 0
        for upload_info in fs.list_multipart_uploads(bucket):
            key = upload_info.get("Key", "")
            if key.startswith(below):
                fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=upload_info["UploadId"])
                aborted += 1
        return aborted

    def parquet_source(self, path: Any) -> Any:
        return path.open("rb")


LOCAL_STORE = LocalStore()
OBJECT_STORE = ObjectStore()


def abort_partial_uploads(root: Any) -> int:
    """Abort multipart uploads under ``root`` that were never completed (a writer killed
    mid-upload leaves their parts billed but invisible); returns how many."""
    return store_for(root).abort_partial_uploads(location(root))


def read_table(path: Any, **options: Any) -> pa.Table:
    """``pyarrow.parquet.read_table`` for a local path or an object (read through fsspec)."""
    source = store_for(path).parquet_source(path)
    if source is path:
        return pq.read_table(path, **options)
    with source as fh:
        return pq.read_table(fh, **options)


def open_parquet(path: Any) -> pq.ParquetFile:
    """A ``ParquetFile`` on a local path or an object (closed with it)."""
    return pq.ParquetFile(store_for(path).parquet_source(path))


def absolute(path: Any) -> Any:
    """``path`` resolved (a URL is absolute already)."""
    return path if _is_remote(path) else Path(path).resolve()


def is_inside(path: Any, folder: Any) -> bool:
    """Is ``path`` ``folder`` or inside it (a URL is never inside a local folder, nor one inside a URL)?"""
    if _is_remote(path) != _is_remote(folder):
        return False
    if _is_remote(path):
        return f"{str(path).rstrip('/')}/".startswith(f"{str(folder).rstrip('/')}/")
    return Path(path).resolve().is_relative_to(Path(folder).resolve())


def relative_path(path: Any, root: Any) -> str:
    """``path`` relative to ``root`` (``os.path.relpath`` for local paths; a URL below ``root``
    by its remaining components)."""
    if not _is_remote(path) and not _is_remote(root):
        return os.path.relpath(path, root)
    if is_inside(path, root):
        return str(path)[len(str(root).rstrip("/")) + 1 :] or "."
    return str(path)


def register_duckdb(con: Any, *paths: Any) -> None:
    """Register on ``con`` the fsspec filesystem of each remote path among ``paths``, so DuckDB
    reads ``s3://...`` through it (its httpfs extension needs a download; fsspec is here)."""
    for path in paths:
        fs = getattr(path, "fs", None)
        if fs is None or not _is_remote(path):
            continue
        protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
        if not set(protocols) & set(con.list_filesystems()):
            con.register_filesystem(fs)

"""Where a dataset lives: a plain folder, or a prefix on object storage (``s3://bucket/prefix``,
``gs://...``, any fsspec filesystem).

A plain path stays a ``pathlib.Path`` and every caller behaves as before. A URL becomes a
``upath.UPath`` (universal_pathlib over fsspec: s3fs, gcsfs), which has the same methods
(``/``, ``name``, ``exists``, ``glob``, ``read_text``, ``stat``, ``unlink``), so the layout
(``manifests.layout``) and the readers need no second spelling. What an object store lacks
is rename: this module gives the few operations that differ (write an object whole, upload a
local file, abort multipart uploads a killed writer left open), and ``manifests.atomic`` and
``manifests.writer`` switch on :func:`is_remote`.

Credentials: never in the URL (refused by :func:`check_url`); the filesystem reads them from
the environment or the SDK's usual chain (``AWS_*`` variables, ``~/.aws``, an instance role;
``AWS_ENDPOINT_URL`` for an S3-compatible server), so nothing this module records or prints
can hold a secret. Listing caches are off: shards are written by other processes (workers),
and a cached listing would hide them from the driver.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.parquet as pq

__all__ = [
    "abort_partial_uploads",
    "absolute",
    "check_url",
    "is_inside",
    "is_remote",
    "is_url",
    "local_lock_path",
    "local_mirror",
    "location",
    "open_parquet",
    "read_table",
    "register_duckdb",
    "relative_path",
    "staging_dir",
    "upload",
]

# Storage options for every remote location: no cached listings (see the module docstring).
_OPTIONS: dict[str, Any] = {"use_listings_cache": False}
_EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs"}


def is_url(text: object) -> bool:
    """``scheme://...`` with a scheme other than ``file`` (a Windows drive letter is no scheme)."""
    if not isinstance(text, str) or "://" not in text:
        return False
    scheme = text.split("://", 1)[0]
    return len(scheme) > 1 and scheme.isidentifier() and scheme != "file"


def check_url(text: str) -> str:
    """``text`` if it is a usable dataset URL, else ``ValueError`` saying what to fix.

    Refused: credentials in the URL (``user:secret@``) or a query string (signed URLs and
    keys travel there), a missing bucket, and a scheme no installed fsspec filesystem knows.
    The message never repeats the URL when it may hold a secret.
    """
    parts = urlsplit(text)
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise ValueError(
            "dataset.out must not hold credentials (user:secret@ in the URL); remove them and give them in "
            "the environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, an instance role or ~/.aws)"
        )
    if parts.query or parts.fragment:
        raise ValueError(
            "dataset.out must not have a query string or fragment (signed URLs carry secrets there); "
            "give a plain URL like s3://bucket/prefix and credentials in the environment"
        )
    if not parts.netloc:
        raise ValueError(f"dataset.out {text!r} names no bucket; write it as {parts.scheme}://bucket/prefix")
    try:
        _filesystem_class(parts.scheme)
    except ValueError as exc:
        raise ValueError(f"dataset.out {text!r}: {exc}") from None
    return text


def _filesystem_class(scheme: str) -> type:
    import fsspec  # deferred: optional ([s3] extra); only object-storage outputs need it

    try:
        return fsspec.get_filesystem_class(scheme)
    except (ValueError, ImportError) as exc:
        extra = _EXTRAS.get(scheme)
        fix = f"pip install 'mifa-factory[{extra}]'" if extra else "install the fsspec filesystem for it"
        raise ValueError(f"no filesystem for {scheme}:// is installed ({exc}); {fix}") from None


def location(path: object) -> Any:
    """A ``Path`` for a plain path, a ``UPath`` for a URL (and either unchanged)."""
    if isinstance(path, Path):
        return path
    if is_url(path):
        from upath import UPath  # deferred: optional ([s3] extra); only object-storage outputs need it

        return UPath(str(path), **_OPTIONS)
    if type(path).__module__.startswith("upath"):
        return path
    return Path(path)  # type: ignore[arg-type]


def is_remote(path: object) -> bool:
    """Is ``path`` on object storage (no rename, no flock, no fsync)?"""
    return not isinstance(path, Path) and (is_url(path) or type(path).__module__.startswith("upath"))


def staging_dir(remote: object = None) -> Path:
    """A local folder for files on their way to object storage (a shard's tar while it grows):
    one per remote folder, so ``clean_temps`` of that folder finds a killed writer's leftovers
    (``$MIFA_STAGING_DIR``, default the system temp folder)."""
    folder = Path(os.environ.get("MIFA_STAGING_DIR") or tempfile.gettempdir()) / "mifa-staging"
    if remote is not None:
        folder = folder / hashlib.sha256(str(remote).rstrip("/").encode()).hexdigest()[:16]
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def local_lock_path(url: object, name: str) -> Path:
    """A local lock file standing for ``name`` at ``url`` (object stores have no flock)."""
    digest = hashlib.sha256(str(url).encode()).hexdigest()[:16]
    folder = staging_dir() / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{digest}-{name}.lock"


def upload(local: Path, remote: Any) -> None:
    """Copy a local file to an object: s3fs sends one PUT or a multipart upload; either way
    the object appears whole when the upload completes, never torn."""
    remote.fs.put_file(os.fspath(local), remote.path)


def abort_partial_uploads(root: Any) -> int:
    """Abort multipart uploads under ``root`` that were never completed (a writer killed
    mid-upload leaves their parts billed but invisible); returns how many. S3 only: other
    stores either have no such state or clean it themselves."""
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


def read_table(path: Any, **options: Any) -> pa.Table:
    """``pyarrow.parquet.read_table`` for a local path or an object (read through fsspec)."""
    if not is_remote(path):
        return pq.read_table(path, **options)
    with path.open("rb") as fh:
        return pq.read_table(fh, **options)


def open_parquet(path: Any) -> pq.ParquetFile:
    """A ``ParquetFile`` on a local path or an object (closed with it)."""
    if not is_remote(path):
        return pq.ParquetFile(path)
    return pq.ParquetFile(path.open("rb"))


def local_mirror(root: Any) -> Path:
    """A local folder standing for ``root`` where stages keep caches (an LLM's SQLite cache
    cannot live on object storage); ``root`` itself when it is local."""
    if not is_remote(root):
        return Path(root)
    folder = staging_dir() / "runs" / hashlib.sha256(str(root).encode()).hexdigest()[:16]
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def absolute(path: Any) -> Any:
    """``path`` resolved (a URL is absolute already)."""
    return path if is_remote(path) else Path(path).resolve()


def is_inside(path: Any, folder: Any) -> bool:
    """Is ``path`` ``folder`` or inside it (a URL is never inside a local folder, nor one inside a URL)?"""
    if is_remote(path) != is_remote(folder):
        return False
    if is_remote(path):
        return f"{str(path).rstrip('/')}/".startswith(f"{str(folder).rstrip('/')}/")
    return Path(path).resolve().is_relative_to(Path(folder).resolve())


def relative_path(path: Any, root: Any) -> str:
    """``path`` relative to ``root`` (``os.path.relpath`` for local paths; a URL below ``root``
    by its remaining components)."""
    if not is_remote(path) and not is_remote(root):
        return os.path.relpath(path, root)
    if is_inside(path, root):
        return str(path)[len(str(root).rstrip("/")) + 1 :] or "."
    return str(path)


def register_duckdb(con: Any, *paths: Any) -> None:
    """Register on ``con`` the fsspec filesystem of each remote path among ``paths``, so DuckDB
    reads ``s3://...`` through it (its httpfs extension needs a download; fsspec is here)."""
    for path in paths:
        if not is_remote(path):
            continue
        fs = path.fs
        protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
        if not set(protocols) & set(con.list_filesystems()):
            con.register_filesystem(fs)

"""Dataset locations: a plain path or a URL (``s3://bucket/prefix``, ``gs://...``, any fsspec
filesystem), checked before anything is written and turned into the path object the rest of
``manifests`` uses (a ``pathlib.Path`` or a ``upath.UPath``).

Credentials never travel in a URL (:func:`check_url` refuses them without repeating them); the
filesystem reads them from the environment or the SDK's usual chain. Listing caches are off:
shards are written by other processes (workers), and a cached listing would hide them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = ["check_url", "is_remote", "is_url", "location", "probe_location"]

# Storage options for every remote location: no cached listings (see the module docstring).
_OPTIONS: dict[str, Any] = {"use_listings_cache": False}
_EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs"}
# A reachability probe asks once: botocore's default five attempts with back-off take ~9 s to
# say that nothing listens at the endpoint; the builds' own filesystems keep their retries.
_PROBE_OPTIONS: dict[str, dict[str, Any]] = {
    "s3": {"config_kwargs": {"retries": {"max_attempts": 1, "mode": "standard"}, "connect_timeout": 5}},
}


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


def probe_location(url: str) -> Any:
    """``location(url)`` on a filesystem of its own that tries each request once (see
    :data:`_PROBE_OPTIONS`): for asking whether the endpoint answers at all."""
    from upath import UPath  # deferred: optional ([s3] extra); only object-storage outputs need it

    scheme = _EXTRAS.get(url.split("://", 1)[0], "")
    return UPath(url, **_OPTIONS, **_PROBE_OPTIONS.get(scheme, {}), skip_instance_cache=True)


def is_remote(path: object) -> bool:
    """Is ``path`` on object storage? Only ``manifests.store`` asks: everything else takes the
    answer of its ``store_for``."""
    return not isinstance(path, Path) and (is_url(path) or type(path).__module__.startswith("upath"))

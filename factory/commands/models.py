"""`factory models pull`: download a catalogued model with checksums, or say how to get it by hand.

Where no public hash is known (``sha256=None``), the first download records the hash it got
in ``<dest>/.sha256.json`` and every later pull into that directory must match it
(trust-on-first-use), so a changed upstream file is noticed rather than silently used.

``pull`` downloads with :mod:`urllib` to a temporary file beside the target, checks the
hash, then renames, so an interrupted pull never leaves a file that looks complete. Without
network it raises :class:`PullError` saying what to fetch by hand, from where, and where
to put it. Google-Drive-hosted files (OpenGraphAU) often need a browser; the error says so.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from stages.catalogue import DEFAULT_MODELS_DIR, ModelEntry, catalogue, entry, local_path

__all__ = ["PullError", "catalogue", "entry", "local_path", "pull", "sha256_file"]

_HASH_RECORD = ".sha256.json"
_CHUNK = 1 << 20


class PullError(RuntimeError):
    """A model could not be fetched or verified; the message says what to do instead."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _recorded(dest: Path) -> dict[str, str]:
    try:
        return json.loads((dest / _HASH_RECORD).read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise PullError(f"hash record {dest / _HASH_RECORD} is unreadable ({exc}); delete it to re-record") from exc


def _record(dest: Path, filename: str, digest: str) -> None:
    record = _recorded(dest)
    record[filename] = digest
    tmp = dest / f"{_HASH_RECORD}.tmp"
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True))
    tmp.replace(dest / _HASH_RECORD)


def _manual_help(item: ModelEntry, target: Path, reason: str) -> str:
    what = f"{item.url}" + (f" (then extract {item.archive_member} from it)" if item.archive_member else "")
    lines = [
        f"cannot download model {item.name!r}: {reason}.",
        f"Fetch it by hand: {what}",
        f"  page: {item.page}",
        f"  and put the file at: {target}",
        f"  licence: {item.licence}",
    ]
    if "drive." in item.url:
        lines.append("  (Google Drive may ask for a confirmation click; a browser download works.)")
    return "\n".join(lines)


def _download(url: str, out: Path, timeout: float) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": "mifa-factory/0.1"})
    with urllib.request.urlopen(request, timeout=timeout) as response, open(out, "wb") as f:
        content_type = response.headers.get("Content-Type", "")
        # Google Drive answers large files with an HTML "virus scan" page instead of the file.
        if content_type.startswith("text/html"):
            raise PullError(f"{url} returned an HTML page, not the file (confirmation page?)")
        shutil.copyfileobj(response, f, _CHUNK)


def _verify(item: ModelEntry, path: Path, expected: str | None, dest: Path, label: str) -> str:
    digest = sha256_file(path)
    pinned = expected or _recorded(dest).get(label)
    if pinned is not None and digest != pinned:
        source = "catalogue" if expected else f"first download recorded in {dest / _HASH_RECORD}"
        raise PullError(
            f"checksum mismatch for {item.name!r} ({label}): got sha256 {digest}, expected {pinned} "
            f"({source}); the file was not installed"
        )
    return digest


def pull(name: str, dest: Path | None = None, *, timeout: float = 60.0, url: str | None = None) -> Path:
    """Download model ``name`` into ``dest`` (verified); returns the path a stage should read.

    Returns at once if the file is already there and matches its known hash. ``url``
    overrides the catalogue's source (a mirror). Raises :class:`PullError` with manual
    instructions when the source is unreachable, and on any checksum mismatch.
    """
    item = entry(name)
    dest = Path(dest or DEFAULT_MODELS_DIR)
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / item.filename
    final_hash = item.member_sha256 if item.archive_member else item.sha256
    if target.exists():
        _verify(item, target, final_hash, dest, item.filename)
        return target

    source = url or item.url
    fd, tmp_name = tempfile.mkstemp(prefix=f".{item.filename}.", suffix=".part", dir=dest)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        try:
            _download(source, tmp, timeout)
        except PullError as exc:
            raise PullError(_manual_help(item, target, str(exc))) from exc
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            raise PullError(_manual_help(item, target, f"{source} unreachable ({reason})")) from exc
        download_label = Path(source.split("?")[0]).name if item.archive_member else item.filename
        digest = _verify(item, tmp, item.sha256, dest, download_label)
        if item.archive_member:
            member_tmp = tmp.with_suffix(".member")
            try:
                with (
                    zipfile.ZipFile(tmp) as archive,
                    archive.open(_member(archive, item)) as src,
                    open(member_tmp, "wb") as out,
                ):
                    shutil.copyfileobj(src, out, _CHUNK)
            except zipfile.BadZipFile as exc:
                raise PullError(f"{source} is not a zip archive ({exc})") from exc
            member_digest = _verify(item, member_tmp, item.member_sha256, dest, item.filename)
            member_tmp.replace(target)
            if item.sha256 is None:
                _record(dest, download_label, digest)
            if item.member_sha256 is None:
                _record(dest, item.filename, member_digest)
        else:
            tmp.replace(target)
            if item.sha256 is None:
                _record(dest, item.filename, digest)
    finally:
        tmp.unlink(missing_ok=True)
        tmp.with_suffix(".member").unlink(missing_ok=True)
    return target


def _member(archive: zipfile.ZipFile, item: ModelEntry) -> str:
    """The archive path of ``item.archive_member`` (buffalo_l.zip may or may not nest a folder)."""
    wanted = item.archive_member or ""
    for info in archive.infolist():
        if info.filename == wanted or info.filename.endswith("/" + wanted):
            return info.filename
    raise PullError(f"archive for {item.name!r} has no member {wanted!r}")

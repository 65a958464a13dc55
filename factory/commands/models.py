"""`factory models pull|list`: download a catalogued model with checksums, or say how to get it by hand.

Hub entries (a Hugging Face repository folder) are fetched with
``huggingface_hub.snapshot_download`` into ``<dest>/<name>/``, only the files matching the
entry's patterns, at the entry's revision resolved to a commit first; the commit is written to
``<dest>/<name>/.mifa-pull.json`` beside the files. Offline (``HF_HUB_OFFLINE=1`` or no route),
a snapshot already in the local Hugging Face cache is copied instead (its commit recorded the
same way); without one the error says what to fetch by hand and where to put it. A folder
whose required files are all there is left alone, without touching the network.

Where no public hash is known (``sha256=None``), the first download records the hash it got
in ``<dest>/.sha256.json`` and every later pull into that directory must match it
(trust-on-first-use), so a changed upstream file is noticed rather than silently used.

``pull`` downloads with :mod:`urllib` to a temporary file beside the target, checks the
hash, then renames, so an interrupted pull never leaves a file that looks complete. Without
network it raises :class:`PullError` saying what to fetch by hand, from where, and where
to put it. Google-Drive-hosted files (OpenGraphAU) often need a browser; the error says so.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from manifests.errors import ReportError, UserError
from manifests.files import file_sha256
from stages.catalogue import ModelEntry, catalogue, entry, local_path, models_dir, search_dirs

__all__ = [
    "PULL_RECORD",
    "LocalState",
    "PullError",
    "UnknownModelError",
    "catalogue",
    "entry",
    "local_path",
    "local_state",
    "pull",
]

_HASH_RECORD = ".sha256.json"
PULL_RECORD = ".mifa-pull.json"
_CHUNK = 1 << 20


class PullError(ReportError, RuntimeError):
    """A model could not be fetched or verified; the message says what to do instead."""


class UnknownModelError(UserError, KeyError):
    """A model name the catalogue does not know; the message lists the known ones."""


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
    digest = file_sha256(path)
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

    Returns at once if the file is already there and matches its known hash (a hub folder: if
    its required files are there). ``url`` overrides the catalogue's source (a mirror; for a
    hub entry, a revision). Raises :class:`PullError` with manual instructions when the source
    is unreachable, and on any checksum mismatch.
    """
    try:
        item = entry(name)
    except KeyError as exc:  # its message lists the known names
        raise UnknownModelError(exc.args[0], fix="see `factory models list`") from None
    dest = Path(dest or models_dir())
    dest.mkdir(parents=True, exist_ok=True)
    if item.is_hub:
        return _pull_hub(item, dest / item.filename, url)
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


# ---------------------------------------------------------------- hub folders


def _missing(item: ModelEntry, folder: Path) -> list[str]:
    return [rel for rel in item.required if not (folder / rel).is_file()]


def _hub_help(item: ModelEntry, target: Path, revision: str, reason: str) -> str:
    patterns = " ".join(f"--include '{p}'" for p in item.allow_patterns)
    return "\n".join(
        [
            f"cannot download model {item.name!r}: {reason}.",
            f"Fetch it by hand from {item.page} (revision {revision}), the files: {', '.join(item.allow_patterns)}",
            f"  e.g. on a machine with network: hf download {item.hub_repo} --revision {revision} {patterns} "
            f"--local-dir {target}",
            f"  and put the files in: {target}/ (then run `factory models pull {item.name}` again to check them)",
            f"  licence: {item.licence}",
        ]
    )


def _record_pull(item: ModelEntry, target: Path, commit: str, revision: str, source: str) -> None:
    record = {
        "name": item.name,
        "repo": item.hub_repo,
        "revision": commit,
        "requested_revision": revision,
        "source": source,
        "files": sorted(
            str(p.relative_to(target)) for p in target.rglob("*") if p.is_file() and ".cache" not in p.parts
        ),
    }
    tmp = target / f"{PULL_RECORD}.tmp"
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True))
    tmp.replace(target / PULL_RECORD)


def _from_cache(item: ModelEntry, target: Path, revision: str) -> str | None:
    """Copy a snapshot already in the local Hugging Face cache; its commit, or None."""
    from huggingface_hub import snapshot_download  # deferred: comes with the optional gen extra (diffusers)

    try:
        snapshot = Path(
            snapshot_download(
                item.hub_repo or "", revision=revision, allow_patterns=list(item.allow_patterns), local_files_only=True
            )
        )
    except Exception:  # the hub client raises its own not-in-cache errors; none means: not cached
        return None
    for path in snapshot.rglob("*"):
        if path.is_file():
            out = target / path.relative_to(snapshot)
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, out)  # follows the cache's symlinks into its blobs
    return snapshot.name  # snapshots/<commit>


def _download_hub(item: ModelEntry, target: Path, revision: str) -> str:
    """Resolve ``revision`` to a commit, then fetch that commit's matching files into ``target``."""
    from huggingface_hub import HfApi, snapshot_download  # deferred: comes with the optional gen extra (diffusers)

    commit = HfApi().model_info(item.hub_repo or "", revision=revision).sha or revision
    snapshot_download(
        item.hub_repo or "", revision=commit, allow_patterns=list(item.allow_patterns), local_dir=str(target)
    )
    return commit


def _pull_hub(item: ModelEntry, target: Path, revision: str | None) -> Path:
    revision = revision or item.revision
    if target.is_dir() and not _missing(item, target):
        return target  # already present: no network needed
    target.mkdir(parents=True, exist_ok=True)
    source = "hub"
    try:
        commit = _download_hub(item, target, revision)
    except ImportError as exc:
        raise PullError(_hub_help(item, target, revision, f"huggingface_hub is not installed ({exc})")) from exc
    except Exception as exc:  # the hub client raises its own, httpx's and OS errors: all mean "not fetched"
        cached = _from_cache(item, target, revision)
        if cached is None:
            raise PullError(
                _hub_help(item, target, revision, f"the Hub is unreachable ({type(exc).__name__})")
            ) from exc
        commit, source = cached, "local Hugging Face cache"
    missing = _missing(item, target)
    if missing:
        raise PullError(_hub_help(item, target, revision, f"the download lacks {', '.join(missing)}"))
    _record_pull(item, target, commit, revision, source)
    return target


# ---------------------------------------------------------------- local state


@dataclass(frozen=True)
class LocalState:
    state: Literal["present", "missing", "partial"]
    path: Path
    revision: str | None = None  # the pulled commit of a hub folder, when recorded


def _pull_record(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / PULL_RECORD).read_text())
    except (OSError, ValueError):
        return {}


def local_state(item: ModelEntry) -> LocalState:
    """Whether ``item`` is on this machine (no network): present, partial or missing."""
    for folder in search_dirs():
        path = folder / item.filename
        if item.is_hub and path.is_dir():
            missing = _missing(item, path)
            return LocalState("partial" if missing else "present", path, _pull_record(path).get("revision"))
        if not item.is_hub and path.is_file():
            return LocalState("present", path)
    path = local_path(item.name)
    leftovers = list(path.parent.glob(f".{item.filename}.*.part")) if path.parent.is_dir() else []
    return LocalState("partial" if leftovers else "missing", path)

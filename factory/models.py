"""Catalogue of the pretrained weights the verification stages can use, and ``pull``.

Each :class:`ModelEntry` says where the official file comes from, under what licence, what
the stage expects it to be called, and its SHA-256 when a public source pins one. Where no
public hash is known (``sha256=None``), the first download records the hash it got in
``<dest>/.sha256.json`` and every later pull into that directory must match it
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
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DEFAULT_MODELS_DIR",
    "LOCAL_MODELS_DIR",
    "ModelEntry",
    "PullError",
    "catalogue",
    "entry",
    "local_path",
    "pull",
    "search_dirs",
    "sha256_file",
]

# Where pulled weights live unless the caller says otherwise.
DEFAULT_MODELS_DIR = Path(os.environ.get("MIFA_MODELS_DIR", "~/.cache/mifa-factory/models")).expanduser()
# Where stages look for a model when the recipe names no file, in order.
LOCAL_MODELS_DIR = Path("models")
_HASH_RECORD = ".sha256.json"
_CHUNK = 1 << 20


class PullError(RuntimeError):
    """A model could not be fetched or verified; the message says what to do instead."""


@dataclass(frozen=True)
class ModelEntry:
    name: str  # catalogue key, used as `factory models pull NAME`
    description: str
    filename: str  # the file the stage reads (inside the archive when `archive_member` is set)
    url: str  # direct download of `filename`, or of the archive holding it
    page: str  # human page to fetch it from by hand
    licence: str
    sha256: str | None = None  # of the downloaded file (the archive when there is one)
    archive_member: str | None = None  # path inside a zip download
    member_sha256: str | None = None  # of the extracted member
    used_by: str = ""  # stage name and config that reads it


# The usercontent endpoint with confirm=t skips Drive's "cannot scan for viruses" page.
_GDRIVE = "https://drive.usercontent.google.com/download?id={}&export=download&confirm=t"
_GDRIVE_PAGE = "https://drive.google.com/file/d/{}/view"
_OGAU_PAGE = "https://github.com/lingjivoo/OpenGraphAU#pretrained-models"
_OGAU_LICENCE = "MIT (code and released weights, lingjivoo/OpenGraphAU); trained on BP4D/DISFA/RAF-AU/..."
_BUFFALO_URL = "https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip"
# buffalo_l.zip and its members: SHA-256 as pinned by several independent public projects.
_BUFFALO_SHA = "80ffe37d8a5940d59a7384c201a2a38d4741f2f3c51eef46ebb28218a7b0ca2f"
_INSIGHTFACE_LICENCE = "insightface pretrained models: non-commercial research use only (code MIT)"
_OPENSENSE = "https://github.com/ihp-lab/OpenSense/raw/{}/Utilities/LibreFace/{}"
_LIBREFACE_LICENCE = "USC Research License (non-commercial), ihp-lab/LibreFace"


def _ogau(name: str, arch: str, gdrive_id: str, filename: str, stage: int) -> ModelEntry:
    return ModelEntry(
        name=name,
        description=f"OpenGraphAU stage-{stage} {arch} (41 AUs, hybrid 2M-image training set)",
        filename=filename,
        url=_GDRIVE.format(gdrive_id),
        page=f"{_GDRIVE_PAGE.format(gdrive_id)} (listed at {_OGAU_PAGE})",
        licence=_OGAU_LICENCE,
        used_by=f"opengraphau (backbone={arch!r}, stage={stage})",
    )


_CATALOGUE: tuple[ModelEntry, ...] = (
    _ogau("opengraphau-resnet18", "resnet18", "1b9yrKF663K9IwY2C2-1SD6azpAdNgBm7",
          "OpenGprahAU-ResNet18_first_stage.pth", 1),
    _ogau("opengraphau-resnet50", "resnet50", "11xh9r2e4qCpWEtQ-ptJGWut_TQ0_AmSp",
          "OpenGprahAU-ResNet50_first_stage.pth", 1),
    _ogau("opengraphau-swin-tiny", "swin_tiny", "1JSa-ft965qXJlVGvnoMepbkRkSm78_to",
          "OpenGprahAU-SwinT_first_stage.pth", 1),
    _ogau("opengraphau-swin-small", "swin_small", "1GNjFKpd00nvgYIP2q7AzRSzfzEUfAqfT",
          "OpenGprahAU-SwinS_first_stage.pth", 1),
    _ogau("opengraphau-swin-base", "swin_base", "1nWwowmq4pQn1ACnSOOeyBy6-n0rmqTQ9",
          "OpenGprahAU-SwinB_first_stage.pth", 1),
    _ogau("opengraphau-resnet18-stage2", "resnet18", "1CzWgr2ywt7TmxHLWM5tg1VaEbgGYyAZ4",
          "OpenGprahAU-ResNet18_second_stage.pth", 2),
    _ogau("opengraphau-resnet50-stage2", "resnet50", "1UMnpbj_YKlqHF1m0DHV0KYD3qmcOmeXp",
          "OpenGprahAU-ResNet50_second_stage.pth", 2),
    _ogau("opengraphau-swin-tiny-stage2", "swin_tiny", "1yRWnYY5BR_FDiquaKnzf_aCdkyjZM77E",
          "OpenGprahAU-SwinT_second_stage.pth", 2),
    ModelEntry(
        name="scrfd-10g",
        description="SCRFD-10GF face detector with 5 keypoints (insightface buffalo_l det_10g.onnx)",
        filename="det_10g.onnx",
        url=_BUFFALO_URL,
        page="https://github.com/deepinsight/insightface/releases/tag/v0.7",
        licence=_INSIGHTFACE_LICENCE,
        sha256=_BUFFALO_SHA,
        archive_member="det_10g.onnx",
        member_sha256="5838f7fe053675b1c7a08b633df49e7af5495cee0493c7dcf6697200b85b5b91",
        used_by="scrfd (model=...)",
    ),
    ModelEntry(
        name="arcface-r50",
        description="ArcFace ResNet-50 (WebFace600K) identity embedding (buffalo_l w600k_r50.onnx)",
        filename="w600k_r50.onnx",
        url=_BUFFALO_URL,
        page="https://github.com/deepinsight/insightface/releases/tag/v0.7",
        licence=_INSIGHTFACE_LICENCE,
        sha256=_BUFFALO_SHA,
        archive_member="w600k_r50.onnx",
        member_sha256="4c06341c33c2ca1f86781dab0e829f88ad5b64be9fba56e56bc9ebdefc619e43",
        used_by="identity filter (ArcFace similarity)",
    ),
    ModelEntry(
        name="libreface-au-encoder",
        description="LibreFace ResNet-18 AU encoder, 224x224 aligned RGB -> 512 features",
        filename="LibreFace_AU_Encoder.onnx",
        url=_OPENSENSE.format("33dcaf80d0c07ca2751f489b40d4399b78972e75", "LibreFace_AU_Encoder.onnx"),
        page="https://github.com/ihp-lab/OpenSense/tree/master/Utilities/LibreFace",
        licence=_LIBREFACE_LICENCE,
        used_by="onnx-au (spec YAML `path`)",
    ),
    ModelEntry(
        name="libreface-au-intensity",
        description="LibreFace AU intensity head, 512 features -> 12 DISFA AU intensities (0-5)",
        filename="LibreFace_AU_Intensity.onnx",
        url=_OPENSENSE.format("f42e95d77ccfb1e0dea98e85a4e4494ce20684a1", "LibreFace_AU_Intensity.onnx"),
        page="https://github.com/ihp-lab/OpenSense/tree/master/Utilities/LibreFace",
        licence=_LIBREFACE_LICENCE,
        used_by="onnx-au (spec YAML `head.path`)",
    ),
)  # fmt: skip


def catalogue() -> list[ModelEntry]:
    """Every known model, in a stable order."""
    return list(_CATALOGUE)


def entry(name: str) -> ModelEntry:
    for item in _CATALOGUE:
        if item.name == name:
            return item
    raise KeyError(f"unknown model {name!r}; known: {', '.join(e.name for e in _CATALOGUE)}")


def search_dirs() -> list[Path]:
    """Folders searched for pulled weights: ``$MIFA_MODELS_DIR`` or the user cache, then ./models."""
    return [DEFAULT_MODELS_DIR, LOCAL_MODELS_DIR.resolve()]


def local_path(name: str, dest: Path | None = None) -> Path:
    """The file a stage should read for ``name``.

    With ``dest``: where ``pull(name, dest)`` puts it. Without: the first of
    :func:`search_dirs` that holds it, else where a default ``pull`` would put it.
    """
    filename = entry(name).filename
    if dest is not None:
        return Path(dest) / filename
    for folder in search_dirs():
        if (folder / filename).is_file():
            return folder / filename
    return DEFAULT_MODELS_DIR / filename


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

"""The per-identity MagicFace inputs (face crop, bg image, landmarks), kept beside the bank index.

A bank folder gets ``.magicface-cache/<key>.npz``, where the key is the SHA-256 of the
identity's decoded exemplar pixels (so an edited photo is a new entry), the bg method and
the crop size: a later build, or another worker, reads the crop and bg instead of running
dlib and BiSeNet again. Files are written to a temporary name and renamed, so a reader sees
a whole entry or none. A bank folder that cannot be written to (read-only mounts) just goes
uncached; the builtin bank has no folder and is never cached on disk.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from stages.generators.magicface.source import SourceFace

__all__ = ["CACHE_DIR", "SourceCache", "source_key"]

CACHE_DIR = ".magicface-cache"


def source_key(image: np.ndarray, method: str, size: int) -> str:
    """Identity image hash + bg method + crop size."""
    pixels = np.ascontiguousarray(image, dtype=np.uint8)
    digest = hashlib.sha256(f"{pixels.shape}".encode() + pixels.tobytes()).hexdigest()[:24]
    return f"{digest}-{method}-{size}"


class SourceCache:
    """Read and write :class:`SourceFace` entries under ``bank_root/.magicface-cache``."""

    def __init__(self, bank_root: Path | None) -> None:
        self.folder = None if bank_root is None else Path(bank_root) / CACHE_DIR

    def path(self, key: str) -> Path | None:
        return None if self.folder is None else self.folder / f"{key}.npz"

    def get(self, key: str) -> SourceFace | None:
        path = self.path(key)
        if path is None or not path.is_file():
            return None
        try:
            with np.load(path) as data:
                return SourceFace(crop=data["crop"], bg=data["bg"], landmarks=data["landmarks"])
        except (OSError, KeyError, ValueError, zipfile.BadZipFile):
            return None  # a damaged entry is recomputed and rewritten

    def put(self, key: str, face: SourceFace) -> None:
        path = self.path(key)
        if path is None:
            return
        try:
            path.parent.mkdir(exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        except OSError:
            return  # a read-only bank still builds, uncached
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, crop=face.crop, bg=face.bg, landmarks=face.landmarks)
            os.replace(tmp, path)
        except OSError:
            Path(tmp).unlink(missing_ok=True)

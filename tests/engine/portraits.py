"""A test-only stand-in for a text-to-image generator in an identity-bank build: instead of
drawing a portrait for the plan, it returns a real photograph, so the portrait filters, the
deduplication and the export run on real faces. Loaded as the plugin
``tests.engine.portraits:PortraitStandIn``; never registered, never shipped.

Sample ``i`` of the build (``shard * shard_size + index``) gets ``SEQUENCE[i % len(SEQUENCE)]``:
each photo is there to be kept or dropped for one reason (see ``EXPECTED``).
"""

from __future__ import annotations

from functools import cache

import numpy as np
from PIL import Image, ImageFilter

from stages.base import Record, StageConfig
from stages.generators.base import GeneratorStage, planned_labels
from tests.stages.faces.test_dlib import grace_hopper, pyfeat_frame, pyfeat_image

__all__ = ["EXPECTED", "SEQUENCE", "PortraitStandIn"]


def _blurred(image: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(3)))


PHOTOS = {
    "hopper": grace_hopper,
    "open_smile": lambda: pyfeat_image("0-f15-hao-ph.jpg"),
    "group": lambda: pyfeat_image("multi_face.jpg"),
    "hopper_mirrored": lambda: grace_hopper()[:, ::-1].copy(),
    "hopper_blurred": lambda: _blurred(grace_hopper()),
    "jin": lambda: pyfeat_frame("single_face.mp4", 0),
    "hopper_tilted": lambda: np.asarray(Image.fromarray(grace_hopper()).rotate(25, expand=True, fillcolor=(128,) * 3)),
    "mountain": lambda: pyfeat_image("free-mountain-vector-01.jpg"),
    "jin_smiling": lambda: pyfeat_image("single_face.jpg"),
    "hopper_again": grace_hopper,
}
SEQUENCE = tuple(PHOTOS)
# What the bank build must make of each photo: (stage that drops it, words of its reason),
# ("dedup", partner) for a near-duplicate, or None when it is kept as a new identity.
EXPECTED: dict[str, tuple[str, str] | None] = {
    "hopper": None,
    "open_smile": ("portrait-filters", "not neutral"),
    "group": ("dlib", "faces"),
    "hopper_mirrored": ("dedup", "hopper"),
    "hopper_blurred": ("portrait-filters", "blurred"),
    "jin": None,
    "hopper_tilted": ("portrait-filters", "not frontal: roll"),
    "mountain": ("dlib", "no face"),
    "jin_smiling": ("portrait-filters", "not neutral"),
    "hopper_again": ("dedup", "hopper"),
}


@cache
def photo(name: str) -> np.ndarray:
    return np.ascontiguousarray(PHOTOS[name]())


class PortraitStandInConfig(StageConfig):
    shard_size: int = 10


class PortraitStandIn(GeneratorStage[PortraitStandInConfig]):
    name = "portrait-standin"

    def run_record(self, record: Record) -> str | None:
        position = int(record["shard"]) * self.config.shard_size + int(record["index"])
        planned = [int(v) for v in record["planned_intensity"]]
        self.write_sample(record, photo(SEQUENCE[position % len(SEQUENCE)]), "planned", *planned_labels(planned))
        return None

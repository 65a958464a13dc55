"""A test-only MagicFace generator for the chain test: the real stage (tiny random-weight UNets
in the release layout, loaded and run as in a build) whose output image is laid faintly over
the identity's own face crop. Random weights draw noise, where no face detector finds a face;
with the crop underneath, the face stage, the AU detector and the identity check downstream
run on a face, so the chain's records (identity, similarity, labels) are all exercised.
Loaded as the plugin ``tests.engine.magicface_chain:MagicFaceOverSource``; never registered.
With ``bg_log`` set (a file; the resume test), it appends one line per identity whose crop and
bg it computes, so a test can tell a computed identity from one read back from the cache.

``TwoPortraits`` is the bank step's generator: the two photographs ``tests.engine.portraits``
keeps as distinct identities (Grace Hopper, Jin), one per planned sample, so the bank build
runs its face stage, portrait filters and deduplication on two real faces only.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from stages.base import Record, StageConfig
from stages.generators.base import GeneratorStage, planned_labels
from stages.generators.magicface.cache import source_key
from stages.generators.magicface.stage import MagicFaceConfig, MagicFaceGenerator
from tests.engine.portraits import photo

__all__ = ["NOISE_WEIGHT", "MagicFaceOverSource", "MagicFaceOverSourceConfig", "TwoPortraits"]

NOISE_WEIGHT = 0.2  # share of MagicFace's own (noise) image in the written one


class MagicFaceOverSourceConfig(MagicFaceConfig):
    bg_log: str | None = None  # a file: one line per bg image computed (a cache miss)


class MagicFaceOverSource(MagicFaceGenerator):
    config_model = MagicFaceOverSourceConfig

    def _make_bg(self, crop: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        # Called only when the identity's crop and bg are not in the cache beside the bank.
        log = getattr(self.config, "bg_log", None)
        if log:
            with open(log, "a") as f:
                f.write(f"{os.getpid()}\n")
        return super()._make_bg(crop, landmarks)

    def write_sample(
        self,
        record: Record,
        image: np.ndarray,
        label_source: str,
        occurrence: Sequence[float],
        intensity: Sequence[float],
    ) -> None:
        # The crop the stage itself prepared, read back from its cache beside the bank.
        exemplar = self.context.identity_bank.image(str(record["identity_id"]))
        source = self.source_cache.get(source_key(exemplar, self.bg, self.context.image_size))
        assert source is not None, "the stage caches every identity's crop and bg beside the bank"
        blended = (1.0 - NOISE_WEIGHT) * source.crop.astype(np.float32) + NOISE_WEIGHT * image.astype(np.float32)
        super().write_sample(record, blended.round().astype(np.uint8), label_source, occurrence, intensity)


class TwoPortraits(GeneratorStage[StageConfig]):
    name = "two-portraits"

    def run_record(self, record: Record) -> str | None:
        name = ("hopper", "jin")[int(record["index"]) % 2]
        planned = [int(v) for v in record["planned_intensity"]]
        self.write_sample(record, photo(name), "planned", *planned_labels(planned))
        return None

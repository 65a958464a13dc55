"""Random planned AU vectors and records shared by the prompt tests."""

from __future__ import annotations

import numpy as np

from manifests.vocab import AGE_BANDS, AU_INDEX, EMOTIONS, ETHNICITIES, GENDERS

EMOTION_KEYS = (*EMOTIONS, "neutral", "mixed")


def random_vectors(n: int, seed: int = 0, min_active: int = 1) -> list[list[int]]:
    """``n`` vectors: random AU sets (density varies per vector), intensities 1-5,
    AU26 implies AU25 (a dropped jaw parts the lips)."""
    rng = np.random.default_rng(seed)
    out: list[list[int]] = []
    while len(out) < n:
        active = rng.random(12) < rng.uniform(0.1, 0.6)
        v = np.where(active, rng.integers(1, 6, 12), 0)
        if v[AU_INDEX[26]] > 0 and v[AU_INDEX[25]] == 0:
            v[AU_INDEX[25]] = rng.integers(1, 6)
        if int((v > 0).sum()) >= min_active:
            out.append([int(x) for x in v])
    return out


def make_records(n: int, seed: int = 0) -> list[dict]:
    return [
        {
            "key": f"000000_{i:05d}",
            "shard": 0,
            "index": i,
            "seed": 1000 + i,
            "emotion": EMOTION_KEYS[i % len(EMOTION_KEYS)],
            "planned_intensity": v,
            "ethnicity": ETHNICITIES[i % len(ETHNICITIES)],
            "age_band": AGE_BANDS[i % len(AGE_BANDS)],
            "gender": GENDERS[i % len(GENDERS)],
        }
        for i, v in enumerate(random_vectors(n, seed))
    ]

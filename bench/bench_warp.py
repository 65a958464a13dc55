"""Throughput of the ``warp`` generator (images/s, one CPU process) at 256 and 512 px.

Renders seeded random AU vectors on both builtin identities, after a warm-up that loads
dlib and fills the per-identity cache (so it measures steady-state cost per image: the
piecewise-affine remap, mouth interior, shading and lighting; the first-sight cost per
identity, face detection and triangulation, is printed separately).

Run: ``.venv/bin/python -m bench.bench_warp [--images N]`` (prints markdown).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from manifests.bank import open_bank
from manifests.vocab import DISFA_AUS
from stages.base import StageContext
from stages.pipeline import Pipeline, StageSpec

__all__ = ["main"]

SIZES = (256, 512)
IDENTITIES = ("builtin-astronaut", "builtin-grace-hopper")


def _records(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        active = rng.random(len(DISFA_AUS)) < 0.3
        levels = np.where(active, rng.integers(1, 6, len(DISFA_AUS)), 0)
        out.append({"identity_id": IDENTITIES[i % 2], "planned_intensity": levels.tolist(), "seed": i})
    return out


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=40, help="images per size")
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args(argv or [])

    bank = open_bank("builtin")
    lines = [
        "### Warp generator (one CPU process, builtin identities)",
        "",
        "| size | images | seconds | images/s | first sight of 2 identities (s) |",
        "|---:|---:|---:|---:|---:|",
    ]
    for size in SIZES:
        context = StageContext(run_dir=Path("."), identity_bank=bank, image_size=size)
        gen = Pipeline.build([StageSpec("generator", "warp")], context)
        t0 = time.perf_counter()
        gen.run(_records(2, seed=99))  # detection + triangulation per identity
        first = time.perf_counter() - t0
        records = _records(args.images)
        t0 = time.perf_counter()
        for i in range(0, len(records), args.batch):
            gen.run(records[i : i + args.batch])
        seconds = time.perf_counter() - t0
        lines.append(f"| {size} | {len(records)} | {seconds:.2f} | {len(records) / seconds:.1f} | {first:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(main(sys.argv[1:]))

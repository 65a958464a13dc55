"""Throughput of the ``diffusers``, ``maugen``, ``fineface`` and ``magicface`` generators on tiny random-weight models.

Builds the tiny models of ``bench/tiny_models.py`` (64 px, 2 denoising steps,
classifier-free guidance on) in a temporary folder, loads them through the stages' real
loading path, and for batch sizes 1, 8 and 32 reports images/s and the share of wall time
spent inside the UNet (the rest is text encoding, VAE encode/decode, identity encoding,
conversion). One warm-up call per generator precedes the timed calls. Runs on CPU, and
again on CUDA when a GPU is visible.

MagicFace runs twice: with its identity cache (an identity's face crop, bg, latents and
attention keys/values computed once and kept) and with ``identity_cache = 0`` (all of that,
dlib's face detection included, recomputed for every sample).

The absolute numbers say nothing about real SD-size models; what transfers is how the
UNet share and per-image cost move with batch size.

Run: ``.venv/bin/python -m bench.bench_generators [--repeats N] [--threads N] [--only NAME]`` (prints markdown).
``--threads 1`` gives steadier numbers on a shared CPU.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from manifests.bank import open_bank
from stages.base import StageContext
from stages.pipeline import Pipeline, StageSpec

__all__ = ["main"]

BATCH_SIZES = (1, 8, 32)
SIZE = 64
STEPS = 2
IDENTITIES = ("builtin-astronaut", "builtin-grace-hopper")


def _records(n: int, seed0: int) -> list[dict[str, Any]]:
    return [
        {
            "description": f"a photo of a face smiling, lips part {i}",
            "seed": seed0 + i,
            "identity_id": IDENTITIES[i % 2],
            "planned_intensity": [0] * 6 + [2] + [0] * 3 + [3, 0],
        }
        for i in range(n)
    ]


def _pipeline(kind: str, folder: Path, device: str, batch: int, bank: Any, extra: dict[str, Any]) -> Pipeline:
    """The generator alone, built as a shard worker builds it."""
    context = StageContext(run_dir=folder, device=device, image_size=SIZE, identity_bank=bank)
    if kind == "fineface":
        where = {"base_dir": str(folder / "stable-diffusion-2-1-base"), "weights_dir": str(folder / "fineface")}
    elif kind == "magicface":
        where = {"sd_dir": str(folder / "stable-diffusion-v1-5"), "weights_dir": str(folder / "magicface")}
    else:
        where = {{"diffusers": "pipeline", "maugen": "checkpoint_dir"}[kind]: str(folder)}
    options = {**where, "steps": STEPS, "batch_size": batch, **extra}
    return Pipeline.build([StageSpec("generator", kind, options)], context)


def _measure(pipeline: Pipeline, batch: int, repeats: int) -> tuple[float, float]:
    """(images/s, UNet share of wall time) over ``repeats`` calls of ``batch`` samples."""
    images, total, model = 0, 0.0, 0.0
    generator: Any = pipeline.stages[0]
    for r in range(repeats):
        t0 = time.perf_counter()
        pipeline.run(_records(batch, seed0=1000 * (r + 1)))
        total += time.perf_counter() - t0
        model += generator.last_timing["model_s"]
        images += batch
    return images / total, model / total


def main(argv: list[str] | None = None) -> str:
    import torch  # deferred: optional and heavy; the other benchmarks do not need it

    # deferred: imports diffusers and transformers, as torch above
    from bench.tiny_models import build_tiny_fineface, build_tiny_magicface, build_tiny_maugen, build_tiny_sd

    builders = {
        "diffusers": build_tiny_sd,
        "maugen": build_tiny_maugen,
        "fineface": build_tiny_fineface,
        "magicface": build_tiny_magicface,
    }
    variants: dict[str, list[tuple[str, dict[str, Any]]]] = {
        "magicface": [("magicface, identities cached", {}), ("magicface, recomputed per sample", {"identity_cache": 0})]
    }

    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1, help="timed calls per batch size")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--only", choices=sorted(builders), action="append", help="generators to run (default: all)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    bank = open_bank("builtin")
    lines = [
        "### Generators: diffusers, maugen, fineface and magicface (`python -m bench.bench_generators`)",
        "",
        f"Tiny random-weight models, {SIZE} px, {STEPS} steps, guidance on; torch threads: {torch.get_num_threads()}.",
        "",
        "| generator | device | batch | images/s | ms/image | UNet share of wall time |",
        "|---|---|---:|---:|---:|---:|",
    ]
    with tempfile.TemporaryDirectory(prefix="bench_generators_") as tmp:
        folders = {kind: build(Path(tmp) / kind) for kind, build in builders.items() if kind in (args.only or builders)}
        for kind, folder in folders.items():
            for label, extra in variants.get(kind, [(kind, {})]):
                for device in devices:
                    for batch in BATCH_SIZES:
                        pipeline = _pipeline(kind, folder, device, batch, bank, extra)  # built and set up
                        pipeline.run(_records(2, seed0=1))  # warm-up: first-call allocations, identity cache
                        rate, share = _measure(pipeline, batch, args.repeats)
                        cells = (label, device, batch, f"{rate:.2f}", f"{1000.0 / rate:.0f}", f"{100.0 * share:.0f}%")
                        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    markdown = "\n".join(lines)
    print(markdown)
    return markdown


if __name__ == "__main__":
    main()

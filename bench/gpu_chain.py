"""The per-GPU chain (generator -> face -> three detectors -> agreement -> filters -> writer) in one process.

Used by ``bench.bench_gpu`` (its "chain" rows) and by the CUDA smoke test (``tests/gpu``): a
recipe like ``recipes/mifa-1m.toml`` (fineface, scrfd, geometric + opengraphau + LibreFace's
``onnx-au``, agreement, heuristic realism, filters) pointed at the random-weight models of
:mod:`bench.gpu_models`, built by the factory's own code (``factory.engine.pipeline``).

:func:`time_chain` runs the chain two ways on the same described records: serially
(generate a micro-batch, then check and write it) and overlapped as the shard worker runs it
(checks and writer of micro-batch ``i`` on one thread while ``i + 1`` generates). Both write
the same records (tested). :func:`torch_placement` lists every torch module a stage holds, with
its device and dtype, so a test can see a model that stayed on the CPU.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.gpu_models import SCRFD_SIDE, ModelFolders
from factory.engine.pipeline import Pipeline, make_context, recipe_pipeline
from factory.plan import Planner
from factory.recipe import Recipe, recipe_from_dict
from manifests.writer import ShardWriter
from stages.base import Record

__all__ = ["ChainTiming", "chain_recipe", "described", "time_chain", "torch_placement"]


def chain_recipe(
    folders: ModelFolders,
    out: Path,
    *,
    generator: str = "fineface",
    batch_size: int = 16,
    batches: int = 2,
    steps: int = 50,
    image_size: int | None = None,
    options: dict[str, Any] | None = None,
) -> Recipe:
    """A recipe of the full chain on ``folders``' models: one shard of ``batches`` micro-batches."""
    size = image_size or (512 if folders.size == "full" else 64)
    # The same steps and classifier-free guidance (FineFace's 7.5) for either generator.
    gen = {**folders.generator(generator), "steps": steps, "batch_size": batch_size, "guidance_scale": 7.5}
    gen.update(options or {})
    doc: dict[str, Any] = {
        "dataset": {"name": "gpu", "target": batch_size * batches, "shard_size": batch_size * batches,
                    "seed": 0, "out": str(out)},
        "identities": {"bank": "none"},
        "prompt": {"name": "prompt", "backend": "grammar"},
        "generator": gen,
        "face": {"name": "scrfd", "model": str(folders.scrfd), "det_size": SCRFD_SIDE[folders.size]},
        "detectors": [
            {"name": "geometric"},
            {"name": "opengraphau", "checkpoint": str(folders.opengraphau), "backbone": folders.opengraphau_backbone,
             "batch_size": batch_size},
            {"name": "onnx-au", "spec": str(folders.libreface_spec)},
        ],
        "agreement": {"name": "agreement"},
        "realism": {"name": "heuristic-realism"},
        "filters": {"name": "filters"},
        # Random weights make faces no filter accepts; keeping rejected images makes the writer
        # encode every sample, as it encodes the accepted ones of a real build.
        "output": {"image_size": size, "image_format": "webp", "image_quality": 95, "keep_rejected_images": True},
        "balance": {"enabled": False},
        "engine": {"gpus": 1, "batch_size": batch_size},
    }  # fmt: skip
    return recipe_from_dict(doc, source="bench.gpu_chain")


def described(recipe: Recipe, shard: int = 0) -> list[Record]:
    """Shard ``shard``'s planned records through the prompt stage (on the CPU, as the prompt worker)."""
    prompt = recipe_pipeline(recipe, make_context(recipe, Path(recipe.dataset.out), "cpu"), ["prompt"])
    return prompt.run(Planner(recipe).shard(shard).to_pylist())


@dataclass
class ChainTiming:
    """Seconds of one pass over the records: generator, checks (face..filters) and writer."""

    samples: int
    wall_s: float
    generator_s: float
    unet_s: float
    checks_s: float
    write_s: float
    accepted: int

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.wall_s

    @property
    def outside_generator_share(self) -> float:
        """Share of the wall time the generator was not running (the device waits on the CPU side)."""
        return max(self.wall_s - self.generator_s, 0.0) / self.wall_s


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch  # deferred: optional and heavy

        torch.cuda.synchronize()


def time_chain(
    generator: Pipeline, checks: Pipeline, records: list[Record], batch_size: int, out: Path, overlap: bool
) -> tuple[ChainTiming, list[Record]]:
    """Run the chain over ``records`` into shard 0 of ``out``; returns the timing and the records as written."""
    device = generator.stages[0].context.device
    spent = {"generator": 0.0, "unet": 0.0, "checks": 0.0, "write": 0.0}
    done: list[Record] = []

    def check_and_write(batch: list[Record], writer: ShardWriter) -> None:
        t0 = time.perf_counter()
        checks.run(batch)
        t1 = time.perf_counter()
        for record in batch:
            writer.add(record)
        spent["checks"] += t1 - t0
        spent["write"] += time.perf_counter() - t1
        done.extend(batch)

    work = [dict(r) for r in records]
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checks")
    t_start = time.perf_counter()
    shards = out / "shards"
    with ShardWriter(shards, "gpu", 0, image_format="webp", image_quality=95, keep_rejected_images=True) as writer:
        pending: list[Future[None]] = []
        for start in range(0, len(work), batch_size):
            batch = work[start : start + batch_size]
            t0 = time.perf_counter()
            generator.run(batch)
            _sync(device)
            spent["generator"] += time.perf_counter() - t0
            spent["unet"] += generator.stages[0].last_timing.get("model_s", 0.0)
            if overlap:  # as the shard worker: at most two micro-batches wait for their checks
                pending.append(pool.submit(check_and_write, batch, writer))
                while len(pending) >= 2:
                    pending.pop(0).result()
            else:
                check_and_write(batch, writer)
        for fut in pending:
            fut.result()
        wall = time.perf_counter() - t_start
        stats = writer.commit({"wall_seconds": wall})
    pool.shutdown()
    timing = ChainTiming(
        len(work), wall, spent["generator"], spent["unet"], spent["checks"], spent["write"], stats["accepted"]
    )
    return timing, done


def torch_placement(pipelines: list[Pipeline]) -> list[tuple[str, str, str]]:
    """(stage.attribute path, device, dtype) of every parameter-holding torch module the stages hold."""
    import torch  # deferred: optional and heavy

    found: list[tuple[str, str, str]] = []
    seen: set[int] = set()

    def walk(obj: Any, path: str, depth: int) -> None:
        if id(obj) in seen or depth > 4:
            return
        seen.add(id(obj))
        if isinstance(obj, torch.nn.Module):
            params = list(obj.parameters())
            if params:
                devices = sorted({p.device.type for p in params})
                dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in params if p.is_floating_point()})
                found.append((path, ",".join(devices), ",".join(dtypes)))
            return
        attributes = getattr(obj, "__dict__", None)
        if attributes is None:
            return
        for name, value in attributes.items():
            if not name.startswith("__") and name not in ("context", "config"):
                walk(value, f"{path}.{name}", depth + 1)

    for pipeline in pipelines:
        for stage in pipeline.stages:
            walk(stage, stage.name, 0)
    return found

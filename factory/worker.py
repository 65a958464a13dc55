"""The shard worker: one per GPU (or CPU slot), runs a whole shard and commits it.

Design decision (engine issue, "no raw float image tensors through the object store"):
generation, face detection, AU detectors, agreement, realism, filters and the shard writer
are *fused* in this one long-lived actor. What enters is the shard's described plan
(a few hundred bytes per sample); what leaves is the shard's stats dict. Images never
cross the object store, so the store's memory is flat whatever the image size, and a
shard's files are written by the process that made them (shared filesystem on
multi-node clusters, as with img2dataset).

Inside the actor the GPU stays busy with a two-slot pipeline: the generator works on
micro-batch ``i+1`` in the calling thread while a single checker thread runs the CPU-side
stages and the writer on micro-batch ``i`` (FIFO, so manifest order is plan order). At most
two micro-batches wait for the checker (backpressure), so memory is bounded. The actor
runs ``inflight_per_actor`` shard calls concurrently (threaded actor) but a lock lets only
one of them generate at a time, so the next shard starts on the device while the previous
one's last checks and its commit (fsync, Parquet, stats) finish.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow as pa

from factory.identities import open_bank
from factory.recipe import Recipe
from stages import stage_class
from stages.base import Record, Stage, StageContext, is_dropped

__all__ = ["PromptWorker", "ShardWorker", "build_stages", "device_for_worker"]


def device_for_worker() -> str:
    """'cuda' when this process sees a CUDA device (Ray sets CUDA_VISIBLE_DEVICES), else 'cpu'."""
    try:
        import torch
    except ImportError:
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def build_stages(recipe: Recipe, context: StageContext, paths: list[str]) -> list[Stage]:
    """Instantiate and set up the stages at recipe ``paths`` (in that order)."""
    sections = recipe.stage_sections()
    stages = []
    for path in paths:
        if path not in sections:
            continue
        cls = stage_class(sections[path].name)
        stage = cls(recipe.stage_config(path), context)
        stage.setup()
        stages.append(stage)
    return stages


def _context(recipe: Recipe, run_dir: Path, device: str) -> StageContext:
    return StageContext(
        run_dir=run_dir,
        device=device,
        seed=recipe.dataset.seed,
        identity_bank=open_bank(recipe.identities.bank),
        image_size=recipe.output.image_size,
    )


class PromptWorker:
    """CPU stage beside the GPU workers: expands a shard's plan into descriptions."""

    def __init__(self, recipe: Recipe, run_dir: str) -> None:
        self.stage = build_stages(recipe, _context(recipe, Path(run_dir), "cpu"), ["prompt"])[0]

    def info(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "stage": self.stage.name}

    def describe(self, plan: pa.Table) -> tuple[list[Record], float]:
        """The shard's plan (an Arrow table: the driver never builds per-sample dicts)
        expanded into described records."""
        t0 = time.perf_counter()
        out = self.stage.process(plan.to_pylist())
        return out, time.perf_counter() - t0


class IndexWriter:
    """Commits the dataset beside the driver: writes ``index.parquet`` and ``index.json``.

    The index pass reads every indexed shard's manifest; run in the driver, its allocator
    pages were the only driver memory that grew with the dataset (~20 MiB more at 1M
    samples than at 10k). Started with the workers, so its process is warm by the end.
    """

    def info(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "stage": "index"}

    def write(self, run_dir: str, dataset: str, shards: list[int], **kwargs: Any) -> dict[str, Any]:
        from manifests.index import write_index

        return write_index(Path(run_dir), dataset, shards, **kwargs)


class ShardWorker:
    """Generates, checks and writes whole shards (see module docstring)."""

    def __init__(self, recipe: Recipe, run_dir: str) -> None:
        self.recipe = recipe
        self.run_dir = Path(run_dir)
        self.device = device_for_worker()
        context = _context(recipe, self.run_dir, self.device)
        paths = list(recipe.stage_sections())
        self.generator = build_stages(recipe, context, ["generator"])[0]
        self.checks = build_stages(recipe, context, [p for p in paths if p not in ("prompt", "generator")])
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checks")
        self._generating = threading.Lock()

    def info(self) -> dict[str, Any]:
        """Where this worker runs and which device it sees (GPU pinning is checked on this)."""
        import ray

        return {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "device": self.device,
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()] if ray.is_initialized() else [],
        }

    def run_shard(self, shard: int, described: tuple[list[Record], float], attempt: int = 1) -> dict[str, Any]:
        from manifests.writer import ShardWriter

        records, prompt_seconds = described
        out = self.recipe.output
        seconds: dict[str, float] = defaultdict(float)
        samples: dict[str, int] = defaultdict(int)
        seconds["prompt"], samples["prompt"] = prompt_seconds, len(records)
        bs = self.recipe.engine.batch_size
        t_start = time.perf_counter()
        with ShardWriter(
            self.run_dir / "shards",
            self.recipe.dataset.name,
            shard,
            image_format=out.image_format,
            image_quality=out.image_quality,
            keep_rejected_images=out.keep_rejected_images,
            overwrite=True,  # only uncommitted shards are ever (re)run
        ) as writer:
            pending: list[Future[None]] = []
            with self._generating:  # one shard at a time on the device
                for start in range(0, len(records), bs):
                    batch = records[start:start + bs]
                    self._run([self.generator], batch, seconds, samples)
                    pending.append(self._pool.submit(self._check_and_write, batch, writer, seconds, samples))
                    while len(pending) >= 2:  # backpressure: at most two batches wait for checks
                        pending.pop(0).result()
            # The next shard may generate while this one's last checks and commit finish.
            for fut in pending:
                fut.result()
            stats = writer.commit(
                {
                    "attempt": attempt,
                    "worker": {"pid": os.getpid(), "host": socket.gethostname(), "device": self.device},
                    "stage_seconds": dict(seconds),
                    "stage_samples": dict(samples),
                    "wall_seconds": time.perf_counter() - t_start,
                }
            )
        return stats

    def _check_and_write(self, batch: list[Record], writer: Any, seconds: dict[str, float],
                         samples: dict[str, int]) -> None:
        self._run(self.checks, batch, seconds, samples)
        t0 = time.perf_counter()
        for record in batch:
            writer.add(record)
            record.pop("image", None)  # free the pixels as soon as they are encoded
        seconds["write"] += time.perf_counter() - t0
        samples["write"] += len(batch)

    @staticmethod
    def _run(stages: list[Stage], batch: list[Record], seconds: dict[str, float],
             samples: dict[str, int]) -> None:
        for stage in stages:
            positions = [i for i, r in enumerate(batch) if not is_dropped(r)]
            if not positions:
                return
            t0 = time.perf_counter()
            result = stage.process([batch[i] for i in positions])
            if len(result) != len(positions):
                raise RuntimeError(f"stage {stage.name!r} returned {len(result)} records for {len(positions)}")
            for i, record in zip(positions, result, strict=True):
                batch[i] = record
            seconds[stage.name] += time.perf_counter() - t0
            samples[stage.name] += len(positions)

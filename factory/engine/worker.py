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
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow as pa

from cluster.actors import gpu_ids
from factory.engine.pipeline import StageTimings, make_context, recipe_pipeline
from factory.engine.provenance import write_provenance
from factory.recipe import Recipe
from manifests.index import write_index
from manifests.layout import RunLayout
from manifests.writer import ShardWriter
from stages.base import Record

__all__ = ["IndexWriter", "PromptWorker", "ShardWorker", "device_for_worker"]


def device_for_worker() -> str:
    """'cuda' when this process sees a CUDA device (Ray sets CUDA_VISIBLE_DEVICES), else 'cpu'."""
    try:
        import torch  # deferred: torch is an optional, heavy dependency
    except ImportError:
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


class PromptWorker:
    """CPU stage beside the GPU workers: expands a shard's plan into descriptions."""

    def __init__(self, recipe: Recipe, run_dir: str) -> None:
        self.pipeline = recipe_pipeline(recipe, make_context(recipe, Path(run_dir), "cpu"), ["prompt"])

    def info(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "stage": "prompt"}

    def describe(self, plan: pa.Table) -> tuple[list[Record], float]:
        """The shard's plan (an Arrow table: the driver never builds per-sample dicts)
        expanded into described records."""
        t0 = time.perf_counter()
        out = self.pipeline.run(plan.to_pylist())
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
        write_provenance(Path(run_dir))  # what the dataset card (written with the index) reads
        return write_index(Path(run_dir), dataset, shards, **kwargs)


class ShardWorker:
    """Generates, checks and writes whole shards (see module docstring)."""

    def __init__(self, recipe: Recipe, run_dir: str) -> None:
        self.recipe = recipe
        self.layout = RunLayout(Path(run_dir), recipe.dataset.name)
        self.device = device_for_worker()
        context = make_context(recipe, self.layout.root, self.device)
        self.generator = recipe_pipeline(recipe, context, ["generator"])
        checks = [p for p in recipe.stage_sections() if p not in ("prompt", "generator")]
        self.checks = recipe_pipeline(recipe, context, checks)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checks")
        self._generating = threading.Lock()

    def info(self) -> dict[str, Any]:
        """Where this worker runs and which device it sees (GPU pinning is checked on this)."""
        return {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "device": self.device,
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "gpu_ids": gpu_ids(),
        }

    def run_shard(self, shard: int, described: tuple[list[Record], float], attempt: int = 1) -> dict[str, Any]:
        records, prompt_seconds = described
        out = self.recipe.output
        timings = StageTimings()
        timings.add("prompt", prompt_seconds, len(records))
        bs = self.recipe.engine.batch_size
        t_start = time.perf_counter()
        with ShardWriter(
            self.layout.shards,
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
                    batch = records[start : start + bs]
                    self.generator.run(batch, timings)
                    pending.append(self._pool.submit(self._check_and_write, batch, writer, timings))
                    while len(pending) >= 2:  # backpressure: at most two batches wait for checks
                        pending.pop(0).result()
            # The next shard may generate while this one's last checks and commit finish.
            for fut in pending:
                fut.result()
            return writer.commit(
                {
                    "attempt": attempt,
                    "worker": {"pid": os.getpid(), "host": socket.gethostname(), "device": self.device},
                    "stage_seconds": dict(timings.seconds),
                    "stage_samples": dict(timings.samples),
                    "wall_seconds": time.perf_counter() - t_start,
                }
            )

    def _check_and_write(self, batch: list[Record], writer: ShardWriter, timings: StageTimings) -> None:
        self.checks.run(batch, timings)
        t0 = time.perf_counter()
        for record in batch:
            writer.add(record)
            record.pop("image", None)  # free the pixels as soon as they are encoded
        timings.add("write", time.perf_counter() - t0, len(batch))

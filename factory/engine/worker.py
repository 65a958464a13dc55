"""The Ray actors of a build: the shard worker (one per GPU or CPU slot), the prompt worker
and the index writer.

A shard worker runs a whole shard through the in-process pipeline and commits it: the
generator works on micro-batch ``i+1`` while one checker thread runs the CPU-side stages and
the writer on micro-batch ``i`` (at most two waiting), and a lock lets one of its
``inflight_per_actor`` shard calls generate at a time. ``progress`` answers on the control
lane; ``abandon`` stops a copy that lost a backup race. Why it is fused and how a copy loses:
ARCHITECTURE.md, "Decisions": "Fused GPU worker" and "Backups, first commit wins".
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow as pa

try:
    from cluster.actors import gpu_ids
except ImportError:  # no Ray installed: the worker runs in process only (tests/gpu on a device image without Ray)

    def gpu_ids() -> list[str]:
        return []


from factory.engine.pipeline import StageTimings, make_context, recipe_pipeline
from factory.engine.provenance import write_provenance
from factory.engine.rundir import check_probe
from factory.recipe import Recipe
from manifests.index import write_index
from manifests.layout import RunLayout
from manifests.store import location
from manifests.writer import ShardWriter, is_done
from stages.base import Record

__all__ = ["IndexWriter", "PromptWorker", "ShardAbandoned", "ShardWorker", "device_for_worker", "gpu_driver_present"]


class ShardAbandoned(Exception):
    """The driver dropped this copy of a shard: another copy committed it first."""


def gpu_driver_present() -> bool:
    """Could torch see a GPU here? False on a Linux machine with no NVIDIA (``/proc/driver/nvidia``,
    ``/dev/nvidia*``), WSL (``/dev/dxg``) or ROCm (``/dev/kfd``) driver; True elsewhere (ask torch)."""
    if not sys.platform.startswith("linux"):
        return True
    marks = (Path("/proc/driver/nvidia"), Path("/dev/dxg"), Path("/dev/kfd"))
    return any(mark.exists() for mark in marks) or any(Path("/dev").glob("nvidia[0-9]*"))


def device_for_worker() -> str:
    """'cuda' when this process sees a CUDA device (Ray sets CUDA_VISIBLE_DEVICES), else 'cpu'.
    Without a GPU driver the answer is 'cpu' without importing torch: seconds of CPU per worker
    that a recipe of CPU stages (and Ray's logical GPUs in tests) would pay for nothing."""
    if not gpu_driver_present():
        return "cpu"
    try:
        import torch  # deferred: torch is an optional, heavy dependency
    except ImportError:
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


class PromptWorker:
    """CPU stage beside the GPU workers: expands a shard's plan into descriptions."""

    def __init__(self, recipe: Recipe, run_dir: str) -> None:
        self.pipeline = recipe_pipeline(recipe, make_context(recipe, location(run_dir), "cpu"), ["prompt"])

    def info(self) -> dict[str, Any]:
        """Also the warnings the stages raised while starting (e.g. an LLM endpoint that does
        not answer while the recipe falls back to the grammar), for the driver to show."""
        warnings = [w for stage in self.pipeline.stages for w in getattr(stage, "warnings", [])]
        return {"pid": os.getpid(), "stage": "prompt", "warnings": warnings}

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

    def write(
        self, run_dir: str, dataset: str, shards: list[int], probe: str | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        check_probe(location(run_dir), probe)  # the index must see the folder the shards went to
        write_provenance(location(run_dir))  # what the dataset card (written with the index) reads
        return write_index(location(run_dir), dataset, shards, **kwargs)


class ShardWorker:
    """Generates, checks and writes whole shards (see module docstring)."""

    def __init__(self, recipe: Recipe, run_dir: str, probe: str | None = None) -> None:
        self.recipe = recipe
        self.layout = RunLayout(run_dir, recipe.dataset.name)
        # Before any model loads: a node that does not share dataset.out fails the build here,
        # once, instead of writing shards to its own disk for hours.
        check_probe(self.layout.root, probe)
        self.device = device_for_worker()
        context = make_context(recipe, self.layout.root, self.device)
        self.generator = recipe_pipeline(recipe, context, ["generator"])
        checks = [p for p in recipe.stage_sections() if p not in ("prompt", "generator")]
        self.checks = recipe_pipeline(recipe, context, checks)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checks")
        self._generating = threading.Lock()
        # Progress of the shard calls under way, by ticket (the driver's id of one call);
        # read by progress() on the control lane while work threads update it.
        self._calls: dict[int, dict[str, Any]] = {}
        self._dropped: set[int] = set()
        self._state = threading.Lock()

    def info(self) -> dict[str, Any]:
        """Where this worker runs and which device it sees (GPU pinning is checked on this)."""
        return {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "device": self.device,
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "gpu_ids": gpu_ids(),
        }

    # -- control lane ---------------------------------------------------------------------
    def progress(self) -> dict[str, Any]:
        """This worker's place and, per shard call under way, its state (queued | running |
        committing), steps (micro-batches generated + checked), samples generated, planned
        samples and seconds since it started generating."""
        now = time.monotonic()
        with self._state:
            calls = {
                ticket: {
                    **{k: v for k, v in call.items() if k != "t0"},
                    "seconds": now - call["t0"] if call["t0"] else 0.0,
                }
                for ticket, call in self._calls.items()
            }
        return {**self.info(), "calls": calls}

    def abandon(self, ticket: int) -> None:
        """Drop the call ``ticket`` at its next micro-batch (another copy committed its shard)."""
        with self._state:
            if ticket in self._calls:
                self._dropped.add(ticket)

    def _step(self, ticket: int, samples: int = 0, **changes: Any) -> None:
        """Count one step of ``ticket`` (or just apply ``changes``); stop it if dropped."""
        with self._state:
            call = self._calls[ticket]
            call.update(changes)
            if samples or not changes:
                call["steps"] += 1
                call["samples"] += samples
            dropped = ticket in self._dropped
        if dropped:
            raise ShardAbandoned(f"shard {call['shard']}: another copy was committed first")

    # -- work -----------------------------------------------------------------------------
    def run_shard(
        self, shard: int, described: tuple[list[Record], float], attempt: int = 1, ticket: int = 0
    ) -> dict[str, Any]:
        """Run and commit one shard; returns its stats, or ``{"shard", "superseded": True}``
        when another copy of it committed first (this copy's temp files are removed)."""
        records, prompt_seconds = described
        with self._state:
            self._calls[ticket] = {
                "shard": shard,
                "state": "queued",
                "steps": 0,
                "samples": 0,
                "planned": len(records),
                "t0": None,
            }
        try:
            return self._run(shard, records, prompt_seconds, attempt, ticket)
        except ShardAbandoned as exc:
            return {"shard": shard, "superseded": True, "reason": str(exc)}
        except FileExistsError as exc:  # the writer refuses to replace a shard committed meanwhile
            if not is_done(self.layout.shards, self.recipe.dataset.name, shard):
                raise
            return {"shard": shard, "superseded": True, "reason": str(exc)}
        finally:
            with self._state:
                self._calls.pop(ticket, None)
                self._dropped.discard(ticket)

    def _run(
        self, shard: int, records: list[Record], prompt_seconds: float, attempt: int, ticket: int
    ) -> dict[str, Any]:
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
            overwrite=False,  # a backup copy may have committed it: the first commit wins
        ) as writer:
            pending: list[Future[None]] = []
            # One shard at a time on the device; a queued call still notices being dropped.
            while not self._generating.acquire(timeout=0.2):
                self._step(ticket, state="queued")
            try:
                self._step(ticket, state="running", t0=time.monotonic())
                for start in range(0, len(records), bs):
                    batch = records[start : start + bs]
                    self.generator.run(batch, timings)
                    self._step(ticket, samples=len(batch))
                    pending.append(self._pool.submit(self._check_and_write, batch, writer, timings, ticket))
                    while len(pending) >= 2:  # backpressure: at most two batches wait for checks
                        pending.pop(0).result()
            finally:
                self._generating.release()
            # The next shard may generate while this one's last checks and commit finish.
            for fut in pending:
                fut.result()
            self._step(ticket, state="committing")
            return writer.commit(
                {
                    "attempt": attempt,
                    "worker": {"pid": os.getpid(), "host": socket.gethostname(), "device": self.device},
                    "stage_seconds": dict(timings.seconds),
                    "stage_samples": dict(timings.samples),
                    "wall_seconds": time.perf_counter() - t_start,
                }
            )

    def _check_and_write(self, batch: list[Record], writer: ShardWriter, timings: StageTimings, ticket: int) -> None:
        self.checks.run(batch, timings)
        t0 = time.perf_counter()
        for record in batch:
            writer.add(record)
            record.pop("image", None)  # free the pixels as soon as they are encoded
        timings.add("write", time.perf_counter() - t0, len(batch))
        self._step(ticket)

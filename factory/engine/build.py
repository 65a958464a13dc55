"""The build: schedules shards onto Ray workers until the target is reached, then commits.

The workers (``factory.engine.worker``) are placed through ``cluster`` (one shard worker per
GPU, prompt workers beside them, the index writer on the driver's node); the
:class:`~factory.engine.scheduler.Scheduler` decides what runs next and when the dataset is
complete; the index is written last, as the dataset's commit point.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster.actors import (
    ActorSpec,
    Ref,
    TaskFailed,
    call,
    cancel,
    kill,
    result,
    start_actors,
    wait_any,
    wait_ready,
)
from cluster.ray_cluster import ClusterError, connect, shutdown
from factory.engine.dedup import DedupHook, bank_dedup
from factory.engine.progress import BuildProgress
from factory.engine.rundir import RunDir, brief_stats
from factory.engine.scheduler import BuildError, Scheduler
from factory.engine.worker import IndexWriter, PromptWorker, ShardWorker
from factory.plan import Planner
from factory.recipe import Recipe
from manifests.atomic import write_text_atomic
from manifests.bank import open_bank

__all__ = ["BuildError", "BuildSummary", "WorkerPool", "build", "worker_pool"]


@dataclass
class BuildSummary:
    run_dir: Path
    target: int
    accepted: int
    indexed_shards: list[int]
    surplus_shards: list[int]
    failed_shards: dict[int, str]
    planned_samples: int
    seconds: float  # wall time of the whole command
    run_seconds: float  # from workers ready to index written (what throughput is measured on)
    stage_rates: dict[str, float] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return self.accepted >= self.target


@dataclass
class WorkerPool:
    """The actors of one build: shard workers, prompt workers and the index writer."""

    shard_workers: list[Any]
    prompt_workers: list[Any]
    index_writer: Any

    def describe_and_run(self, worker: int, shard: int, plan: Any, attempt: int) -> Ref:
        """Describe ``plan`` on a prompt worker and run the shard on ``worker``; the description
        goes from one actor to the other without passing through the driver."""
        described = call(self.prompt_workers[shard % len(self.prompt_workers)], "describe", plan)
        return call(self.shard_workers[worker], "run_shard", shard, described, attempt)

    def write_index(self, run_root: Path, dataset: str, indexed: list[int], **kwargs: Any) -> None:
        """Write the index on the index writer; its errors (a shard not done, repeated keys, a
        full disk) reach the caller as they were raised."""
        ref = call(self.index_writer, "write", str(run_root), dataset, indexed, **kwargs)
        result(ref, passthrough=(ValueError, OSError))


@contextmanager
def worker_pool(recipe: Recipe, run_root: Path) -> Iterator[WorkerPool]:
    """``--gpus N`` -> N shard workers, each pinned to one GPU (Ray sets each one's
    CUDA_VISIBLE_DEVICES to its own device); ``--gpus 0`` -> ``engine.cpu_workers`` CPU
    workers. Workers restart when they die (the engine redoes their shard); on a multi-node
    cluster a restarted worker may land on another node. Prompt workers (one per four shard
    workers, at least one) describe shards ahead of the shard workers. Yields once every
    actor has loaded its models; kills them all on the way out.
    """
    engine = recipe.engine
    # num_cpus=0 for GPU workers: they must not wait for a CPU slot on GPU-dense nodes.
    # Threaded actors: queued shards overlap their commit with the next one's generation
    # (the worker's own lock keeps generation one shard at a time).
    gpu = engine.gpus > 0
    count = engine.gpus if gpu else engine.cpu_workers
    shard_spec = ActorSpec(
        count, num_gpus=1 if gpu else 0, num_cpus=0 if gpu else 1, concurrency=engine.inflight_per_actor
    )
    args = (recipe, str(run_root))
    actors: list[Any] = []
    try:
        actors += start_actors(ShardWorker, args, shard_spec)
        shard_workers = list(actors)
        prompts = start_actors(PromptWorker, args, ActorSpec(max(1, count // 4)))
        actors += prompts
        # One retry: write_index is idempotent (it drops the old commit point first). On the
        # driver's node, num_cpus=0: the shard workers may hold every CPU until the end.
        index_writer = start_actors(IndexWriter, (), ActorSpec(1, restarts=1, task_retries=1, on_this_node=True))[0]
        actors.append(index_writer)
        try:
            wait_ready(actors)
        except ClusterError as exc:
            raise BuildError(str(exc)) from None
        yield WorkerPool(shard_workers, prompts, index_writer)
    finally:
        kill(actors)


def _dispatch(
    sched: Scheduler,
    pool: WorkerPool,
    run: RunDir,
    planner: Planner,
    slots: dict[int, int],
    refs: dict[Ref, tuple[int, int]],
    inflight: int,
) -> None:
    """Send out shards, least-loaded worker first, while the scheduler wants more."""
    for w in sorted(slots, key=slots.__getitem__):
        while slots[w] < inflight and sched.want_more():
            shard = sched.take()
            plan = run.load_or_write_plan(shard, planner.shard)
            attempt = sched.started(shard, plan.num_rows)
            refs[pool.describe_and_run(w, shard, plan, attempt)] = (shard, w)
            slots[w] += 1


def _collect(
    sched: Scheduler,
    progress: BuildProgress,
    slots: dict[int, int],
    refs: dict[Ref, tuple[int, int]],
    dedup: DedupHook | None = None,
) -> None:
    """Wait up to a second for finished shards and record each outcome."""
    for ref in wait_any(refs, timeout=1.0):
        shard, w = refs.pop(ref)
        slots[w] -= 1
        try:
            stats = result(ref)
        except TaskFailed as exc:
            will_retry = sched.failure(shard, f"{exc.root}\n\n{exc.detail}")
            progress.note(f"shard {shard} failed ({'retrying' if will_retry else 'giving up'}): {exc.root[:300]}")
            continue
        sched.succeeded(shard, brief_stats(stats))
        progress.shard_done(stats)
        sched.check_floor()
    if dedup is not None:  # identity banks count distinct identities (factory.engine.dedup)
        dedup.advance(sched)
    progress.refresh()


def _run_shards(
    sched: Scheduler,
    pool: WorkerPool,
    run: RunDir,
    planner: Planner,
    progress: BuildProgress,
    dedup: DedupHook | None = None,
) -> int:
    """Run shards until the complete prefix exists; returns its last shard. Abandons (cancels)
    whatever still runs beyond it: its temp files go on the next start, committed shards
    beyond it are surplus."""
    slots = dict.fromkeys(range(len(pool.shard_workers)), 0)
    refs: dict[Ref, tuple[int, int]] = {}  # ref -> (shard, worker index)
    while True:
        last, accepted = sched.finished()
        if last is not None:
            cancel(refs)
            return last
        _dispatch(sched, pool, run, planner, slots, refs, sched.recipe.engine.inflight_per_actor)
        if not refs:
            raise BuildError(
                f"no shard left to run but only {accepted} of {sched.target} samples accepted "
                f"in the committed prefix; failed shards: {sorted(sched.failed)}. "
                "Run `factory retry` after fixing the cause."
            )
        _collect(sched, progress, slots, refs, dedup)


def build(
    recipe: Recipe, *, local_gpus: int | None = None, quiet: bool = False, retry_failed: bool = False
) -> BuildSummary:
    """Build (or resume) the dataset the recipe describes; returns when the index is written."""
    t0 = time.perf_counter()
    run = RunDir(Path(recipe.dataset.out), recipe.dataset.name)
    with run.lock():
        bank = open_bank(recipe.identities.bank)
        run.start(recipe, bank.fingerprint if bank is not None else None)
        run.clean_temps()
        if retry_failed:
            for shard in run.failures():
                run.clear_failure(shard)
        planner = Planner(recipe, bank.records() if bank is not None else None)
        sched = Scheduler(recipe, run, run.done_shards())
        cluster = connect(recipe.engine.address, gpus=recipe.engine.gpus, local_gpus=local_gpus)
        progress = BuildProgress(recipe.dataset.target, quiet=quiet)
        try:
            with worker_pool(recipe, run.root) as pool, bank_dedup(recipe, run.root) as dedup:
                t_run = time.perf_counter()
                if dedup is not None:
                    dedup.advance(sched)  # a resumed bank: decide (or read back) the shards already done
                progress.start(sum(int(s["accepted"]) for s in sched.done.values()), sched.done)
                last = _run_shards(sched, pool, run, planner, progress, dedup)
                indexed, surplus, failed = sched.outcome(last)
                pool.write_index(
                    run.root, recipe.dataset.name, indexed, target=sched.target, surplus=surplus, failed=failed
                )
                t_indexed = time.perf_counter()
        finally:
            progress.stop()
            shutdown(cluster)
        summary = BuildSummary(
            run_dir=run.root,
            target=sched.target,
            accepted=sched.finished()[1],
            indexed_shards=indexed,
            surplus_shards=surplus,
            failed_shards=failed,
            planned_samples=sum(int(sched.done[s]["planned"]) for s in indexed),
            seconds=time.perf_counter() - t0,
            run_seconds=t_indexed - t_run,  # not the worker and cluster teardown after it
            stage_rates=progress.stage_rates(),
        )
        write_text_atomic(
            run.build_summary,
            json.dumps({k: (str(v) if isinstance(v, Path) else v) for k, v in summary.__dict__.items()}, indent=2),
        )
        return summary

"""The build: schedules shards onto Ray workers until the target is reached, then commits.

The workers (``factory.engine.worker``) are placed through ``cluster`` (one shard worker per
GPU, prompt workers beside them, the index writer on the driver's node); the
:class:`~factory.engine.ledger.Ledger`, rebuilt from the run directory on every start, decides
what runs next and when the dataset is complete; the index is written last, as the dataset's
commit point.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster.actors import ActorSpec, Ref, call, call_control, kill, restart, result, start_actors, wait_ready
from cluster.ray_cluster import ClusterError, connect, shutdown
from factory.engine.balance import balance_policy
from factory.engine.dedup import bank_dedup
from factory.engine.failures import BuildError, counted_errors
from factory.engine.ledger import Ledger
from factory.engine.preflight import preflight
from factory.engine.progress import BuildProgress
from factory.engine.rules import LedgerRules
from factory.engine.rundir import RunDir
from factory.engine.runner import Runner
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
    short: str | None = None  # a balanced build ended short of the target at its waste bound: why
    # A policy (closed-loop balance, identity dedup) chose ``accepted`` among these accepted samples.
    selected_from: int | None = None

    @property
    def complete(self) -> bool:
        return self.accepted >= self.target or self.short is not None


@dataclass
class WorkerPool:
    """The actors of one build: shard workers, prompt workers and the index writer."""

    shard_workers: list[Any]
    prompt_workers: list[Any]
    index_writer: Any
    warnings: list[str] = field(default_factory=list)  # what stages reported while starting

    def describe(self, shard: int, plan: Any) -> Ref:
        """Describe ``plan`` on a prompt worker; the description goes from that actor to the
        shard worker without passing through the driver."""
        return call(self.prompt_workers[shard % len(self.prompt_workers)], "describe", plan)

    def run(self, worker: int, shard: int, described: Ref, attempt: int, ticket: int) -> Ref:
        """Run the described shard on shard worker ``worker`` (``ticket`` names this call)."""
        return call(self.shard_workers[worker], "run_shard", shard, described, attempt, ticket)

    def progress(self, worker: int) -> Ref:
        """Ask shard worker ``worker`` for its calls' progress (on its control lane)."""
        return call_control(self.shard_workers[worker], "progress")

    def abandon(self, worker: int, ticket: int) -> None:
        """Tell the call ``ticket`` on ``worker`` to stop (another copy committed its shard)."""
        call_control(self.shard_workers[worker], "abandon", ticket)

    def restart(self, worker: int) -> None:
        """Restart shard worker ``worker`` (a hung call cannot be interrupted otherwise)."""
        restart(self.shard_workers[worker])

    def write_index(self, run_root: Path, dataset: str, indexed: list[int], **kwargs: Any) -> None:
        """Write the index on the index writer; its errors (a shard not done, repeated keys, a
        full disk) reach the caller as they were raised."""
        ref = call(self.index_writer, "write", str(run_root), dataset, indexed, **kwargs)
        result(ref, passthrough=(ValueError, OSError))


@contextmanager
def worker_pool(recipe: Recipe, run_root: Path, probe: str | None = None) -> Iterator[WorkerPool]:
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
    # (the worker's own lock keeps generation one shard at a time); the control lane
    # answers the driver's progress questions while both slots are busy.
    gpu = engine.gpus > 0
    count = engine.gpus if gpu else engine.cpu_workers
    shard_spec = ActorSpec(
        count,
        num_gpus=1 if gpu else 0,
        num_cpus=0 if gpu else 1,
        concurrency=engine.inflight_per_actor,
        control=True,
    )
    args = (recipe, str(run_root))
    actors: list[Any] = []
    try:
        actors += start_actors(ShardWorker, (*args, probe), shard_spec)
        shard_workers = list(actors)
        prompts = start_actors(PromptWorker, args, ActorSpec(max(1, count // 4)))
        actors += prompts
        # One retry: write_index is idempotent (it drops the old commit point first). On the
        # driver's node, num_cpus=0: the shard workers may hold every CPU until the end.
        index_writer = start_actors(IndexWriter, (), ActorSpec(1, restarts=1, task_retries=1, on_this_node=True))[0]
        actors.append(index_writer)
        try:
            infos = wait_ready(actors)
        except ClusterError as exc:
            raise BuildError(str(exc)) from None
        warnings = list(dict.fromkeys(w for info in infos for w in info.get("warnings", [])))
        yield WorkerPool(shard_workers, prompts, index_writer, warnings)
    finally:
        kill(actors)


def build(
    recipe: Recipe, *, local_gpus: int | None = None, quiet: bool = False, retry_failed: bool = False
) -> BuildSummary:
    """Build (or resume) the dataset the recipe describes; returns when the index is written."""
    t0 = time.perf_counter()
    run = RunDir(recipe.dataset.out, recipe.dataset.name)
    bank = open_bank(recipe.identities.bank)
    preflight(recipe, bank)  # model files, endpoints, bank images: before the run folder and Ray
    with run.lock():
        run.start(recipe, bank.fingerprint if bank is not None else None)
        run.clean_temps()
        if retry_failed:
            for shard in run.failures():
                run.clear_failure(shard)
        identities = bank.records() if bank is not None else None
        planner = Planner(recipe, identities)
        workers = recipe.engine.gpus or recipe.engine.cpu_workers
        rules = LedgerRules.from_recipe(recipe, workers, str(run.root))
        # A full disk's failures are not attempts: the build run again retries their shards.
        failures = {s: counted_errors([e["error"] for e in f["errors"]]) for s, f in run.failures().items()}
        done = run.done_shards()
        for shard in set(failures) & set(done):  # committed after all (killed between commit and clear)
            run.clear_failure(shard)
        ledger = Ledger.resume(rules, done, failures)
        ledger.check_stop()  # a resumed build whose recorded failures already say stop
        cluster = connect(recipe.engine.address, gpus=recipe.engine.gpus, local_gpus=local_gpus)
        progress = BuildProgress(recipe.dataset.target, quiet=quiet)
        probe = run.write_probe()  # plain paths: every worker must see it (one shared dataset.out)
        try:
            with worker_pool(recipe, run.root, probe) as pool, bank_dedup(recipe, run.root) as dedup:
                for warning in pool.warnings:
                    progress.note(f"warning: {warning}")
                t_run = time.perf_counter()
                balance = balance_policy(recipe, run.root, identities, planner)
                policy = dedup or balance
                if policy is not None:
                    ledger.consult(policy)  # a resumed build: decide (or read back) the shards already done
                plans = balance if balance is not None and dedup is None else planner  # closed-loop rounds
                runner = Runner(ledger, pool, run, plans, progress, recipe.engine, policy)
                progress.start(runner.counted(), ledger.shards("done"), selects=policy is not None)
                runner.run_until_complete()
                indexed, surplus, failed_shards = ledger.outcome()
                short = balance.short if balance is not None else None
                recorded = run.failures()
                failed = {s: recorded[s]["errors"][-1]["error"] for s in failed_shards}
                index = {"target": rules.target, "surplus": surplus, "failed": failed, "short": short}
                pool.write_index(run.root, recipe.dataset.name, indexed, probe=probe, **index)
                t_indexed = time.perf_counter()
        finally:
            progress.stop()
            shutdown(cluster)
            # Every worker is gone: temp files of copies that were cancelled, abandoned or
            # killed mid-shard can go now (a resume would remove them anyway).
            run.clean_temps()
            run.workers.unlink(missing_ok=True)
            run.remove_probe(probe)
        summary = BuildSummary(
            run_dir=run.root,
            target=rules.target,
            accepted=ledger.complete_prefix()[1],
            indexed_shards=indexed,
            surplus_shards=surplus,
            failed_shards=failed,
            planned_samples=sum(int(ledger.stats(s)["planned"]) for s in indexed),
            seconds=time.perf_counter() - t0,
            run_seconds=t_indexed - t_run,  # not the worker and cluster teardown after it
            stage_rates=progress.stage_rates(),
            short=short,
            selected_from=None if policy is None else sum(int(ledger.stats(s)["accepted"]) for s in indexed),
        )
        write_text_atomic(run.build_summary, json.dumps(summary.__dict__, indent=2, default=str))
        return summary

"""Placing workers: one long-lived shard worker per GPU, a CPU prompt worker beside them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from factory.recipe import Recipe

__all__ = ["kill_workers", "make_index_writer", "make_workers"]


def make_workers(recipe: Recipe, run_root: Path) -> tuple[list[Any], list[Any]]:
    """``--gpus N`` -> N shard workers, each pinned to one GPU with ``num_gpus=1`` (Ray sets
    each one's CUDA_VISIBLE_DEVICES to its own device); ``--gpus 0`` -> ``engine.cpu_workers``
    CPU workers. Workers restart when they die (the engine redoes their shard); on a
    multi-node cluster a restarted worker may land on another node. Prompt workers (one per
    four shard workers, at least one) describe shards ahead of the shard workers.
    """
    import ray

    from factory.worker import PromptWorker, ShardWorker

    engine = recipe.engine
    if engine.gpus > 0:
        # num_cpus=0: a GPU worker must not wait for a CPU slot on GPU-dense nodes.
        opts: dict[str, Any] = {"num_gpus": 1, "num_cpus": 0}
        count = engine.gpus
    else:
        opts = {"num_gpus": 0, "num_cpus": 1}
        count = engine.cpu_workers
    # Threaded actor: queued shards overlap their commit with the next one's generation
    # (the worker's own lock keeps generation one shard at a time).
    remote_worker = ray.remote(ShardWorker).options(
        max_restarts=-1, max_task_retries=0, max_concurrency=engine.inflight_per_actor, **opts
    )
    workers = [remote_worker.remote(recipe, str(run_root)) for _ in range(count)]
    remote_prompt = ray.remote(PromptWorker).options(num_cpus=0, max_restarts=-1, max_task_retries=0)
    prompts = [remote_prompt.remote(recipe, str(run_root)) for _ in range(max(1, count // 4))]
    return workers, prompts


def make_index_writer() -> Any:
    """The actor that writes the dataset index, on the driver's node (where ``dataset.out``
    surely is; on a cluster it is shared storage anyway). ``num_cpus=0``: the shard workers
    may hold every CPU until they are killed after the index is written."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from factory.worker import IndexWriter

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    # One retry: write_index is idempotent (it drops the old commit point first).
    remote = ray.remote(IndexWriter).options(num_cpus=0, max_restarts=1, max_task_retries=1, scheduling_strategy=here)
    return remote.remote()


def kill_workers(workers: list[Any]) -> None:
    import ray

    for w in workers:
        ray.kill(w, no_restart=True)

"""Ray actors and calls behind a small API, so nothing above ``cluster/`` imports Ray.

The engine places plain Python classes as actors (:func:`start_actors`), calls their methods
(:func:`call`), waits for the first results (:func:`wait_any`) and reads them
(:func:`result`). A remote call that raised, or whose actor died, surfaces as one
:class:`TaskFailed` carrying the innermost error line (Ray wraps it in pages of traceback)
and whether the code raised or the process was lost (``lost``).

An actor started with ``control=True`` has a second, one-thread lane beside its work slots:
:func:`call_control` runs a method there, so the driver can ask a busy worker for its
progress (or tell it to drop a shard) without waiting for a shard to finish.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from cluster.ray_cluster import ClusterError

__all__ = [
    "ActorSpec",
    "Ref",
    "TaskFailed",
    "call",
    "call_control",
    "cancel",
    "gpu_ids",
    "kill",
    "ready",
    "restart",
    "result",
    "root_error",
    "start_actors",
    "wait_any",
    "wait_ready",
]

Ref = Any  # a Ray ObjectRef


class TaskFailed(RuntimeError):
    """A remote call failed: ``root`` is the innermost ``Error: message``, ``detail`` the full
    text; ``lost`` is True when the actor's process or node died (nothing raised in our code)."""

    def __init__(self, root: str, detail: str, *, lost: bool = False) -> None:
        super().__init__(root)
        self.root = root
        self.detail = detail
        self.lost = lost


def root_error(text: str) -> str:
    """The innermost ``SomeError: message`` of a remote traceback (Ray wraps it in noise)."""
    matches = re.findall(r"^([A-Za-z_][\w.]*(?:Error|Exception)): (.+)$", text, flags=re.MULTILINE)
    if matches:
        return f"{matches[-1][0].rsplit('.', 1)[-1]}: {matches[-1][1]}"
    lines = text.strip().splitlines()
    return lines[-1] if lines else text


@dataclass(frozen=True)
class ActorSpec:
    """How many actors of a class to place, and on what."""

    count: int
    num_gpus: float = 0.0
    num_cpus: float = 0.0
    concurrency: int = 1  # >1: a threaded actor running that many calls at once
    restarts: int = -1  # -1: restart for ever when the process dies (its call fails once)
    task_retries: int = 0
    on_this_node: bool = False  # pin to the driver's node (it surely sees the driver's files)
    control: bool = False  # a one-thread lane for call_control() beside the work slots


def start_actors(cls: type, args: Sequence[Any], spec: ActorSpec) -> list[Any]:
    """``spec.count`` actors of ``cls(*args)``, placed by their resources."""
    options: dict[str, Any] = {
        "num_gpus": spec.num_gpus,
        "num_cpus": spec.num_cpus,
        "max_restarts": spec.restarts,
        "max_task_retries": spec.task_retries,
    }
    if spec.concurrency > 1:
        options["max_concurrency"] = spec.concurrency
    if spec.on_this_node:
        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(
            ray.get_runtime_context().get_node_id(), soft=False
        )
    # Concurrency groups can only be declared on the class, not in .options().
    remote = (ray.remote(concurrency_groups={_CONTROL: 1})(cls) if spec.control else ray.remote(cls)).options(**options)
    return [remote.remote(*args) for _ in range(spec.count)]


_CONTROL = "control"


def call(actor: Any, method: str, *args: Any, **kwargs: Any) -> Ref:
    """Start ``actor.method(*args, **kwargs)``; returns a reference to its result."""
    return getattr(actor, method).remote(*args, **kwargs)


def call_control(actor: Any, method: str, *args: Any) -> Ref:
    """Start ``actor.method(*args)`` on the actor's control lane (``ActorSpec.control``): it
    runs at once even while every work slot is busy."""
    return getattr(actor, method).options(concurrency_group=_CONTROL).remote(*args)


def wait_any(refs: Iterable[Ref], timeout: float) -> list[Ref]:
    """The references among ``refs`` whose calls have finished (at least one, or none after ``timeout``)."""
    ready, _ = ray.wait(list(refs), num_returns=1, timeout=timeout)
    return ready


def ready(refs: Iterable[Ref]) -> list[Ref]:
    """The references among ``refs`` whose calls have finished, without waiting."""
    refs = list(refs)
    if not refs:
        return []
    done, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
    return done


def result(ref: Ref, passthrough: tuple[type[BaseException], ...] = ()) -> Any:
    """The value of a finished call; a remote exception of a ``passthrough`` type is raised as
    it was, anything else (including a dead actor) as :class:`TaskFailed`."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        if passthrough and isinstance(exc.cause, passthrough):
            raise exc.cause from None
        lost = isinstance(exc.cause, ray.exceptions.RayActorError | ray.exceptions.WorkerCrashedError)
        raise TaskFailed(root_error(str(exc)), str(exc), lost=lost) from None
    except (ray.exceptions.RayError, OSError) as exc:
        raise TaskFailed(root_error(str(exc)), str(exc), lost=True) from None


def wait_ready(actors: Sequence[Any]) -> list[Any]:
    """Block until every actor answers ``info()`` (it has loaded its models); an actor that
    cannot start fails here, once, with its own message."""
    try:
        return ray.get([a.info.remote() for a in actors])
    except ray.exceptions.RayActorError as exc:
        raise ClusterError(f"a worker could not start: {root_error(str(exc))}") from None


def cancel(refs: Iterable[Ref]) -> None:
    for ref in refs:
        ray.cancel(ref)


def kill(actors: Iterable[Any]) -> None:
    for actor in actors:
        ray.kill(actor, no_restart=True)


def restart(actor: Any) -> None:
    """Kill the actor's process (a hung call cannot be interrupted in a threaded actor); Ray
    starts a fresh one on the same resources and every call it was running fails as lost."""
    ray.kill(actor, no_restart=False)


def gpu_ids() -> list[str]:
    """The GPU ids Ray assigned to the calling actor (empty outside Ray or without GPUs)."""
    return [str(g) for g in ray.get_gpu_ids()] if ray.is_initialized() else []

"""The build engine: schedules shards onto Ray workers until the target is reached.

The dataset never depends on timing: it is the shortest prefix of shards, in shard order
(permanently failed shards skipped), whose accepted count reaches the target. Shards that
finish beyond that prefix are kept on disk as surplus but not indexed, so an interrupted
and resumed build indexes exactly what an uninterrupted one would.
"""

from __future__ import annotations

import heapq
import json
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from factory.identities import open_bank
from factory.plan import Planner
from factory.progress import BuildProgress
from factory.recipe import Recipe
from factory.state import RunDir, atomic_write_text

__all__ = ["BuildError", "BuildSummary", "build", "drop_reason_summary", "scan_done"]


class BuildError(RuntimeError):
    pass


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


# What the driver keeps of each done shard's stats: the stop rule, the acceptance rate and
# the floor's drop-reason report need no more, and a full stats dict (timings, checksums,
# worker) is ~4 kB of Python objects, which at 1,000+ shards grew the driver measurably.
_KEPT_STATS = ("planned", "accepted", "drop_reasons")


def brief_stats(stats: dict[str, Any]) -> dict[str, Any]:
    """The part of a shard's stats the driver keeps for the rest of the build."""
    return {k: stats[k] for k in _KEPT_STATS if k in stats}


def scan_done(run: RunDir) -> dict[int, dict[str, Any]]:
    """Planned / accepted counts and drop reasons of every committed shard in the run directory."""
    from manifests.writer import is_done, read_stats

    out = {}
    for p in sorted(run.shards.glob(f"{run.dataset}-*.stats.json")) if run.shards.exists() else []:
        shard = int(p.name[len(run.dataset) + 1 :].split(".")[0])
        if is_done(run.shards, run.dataset, shard):
            out[shard] = brief_stats(read_stats(run.shards, run.dataset, shard))
    return out


def drop_reason_summary(stats: list[dict[str, Any]], top: int = 5) -> list[tuple[str, str, int]]:
    """Most frequent (stage, reason, count) over shard stats."""
    counts: Counter[tuple[str, str]] = Counter()
    for s in stats:
        for stage, reasons in s.get("drop_reasons", {}).items():
            for reason, n in reasons.items():
                counts[(stage, reason)] += n
    return [(stage, reason, n) for (stage, reason), n in counts.most_common(top)]


def _prefix(done: dict[int, dict[str, Any]], failed: set[int], target: int) -> tuple[int | None, int]:
    """(last shard of the shortest complete prefix or None, accepted count of done prefix)."""
    accepted, shard = 0, 0
    while shard in done or shard in failed:
        if shard in done:
            accepted += int(done[shard]["accepted"])
            if accepted >= target:
                return shard, accepted
        shard += 1
    return None, accepted


class _Scheduler:
    """Driver-side bookkeeping: which shard goes where, retries, the stop rule."""

    def __init__(self, recipe: Recipe, run: RunDir, done: dict[int, dict[str, Any]]) -> None:
        self.recipe = recipe
        self.run = run
        self.done = done
        self.target = recipe.dataset.target
        self.max_attempts = recipe.engine.max_retries + 1
        self.attempts = {s: len(f["errors"]) for s, f in run.failures().items()}
        self.failed = {s for s, n in self.attempts.items() if n >= self.max_attempts}
        self.retry: list[int] = []
        self.in_flight: dict[int, int] = {}  # shard -> planned samples

    def rate(self) -> float:
        planned = sum(int(s["planned"]) for s in self.done.values())
        if planned == 0:
            return self.recipe.engine.expected_acceptance_rate
        return sum(int(s["accepted"]) for s in self.done.values()) / planned

    def _frontier(self) -> int:
        """Lowest shard that is neither done, failed nor in flight."""
        shard = 0
        while shard in self.done or shard in self.failed or shard in self.in_flight:
            shard += 1
        return shard

    def want_more(self) -> bool:
        """Schedule another shard? Over-provision from the running acceptance rate.

        Everything below the frontier is done, failed or in flight; schedule the frontier
        while the accepted count projected for that prefix falls short of the target.
        """
        if self.retry:
            return True
        frontier = self._frontier()
        projected = sum(int(s["accepted"]) for k, s in self.done.items() if k < frontier)
        projected += self.rate() * sum(n for k, n in self.in_flight.items() if k < frontier)
        return projected < self.target

    def take(self) -> int:
        return heapq.heappop(self.retry) if self.retry else self._frontier()

    def failure(self, shard: int, error: str) -> bool:
        """Record a failed attempt; True when the shard will be retried."""
        self.in_flight.pop(shard, None)
        n = self.run.record_failure(shard, error)
        self.attempts[shard] = n
        if n >= self.max_attempts:
            self.failed.add(shard)
            return False
        heapq.heappush(self.retry, shard)
        return True

    def check_floor(self) -> None:
        engine = self.recipe.engine
        if len(self.done) < engine.rate_check_after_shards:
            return
        rate = self.rate()
        if rate < engine.min_acceptance_rate or rate == 0.0:
            reasons = drop_reason_summary(list(self.done.values()))
            lines = "\n".join(f"  {stage}: {reason} ({n})" for stage, reason, n in reasons) or "  (none recorded)"
            raise BuildError(
                f"acceptance rate {rate:.3f} after {len(self.done)} shards is below "
                f"engine.min_acceptance_rate={engine.min_acceptance_rate}; top drop reasons by stage:\n"
                f"{lines}\nLoosen the failing filter or fix the stage, then run the same command again."
            )


def _commit_dataset(indexer: Any, run_root: Path, dataset: str, indexed: list[int], **kwargs: Any) -> None:
    """Write the index on the :class:`factory.worker.IndexWriter` actor; its errors (a shard
    not done, repeated keys, a full disk) reach the caller as they were raised."""
    import ray

    try:
        ray.get(indexer.write.remote(str(run_root), dataset, indexed, **kwargs))
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, ValueError | OSError):
            raise exc.cause from None
        raise


def _wait_ready(actors: list[Any]) -> None:
    """Block until every worker has loaded its models; a stage that cannot start (missing
    checkpoint, missing package) fails the build here, once, with its own message."""
    import ray

    try:
        ray.get([a.info.remote() for a in actors])
    except ray.exceptions.RayActorError as exc:
        raise BuildError(f"a worker could not start: {_root_error(str(exc))}") from None


def _root_error(text: str) -> str:
    """The innermost ``SomeError: message`` of a remote traceback (Ray wraps it in noise)."""
    matches = re.findall(r"^([A-Za-z_][\w.]*(?:Error|Exception)): (.+)$", text, flags=re.MULTILINE)
    if matches:
        return f"{matches[-1][0].rsplit('.', 1)[-1]}: {matches[-1][1]}"
    lines = text.strip().splitlines()
    return lines[-1] if lines else text


def build(
    recipe: Recipe, *, local_gpus: int | None = None, quiet: bool = False, retry_failed: bool = False
) -> BuildSummary:
    """Build (or resume) the dataset the recipe describes; returns when the index is written."""
    import ray

    from cluster.placement import kill_workers, make_index_writer, make_workers
    from cluster.ray_cluster import connect, shutdown
    from manifests.writer import clean_stale_temps

    t0 = time.perf_counter()
    run = RunDir(Path(recipe.dataset.out), recipe.dataset.name)
    with run.lock():
        bank = open_bank(recipe.identities.bank)
        run.start(recipe, bank.fingerprint if bank is not None else None)
        run.clean_temps()
        clean_stale_temps(run.shards)
        if retry_failed:
            for shard in run.failures():
                run.clear_failure(shard)
        planner = Planner(recipe, bank.records() if bank is not None else None)
        done = scan_done(run)
        sched = _Scheduler(recipe, run, done)
        cluster = connect(recipe.engine.address, gpus=recipe.engine.gpus, local_gpus=local_gpus)
        progress = BuildProgress(recipe.dataset.target, quiet=quiet)
        workers: list[Any] = []
        prompts: list[Any] = []
        indexer: list[Any] = []
        try:
            workers, prompts = make_workers(recipe, run.root)
            indexer = [make_index_writer()]
            _wait_ready([*workers, *prompts, *indexer])
            t_run = time.perf_counter()
            slots = {i: 0 for i in range(len(workers))}
            refs: dict[Any, tuple[int, int]] = {}  # ref -> (shard, worker index)
            progress.start(sum(int(s["accepted"]) for s in done.values()), done)
            while True:
                last, accepted = _prefix(sched.done, sched.failed, sched.target)
                if last is not None:
                    break
                for w in sorted(slots, key=slots.get):  # least-loaded worker first
                    while slots[w] < recipe.engine.inflight_per_actor and sched.want_more():
                        shard = sched.take()
                        plan = run.load_or_write_plan(shard, planner.shard)
                        described = prompts[shard % len(prompts)].describe.remote(plan)
                        attempt = sched.attempts.get(shard, 0) + 1
                        ref = workers[w].run_shard.remote(shard, described, attempt)
                        refs[ref] = (shard, w)
                        slots[w] += 1
                        sched.in_flight[shard] = plan.num_rows
                if not refs:
                    raise BuildError(
                        f"no shard left to run but only {accepted} of {sched.target} samples accepted "
                        f"in the committed prefix; failed shards: {sorted(sched.failed)}. "
                        "Run `factory retry` after fixing the cause."
                    )
                ready, _ = ray.wait(list(refs), num_returns=1, timeout=1.0)
                for ref in ready:
                    shard, w = refs.pop(ref)
                    slots[w] -= 1
                    try:
                        stats = ray.get(ref)
                    except (ray.exceptions.RayError, OSError) as exc:
                        will_retry = sched.failure(shard, f"{_root_error(str(exc))}\n\n{exc}")
                        progress.note(
                            f"shard {shard} failed ({'retrying' if will_retry else 'giving up'}): "
                            f"{_root_error(str(exc))[:300]}"
                        )
                        continue
                    sched.in_flight.pop(shard, None)
                    sched.done[shard] = brief_stats(stats)
                    run.clear_failure(shard)
                    progress.shard_done(stats)
                    sched.check_floor()
                progress.refresh()
            # Stop cleanly: whatever runs beyond the prefix is abandoned (its temp files are
            # removed on the next start); committed shards beyond it are surplus.
            for ref in refs:
                ray.cancel(ref)
            indexed = [s for s in range(last + 1) if s in sched.done]
            surplus = sorted(s for s in sched.done if s > last)
            failed = {s: run.failures()[s]["errors"][-1]["error"] for s in sorted(sched.failed) if s < last}
            _commit_dataset(
                indexer[0], run.root, recipe.dataset.name, indexed, target=sched.target, surplus=surplus, failed=failed
            )
            t_indexed = time.perf_counter()
        finally:
            progress.stop()
            kill_workers(workers + prompts + indexer)
            shutdown(cluster)
        summary = BuildSummary(
            run_dir=run.root,
            target=sched.target,
            accepted=accepted,
            indexed_shards=indexed,
            surplus_shards=surplus,
            failed_shards=failed,
            planned_samples=sum(int(sched.done[s]["planned"]) for s in indexed),
            seconds=time.perf_counter() - t0,
            run_seconds=t_indexed - t_run,  # not the worker and cluster teardown after it
            stage_rates=progress.stage_rates(),
        )
        atomic_write_text(
            run.root / "build-summary.json",
            json.dumps({k: (str(v) if isinstance(v, Path) else v) for k, v in summary.__dict__.items()}, indent=2),
        )
        return summary

"""The build loop: send shards to workers, follow their progress, collect what they commit.

Dispatch spreads: every idle worker gets a shard before any worker gets a second one, so a
4-shard build on 8 GPUs runs on 4 of them, not on 2.

Progress: the driver asks every shard worker, about once a second, how many micro-batches
each of its shard calls has generated and checked (``ShardWorker.progress`` on the actor's
control lane, which answers while both work slots are busy). Chosen over a heartbeat file
(it needs no shared filesystem, the one thing a dead NFS mount takes away) and over Ray's
task-state API (heavier, and it knows tasks, not micro-batches); only the driver's clock is
used, so a worker that stops answering at all counts as silent too. A shard silent for
``engine.shard_timeout_s`` is cancelled: a running thread of a threaded actor cannot be
interrupted, so its worker is restarted (Ray starts a fresh process on the same GPU); the
shard's attempt counts as failed and it is retried, preferably on another worker; the other
shard queued on that worker is sent out again without counting an attempt.

Backups: when no shard is left to send and a worker is idle, a copy of the in-flight shard
that has run longest past ``engine.backup_after`` x the median shard time (or that waits
behind such a shard) runs there. The shard writer refuses to replace a done shard, so the
first copy to commit wins; the driver tells the other copy to stop, and it removes its temp
files. At most one backup per shard.

The driver also writes ``workers.json`` every second for ``factory status``.
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from cluster.actors import Ref, TaskFailed, call_control, cancel, ready, restart, result, wait_any
from factory.engine.dedup import DedupHook
from factory.engine.failures import FailureKind
from factory.engine.progress import BuildProgress
from factory.engine.rundir import RunDir, brief_stats
from factory.engine.scheduler import BuildError, Scheduler
from factory.plan import Planner
from manifests.writer import is_done, read_stats

__all__ = ["Flight", "Runner"]

STATUS_EVERY_S = 1.0


@dataclass
class Flight:
    """One shard call on one worker, as the driver follows it (times: driver's monotonic clock)."""

    ticket: int
    shard: int
    worker: int
    attempt: int
    described: Ref
    sent: float
    seen: float  # the last sign of life: a new step, a new state, or waiting its turn
    planned: int = 0
    backup: bool = False
    state: str = "sent"  # sent | queued | running | committing (as the worker last said)
    steps: int = 0
    samples: int = 0
    seconds: float = 0.0  # running time, as the worker last said
    started: float | None = None
    dropped: bool = False  # another copy committed the shard; this one was told to stop


class Runner:
    """Runs shards until the scheduler's prefix is complete (see module docstring)."""

    def __init__(
        self,
        sched: Scheduler,
        pool: Any,
        run: RunDir,
        planner: Planner,
        progress: BuildProgress,
        workers: int,
        dedup: DedupHook | None = None,
    ) -> None:
        self.sched, self.pool, self.run, self.planner, self.progress = sched, pool, run, planner, progress
        self.dedup = dedup  # identity banks count distinct identities (factory.engine.dedup)
        self.engine = sched.recipe.engine
        self.workers = workers
        self.flights: dict[Ref, Flight] = {}
        self.load = [0] * workers
        self.polls: dict[Ref, int] = {}
        self.last_poll = [0.0] * workers
        self.places: dict[int, dict[str, Any]] = {}  # worker -> host, pid, GPU ids (last progress reply)
        self.durations: deque[float] = deque(maxlen=101)  # running seconds of recent shards
        self.poll_every = min(1.0, self.engine.shard_timeout_s / 4)
        self._tickets = itertools.count(1)
        self._status_at = 0.0

    # -- the loop -------------------------------------------------------------------------
    def run_until_complete(self) -> int:
        """Returns the last shard of the complete prefix; abandons (cancels) whatever still
        runs beyond it: its temp files go at the end of the build, committed shards beyond
        it are surplus."""
        while True:
            last, accepted = self.sched.finished()
            if last is not None:
                cancel(self.flights)
                return last
            self._dispatch()
            self._backups()
            if not self.flights:
                raise BuildError(
                    f"no shard left to run but only {accepted} of {self.sched.target} samples accepted "
                    f"in the committed prefix; failed shards: {sorted(self.sched.failed)}. "
                    f"Run `factory retry {self.run.root}` after fixing the cause."
                )
            self._collect()
            self._poll()
            self._expire()
            self._write_status()

    def _dispatch(self) -> None:
        """Send out shards, one per idle worker before a second on any (least loaded first); a
        worker busy with a straggler gets a shard to queue only when every other one is full."""
        skip: set[int] = set()
        stuck = self._stuck_workers()
        while self.sched.want_more():
            free = [w for w in range(self.workers) if self.load[w] < self.engine.inflight_per_actor and w not in skip]
            if not free:
                return
            worker = min(free, key=lambda w: (w in stuck, self.load[w], w))
            shard = self.sched.take(worker)
            if shard is None:  # only retries that last failed on this worker are left
                skip.add(worker)
                continue
            plan = self.run.load_or_write_plan(shard, self.planner.shard)
            attempt = self.sched.started(shard, plan.num_rows)
            self._send(worker, shard, self.pool.describe(shard, plan), attempt, plan.num_rows, backup=False)

    def _send(self, worker: int, shard: int, described: Ref, attempt: int, planned: int, *, backup: bool) -> None:
        ticket = next(self._tickets)
        ref = self.pool.run(worker, shard, described, attempt, ticket)
        now = time.monotonic()
        self.flights[ref] = Flight(ticket, shard, worker, attempt, described, now, now, planned, backup)
        self.load[worker] += 1

    def _pop(self, ref: Ref) -> Flight:
        flight = self.flights.pop(ref)
        self.load[flight.worker] -= 1
        return flight

    def _copies(self, shard: int) -> list[Flight]:
        """The live (not dropped) calls of ``shard``."""
        return [f for f in self.flights.values() if f.shard == shard and not f.dropped]

    # -- outcomes -------------------------------------------------------------------------
    def _collect(self) -> None:
        """Wait up to a poll interval for finished shard calls and record each outcome."""
        finished = wait_any(self.flights, timeout=self.poll_every)
        for ref in ready(self.flights) if finished else []:
            flight = self._pop(ref)
            try:
                stats = result(ref)
            except TaskFailed as exc:
                self._failed(flight, f"{exc.root}\n\n{exc.detail}", "lost" if exc.lost else "error")
                continue
            if stats.get("superseded"):
                self._superseded(flight)
            else:
                self._succeeded(flight, stats)
        if self.dedup is not None:
            self.dedup.advance(self.sched)
        self.progress.refresh()

    def _succeeded(self, flight: Flight, stats: dict[str, Any]) -> None:
        if flight.shard in self.sched.done:
            return
        if flight.started is not None:
            self.durations.append(time.monotonic() - flight.started)
        self.sched.succeeded(flight.shard, brief_stats(stats))
        self.progress.shard_done(stats)
        for other in self._copies(flight.shard):  # the losing copy stops and removes its temp files
            other.dropped = True
            call_control(self.pool.shard_workers[other.worker], "abandon", other.ticket)
        if flight.backup:
            self.progress.note(f"shard {flight.shard}: the backup copy on worker {flight.worker} committed first")
        self.sched.check_floor()

    def _superseded(self, flight: Flight) -> None:
        """A copy found its shard committed by another one; count it if nobody else will."""
        shard = flight.shard
        if shard in self.sched.done or self._copies(shard):
            return
        if is_done(self.run.shards, self.run.dataset, shard):
            self._succeeded(flight, read_stats(self.run.shards, self.run.dataset, shard))
        else:  # committed, then lost (removed by hand?): run it again
            self.sched.requeue(shard)

    def _failed(self, flight: Flight, error: str, kind: FailureKind) -> None:
        shard = flight.shard
        if flight.dropped or shard in self.sched.done or self._copies(shard):
            return  # the shard is done, or another copy of it still runs and decides
        retry, cause, new = self.sched.failure(shard, error, worker=flight.worker, kind=kind)
        what = "retrying" if retry else "giving up"
        first = min(cause.shards)
        same = f"same cause as shard {first}" if not new and first != shard else cause.example[:300]
        self.progress.note(f"shard {shard} failed on worker {flight.worker} ({what}): {same}")

    # -- progress and timeouts ---------------------------------------------------------------
    def _poll(self) -> None:
        """Read the progress replies that arrived; ask each worker again about once a second."""
        for ref in ready(self.polls):
            worker = self.polls.pop(ref)
            try:
                self._update(worker, result(ref))
            except TaskFailed:
                continue  # a worker being restarted; its shards' clocks keep running
        now = time.monotonic()
        asked = set(self.polls.values())
        for w in range(self.workers):
            if w not in asked and now - self.last_poll[w] >= self.poll_every:
                self.polls[call_control(self.pool.shard_workers[w], "progress")] = w
                self.last_poll[w] = now

    def _update(self, worker: int, report: dict[str, Any]) -> None:
        now = time.monotonic()
        calls = report.pop("calls", {})
        self.places[worker] = report
        for flight in self.flights.values():
            if flight.worker != worker:
                continue
            call = calls.get(flight.ticket)
            if call is None or call["state"] == "queued":
                flight.seen = now  # waiting for its description or its turn on the device is not silence
                flight.state = call["state"] if call else flight.state
                continue
            if call["steps"] != flight.steps or call["state"] != flight.state:
                flight.seen = now
            flight.state, flight.steps, flight.samples = call["state"], call["steps"], call["samples"]
            flight.seconds = float(call.get("seconds", 0.0))
            if flight.started is None:
                flight.started = now - flight.seconds

    def _expire(self) -> None:
        """Cancel shards silent for longer than the timeout: restart their workers."""
        now = time.monotonic()
        timeout = self.engine.shard_timeout_s
        for worker in sorted({f.worker for f in self.flights.values() if now - f.seen > timeout}):
            restart(self.pool.shard_workers[worker])
            self.polls = {ref: w for ref, w in self.polls.items() if w != worker}
            on_worker = [ref for ref, f in self.flights.items() if f.worker == worker]
            popped = [self._pop(ref) for ref in on_worker]
            place = self._place(worker)
            for flight in popped:
                if flight.dropped or flight.shard in self.sched.done or self._copies(flight.shard):
                    continue
                if now - flight.seen > timeout:
                    error = (
                        f"ShardTimeout: no progress for {timeout:g} s on worker {worker} ({place}); "
                        "the worker was restarted and the shard will be retried"
                    )
                    self._failed(flight, error, "timeout")
                else:
                    self.sched.requeue(flight.shard)  # collateral: queued behind the hung shard

    def _place(self, worker: int) -> str:
        info = self.places.get(worker, {})
        gpus = ",".join(info.get("gpu_ids") or []) or "-"
        return f"host {info.get('host', '?')}, pid {info.get('pid', '?')}, GPU {gpus}"

    # -- backups --------------------------------------------------------------------------
    def _backups(self) -> None:
        """Copy stragglers onto idle workers once nothing else is left to send."""
        threshold = self._slow_after()
        if not self.engine.backups or threshold is None or self.sched.want_more():
            return
        for worker in [w for w in range(self.workers) if self.load[w] == 0]:
            straggler = self._straggler(worker, threshold)
            if straggler is None:
                return
            self._send(worker, straggler.shard, straggler.described, straggler.attempt, straggler.planned, backup=True)
            self.progress.note(
                f"shard {straggler.shard}: slow on worker {straggler.worker}; backup copy on worker {worker}"
            )

    def _slow_after(self) -> float | None:
        """Running seconds after which a shard counts as slow (None before any shard is done)."""
        if not self.durations:
            return None
        return self.engine.backup_after * statistics.median(self.durations)

    def _stuck_workers(self) -> set[int]:
        """Workers running a slow shard (see :meth:`_slow_after`)."""
        threshold = self._slow_after()
        if threshold is None:
            return set()
        now = time.monotonic()
        return {f.worker for f in self.flights.values() if f.started is not None and now - f.started > threshold}

    def _straggler(self, worker: int, threshold: float) -> Flight | None:
        """The in-flight shard most overdue (running longer than ``threshold``, or waiting
        behind such a shard) with no copy yet, on another worker than ``worker``."""
        now = time.monotonic()
        overdue = self._stuck_workers()
        best: tuple[float, Flight] | None = None
        for f in self.flights.values():
            if f.dropped or f.worker == worker or f.shard in self.sched.done or len(self._copies(f.shard)) > 1:
                continue
            if f.started is not None and now - f.started > threshold:
                late = now - f.started
            elif f.started is None and f.worker in overdue:
                late = now - f.sent - threshold  # blocked behind a straggler: after the straggler itself
            else:
                continue
            if best is None or late > best[0]:
                best = (late, f)
        return best[1] if best else None

    # -- status ---------------------------------------------------------------------------
    def _write_status(self) -> None:
        now = time.monotonic()
        if now - self._status_at < STATUS_EVERY_S:
            return
        self._status_at = now
        rows = []
        for w in range(self.workers):
            info = self.places.get(w, {})
            mine = sorted((f for f in self.flights.values() if f.worker == w), key=lambda f: f.sent)
            current = next((f for f in mine if f.state in ("running", "committing")), None)
            rows.append(
                {
                    "worker": w,
                    "host": info.get("host"),
                    "pid": info.get("pid"),
                    "gpu_ids": info.get("gpu_ids", []),
                    "cuda_visible_devices": info.get("cuda_visible_devices"),
                    "shard": current.shard if current else None,
                    "state": current.state if current else ("waiting" if mine else "idle"),
                    "samples": current.samples if current else 0,
                    "planned": current.planned if current else 0,
                    "samples_per_s": current.samples / current.seconds if current and current.seconds > 0 else 0.0,
                    "queued": [f.shard for f in mine if f is not current],
                    "backup": bool(current and current.backup),
                }
            )
        self.run.write_workers(rows)

"""The build loop: turns Ray events into transitions of the shard ledger.

It sends shards to idle workers (every idle worker gets one before any gets a second), asks
each worker about once a second how far its shard calls got, cancels a silent shard after
``engine.shard_timeout_s`` by restarting its worker, sends a backup copy of a slow shard to
an idle worker, and writes ``workers.json`` for ``factory status``. A restarting worker (after a
timeout, or a death Ray restarts it from) gets no shard until it answers a progress call, its
models loaded (or ``shard_timeout_s`` passed); a call that fails on it meanwhile is sent out
again without counting an attempt. Every decision about a
shard is the ledger's (``factory.engine.ledger``); why the engine works this way (progress on
the control lane, restart as the only cancel, first commit wins) is in ARCHITECTURE.md,
"Decisions": "Every GPU works; hung shards are cancelled" and "Backups, first commit wins".
"""

from __future__ import annotations

import errno
import statistics
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

import pyarrow as pa

from cluster.actors import Ref, TaskFailed, cancel, ready, result, wait_any
from factory.engine.failures import BuildError, FailureKind, disk_full_report
from factory.engine.ledger import Copy, Ledger
from factory.engine.policy import PrefixPolicy
from factory.engine.progress import BuildProgress
from factory.engine.rundir import RunDir, brief_stats
from factory.sections import EngineSection
from manifests.atomic import WriteError
from manifests.writer import is_done, read_stats

__all__ = ["Flight", "Runner", "ShardPlanner"]


class ShardPlanner(Protocol):
    """What plans a shard: the open-loop ``factory.plan.Planner``, or a closed-loop balance policy."""

    def shard(self, shard: int) -> pa.Table: ...


STATUS_EVERY_S = 1.0


@dataclass
class Flight:
    """One shard call as the driver follows it (times: the driver's monotonic clock); which
    shard, worker and attempt it is, and whether it still counts, is the ledger's."""

    copy: Copy
    described: Ref
    sent: float
    seen: float  # the last sign of life: a new step, a new state, or waiting its turn
    state: str = "sent"  # sent | queued | running | committing (as the worker last said)
    steps: int = 0
    samples: int = 0
    seconds: float = 0.0  # running time, as the worker last said
    started: float | None = None


class Runner:
    """Runs shards until the ledger's prefix is complete (see module docstring).

    The public methods are the loop's events, each with the driver's time passed in:
    :meth:`dispatch`, :meth:`send_backups`, :meth:`on_result`, :meth:`on_progress`,
    :meth:`expire`; :meth:`run_until_complete` waits on Ray and feeds them."""

    def __init__(
        self,
        ledger: Ledger,
        pool: Any,
        run: RunDir,
        planner: ShardPlanner,
        progress: BuildProgress,
        engine: EngineSection,
        policy: PrefixPolicy | None = None,
    ) -> None:
        self.ledger, self.pool, self.run, self.planner, self.progress = ledger, pool, run, planner, progress
        self.policy = policy  # identity banks count distinct identities (factory.engine.dedup)
        self.engine = engine
        self.workers = ledger.rules.workers
        self.flights: dict[Ref, Flight] = {}
        self.polls: dict[Ref, int] = {}
        self.last_poll = [0.0] * self.workers
        self.places: dict[int, dict[str, Any]] = {}  # worker -> host, pid, GPU ids (last progress reply)
        self.durations: deque[float] = deque(maxlen=101)  # running seconds of recent shards
        self.poll_every = min(1.0, self.engine.shard_timeout_s / 4)
        self._status_at = 0.0
        # Workers restarting (after a timeout, or a death Ray restarts), since when: no shard goes
        # to one until it answers a progress call (its models loaded), or shard_timeout_s passed.
        self.restarting: dict[int, float] = {}
        self.committed: list[tuple[Copy, dict[str, Any]]] = []  # committed, not reported yet

    # -- the loop -------------------------------------------------------------------------
    def run_until_complete(self) -> int:
        """Returns the last shard of the complete prefix; abandons (cancels) whatever still
        runs beyond it: its temp files go at the end of the build, committed shards beyond
        it are surplus."""
        while True:
            last, accepted = self.ledger.complete_prefix()
            if last is not None:
                cancel(self.flights)
                return last
            self.dispatch(time.monotonic())
            self.send_backups(time.monotonic())
            if not self.flights and not self._restarting(time.monotonic()):
                raise BuildError(
                    f"no shard left to run but only {accepted} of {self.ledger.rules.target} samples accepted "
                    f"in the committed prefix; failed shards: {self.ledger.shards('failed')}. "
                    f"Run `factory retry {self.run.root}` after fixing the cause."
                )
            self.collect()
            self._poll()
            self.expire(time.monotonic())
            self._write_status()

    def dispatch(self, now: float) -> None:
        """Send out shards, one per idle worker before a second on any (least loaded first); a
        worker busy with a straggler gets a shard to queue only when every other one is full."""
        skip = self._restarting(now)
        stuck = self._stuck_workers(now)
        if self.policy is not None:  # what it holds back follows the resolved prefix (a failure resolves one)
            self.ledger.consult(self.policy)
        while self.ledger.wants_more():
            load = {w: self.ledger.load(w) for w in range(self.workers) if w not in skip}
            free = [w for w, n in load.items() if n < self.engine.inflight_per_actor]
            if not free:
                return
            worker = min(free, key=lambda w: (w in stuck, load[w], w))
            shard = self.ledger.next_shard(worker)
            if shard is None:  # only retries that last failed on this worker are left
                skip.add(worker)
                continue
            try:
                plan = self.run.load_or_write_plan(shard, self.planner.shard)
            except WriteError as exc:
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                reason = f"build stopped: the disk is full (the plan of shard {shard} could not be written)"
                raise BuildError(disk_full_report(reason, str(self.run.root))) from exc
            copy = self.ledger.start(shard, worker, now, planned=plan.num_rows)
            self._send(copy, self.pool.describe(shard, plan), now)

    def _restarting(self, now: float) -> set[int]:
        """Workers still restarting: they get no shard yet."""
        timeout = self.engine.shard_timeout_s
        return {w for w, since in self.restarting.items() if now - since < timeout}

    def _send(self, copy: Copy, described: Ref, now: float) -> None:
        ref = self.pool.run(copy.worker, copy.shard, described, copy.attempt, copy.id)
        self.flights[ref] = Flight(copy, described, now, now)

    # -- outcomes -------------------------------------------------------------------------
    def collect(self) -> None:
        """Wait up to a poll interval for finished shard calls and record each outcome."""
        finished = wait_any(self.flights, timeout=self.poll_every)
        for ref in ready(self.flights) if finished else []:
            try:
                outcome: dict[str, Any] | TaskFailed = result(ref)
            except TaskFailed as exc:
                outcome = exc
            self.on_result(ref, outcome, time.monotonic())
        decided = self.ledger.consult(self.policy).counted if self.policy is not None else {}
        if self.committed or decided:
            self.report_commits()
        self.progress.refresh()

    def report_commits(self) -> None:
        """Tell the progress the shards committed since the last call, with the build's count
        after the policy saw them (a balance that keeps 40 of a shard's 50 says 40, not 50)."""
        self.progress.count(self.counted())
        for copy, stats in self.committed:
            self.progress.shard_done(stats)
            if copy.backup:
                self.progress.note(f"shard {copy.shard}: the backup copy on worker {copy.worker} committed first")
        self.committed.clear()

    def on_result(self, ref: Ref, outcome: dict[str, Any] | TaskFailed, now: float) -> None:
        """A shard call returned: its stats, a superseded copy's note, or its failure."""
        flight = self.flights.pop(ref)
        if isinstance(outcome, TaskFailed) and flight.copy.worker in self._restarting(now):
            self.ledger.requeue(flight.copy.id)  # its worker was restarting: not the shard's fault, no attempt
        elif isinstance(outcome, TaskFailed):
            if outcome.lost:  # Ray restarts the worker: nothing more goes to it until it answers
                self.restarting[flight.copy.worker] = now
            self._failed(flight, f"{outcome.root}\n\n{outcome.detail}", "lost" if outcome.lost else "error")
        elif outcome.get("superseded"):
            self._superseded(flight, now)
        elif not self.ledger.is_live(flight.copy.id):
            self.ledger.superseded(flight.copy.id, None)  # the shard was decided without it
        else:
            self._succeeded(flight, outcome, now)

    def _succeeded(self, flight: Flight, stats: dict[str, Any], now: float) -> None:
        copy = flight.copy
        if flight.started is not None:
            self.durations.append(now - flight.started)
        for other in self.ledger.finish(copy.id, brief_stats(stats)):
            self.pool.abandon(other.worker, other.id)  # the losing copy stops and removes its temp files
        self._committed(copy, stats)

    def _committed(self, copy: Copy, stats: dict[str, Any]) -> None:
        self.run.clear_failure(copy.shard)
        self.committed.append((copy, stats))  # reported once the policy saw it (report_commits)
        self.ledger.check_floor()

    def counted(self) -> int:
        """The samples of the done shards that count toward the target: a policy's count where
        it decided one (kept by balance, distinct by dedup), else its accepted samples."""
        return sum(self.ledger.counted(s) for s in self.ledger.shards("done"))

    def _superseded(self, flight: Flight, now: float) -> None:
        """A copy found its shard committed by another one; count it if nobody else will."""
        copy = flight.copy
        committed = None
        if self.ledger.decides(copy.id) and is_done(self.run.shards, self.run.dataset, copy.shard):
            committed = read_stats(self.run.shards, self.run.dataset, copy.shard)
        # committed, then lost (removed by hand?): the ledger plans it again
        if self.ledger.superseded(copy.id, None if committed is None else brief_stats(committed)):
            assert committed is not None
            if flight.started is not None:
                self.durations.append(now - flight.started)
            self._committed(copy, committed)

    def _failed(self, flight: Flight, error: str, kind: FailureKind) -> None:
        copy = flight.copy
        failure = self.ledger.fail(copy.id, error, kind)
        if failure is None:
            return  # the shard is done, or another copy of it still runs and decides
        try:
            self.run.record_failure(copy.shard, error)
        except WriteError as exc:
            # The disk is full: the record cannot be written, which loses nothing (an attempt that
            # failed on a full disk is not counted when the build runs again), and the ledger stops
            # the build with the one disk-full message once it has seen such a failure.
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
        self.ledger.check_stop()
        what = "retrying" if failure.retry else "giving up"
        first = min(failure.cause.shards)
        same = f"same cause as shard {first}" if not failure.new_cause and first != copy.shard else None
        self.progress.note(
            f"shard {copy.shard} failed on worker {copy.worker} ({what}): {same or failure.cause.example[:300]}"
        )

    # -- progress and timeouts ---------------------------------------------------------------
    def _poll(self) -> None:
        """Read the progress replies that arrived; ask each worker again about once a second."""
        for ref in ready(self.polls):
            worker = self.polls.pop(ref)
            try:
                self.on_progress(worker, result(ref), time.monotonic())
            except TaskFailed:
                continue  # a worker being restarted; its shards' clocks keep running
        now = time.monotonic()
        asked = set(self.polls.values())
        for w in range(self.workers):
            if w not in asked and now - self.last_poll[w] >= self.poll_every:
                self.polls[self.pool.progress(w)] = w
                self.last_poll[w] = now

    def on_progress(self, worker: int, report: dict[str, Any], now: float) -> None:
        """A worker's progress reply (``ShardWorker.progress``): its place, and per call
        (by copy id) its state, steps, samples and running seconds."""
        calls = report.pop("calls", {})
        self.places[worker] = report
        self.restarting.pop(worker, None)  # it answers: restarted and its models loaded
        for flight in self.flights.values():
            if flight.copy.worker != worker:
                continue
            call = calls.get(flight.copy.id)
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

    def expire(self, now: float) -> None:
        """Cancel shards silent for longer than the timeout: restart their workers. A silent
        copy's attempt counts (a timeout); the others on that worker go back without one."""
        timeout = self.engine.shard_timeout_s
        for worker in sorted({f.copy.worker for f in self.flights.values() if now - f.seen > timeout}):
            self.pool.restart(worker)
            self.restarting[worker] = now
            self.polls = {ref: w for ref, w in self.polls.items() if w != worker}
            on_worker = [ref for ref, f in self.flights.items() if f.copy.worker == worker]
            popped = [self.flights.pop(ref) for ref in on_worker]
            place = self._place(worker)
            for flight in popped:
                if now - flight.seen > timeout:
                    error = (
                        f"ShardTimeout: no progress for {timeout:g} s on worker {worker} ({place}); "
                        "the worker was restarted and the shard will be retried"
                    )
                    self._failed(flight, error, "timeout")
                else:
                    self.ledger.requeue(flight.copy.id)  # collateral: queued behind the hung shard

    def _place(self, worker: int) -> str:
        info = self.places.get(worker, {})
        gpus = ",".join(info.get("gpu_ids") or []) or "-"
        return f"host {info.get('host', '?')}, pid {info.get('pid', '?')}, GPU {gpus}"

    # -- backups --------------------------------------------------------------------------
    def send_backups(self, now: float) -> None:
        """Copy stragglers onto idle workers once nothing else is left to send."""
        threshold = self._slow_after()
        if not self.engine.backups or threshold is None or self.ledger.wants_more():
            return
        restarting = self._restarting(now)
        for worker in [w for w in range(self.workers) if self.ledger.load(w) == 0 and w not in restarting]:
            straggler = self._straggler(worker, threshold, now)
            if straggler is None:
                return
            old = straggler.copy
            self._send(
                self.ledger.start(old.shard, worker, now, planned=old.planned, backup=True), straggler.described, now
            )
            self.progress.note(f"shard {old.shard}: slow on worker {old.worker}; backup copy on worker {worker}")

    def _slow_after(self) -> float | None:
        """Running seconds after which a shard counts as slow (None before any shard is done)."""
        if not self.durations:
            return None
        return self.engine.backup_after * statistics.median(self.durations)

    def _stuck_workers(self, now: float) -> set[int]:
        """Workers running a slow shard (see :meth:`_slow_after`)."""
        threshold = self._slow_after()
        if threshold is None:
            return set()
        return {f.copy.worker for f in self.flights.values() if f.started is not None and now - f.started > threshold}

    def _straggler(self, worker: int, threshold: float, now: float) -> Flight | None:
        """The in-flight shard most overdue (running longer than ``threshold``, or waiting
        behind such a shard) with no copy yet, on another worker than ``worker``."""
        overdue = self._stuck_workers(now)
        best: tuple[float, Flight] | None = None
        for f in self.flights.values():
            if (
                f.copy.worker == worker
                or not self.ledger.is_live(f.copy.id)
                or len(self.ledger.copies(f.copy.shard)) > 1
            ):
                continue
            if f.started is not None and now - f.started > threshold:
                late = now - f.started
            elif f.started is None and f.copy.worker in overdue:
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
            mine = sorted((f for f in self.flights.values() if f.copy.worker == w), key=lambda f: f.sent)
            current = next((f for f in mine if f.state in ("running", "committing")), None)
            rows.append(
                {
                    "worker": w,
                    "host": info.get("host"),
                    "pid": info.get("pid"),
                    "gpu_ids": info.get("gpu_ids", []),
                    "cuda_visible_devices": info.get("cuda_visible_devices"),
                    "shard": current.copy.shard if current else None,
                    "state": current.state if current else ("waiting" if mine else "idle"),
                    "samples": current.samples if current else 0,
                    "planned": current.copy.planned if current else 0,
                    "samples_per_s": current.samples / current.seconds if current and current.seconds > 0 else 0.0,
                    "queued": [f.copy.shard for f in mine if f is not current],
                    "backup": bool(current and current.copy.backup),
                }
            )
        self.run.write_workers(rows)

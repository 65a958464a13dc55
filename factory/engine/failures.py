"""Failed shard attempts grouped by root cause, and the report a stopped build prints.

A cause is the innermost error line of an attempt with its numbers masked, so "cannot read
/bank/0007.jpg" on shard 3 and "cannot read /bank/0012.jpg" on shard 9 are one cause: a
build that stops lists each cause once, with how many shards it hit and what to do.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from manifests.errors import ReportError

__all__ = [
    "BuildError",
    "Cause",
    "FailureKind",
    "FailureLog",
    "cause_key",
    "counted_errors",
    "failure_kind",
    "failure_report",
    "first_line",
    "is_environmental",
]


class BuildError(ReportError, RuntimeError):
    """The build cannot go on; the message says why and what to do."""


# error: our code (or a stage) raised; lost: the worker's process or node died;
# timeout: the shard made no progress for engine.shard_timeout_s and was cancelled;
# disk_full: the disk the shard writes to is full (whatever else the attempt reported).
FailureKind = Literal["error", "lost", "timeout", "disk_full"]

# An attempt that failed on a full disk: the environment's fault, the same for every shard
# (ENOSPC is errno 28, EDQUOT 122 on Linux; the texts are strerror's and our write errors').
_DISK_FULL = re.compile(r"no space left on device|disk quota exceeded|\[Errno (28|122)\]", re.IGNORECASE)


def is_environmental(error: str) -> bool:
    """Whether an attempt failed on its environment, not its shard (a full disk): such a failure
    stops the build at once and is not counted as an attempt when the build runs again."""
    return _DISK_FULL.search(error) is not None


def counted_errors(errors: list[str]) -> list[str]:
    """The recorded errors of a shard that count as attempts when a build resumes (not a full disk's)."""
    return [error for error in errors if not is_environmental(error)]


def failure_kind(error: str, kind: FailureKind) -> FailureKind:
    """The kind of an attempt's failure: ``disk_full`` when its text says so, else ``kind``."""
    return "disk_full" if is_environmental(error) else kind


_HINTS: dict[str, str] = {
    "lost": "a worker process or node died (out of memory? a GPU fault?); see the Ray logs of the cluster "
    "(/tmp/ray/session_latest/logs on each node)",
    "disk_full": "the disk the run folder is on is full: free space on it (or point dataset.out at a larger "
    "disk); these attempts do not count, the next build retries their shards",
    "timeout": "a shard made no progress (a hung GPU or stuck filesystem?); check the workers' hosts, "
    "or raise engine.shard_timeout_s if shards are legitimately that slow",
}


def cause_key(root: str) -> str:
    """The cause of an error line: numbers masked (shard numbers, file names, counts)."""
    return re.sub(r"\d+", "#", root.strip())[:300]


@dataclass
class Cause:
    example: str  # the first error line seen with this cause, as it was
    kind: FailureKind
    shards: set[int] = field(default_factory=set)
    workers: set[int] = field(default_factory=set)


@dataclass
class FailureLog:
    """Causes of the failed attempts of this build session."""

    causes: dict[str, Cause] = field(default_factory=dict)

    def add(self, shard: int, root: str, *, worker: int | None, kind: FailureKind) -> tuple[Cause, bool]:
        """Record an attempt; returns its cause and whether the cause is new."""
        key = cause_key(root)
        new = key not in self.causes
        cause = self.causes.setdefault(key, Cause(root.strip(), failure_kind(root, kind)))
        cause.shards.add(shard)
        if worker is not None:
            cause.workers.add(worker)
        return cause, new


def _shard_list(shards: list[int], limit: int = 8) -> str:
    head = ", ".join(str(s) for s in shards[:limit])
    return f"[{head}{', ...' if len(shards) > limit else ''}]"


def disk_full_report(reason: str, run_dir: str) -> str:
    """The one line of a build stopped by a full disk, whichever write (a shard's on a worker, a
    plan's in the driver) met it first."""
    return (
        f"{reason}: the disk holding {run_dir} has no space left; free space on it (or point dataset.out at "
        f"a larger disk), then run the same `factory build` command again, or `factory retry {run_dir}` "
        "(the shards already committed are kept; these attempts do not count)"
    )


def failure_report(reason: str, failed: dict[int, str], log: FailureLog, run_dir: str) -> str:
    """The message of a build stopped by its failures: why it stopped, then each cause once
    (how many shards, which, the first error line, a hint by kind), then what to do.

    ``failed`` maps each permanently failed shard to its last error line; causes seen only
    on attempts that are still being retried come from ``log``. A full disk is one line: the
    same cause for every shard, so the list of causes would only repeat it.
    """
    if any(cause.kind == "disk_full" for cause in log.causes.values()):
        return disk_full_report(reason, run_dir)
    grouped: dict[str, list[int]] = {}
    examples: dict[str, str] = {}
    for shard, root in sorted(failed.items()):
        key = cause_key(root)
        grouped.setdefault(key, []).append(shard)
        examples.setdefault(key, root.strip())
    for key, cause in log.causes.items():
        if key not in grouped:
            grouped[key] = sorted(cause.shards)
            examples[key] = cause.example
    kinds = {k: c.kind for k, c in log.causes.items()}
    lines = [reason, "Failures by cause:"]
    for key, shards in sorted(grouped.items(), key=lambda item: -len(item[1])):
        hint = _HINTS.get(failure_kind(examples[key], kinds.get(key, "error")), "")
        lines.append(
            f"  {len(shards)} shard(s) {_shard_list(shards)}: {examples[key]}" + (f" -- {hint}" if hint else "")
        )
    lines.append(
        f"Fix the cause above, then run `factory retry {run_dir}` to rerun the failed shards and finish the "
        f"dataset (each attempt's full error is in {run_dir}/failed/)."
    )
    return "\n".join(lines)


def first_line(error: str) -> str:
    """The root cause of an attempt's error: its first line."""
    lines = error.strip().splitlines()
    return lines[0] if lines else error

"""Named kill points for the crash tests. With ``MIFA_TEST_KILL_AT`` unset (every real build)
:func:`reached` returns at once and does nothing else.

Set to ``<point>`` or ``<point>:<shard>``, the first process to reach that point sends SIGKILL
to the process group of its session's leader, then to its own: for a build started in a new
session (as the kill -9 tests start it) that is the driver with the Ray processes it started,
and the Ray worker at the point (Ray gives each worker a group of its own), killed while the
point's files are exactly as the point names them. The points:

- ``commit``: a shard's commit begins (its temps written, nothing renamed, no stats);
- ``renamed``: the shard's tar and manifest are in place, its stats (the done marker) not yet;
- ``committed``: the shard's stats are written (the shard is done);
- ``index``: index.parquet is written, index.json (the dataset's commit point) not yet.
"""

from __future__ import annotations

import os
import signal

__all__ = ["KILL_POINTS", "reached"]

KILL_POINTS = ("commit", "renamed", "committed", "index")

# Read once: a build's processes inherit the variable from the command the test starts.
_POINT, _, _SHARD = os.environ.get("MIFA_TEST_KILL_AT", "").partition(":")
if _POINT and _POINT not in KILL_POINTS:
    raise ValueError(f"MIFA_TEST_KILL_AT={_POINT!r}: not one of {', '.join(KILL_POINTS)}")


def reached(point: str, shard: int | None = None) -> None:
    """Kill this process group if ``MIFA_TEST_KILL_AT`` names ``point`` (and ``shard``, if it names one)."""
    if point == _POINT and (not _SHARD or shard == int(_SHARD)):
        os.killpg(os.getsid(0), signal.SIGKILL)  # the build: its driver leads the session
        os.killpg(os.getpgid(0), signal.SIGKILL)  # this worker, at once, before its next step

"""A failure record that cannot be written because the disk is full (the build's own failure
log lives on that disk): the build stops with the one disk-full line, not with the record's
write error; any other write error of the record still surfaces."""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path

import pytest

from cluster.actors import TaskFailed
from factory.engine.failures import BuildError
from factory.engine.rundir import RunDir
from manifests.atomic import WriteError, write_error
from tests.engine.test_runner import _runner

DISK_FULL = "WriteError: could not write manifest /r/shards/mifa-000000.parquet: no space left on device; free space"


def _unwritable(code: int) -> Callable[[RunDir, int, str], int]:
    """RunDir.record_failure on a disk that refuses the write with ``code``."""

    def record_failure(self: RunDir, shard: int, error: str) -> int:
        raise write_error(Path(f"/r/failed/mifa-{shard:06d}.json"), OSError(code, "refused"), "could not write")

    return record_failure


def test_a_failure_record_on_a_full_disk_still_stops_with_the_disk_full_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = _runner(tmp_path, 40, workers=2)
    runner.dispatch(0.0)
    monkeypatch.setattr(RunDir, "record_failure", _unwritable(errno.ENOSPC))
    with pytest.raises(BuildError) as stopped:
        runner.on_result(runner.pool.refs[0], TaskFailed(DISK_FULL, DISK_FULL), 1.0)
    message = str(stopped.value)
    assert message.startswith("build stopped: the disk is full (shard(s) [0] could not be written)")
    assert "\n" not in message and f"the disk holding {tmp_path} has no space left" in message
    assert "run the same `factory build` command again" in message and f"factory retry {tmp_path}" in message


def test_a_failure_record_refused_for_another_reason_is_still_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = _runner(tmp_path, 40, workers=2)
    runner.dispatch(0.0)
    monkeypatch.setattr(RunDir, "record_failure", _unwritable(errno.EACCES))
    with pytest.raises(WriteError, match=r"could not write /r/failed/mifa-000000\.json"):
        runner.on_result(runner.pool.refs[0], TaskFailed(DISK_FULL, DISK_FULL), 1.0)


@pytest.mark.parametrize(("code", "stops"), [(errno.ENOSPC, True), (errno.EACCES, False)])
def test_a_plan_the_driver_cannot_write_on_a_full_disk_stops_with_the_same_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, stops: bool
) -> None:
    """The driver writes each shard's plan before sending it: a full disk met there first gives
    the same one line as one met by a worker (a real full-disk build meets either)."""
    runner = _runner(tmp_path, 40, workers=2)

    def load_or_write_plan(self: RunDir, shard: int, make: Callable) -> None:
        raise write_error(
            tmp_path / "plans" / f"t-{shard:06d}.plan.parquet", OSError(code, "refused"), "could not write"
        )

    monkeypatch.setattr(RunDir, "load_or_write_plan", load_or_write_plan)
    if not stops:
        with pytest.raises(WriteError, match="could not write"):
            runner.dispatch(0.0)
        return
    with pytest.raises(BuildError) as stopped:
        runner.dispatch(0.0)
    message = str(stopped.value)
    assert message.startswith("build stopped: the disk is full (the plan of shard 0 could not be written)")
    assert f"the disk holding {tmp_path} has no space left" in message and "\n" not in message
    assert "run the same `factory build` command again" in message

"""Test tiers: which tests are slow, and a guard that fails an unmarked one.

A test is ``slow`` when it starts a Ray cluster (``ray``), runs the ``factory`` CLI in a child
process (``subprocess``), starts the S3 server (``s3``) or a browser (``browser``); the markers
are registered in pyproject.toml. The four come from a module's ``pytestmark``, a test's
decorator, or the fixtures it uses (:data:`FIXTURE_MARKERS`); any of them adds ``slow``.
``make test-fast`` runs ``-m "not slow"``.

While a test that is not marked ``slow`` is set up, runs or is torn down, starting any of the
four fails it, naming the marker it lacks: a new slow test cannot join the fast tier unmarked.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import PurePath
from typing import Any
from unittest import mock

import pytest

SLOW_KINDS = {
    "ray": "starts a Ray cluster (a local one, or a test cluster of several nodes)",
    "subprocess": "runs the factory CLI in a child process (a build, or a command as a user runs it)",
    "s3": "starts the S3 server (moto on 127.0.0.1)",
    "browser": "runs headless Chromium",
}
# Fixtures that start one of the slow kinds: a test using one is marked without being told.
FIXTURE_MARKERS = {
    "ray_cluster": "ray",
    "no_shared_ray": "ray",
    "demo_build": "subprocess",
    "standin_reference": "subprocess",
    "chromium": "browser",
    "s3": "s3",
}
# Costly session fixtures shared by tests that take little time beside them: under pytest-xdist
# (``make test`` runs ``--dist loadgroup``) every test using one runs on the same worker, so it
# is made once: the demo build, and the stand-in build the kill -9 tests (local, S3, full disk)
# compare with. A module as a group queued minutes of builds on one worker while another idled
# (the suite took 1,011 s so on three workers, 921 s test by test on two), so other slow tests
# are scheduled alone, except the ``ray_cluster`` tests below.
SHARED_FIXTURE_GROUPS = ("demo_build", "standin_reference")
# A fast test runs with the rest of its module on one worker: a module's costly fixtures (a
# calibration, a trained realism model, the portraits' detections) were made once per worker
# that ran one of its tests, i.e. twice, when fast tests were scheduled alone.
# The tests on the shared local cluster (``ray_cluster``), dealt in turn into this many groups:
# a group's tests run one after another on one worker and start the cluster once, where tests
# scheduled alone met tests without it in between, which shut it down (seconds of CPU each time).
RAY_CLUSTER_GROUPS = 2
# Ray's own processes: a local cluster starts both, whatever API started it.
_RAY_BINARIES = {"gcs_server", "raylet"}


def mark_slow_tests(items: Sequence[pytest.Item]) -> None:
    """Add the markers the fixtures imply, and ``slow`` to every test with a slow kind."""
    for item in items:
        for fixture, kind in FIXTURE_MARKERS.items():
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(kind)
        if any(item.get_closest_marker(kind) for kind in SLOW_KINDS):
            item.add_marker("slow")


def xdist_group_of(item: pytest.Item) -> str | None:
    """The xdist group ``item`` runs in: the first costly shared fixture it uses, else none."""
    names = getattr(item, "fixturenames", ())
    return next((fixture for fixture in SHARED_FIXTURE_GROUPS if fixture in names), None)


def ray_cluster_groups(items: Sequence[pytest.Item]) -> dict[str, str]:
    """The group of each test on the shared cluster (and in no other group), by node id: the
    tests in node-id order dealt in turn into :data:`RAY_CLUSTER_GROUPS` groups. Every worker
    deals the same: it depends only on the collected node ids."""
    on_ray = sorted(
        _plain_node_id(item)
        for item in items
        if "ray_cluster" in getattr(item, "fixturenames", ()) and xdist_group_of(item) is None
    )
    return {node_id: f"ray_cluster_{i % RAY_CLUSTER_GROUPS}" for i, node_id in enumerate(on_ray)}


def _plain_node_id(item: pytest.Item) -> str:
    return item.nodeid.split("@", 1)[0]


def group_for_xdist(items: Sequence[pytest.Item], *, tag_node_ids: bool = False) -> None:
    """Mark each test with its :func:`xdist_group_of` or :func:`ray_cluster_groups` group, a fast
    test without one with its module (a test's own mark is kept); with ``tag_node_ids`` (an
    xdist worker under ``--dist loadgroup``) also suffix a grouped test's node id with
    ``@group``, which is how the controller schedules a group on one worker. pytest-xdist 3.8
    does that by setting ``item._nodeid``, which pytest 9 no longer reads (its node ids live in
    ``_id``), so without this no group would hold."""
    on_ray = ray_cluster_groups(items)
    for item in items:
        mark = item.get_closest_marker("xdist_group")
        group = mark.args[0] if mark is not None else xdist_group_of(item) or on_ray.get(_plain_node_id(item))
        if group is None and item.get_closest_marker("slow") is None:
            group = _plain_node_id(item).split("::", 1)[0]  # its module
        if group is None:
            continue
        if mark is None:
            item.add_marker(pytest.mark.xdist_group(group))
        if tag_node_ids and "@" not in item.nodeid:
            from _pytest.nodeid import coerce_node_id  # deferred: pytest's private API, for xdist only

            item._id = coerce_node_id(f"{item.nodeid}@{group}")  # type: ignore[attr-defined]


def order_for_xdist(items: list[pytest.Item]) -> None:
    """Sort ``items`` (stably) into the order the xdist controller deals work in: first the slow
    groups (a shared fixture, the shared cluster: the longest units), then the other slow tests,
    then the fast modules. The controller hands a worker its next unit as it finishes one, so the
    longest first leaves short ones to even out the two workers' ends (longest-processing-time
    first). xdist's own order (``--loadscope-reorder``: most tests per unit first) dealt the
    single slow tests, child builds of 20-30 s, last: a worker ran them alone at the end."""

    def rank(item: pytest.Item) -> int:
        if item.get_closest_marker("slow") is None:
            return 2
        return 0 if item.get_closest_marker("xdist_group") is not None else 1

    items.sort(key=rank)


def slow_kind_of(args: Any) -> str | None:
    """Which slow kind a child process's argv starts, if any."""
    argv = [os.fspath(a) for a in ([args] if isinstance(args, str | bytes | os.PathLike) else args)]
    argv = [a.decode() if isinstance(a, bytes) else a for a in argv]
    program = PurePath(argv[0]).name if argv else ""
    if program in _RAY_BINARIES:
        return "ray"
    if program.startswith("chromium") or program.startswith("google-chrome"):
        return "browser"
    if program == "factory" or "factory.cli" in argv:
        return "subprocess"
    return None


def _refuse(kind: str) -> None:
    pytest.fail(
        f"this test {SLOW_KINDS[kind]} but is not marked slow: mark it `pytest.mark.{kind}` "
        "(its module's pytestmark or the test), so `make test-fast` leaves it out",
        pytrace=False,
    )


@contextmanager
def refusing_slow_work() -> Iterator[None]:
    """Within: a child process of a slow kind, or the S3 server, fails the running test."""
    real_init = subprocess.Popen.__init__

    def guarded_init(self: subprocess.Popen[Any], args: Any, *rest: Any, **kwargs: Any) -> None:
        kind = slow_kind_of(args)
        if kind is not None:
            _refuse(kind)
        real_init(self, args, *rest, **kwargs)

    with ExitStack() as stack:
        stack.enter_context(mock.patch.object(subprocess.Popen, "__init__", guarded_init))
        try:
            from moto.server import ThreadedMotoServer  # deferred: a dev dependency, heavy to import
        except ImportError:  # without the dev extra no test can start it
            pass
        else:
            stack.enter_context(mock.patch.object(ThreadedMotoServer, "start", lambda self: _refuse("s3")))
        yield

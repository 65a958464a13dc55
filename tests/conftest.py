"""Session-wide test settings, and the test tiers (``tests.tiers``): markers, and the guard
that fails a test outside the ``slow`` tier which starts Ray, a factory child process, the
S3 server or a browser."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest

from tests.tiers import group_for_xdist, mark_slow_tests, order_for_xdist, refusing_slow_work

pytest_plugins = ["pytester"]

# Keep every Ray node the tests start on 127.0.0.1 (read when Ray is imported).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.hookimpl(tryfirst=True)  # before xdist's own, which reads the xdist_group marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    mark_slow_tests(items)
    group_for_xdist(items, tag_node_ids=bool(getattr(config.option, "loadgroup", False)))
    order_for_xdist(items)


def pytest_configure(config: pytest.Config) -> None:
    # The controller deals units in the collection's order (``tests.tiers.order_for_xdist``),
    # not xdist's default of the units with most tests first.
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    return (yield from _guarded(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    return (yield from _guarded(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Iterator[None]:
    return (yield from _guarded(item))


def _guarded(item: pytest.Item) -> Iterator[None]:
    if item.get_closest_marker("slow"):
        return (yield)
    with refusing_slow_work():
        return (yield)


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Tiny models gain nothing from intra-op threads; on a shared 2-core machine OpenMP
    spin-waiting of several threads made the torch tests several times slower."""
    try:
        import torch
    except ImportError:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def no_ray_left_connected(request: pytest.FixtureRequest) -> None:
    """Before a test that does not use the shared cluster (``ray_cluster``), the one the tests
    before it on this worker left connected is shut down: under xdist any test may follow them,
    and a test proving a command stopped before Ray checks that none is connected."""
    ray = sys.modules.get("ray")
    if "ray_cluster" not in request.fixturenames and ray is not None and ray.is_initialized():
        ray.shutdown()

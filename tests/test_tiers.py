"""The test tiers (``tests.tiers``): which child processes count as slow work, the guard that
fails an unmarked test starting one, and the markers that fixtures imply."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tiers import group_for_xdist, mark_slow_tests, order_for_xdist, refusing_slow_work, slow_kind_of

RAY = Path(sys.executable).parent / "site-packages" / "ray" / "core" / "src" / "ray"


@pytest.mark.parametrize(
    ("argv", "kind"),
    [
        ([str(RAY / "gcs" / "gcs_server"), "--gcs_server_port=0"], "ray"),
        ([str(RAY / "raylet" / "raylet"), "--node_ip_address=127.0.0.1"], "ray"),
        ([sys.executable, "-m", "factory.cli", "build", "r.toml"], "subprocess"),
        (["/work/.venv/bin/factory", "status", "runs/demo"], "subprocess"),
        (["chromium", "--headless", "--screenshot=x.png"], "browser"),
        ([sys.executable, "-c", "import factory"], None),
        (["git", "rev-parse", "HEAD"], None),
        ("factory", "subprocess"),
    ],
)
def test_slow_kinds_of_child_processes(argv: list[str] | str, kind: str | None) -> None:
    assert slow_kind_of(argv) == kind


def test_the_guard_fails_an_unmarked_factory_child_and_lets_others_run() -> None:
    with refusing_slow_work():
        with pytest.raises(pytest.fail.Exception, match=re.escape("not marked slow: mark it `pytest.mark.subprocess`")):
            subprocess.run([sys.executable, "-m", "factory.cli", "--help"], capture_output=True)
        done = subprocess.run([sys.executable, "-c", "print(6 * 7)"], capture_output=True, text=True, check=True)
    assert done.stdout == "42\n"


def test_the_guard_fails_an_unmarked_s3_server() -> None:
    from moto.server import ThreadedMotoServer  # deferred: a dev dependency, heavy to import

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    with refusing_slow_work(), pytest.raises(pytest.fail.Exception, match=re.escape("pytest.mark.s3")):
        server.start()


def test_this_test_is_guarded(request: pytest.FixtureRequest) -> None:
    """The fast tier's tests run under the guard (this one is not slow)."""
    assert request.node.get_closest_marker("slow") is None
    with pytest.raises(pytest.fail.Exception, match=re.escape("pytest.mark.browser")):
        subprocess.run(["chromium", "--version"], capture_output=True)


def test_fixtures_that_start_slow_work_mark_their_tests(pytester: pytest.Pytester) -> None:
    items = pytester.getitems(
        """
        import pytest

        @pytest.fixture
        def ray_cluster(): ...

        @pytest.fixture
        def chromium(): ...

        def test_pure(): ...

        def test_on_ray(ray_cluster): ...

        def test_in_a_browser(chromium): ...

        @pytest.mark.s3
        def test_marked(): ...
        """
    )
    mark_slow_tests(items)
    marks = {item.name: sorted(m.name for m in item.iter_markers()) for item in items}
    assert marks == {
        "test_pure": [],
        "test_on_ray": ["ray", "slow"],
        "test_in_a_browser": ["browser", "slow"],
        "test_marked": ["s3", "slow"],
    }


def test_xdist_groups_a_shared_fixture_the_cluster_in_turns_a_fast_module_and_no_other_slow_test(
    pytester: pytest.Pytester,
) -> None:
    items = pytester.getitems(
        """
        import pytest

        @pytest.fixture
        def ray_cluster(): ...

        @pytest.fixture
        def demo_build(): ...

        def test_pure(): ...

        @pytest.mark.slow
        def test_slow_alone(): ...

        @pytest.mark.slow
        def test_slow_alone(): ...

        def test_on_ray(ray_cluster): ...

        def test_on_ray_too(ray_cluster): ...

        def test_on_ray_and_the_demo(ray_cluster, demo_build): ...

        def test_on_ray_third(ray_cluster): ...

        def test_on_the_demo(demo_build): ...

        @pytest.mark.xdist_group("mine")
        def test_grouped_by_hand(demo_build): ...
        """
    )
    group_for_xdist(items)
    groups = {item.name: [m.args[0] for m in item.iter_markers("xdist_group")] for item in items}
    assert groups == {
        "test_pure": [items[0].nodeid.split("::")[0]],  # a fast test: with its module
        "test_slow_alone": [],
        "test_on_ray": ["ray_cluster_0"],
        "test_on_ray_too": ["ray_cluster_0"],
        "test_on_ray_and_the_demo": ["demo_build"],
        "test_on_ray_third": ["ray_cluster_1"],  # dealt in node-id order: _ray, _ray_third, _ray_too
        "test_on_the_demo": ["demo_build"],
        "test_grouped_by_hand": ["mine"],
    }
    group_for_xdist(items, tag_node_ids=True)  # what an xdist worker does under --dist loadgroup
    assert ["@" in item.nodeid for item in items] == [True, False, True, True, True, True, True, True]
    assert items[2].nodeid.endswith("@ray_cluster_0") and items[5].nodeid.endswith("@ray_cluster_1")
    assert items[6].nodeid.endswith("@demo_build") and items[7].nodeid.endswith("@mine")
    group_for_xdist(items, tag_node_ids=True)  # a second pass deals the same groups
    assert [m.args[0] for m in items[5].iter_markers("xdist_group")] == ["ray_cluster_1"]


def test_xdist_deals_the_slow_groups_first_then_slow_tests_alone_then_fast_modules(
    pytester: pytest.Pytester, request: pytest.FixtureRequest
) -> None:
    items = pytester.getitems(
        """
        import pytest

        @pytest.fixture
        def ray_cluster(): ...

        def test_pure(): ...

        @pytest.mark.slow
        def test_slow_alone(): ...

        def test_pure_too(): ...

        def test_on_ray(ray_cluster): ...

        @pytest.mark.slow
        def test_slow_alone_too(): ...
        """
    )
    mark_slow_tests(items)
    group_for_xdist(items)
    order_for_xdist(items)
    assert [item.name for item in items] == [
        "test_on_ray",
        "test_slow_alone",
        "test_slow_alone_too",
        "test_pure",
        "test_pure_too",
    ]
    # and the controller keeps that order (tests/conftest.py), not xdist's most-tests-first
    assert request.config.option.loadscopereorder is False

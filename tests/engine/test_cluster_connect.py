"""Connecting to Ray without starting it: what a too-slow local start becomes."""

from __future__ import annotations

import pytest
import ray

from cluster.ray_cluster import ClusterError, connect


def test_a_local_start_that_times_out_is_a_cluster_error_not_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    def slow_start(**_: object) -> None:
        raise Exception("The current node timed out during startup. This could happen because ...")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", slow_start)
    with pytest.raises(ClusterError, match="did not start in time"):
        connect()


def test_any_other_start_failure_is_left_to_the_edge(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(**_: object) -> None:
        raise Exception("something else")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", broken)
    with pytest.raises(Exception, match="something else") as caught:
        connect()
    assert not isinstance(caught.value, ClusterError)

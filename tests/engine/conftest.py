from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.standin import STANDIN

REPO = Path(__file__).resolve().parents[2]


def standin_doc(out: Path, **sections: Any) -> dict[str, Any]:
    """A small recipe: grammar prompts, the benchmark stand-in generator, no checks, one CPU
    worker (each worker is a process to start; a test that needs more asks for them)."""
    doc: dict[str, Any] = {
        "dataset": {"name": "t", "target": 24, "shard_size": 6, "seed": 5, "out": str(out)},
        "identities": {"bank": "none"},
        "generator": {"name": STANDIN, "seconds_per_batch": 0.0},
        "face": {"name": "none"},
        "detectors": [],
        "agreement": {"name": "none"},
        "realism": {"name": "none"},
        "filters": {"name": "none"},
        "output": {"image_size": 32},
        "engine": {"cpu_workers": 1, "batch_size": 3, "max_retries": 1},
    }
    for name, value in sections.items():
        if isinstance(value, dict) and isinstance(doc.get(name), dict):
            doc[name] = {**doc[name], **value}
        else:
            doc[name] = value
    return doc


def _start_local_ray() -> None:
    import ray  # deferred: only the Ray tests start it

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    # The test plugins (tests.*, bench.*) on the workers' path through the environment they
    # inherit, not a runtime_env: workers of a runtime_env are started apart from the two
    # Ray prestarts, which then idled (polling: ~3 % of a core) for the whole session.
    paths = [str(REPO), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    ray.init(
        address="local",  # a fresh cluster, never another process's one running on this machine
        num_cpus=2,
        num_gpus=8,
        _node_ip_address="127.0.0.1",
        include_dashboard=False,
        log_to_driver=False,
    )


@pytest.fixture(scope="session")
def _shared_ray() -> Iterator[None]:
    """Shuts down, at the session's end, the local cluster the Ray test modules share."""
    yield
    import ray  # deferred: only the Ray tests start it

    ray.shutdown()


@pytest.fixture
def ray_cluster(_shared_ray: None) -> Any:
    """A local Ray cluster on loopback with 8 logical GPU slots, started once and shared by
    the tests that use it one after another (each start costs seconds on 2 cores); started again
    if a test in between shut it down (``no_shared_ray``, or any test that uses none:
    ``tests/conftest.py``)."""
    import ray  # deferred: only the Ray tests start it

    if not ray.is_initialized():
        _start_local_ray()
    return ray


@pytest.fixture
def no_shared_ray() -> None:
    """No shared cluster connected: for a test that starts a Ray cluster of its own."""
    import ray  # deferred: only the Ray tests start it

    ray.shutdown()


@pytest.fixture(scope="session")
def standin_reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The kill tests' recipe (``tests.engine.cli_builds``) built uninterrupted by the CLI on
    local disk, once per session: what every killed-then-resumed build must equal."""
    # deferred: cli_builds imports this module's standin_doc
    from tests.engine.cli_builds import run_build, write_recipe

    folder = tmp_path_factory.mktemp("reference")
    done = run_build(write_recipe(folder / "ref.toml", folder / "out"))
    assert done.returncode == 0, done.stderr
    # What a user sees: no Ray start-up notice about token authentication, no traceback.
    assert "Token authentication" not in done.stderr and "Traceback" not in done.stderr, done.stderr
    return folder / "out"

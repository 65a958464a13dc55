"""Connecting to Ray: a local cluster on 127.0.0.1 by default, an existing one with --address."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from manifests.errors import FailedError

__all__ = ["ClusterError", "ClusterInfo", "connect", "quiet_auth_notice", "shutdown"]


class ClusterError(FailedError, RuntimeError):
    pass


@dataclass(frozen=True)
class ClusterInfo:
    address: str
    gpus: float
    cpus: float
    nodes: int
    started_here: bool


def connect(address: str | None = None, *, gpus: int = 0, local_gpus: int | None = None) -> ClusterInfo:
    """Join (or start) a Ray cluster and check it has ``gpus`` GPUs, failing at once if not.

    ``local_gpus`` starts the local cluster with that many *logical* GPU slots (Ray
    resources), which tests and benchmarks use to exercise GPU placement without GPUs.
    """
    import ray  # deferred: ~0.5 s at import, and most commands never start a cluster

    quiet_auth_notice()
    # Keep a local cluster on loopback (Ray 2.60 otherwise binds the machine's address).
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    started = False
    if not ray.is_initialized():
        if address:
            try:
                ray.init(address=address, log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise ClusterError(
                    f"cannot connect to the Ray cluster at {address!r} ({exc}); "
                    "check the address (ray://host:10001 or host:6379) and that "
                    "`ray status` works there"
                ) from exc
        else:
            ray.init(
                address="local",  # a fresh cluster, never one left behind on this machine
                _node_ip_address="127.0.0.1",
                include_dashboard=False,
                num_gpus=local_gpus,
                log_to_driver=False,
                configure_logging=False,
            )
            started = True
    res = ray.cluster_resources()
    have = float(res.get("GPU", 0.0))
    if gpus > have:
        raise ClusterError(
            f"--gpus {gpus} asked for, but the Ray cluster has {have:g} GPU(s); lower --gpus, "
            "add GPU nodes, or use --gpus 0 to run on CPU"
        )
    nodes = len([n for n in ray.nodes() if n.get("Alive")])
    return ClusterInfo(address or "local", have, float(res.get("CPU", 0.0)), nodes, started)


# Ray 2.5x/2.6x logs a notice at every ray.init about token authentication being on (or off)
# for the cluster; with configure_logging=False it lands on the user's terminal through
# Python's last-resort handler. Only that module's notices are raised to ERROR: its real
# failures (no token, a bad token) are exceptions, and every other Ray logger is untouched.
AUTH_NOTICE_LOGGER = "ray._private.authentication.authentication_token_setup"


def quiet_auth_notice() -> None:
    logging.getLogger(AUTH_NOTICE_LOGGER).setLevel(logging.ERROR)


def shutdown(info: ClusterInfo, *, force: bool = False) -> None:
    """Leave the cluster: stop it if this process started it, or always with ``force``."""
    import ray  # deferred: see connect()

    if (info.started_here or force) and ray.is_initialized():
        ray.shutdown()

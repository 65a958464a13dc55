"""Connecting to Ray: a local cluster on 127.0.0.1 by default, an existing one with --address."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from manifests.errors import FailedError

__all__ = [
    "AUTH_ADVICE",
    "ClusterError",
    "ClusterInfo",
    "auth_failure",
    "connect",
    "connect_failure",
    "quiet_auth_notice",
    "shutdown",
]


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
            except (ConnectionError, RuntimeError, ValueError, ray.exceptions.AuthenticationError) as exc:
                raise ClusterError(connect_failure(address, exc)) from exc
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


# Ray >= 2.5x: `ray start --head` turns token authentication on; a driver joins such a cluster
# only with RAY_AUTH_MODE=token and the head's token (RAY_AUTH_TOKEN, or RAY_AUTH_TOKEN_PATH to a
# file; `ray get-auth-token` on the head prints it). Without them ray.init fails with an
# AuthenticationError, or with Ray's own words for it (InvalidAuthToken, UNAUTHENTICATED).
_AUTH_WORDS = ("invalidauthtoken", "unauthenticated", "authentication token", "auth_token", "token authentication")
AUTH_ADVICE = (
    "set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN=<the head's token> (print it with `ray get-auth-token` on the "
    "head node), or RAY_AUTH_TOKEN_PATH=<a file holding it>, in the environment of `factory build`"
)


def auth_failure(address: str, exc: BaseException) -> str | None:
    """The message for a connection to ``address`` refused for token authentication, or
    ``None`` when ``exc`` is some other failure."""
    import ray  # deferred: see connect()

    text = f"{type(exc).__name__} {exc}".lower()
    if not isinstance(exc, ray.exceptions.AuthenticationError) and not any(w in text for w in _AUTH_WORDS):
        return None
    mode = os.environ.get("RAY_AUTH_MODE", "unset")
    has_token = bool(os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"))
    state = f"RAY_AUTH_MODE is {mode}, {'a token is set' if has_token else 'no token is set'}"
    return (
        f"the Ray cluster at {address!r} refused this driver: it has token authentication on ({state}); "
        f"{AUTH_ADVICE}" + ("; the token set does not match the head's" if has_token and mode == "token" else "")
    )


def connect_failure(address: str, exc: BaseException) -> str:
    """What to say when ``ray.init(address)`` failed: the token-auth fix when the failure says
    so; otherwise check the address, and, unless RAY_AUTH_MODE=token is set, the auth fix too
    (Ray reports a refused token only in its own log lines, after the GCS retries give up)."""
    refused = auth_failure(address, exc)
    if refused is not None:
        return refused
    message = (
        f"cannot connect to the Ray cluster at {address!r} ({str(exc).splitlines()[0] if str(exc) else exc!r}); "
        "check the address (ray://host:10001 or host:6379) and that `ray status` works there"
    )
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
        message += (
            f"; if the cluster has token authentication on (a plain `ray start --head` turns it on), {AUTH_ADVICE}"
        )
    return message


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

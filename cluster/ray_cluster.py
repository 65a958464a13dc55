"""Connecting to Ray: a local cluster on 127.0.0.1 by default, an existing one with --address."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from dataclasses import dataclass
from types import FrameType

from manifests.errors import FailedError, UserError

__all__ = [
    "AUTH_ADVICE",
    "ClusterError",
    "ClusterInfo",
    "ClusterRequestError",
    "auth_failure",
    "check_request",
    "connect",
    "connect_failure",
    "quiet_auth_notice",
    "shutdown",
    "stop_on_sigterm",
]

# How long a TCP connect to --address may take before the address counts as unreachable
# (Ray itself retries its GCS connection for minutes, printing each try).
PROBE_TIMEOUT_S = 5.0
_START_A_CLUSTER = "start one there with `ray start --head` or leave --address out to run a local cluster"


class ClusterError(FailedError, RuntimeError):
    pass


class ClusterRequestError(UserError, RuntimeError):
    """What the build asks of a cluster cannot be had: an address nothing answers at, a
    cluster that refuses this driver's token (or its lack of one), more GPUs than the machine
    has. Input to fix (exit 2), found before Ray starts where it can be."""


@dataclass(frozen=True)
class ClusterInfo:
    address: str
    gpus: float
    cpus: float
    nodes: int
    started_here: bool


def _host_port(address: str) -> tuple[str, int] | None:
    """``host:port`` of ``ray://host:10001`` or ``host:6379``; None for ``auto``/``local``."""
    rest = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def probe_address(address: str) -> None:
    """Refuse at once an address nothing answers at (a bounded TCP connect)."""
    target = _host_port(address)
    if target is None:
        if address.strip() in ("auto", "local"):
            return
        raise ClusterRequestError(
            f"--address {address!r} is not host:port; pass the head node's ray://host:10001 or host:6379"
        )
    try:
        socket.create_connection(target, timeout=PROBE_TIMEOUT_S).close()
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or type(exc).__name__)
        raise ClusterRequestError(
            f"no Ray cluster answers at --address {address} ({reason}); {_START_A_CLUSTER}, "
            "or check the host, the port and the firewall"
        ) from None
    if "://" not in address:  # a GCS address; ray:// is Ray Client's own protocol
        probe_token_auth(address, target)


def probe_token_auth(address: str, target: tuple[str, int]) -> None:
    """Refuse at once a cluster whose GCS rejects this driver's token, or its lack of one: the
    first call of Ray's own handshake (``GetClusterId``) with the metadata Ray would send, one
    bounded try. Ray's client retries a refused call for many seconds, printing each refusal,
    and then reports only that it could not connect. Any other outcome is left to ``ray.init``."""
    try:
        import grpc  # deferred: Ray's own dependency, needed only to reach an existing cluster
        from ray._private.authentication.grpc_authentication_client_interceptor import (  # deferred: as grpc
            _get_authentication_metadata_tuple,
        )
        from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc  # deferred: as grpc
    except ImportError:  # a Ray without token authentication
        return
    with grpc.insecure_channel(f"{target[0]}:{target[1]}") as channel:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        try:
            stub.GetClusterId(
                gcs_service_pb2.GetClusterIdRequest(),
                timeout=PROBE_TIMEOUT_S,
                metadata=_get_authentication_metadata_tuple(),
            )
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                raise ClusterRequestError(_refused_message(address)) from None


def _visible_gpus() -> int:
    """The GPUs a local Ray cluster would see (CUDA_VISIBLE_DEVICES honoured)."""
    import torch  # deferred: heavy, and only a GPU build asks

    return int(torch.cuda.device_count())


def check_request(address: str | None, *, gpus: int, local_gpus: int | None = None) -> None:
    """What can be checked before Ray starts: an --address that answers, and for a local
    cluster the GPUs ``--gpus`` asks for (logical ones with ``local_gpus``)."""
    if address:
        probe_address(address)
        return
    have = local_gpus if local_gpus is not None else (_visible_gpus() if gpus > 0 else 0)
    if gpus > have:
        where = f"--local-gpus {local_gpus}" if local_gpus is not None else "this machine"
        raise ClusterRequestError(
            f"--gpus {gpus} (engine.gpus) asked for, but {where} has {have} GPU(s); lower it, use --gpus 0 to "
            "run on CPU, or pass --address of a cluster with GPU nodes"
        )


def _interrupted(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def stop_on_sigterm() -> None:
    """SIGTERM stops the process as Ctrl-C does: the build's ``finally`` blocks shut Ray down,
    release the lock and leave no half-written file (Ray's own handler would exit at once)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupted)
        signal.signal(signal.SIGINT, signal.default_int_handler)


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
            probe_address(address)
            try:
                ray.init(address=address, log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError, ray.exceptions.AuthenticationError) as exc:
                refused = auth_failure(address, exc)
                if refused is not None:  # the environment to set: input, as the probe says
                    raise ClusterRequestError(refused) from exc
                raise ClusterError(connect_failure(address, exc)) from exc
        else:
            try:
                ray.init(
                    address="local",  # a fresh cluster, never one left behind on this machine
                    _node_ip_address="127.0.0.1",
                    include_dashboard=False,
                    num_gpus=local_gpus,
                    log_to_driver=False,
                    configure_logging=False,
                )
            except Exception as exc:  # Ray raises a bare Exception when its own processes start too slowly
                if "timed out during startup" not in str(exc):
                    raise
                raise ClusterError(
                    "the local Ray cluster did not start in time (its GCS or raylet was too slow: the machine "
                    "is overloaded or short of memory); run the same command again when the load is lower"
                ) from exc
            started = True
        stop_on_sigterm()  # ray.init installs a handler that exits without cleaning up
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
    return _refused_message(address)


def _refused_message(address: str) -> str:
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

"""An S3-compatible server for the tests: moto's server mode on 127.0.0.1, the real client
(s3fs over botocore) pointed at it through the environment, fake credentials only there."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from unittest import mock

# A value a leak would show: it must never reach a written file or the CLI's output.
SECRET = f"sekrit-{uuid.uuid4().hex}"


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    bucket: str

    def url(self, prefix: str) -> str:
        return f"s3://{self.bucket}/{prefix}"

    def fs(self):
        import s3fs  # deferred: the [s3] extra; only these tests need a client

        return s3fs.S3FileSystem(use_listings_cache=False, skip_instance_cache=True)


def forget_clients() -> None:
    import s3fs  # deferred: the [s3] extra; only these tests need a client

    # fsspec caches filesystem instances (endpoint included): another module's server is gone.
    s3fs.S3FileSystem.clear_instance_cache()


@contextmanager
def s3_server() -> Iterator[S3Server]:
    """Start the server, set the client's environment (restored after) and make a bucket."""
    from moto.server import ThreadedMotoServer  # deferred: a dev dependency, heavy to import

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ACCESS_KEY_ID": "testing-key-id",
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    try:
        with mock.patch.dict(os.environ, env):  # the environment as it was, after
            forget_clients()
            bucket = f"mifa-{uuid.uuid4().hex[:8]}"
            store = S3Server(env["AWS_ENDPOINT_URL"], bucket)
            store.fs().mkdir(bucket)
            yield store
    finally:
        forget_clients()
        server.stop()

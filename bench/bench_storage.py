"""Object storage vs local disk: the same stand-in build (no sleep: the engine's I/O is what
differs) to a folder and to an S3-compatible server on this machine (moto's server mode, the
real s3fs client), one run each; the ratio of their samples/s from workers ready to index
written. A local moto server has no network latency and is single-threaded Python, so the
ratio shows the engine's staging + upload path, not a real bucket's throughput.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any
from unittest import mock

from bench.bench_engine import _doc
from factory.engine.build import build
from factory.recipe import recipe_from_dict

TARGET = 2_000
SHARD_SIZE = 200


def _rate(out: str) -> tuple[float, float]:
    doc = _doc(Path("unused"), target=TARGET, shard_size=SHARD_SIZE, gpus=0, seconds=0.0, batch=20)
    doc["dataset"]["out"] = out
    doc["output"]["image_size"] = 128
    summary = build(recipe_from_dict(doc), quiet=True)
    return summary.accepted / summary.run_seconds, summary.run_seconds


def _moto_env() -> tuple[Any, dict[str, str]]:
    from moto.server import ThreadedMotoServer  # deferred: a dev dependency, only this benchmark needs it

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    return server, env


def main() -> str:
    with tempfile.TemporaryDirectory() as tmp:
        local_rate, local_s = _rate(str(Path(tmp) / "out"))
    server, env = _moto_env()
    try:
        with mock.patch.dict(os.environ, env):  # restored after, as it was
            import s3fs  # deferred: the [s3] extra, only this benchmark needs it

            s3fs.S3FileSystem(skip_instance_cache=True).mkdir("bench")
            s3_rate, s3_s = _rate("s3://bench/out")
    finally:
        server.stop()
    return "\n".join(
        [
            "### Object storage vs local disk (bench.bench_storage)",
            "",
            f"Stand-in build, {TARGET:,} samples of 128 px in shards of {SHARD_SIZE}, 2 CPU workers,",
            "no generator sleep; one run each, from workers ready to index written. The moto server",
            "runs in the benchmark's process (single-threaded Python, on the same 2 cores): an upper",
            "bound on the staging + upload cost, not a real bucket's throughput.",
            "",
            "| output | seconds | samples/s | vs local disk |",
            "|---|---:|---:|---:|",
            f"| local disk | {local_s:.1f} | {local_rate:.0f} | 1.00x |",
            f"| s3:// on a local moto server | {s3_s:.1f} | {s3_rate:.0f} | {s3_rate / local_rate:.2f}x |",
        ]
    )


if __name__ == "__main__":
    print(main())

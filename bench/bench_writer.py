"""Shard writer overhead: ShardWriter vs a plain ``tarfile`` loop on the same encoded bytes.

Both write the same members (``{key}.jpg`` pre-encoded, ``{key}.json``) and fsync the tar;
the writer additionally builds and writes the Parquet manifest, hashes the tar (sha256),
writes the stats JSON and renames atomically. Target: writer throughput >= 0.9 x plain.

Run: ``.venv/bin/python -m bench.bench_writer`` (prints markdown).
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from manifests.schema import MANIFEST_SCHEMA, N_AUS
from manifests.writer import ShardWriter, sample_json

__all__ = ["main"]

SAMPLES = 2000
IMAGE_SIZE = 256
REPEATS = 7


def _records(n: int, seed: int = 0) -> list[dict[str, Any]]:

    rng = np.random.default_rng(seed)
    # A few distinct smooth-plus-noise images (JPEG sizes like real faces, ~15-30 kB at 256 px).
    grid = np.linspace(0, 255, IMAGE_SIZE, dtype=np.float32)
    encoded = []
    for k in range(8):
        base = (grid[None, :, None] * (k + 1) / 8 + grid[:, None, None] / 2) % 256
        noise = rng.normal(0, 12, (IMAGE_SIZE, IMAGE_SIZE, 3))
        image = np.clip(base + noise, 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="JPEG", quality=95)
        encoded.append(buf.getvalue())
    records = []
    for i in range(n):
        occurrence = rng.integers(0, 2, N_AUS).astype(np.int8)
        intensity = (occurrence * rng.integers(1, 6, N_AUS)).astype(np.int8)
        record: dict[str, Any] = {name: None for name in MANIFEST_SCHEMA.names if name != "accepted"}
        record.update(
            key=f"000000_{i:05d}",
            shard=0,
            index=i,
            seed=i,
            emotion="happiness",
            planned_intensity=intensity,
            identity_id=f"id{i % 50}",
            ethnicity="white",
            age_band="adult",
            gender="female",
            identity_match="exact",
            description="A smiling face with raised cheeks and parted lips. " * 3,
            label_source="planned",
            au_occurrence=occurrence,
            au_intensity=intensity,
            consensus_occurrence=occurrence,
            consensus_intensity=intensity.astype(np.float32),
            agreement_score=0.8,
            realism_score=0.9,
            width=IMAGE_SIZE,
            height=IMAGE_SIZE,
            image_bytes=encoded[i % len(encoded)],
            detector_votes={
                "geometric": {
                    "occurrence": occurrence.astype(np.float32),
                    "intensity": intensity.astype(float),
                },
                "appearance": {"occurrence": occurrence.astype(np.float32), "intensity": [None] * N_AUS},
            },
        )
        for name in ("votes", "image_member", "image_format"):
            del record[name]
        records.append(record)
    return records


def _plain_tarfile(directory: Path, records: list[dict[str, Any]], jsons: list[bytes]) -> None:
    path = directory / "plain.tar"
    with open(path, "wb") as fh:
        with tarfile.open(fileobj=fh, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for record, doc in zip(records, jsons, strict=True):
                for name, data in (
                    (f"{record['key']}.jpg", record["image_bytes"]),
                    (f"{record['key']}.json", doc),
                ):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        fh.flush()
        os.fsync(fh.fileno())


def _shard_writer(directory: Path, records: list[dict[str, Any]], checksum: bool) -> None:
    with ShardWriter(directory, "bench", 0, overwrite=True, checksum=checksum) as writer:
        for record in records:
            writer.add(record)
        writer.commit()


def _best_of(runs: dict[str, Callable[[Path], None]], repeats: int) -> dict[str, tuple[float, float]]:
    """Best wall and best CPU time (all threads of this process) of each run.

    Rounds interleave the runs so load drift hits all alike. CPU time is reported too
    because on a shared machine the wall time mostly measures the neighbours.
    """
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            directory = Path(tempfile.mkdtemp(prefix="bench-writer-"))
            try:
                wall, cpu = time.perf_counter(), time.process_time()
                run(directory)
                times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
            finally:
                shutil.rmtree(directory, ignore_errors=True)
    return {name: (min(w for w, _ in v), min(c for _, c in v)) for name, v in times.items()}


def main(samples: int = SAMPLES, repeats: int = REPEATS) -> str:
    records = _records(samples)
    # The plain loop gets the JSON members ready-made: only the writer pays for building them.
    jsons = [sample_json(r, True) for r in records]
    megabytes = sum(len(r["image_bytes"]) + len(j) for r, j in zip(records, jsons, strict=True)) / 1e6
    best = _best_of(
        {
            "plain tarfile loop (+fsync)": lambda d: _plain_tarfile(d, records, jsons),
            # The same loop building each label JSON itself, as any writer must.
            "plain tarfile loop + label JSON": lambda d: _plain_tarfile(
                d, records, [sample_json(r, True) for r in records]
            ),
            "ShardWriter (sha256, Parquet, stats)": lambda d: _shard_writer(d, records, checksum=True),
            "ShardWriter (checksum=False)": lambda d: _shard_writer(d, records, checksum=False),
        },
        repeats,
    )
    plain_wall, plain_cpu = best["plain tarfile loop (+fsync)"]
    lines = [
        "### Shard writer vs plain tarfile",
        "",
        f"{samples} samples, {IMAGE_SIZE}px JPEG pre-encoded, {megabytes:.1f} MB of members; "
        f"best of {repeats} interleaved rounds; `python -m bench.bench_writer`.",
        "",
        "| writer | wall s | samples/s | MB/s | throughput vs plain | CPU s | CPU vs plain |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, (wall, cpu) in best.items():
        lines.append(
            f"| {name} | {wall:.3f} | {samples / wall:,.0f} | {megabytes / wall:,.0f} | "
            f"{plain_wall / wall:.2f}x | {cpu:.3f} | {cpu / plain_cpu:.2f}x |"
        )
    writer_wall, writer_cpu = best["ShardWriter (sha256, Parquet, stats)"]
    ratio = plain_wall / writer_wall
    verdict = "meets" if ratio >= 0.9 else "misses"
    lines += [
        "",
        f"ShardWriter throughput = {ratio:.2f} x plain loop by wall time ({verdict} the >= 0.9 target), "
        f"{plain_cpu / writer_cpu:.2f} x by CPU time; load average {os.getloadavg()[0]:.1f} on "
        f"{os.cpu_count()} CPUs while measuring.",
        "The writer's extra work per shard: one label JSON per sample (orjson), the Parquet manifest, "
        "sha256 of the tar (on a helper thread, in 4 MB batches), a second fsync (manifest, overlapped "
        "with the tar's) and the stats file. It is faster than the plain loop because it builds each "
        "USTAR header from a template (byte-identical to tarfile's, tested) instead of "
        "`TarInfo.tobuf` (~25 us per header) and writes each member in one call.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(main())

"""Dataset tools at a million samples: `factory filter` and `factory export` time and peak memory.

The benchmark makes its own synthetic dataset: 1,000 shards of 1,000 samples with small
images (32 px JPEG, a pool of distinct ones) written by the real ShardWriter and indexed by
the real index writer, with varied labels, consensus, agreement scores and demographics.
The 10k dataset is the same data's first 10 shards (its own index over the same shards).

Measured, each command in a fresh process (peak RSS sampled every 0.2 s, as
bench_engine does):

- `factory filter RUN SUB --min-intensity AU12=3 --consensus full --balance ethnicity
  --limit N` (N = 5 % of the dataset: 500 at 10k, 50,000 at 1M);
- `factory export SUB OUT --shard-bytes 1GB` (the 50k of them as WebDataset shards of 1 GB);
- `factory export RUN OUT --shard-bytes 1GB` (the whole dataset), against a plain read of the
  same tars (every member read with Python's tarfile, the plain way) and webdataset's own
  reader, each in a fresh process over a warm page cache, alternating twice (best of each).
  Target: export >= 0.8 x plain read.

Sizes 10k, 100k and 1M: memory that stops growing between 100k and 1M is bounded (DuckDB's
own memory is capped), not a leak in the number of samples.

Run one size: ``python -m bench.bench_tools 10000``.
"""

from __future__ import annotations

import io
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench.bench_engine import _peak_rss
from manifests.index import write_index
from manifests.schema import MANIFEST_SCHEMA, N_AUS
from manifests.vocab import ETHNICITIES
from manifests.writer import ShardWriter

__all__ = ["main", "make_dataset"]

SHARD = 1000
IMAGE = 32
ETHNIC_WEIGHTS = np.array([0.35, 0.2, 0.15, 0.15, 0.1, 0.05])  # unbalanced on purpose

_PLAIN_READ = """
import sys, tarfile, time
from pathlib import Path
t0 = time.perf_counter(); members = 0; size = 0
for tar in sorted(Path(sys.argv[1]).glob('*.tar'))[: int(sys.argv[2])]:
    with tarfile.open(tar) as archive:
        for member in archive:
            data = archive.extractfile(member).read(); members += 1; size += len(data)
Path(sys.argv[3]).write_text(f"{members // 2} {time.perf_counter() - t0}")
"""
_WDS_READ = """
import sys, time
from pathlib import Path
import webdataset as wds
tars = [str(p) for p in sorted(Path(sys.argv[1]).glob('*.tar'))[: int(sys.argv[2])]]
t0 = time.perf_counter(); n = sum(1 for _ in wds.WebDataset(tars, shardshuffle=False, empty_check=False))
Path(sys.argv[3]).write_text(f"{n} {time.perf_counter() - t0}")
"""


def _images(rng: np.random.Generator, count: int = 64) -> list[bytes]:
    out = []
    for _ in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (IMAGE, IMAGE, 3), dtype=np.uint8)).save(buffer, "JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def _labels(rng: np.random.Generator, count: int = 256) -> list[dict[str, Any]]:
    pool = []
    for _ in range(count):
        occurrence = (rng.random(N_AUS) < 0.3).astype(np.int8)
        intensity = (occurrence * rng.integers(1, 6, N_AUS)).astype(np.int8)
        consensus = occurrence.copy()
        if rng.random() < 0.3:
            consensus[rng.integers(0, N_AUS)] = -1
        votes = {
            "geometric": {"occurrence": occurrence.astype(np.float32), "intensity": intensity.astype(np.float32)},
            "appearance": {"occurrence": (occurrence * 0.9).astype(np.float32), "intensity": [None] * N_AUS},
        }
        pool.append(
            {
                "planned_intensity": intensity,
                "au_occurrence": occurrence,
                "au_intensity": intensity,
                "consensus_occurrence": consensus,
                "consensus_intensity": intensity.astype(np.float32),
                "agreement_score": 1.0 if rng.random() < 0.7 else 0.75,
                "detector_votes": votes,
            }
        )
    return pool


def make_dataset(root: Path, shards: int, seed: int = 0) -> Path:
    """A committed dataset of ``shards`` x 1,000 accepted samples under ``root``."""
    rng = np.random.default_rng(seed)
    images, labels = _images(rng), _labels(rng)
    template: dict[str, Any] = {n: None for n in MANIFEST_SCHEMA.names if n not in ("accepted", "votes")}
    template.update(
        emotion="mixed", age_band="adult", identity_match="exact", label_source="exact", generator="bench",
        description="a synthetic face for the tools benchmark", realism_score=0.9, label_jaccard=1.0,
    )  # fmt: skip
    for shard in range(shards):
        ethnic = rng.choice(len(ETHNICITIES), SHARD, p=ETHNIC_WEIGHTS)
        with ShardWriter(root / "shards", "bench", shard) as writer:
            for i in range(SHARD):
                record = {**template, **labels[int(rng.integers(len(labels)))]}
                record.update(
                    key=f"{shard:06d}_{i:05d}", shard=shard, index=i, seed=shard * SHARD + i,
                    identity_id=f"gen-{shard:06d}-{i:05d}", ethnicity=ETHNICITIES[ethnic[i]],
                    gender=("female", "male")[i % 2], image_bytes=images[(shard * 7 + i) % len(images)],
                    width=IMAGE, height=IMAGE,
                )  # fmt: skip
                writer.add(record)
            writer.commit()
    write_index(root, "bench", list(range(shards)), target=shards * SHARD, surplus=[], failed={})
    return root


def _prefix(big: Path, root: Path, shards: int) -> Path:
    """A dataset made of the first ``shards`` shards of ``big`` (its own index, the same files)."""
    root.mkdir(parents=True, exist_ok=True)
    write_index(
        root, "bench", list(range(shards)), target=shards * SHARD, surplus=[], failed={}, shards_dir=big / "shards"
    )
    return root


def _cpu_of(cmd: list[str]) -> tuple[float, float, float]:
    """(peak RSS MiB, wall s, CPU s) of a command run to completion: the machine is shared,
    so CPU seconds (user + system, from the children's rusage) are the steadier measure."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    peak, wall = _peak_rss(cmd)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return peak, wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _factory(*args: str) -> tuple[float, float, float]:
    return _cpu_of([sys.executable, "-m", "factory.cli", *args])


def _read(script: str, shards_dir: Path, shards: int, work: Path) -> tuple[float, float, float]:
    """(samples/s, peak RSS MiB, CPU s) of a reader process over the first ``shards`` tars."""
    result = work / "read-result.txt"
    peak, _, cpu = _cpu_of([sys.executable, "-c", script, str(shards_dir), str(shards), str(result)])
    samples, seconds = result.read_text().split()
    return int(samples) / float(seconds), peak, cpu


def measure(run: Path, shards_dir: Path, shards: int, work: Path, rounds: int = 2) -> dict[str, float]:
    """Filter, export of the subset, export of everything, and the plain reads, for one size.

    The plain read and the whole export alternate ``rounds`` times and the best rate of each
    counts (the machine is shared: a busy moment must not decide the ratio); peak RSS is the
    largest seen."""
    n = shards * SHARD
    subset, out_subset, out_all = work / f"sub{n}", work / f"exp-sub{n}", work / f"exp-all{n}"
    limit = str(n // 20)
    filter_s = _factory("filter", str(run), str(subset), "--min-intensity", "AU12=3", "--consensus", "full",
                        "--balance", "ethnicity", "--limit", limit)  # fmt: skip
    export_sub = _factory("export", str(subset), str(out_subset), "--shard-bytes", "1GB", "-q")
    shutil.rmtree(out_subset, ignore_errors=True)
    _read(_PLAIN_READ, shards_dir, shards, work)  # warm the page cache for every reader alike
    plain, export_rate, export_rss, export_wall, plain_rss = 0.0, 0.0, 0.0, float("inf"), 0.0
    plain_cpu, export_cpu = float("inf"), float("inf")
    for _ in range(rounds):
        rate, rss, cpu = _read(_PLAIN_READ, shards_dir, shards, work)
        plain, plain_rss, plain_cpu = max(plain, rate), max(plain_rss, rss), min(plain_cpu, cpu)
        peak, wall, cpu = _factory("export", str(run), str(out_all), "--shard-bytes", "1GB", "-q")
        # The export's own clock (export.json): the plain read is timed inside its process too,
        # so neither rate counts interpreter start-up and imports.
        seconds = json.loads((out_all / "export.json").read_text())["seconds"]
        export_rate, export_rss, export_wall = (
            max(export_rate, n / seconds),
            max(export_rss, peak),
            min(export_wall, wall),
        )
        export_cpu = min(export_cpu, cpu)
        shutil.rmtree(out_all, ignore_errors=True)
    wds_rate, _, _ = _read(_WDS_READ, shards_dir, shards, work)
    return {
        "n": n,
        "filter_rss": filter_s[0],
        "filter_s": filter_s[1],
        "export_sub_rss": export_sub[0],
        "export_sub_s": export_sub[1],
        "export_rss": export_rss,
        "export_s": export_wall,
        "export_rate": export_rate,
        "plain_rate": plain,
        "plain_rss": plain_rss,
        "cpu_ratio": plain_cpu / export_cpu,  # whole processes, start-up included
        "wds_rate": wds_rate,
    }


def _table(rows: list[dict[str, float]]) -> list[str]:
    lines = [
        "| dataset | filter s | filter peak RSS MiB | export 5 % subset s | its peak RSS MiB | export all s "
        "| export peak RSS MiB | export samples/s | plain tarfile read samples/s | export / plain "
        "| same, by CPU seconds | webdataset read samples/s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {int(r['n']):,} | {r['filter_s']:.1f} | {r['filter_rss']:.0f} | {r['export_sub_s']:.1f} | "
            f"{r['export_sub_rss']:.0f} | {r['export_s']:.1f} | {r['export_rss']:.0f} | {r['export_rate']:,.0f} | "
            f"{r['plain_rate']:,.0f} | **{r['export_rate'] / r['plain_rate']:.2f}** | {r['cpu_ratio']:.2f} | "
            f"{r['wds_rate']:,.0f} |"
        )
    return lines


def main(sizes: tuple[int, ...] = (10_000, 100_000, 1_000_000)) -> str:
    shard_counts = [max(1, s // SHARD) for s in sizes]
    with tempfile.TemporaryDirectory(prefix="bench-tools-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        big = make_dataset(work / "big", max(shard_counts))
        made = time.perf_counter() - t0
        rows = []
        for shards in shard_counts:
            run = big if shards == max(shard_counts) else _prefix(big, work / f"run{shards}", shards)
            rows.append(measure(run, big / "shards", shards, work))
    lines = [
        "### Dataset tools: filter and export (`python -m bench.bench_tools`)",
        "",
        f"Synthetic dataset made by the benchmark: {max(shard_counts) * SHARD:,} samples in shards of {SHARD:,}, "
        f"{IMAGE} px JPEG images, written by ShardWriter and indexed ({made:.0f} s); smaller sizes index a prefix "
        "of its shards. Each command runs in a fresh process; peak RSS sampled every 0.2 s. Filter: "
        "`--min-intensity AU12=3 --consensus full --balance ethnicity --limit` 5 % of the dataset; exports: "
        "WebDataset shards of 1 GB (`--shard-bytes 1GB`). Plain read: every member of the same tars read with "
        "tarfile, one process, warm page cache (export reads and writes, so it is compared with reading alone). "
        "Throughputs are timed inside each process (the export's own clock, export.json `seconds`): start-up "
        "and imports (~2 s for the CLI) are in the wall times, not in the rates. Plain read and whole export "
        "alternate twice: best rate of each, largest peak RSS. The machine is shared with other work, so the "
        "ratio is also given by CPU seconds (user + system of each whole process, start-up included).",
        "",
        *_table(rows),
    ]
    if len(rows) >= 2:
        small, large = rows[0], rows[-1]
        sizes_text = f"{int(large['n']):,} / {int(small['n']):,}"
        filter_ratio = large["filter_rss"] / small["filter_rss"]
        export_ratio = large["export_rss"] / small["export_rss"]
        throughput = large["export_rate"] / large["plain_rate"]
        lines += [
            "",
            f"Peak RSS ratio {sizes_text}: filter **{filter_ratio:.2f}**, export **{export_ratio:.2f}** "
            f"(target: under 1 GiB at any size, flat). Export throughput vs plain read at {int(large['n']):,}: "
            f"**{throughput:.2f}** by wall-clock rate, **{large['cpu_ratio']:.2f}** by CPU seconds (target >= 0.8).",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    sizes = tuple(int(x) for x in sys.argv[1:]) or (10_000, 100_000, 1_000_000)
    print(main(sizes))

"""Engine benchmarks with the BENCHMARK STAND-IN generator (fixed sleep per batch).

1. Efficiency: end-to-end samples/s of `factory build` on 8 logical GPUs vs the bare loop
   of the same stand-in (8 x one process calling it back to back), measured in one run.
2. Scaling: samples/s on 8 logical GPUs vs 8 x samples/s on 1.
3. Tail efficiency: 12 and 20 shards on 8 logical GPUs vs the ideal ceil(shards / 8) shard-times.
4. The 1M rehearsal and driver memory: `factory build` of 1,000,000 planned samples in 1,000
   shards on 8 logical GPUs (stand-in without sleep), then `factory status` and `factory
   verify` on it; peak RSS of the driver process, compared with a 10k build.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from bench.standin import STANDIN
from factory.engine.build import build
from factory.recipe import recipe_from_dict
from stages.base import StageContext
from stages.pipeline import Pipeline, StageSpec

REPO = Path(__file__).resolve().parents[1]
SECONDS_PER_BATCH = 0.25
BATCH = 8
BATCHES_PER_SHARD = 16  # 128 samples: per-shard commit cost amortised as in real 1000-sample shards


def _doc(
    out: Path,
    *,
    target: int,
    shard_size: int,
    gpus: int,
    seconds: float,
    batch: int,
    rounds: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """The stand-in recipe; ``rounds`` (round_shards, round_lag_shards): [balance]'s closed loop on
    (the stand-in accepts every sample, so what it adds is the driver's planning and selection)."""
    doc: dict[str, Any] = {
        "dataset": {"name": "bench", "target": target, "shard_size": shard_size, "seed": 1, "out": str(out)},
        "identities": {"bank": "none"},
        "generator": {"name": STANDIN, "seconds_per_batch": seconds},
        "face": {"name": "none"},
        "detectors": [],
        "agreement": {"name": "none"},
        "realism": {"name": "none"},
        "filters": {"name": "none"},
        "output": {"image_size": 32, "image_quality": 90},
        # the stand-in accepts everything: tell the scheduler so it does not over-provision
        "engine": {"gpus": gpus, "batch_size": batch, "expected_acceptance_rate": 1.0, "cpu_workers": 2},
    }
    if rounds is not None:
        doc["balance"] = {"enabled": True, "round_shards": rounds[0], "round_lag_shards": rounds[1]}
    return doc


def _toml(doc: dict[str, Any], path: Path) -> Path:
    lines = [f"{k} = {json.dumps(v)}" for k, v in doc.items() if isinstance(v, list)]
    for section, body in doc.items():
        if isinstance(body, dict):
            lines.append(f"[{section}]")
            lines += [f"{k} = {json.dumps(v)}" for k, v in body.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def bare_loop_rate() -> float:
    """Samples/s of one process calling the stand-in back to back (no engine)."""
    stage = Pipeline.build(
        [StageSpec("generator", STANDIN, {"seconds_per_batch": SECONDS_PER_BATCH})], StageContext(Path("."))
    )
    batch = [{"seed": i, "shard": 0, "planned_intensity": [0] * 12} for i in range(BATCH)]
    n = 12
    t0 = time.perf_counter()
    for _ in range(n):
        stage.run([dict(r) for r in batch])
    return n * BATCH / (time.perf_counter() - t0)


def engine_rate(gpus: int, shards_per_worker: int, rounds: tuple[int, int] | None = None) -> float:
    """Samples/s of a build on ``gpus`` logical GPUs, from workers ready to index written
    (generated samples: with the closed loop the index keeps fewer than the workers make)."""
    shard_size = BATCH * BATCHES_PER_SHARD
    with tempfile.TemporaryDirectory() as tmp:
        doc = _doc(
            Path(tmp) / "out",
            target=gpus * shards_per_worker * shard_size,
            shard_size=shard_size,
            gpus=gpus,
            seconds=SECONDS_PER_BATCH,
            batch=BATCH,
            rounds=rounds,
        )
        summary = build(recipe_from_dict(doc), local_gpus=8, quiet=True)
        return summary.planned_samples / summary.run_seconds


def _peak_rss(cmd: list[str]) -> tuple[float, float]:
    """Run ``cmd`` from the repo; its peak RSS (MiB, sampled every 0.2 s) and wall time."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"},
    )
    peak = 0.0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        p = psutil.Process(proc.pid)
        while not stop.is_set():
            try:
                peak = max(peak, p.memory_info().rss / 2**20)
            except psutil.Error:
                return
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    code = proc.wait()
    stop.set()
    sampler.join()
    if code != 0:
        raise RuntimeError(f"benchmark command {cmd} failed with exit code {code}")
    return peak, time.perf_counter() - t0


# The dataset commit pass on its own (the build runs it in a Ray task): rewrite the index.
_REINDEX = (
    "import sys; from pathlib import Path; from manifests.index import read_index, write_index; "
    "r = Path(sys.argv[1]); i = read_index(r); "
    "write_index(r, i['dataset'], i['shards'], target=i['target'], surplus=i['surplus_shards'], failed={})"
)


def tail_seconds(shards: int) -> float:
    """Seconds from workers ready to index written for ``shards`` shards on 8 logical GPUs."""
    shard_size = BATCH * BATCHES_PER_SHARD
    with tempfile.TemporaryDirectory() as tmp:
        doc = _doc(
            Path(tmp) / "out",
            target=shards * shard_size,
            shard_size=shard_size,
            gpus=8,
            seconds=SECONDS_PER_BATCH,
            batch=BATCH,
        )
        summary = build(recipe_from_dict(doc), local_gpus=8, quiet=True)
        assert summary.indexed_shards == list(range(shards)), summary.indexed_shards
        return summary.run_seconds


def _timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)
    return time.perf_counter() - t0


def rehearsal(target: int, rounds: tuple[int, int] | None = None) -> dict[str, Any]:
    """`factory build` of ``target`` planned samples (shards of 1,000) on 8 logical GPUs, then
    `factory status` and `factory verify`: times, the driver's peak RSS, and the peak
    RSS of the index pass over the same build run alone in a fresh process."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        # the same shard size for every build size: only the number of shards grows
        doc = _doc(out, target=target, shard_size=1000, gpus=8, seconds=0.0, batch=500, rounds=rounds)
        recipe = _toml(doc, Path(tmp) / "r.toml")
        cli = [sys.executable, "-m", "factory.cli"]
        peak, wall = _peak_rss([*cli, "build", str(recipe), "--quiet", "--local-gpus", "8"])
        summary = json.loads((out / "build-summary.json").read_text())
        index_peak, _ = _peak_rss([sys.executable, "-c", _REINDEX, str(out)])
        return {
            "target": target,
            "shards": len(summary["indexed_shards"]),
            "accepted": summary["accepted"],
            "peak_mib": peak,
            "wall_s": wall,
            "run_s": summary["run_seconds"],
            "status_s": _timed([*cli, "status", str(out)]),
            "verify_s": _timed([*cli, "verify", str(out)]),
            "index_peak_mib": index_peak,
        }


def _tail_rows(shard_time: float) -> list[str]:
    rows = []
    for shards in (12, 20):
        seconds = tail_seconds(shards)
        ideal = math.ceil(shards / 8) * shard_time
        rows.append(f"| {shards} shards on 8 logical GPUs | {seconds:.1f} | {ideal:.1f} | **{seconds / ideal:.3f}** |")
    return rows


def _memory_rows(runs: list[dict[str, Any]]) -> list[str]:
    lines = [
        "",
        "| build size (8 logical GPUs) | peak driver RSS MiB | build wall s | run s | samples/s | "
        "`factory status` s | `factory verify` s | index pass alone, peak RSS MiB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['target']:,} samples ({r['shards']:,} shards of 1,000) | {r['peak_mib']:.0f} | {r['wall_s']:.0f} | "
        f"{r['run_s']:.0f} | {r['accepted'] / r['run_s']:,.0f} | {r['status_s']:.1f} | {r['verify_s']:.1f} | "
        f"{r['index_peak_mib']:.0f} |"
        for r in runs
    ]
    if len(runs) == 2:
        lines.append(
            f"\nDriver RSS ratio {runs[1]['target']:,} / {runs[0]['target']:,} samples: "
            f"**{runs[1]['peak_mib'] / runs[0]['peak_mib']:.3f}** (target: within 10%, i.e. <= 1.10)"
        )
    return lines


def closed_loop_rows(
    target: int = 10_000,
    layouts: tuple[tuple[int, int], ...] = ((16, 8), (8, 4)),
    open_loop: tuple[float, float, float] | None = None,
) -> str:
    """Engine efficiency at 8 logical GPUs and the driver's peak RSS with the closed loop off and
    on (``layouts``: round_shards, round_lag_shards; the recipe's default first), in one run.
    ``open_loop``: (bare loop rate, open-loop rate at 8 GPUs, its peak driver RSS on ``target``)
    when the caller measured them in this run already; else measured here."""
    if open_loop is None:
        open_loop = (bare_loop_rate(), engine_rate(8, shards_per_worker=12), rehearsal(target)["peak_mib"])
    bare, open_rate, open_peak = open_loop
    rows = [
        f"| balance | efficiency at 8 GPUs (generated/s / 8 x bare) | peak driver RSS MiB, {target:,}-sample build |",
        "|---|---:|---:|",
        f"| open loop | {open_rate / (8 * bare):.3f} | {open_peak:.0f} |",
    ]
    runs: list[tuple[str, float, float]] = []
    for layout in layouts:
        rate = engine_rate(8, shards_per_worker=12, rounds=layout)
        peak = rehearsal(target, rounds=layout)["peak_mib"]
        name = f"closed loop (rounds of {layout[0]}, lag {layout[1]})"
        runs.append((name, rate, peak))
        rows.append(f"| {name} | {rate / (8 * bare):.3f} | {peak:.0f} |")
    rows.append("")
    rows += [
        f"{name} / open: efficiency **{r / open_rate:.3f}**, driver RSS **{p / open_peak:.3f}**." for name, r, p in runs
    ]
    return "\n".join(rows)


def main(memory_targets: tuple[int, ...] = (10_000, 1_000_000)) -> str:
    bare = bare_loop_rate()
    rate8 = engine_rate(8, shards_per_worker=12)
    rate1 = engine_rate(1, shards_per_worker=12)
    shard_time = BATCH * BATCHES_PER_SHARD / bare
    lines = [
        "### Engine (BENCHMARK STAND-IN generator: "
        f"{SECONDS_PER_BATCH}s sleep per batch of {BATCH}, {BATCH * BATCHES_PER_SHARD} samples per shard)",
        "",
        "| measure | value |",
        "|---|---:|",
        f"| bare loop, 1 process | {bare:.1f} samples/s |",
        f"| bare loop x 8 (ideal for 8 GPUs) | {8 * bare:.1f} samples/s |",
        f"| engine, 1 logical GPU | {rate1:.1f} samples/s ({rate1 / bare:.3f} x bare) |",
        f"| engine, 8 logical GPUs | {rate8:.1f} samples/s |",
        f"| **efficiency at 8 GPUs** (engine / 8 x bare; target >= 0.97) | **{rate8 / (8 * bare):.3f}** |",
        f"| **scaling 1 -> 8** (rate8 / 8 x rate1; target >= 0.9) | **{rate8 / (8 * rate1):.3f}** |",
        "",
        f"Tail efficiency: a build of a few shards, wall time from workers ready to index written, against the "
        f"ideal ceil(shards / 8) shard-times (one shard-time = {BATCH * BATCHES_PER_SHARD} samples at the bare "
        f"loop's rate = {shard_time:.2f} s; target <= 1.10).",
        "",
        "| build | wall s | ideal s | wall / ideal |",
        "|---|---:|---:|---:|",
        *_tail_rows(shard_time),
    ]
    runs = [rehearsal(t) for t in memory_targets]
    lines += [
        "",
        "#### 1M rehearsal and driver memory",
        *_memory_rows(runs),
        "\nEach row: `factory build` of that many planned samples, stand-in generator with no sleep, 8 logical "
        "GPUs on this 2-core machine (so samples/s is the machine's CPU, not the engine), then `factory status` "
        "and `factory verify` (reads every shard back: members, sizes, sha256) on the result, each a fresh "
        "process. Peak RSS of "
        "the `factory build` process is sampled every 0.2 s. The driver holds only planned / accepted / drop "
        "reasons per shard; the index pass over every shard manifest runs in an IndexWriter actor on the "
        "driver's node (`factory/engine/worker.py`); the last column runs that pass alone on the same build. "
        'Run one size with `python -c "from bench.bench_engine import rehearsal; print(rehearsal(1_000_000))"`.',
        "",
        "#### Closed-loop balance on vs off",
        "",
        # the open loop's rows as measured above: the bare loop, the 8-GPU rate, the first size's RSS
        closed_loop_rows(memory_targets[0], open_loop=(bare, rate8, runs[0]["peak_mib"])),
        "",
        "The same stand-in builds with `[balance] enabled = true` and closed-loop rounds. A round's "
        "shards wait until all but `round_lag_shards` of the round before are committed, so with fewer "
        "lagging shards than workers, workers idle at each round boundary. Run alone: "
        '`python -c "from bench.bench_engine import closed_loop_rows; print(closed_loop_rows())"`.',
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    targets = tuple(int(x) for x in sys.argv[1:]) or (10_000, 1_000_000)
    print(main(targets))

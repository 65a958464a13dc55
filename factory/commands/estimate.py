"""`factory plan --estimate`: GPU-hours and wall time of a build before (or while) it runs.

Inputs, each from the first source that has it:

- seconds per batch (``engine.batch_size`` samples through generator, checks and writer on one
  worker): stated (``--batch-seconds``); measured from a run's done shards (their recorded
  ``wall_seconds`` over their batches); or measured here (``--measure``: one warm-up batch, then
  one timed batch of the recipe's pipeline on this machine's device).
- acceptance rate (accepted / generated): stated (``--acceptance``); the running rate of a
  run's done shards; else the recipe's ``engine.expected_acceptance_rate``.

Then ``samples = target / acceptance``, ``batches = samples / batch_size``,
``GPU-hours = batches x seconds per batch / 3600`` and ``wall = GPU-hours / workers``: ideal
scaling, which the engine reaches within the efficiency measured in ``BENCHMARKS.md``.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from factory.engine.pipeline import make_context, recipe_pipeline
from factory.engine.rundir import RunError, open_run
from factory.plan import plan_shard
from factory.recipe import Recipe
from manifests.bank import open_bank
from manifests.errors import UserError
from manifests.writer import read_stats

__all__ = ["Estimate", "EstimateError", "estimate", "measure_batch_seconds", "run_rates"]


class EstimateError(UserError, ValueError):
    """An estimate cannot be made; the message says which input to give."""


@dataclass(frozen=True)
class Estimate:
    target: int
    acceptance: float
    acceptance_source: str
    samples: int
    batch_size: int
    batch_seconds: float
    batch_source: str
    workers: int
    gpu_hours: float
    wall_hours: float
    unit: str = "GPU"

    def lines(self) -> list[str]:
        unit = self.unit
        return [
            f"target: {self.target:,} accepted samples",
            f"acceptance rate: {self.acceptance:.3f} ({self.acceptance_source})",
            f"samples to generate: {self.samples:,} in batches of {self.batch_size}",
            f"seconds per batch: {self.batch_seconds:.2f} ({self.batch_source})",
            f"{unit}-hours: {self.gpu_hours:,.1f}",
            f"wall time on {self.workers} {unit}s: {self.wall_hours:,.1f} h ({self.wall_hours / 24:,.2f} days)",
        ]


def run_rates(run_dir: Path, batch_size: int) -> tuple[float, float, int] | None:
    """(acceptance rate, seconds per batch, done shards) of a run's done shards, or None."""
    try:
        run, _ = open_run(run_dir)
    except RunError:
        return None
    done = [read_stats(run.shards, run.dataset, shard) for shard in run.done_shards()]  # full stats: wall time
    planned = sum(int(s.get("planned", 0)) for s in done)
    if not done or planned == 0:
        return None
    accepted = sum(int(s.get("accepted", 0)) for s in done)
    seconds = sum(float(s.get("wall_seconds", 0.0)) for s in done)
    return accepted / planned, seconds / (planned / batch_size), len(done)


def measure_batch_seconds(recipe: Recipe, device: str = "cpu") -> float:
    """Seconds for one batch of the recipe's pipeline here (after one warm-up batch)."""
    n = recipe.engine.batch_size
    bank = open_bank(recipe.identities.bank)
    rows = plan_shard(recipe, 0, bank.records() if bank else None).to_pylist()
    if len(rows) < 2 * n:
        rows = (rows * math.ceil(2 * n / max(len(rows), 1)))[: 2 * n]
    with tempfile.TemporaryDirectory() as tmp:
        context = make_context(recipe, Path(tmp), device=device)
        pipeline = recipe_pipeline(recipe, context)
        times = []
        for start in (0, n):
            batch = [dict(r) for r in rows[start : start + n]]
            t0 = time.perf_counter()
            pipeline.run(batch)
            times.append(time.perf_counter() - t0)
    return times[-1]


def estimate(
    recipe: Recipe,
    *,
    workers: int | None = None,
    batch_seconds: float | None = None,
    acceptance: float | None = None,
    run_dir: Path | None = None,
    measured: float | None = None,
) -> Estimate:
    """The estimate for ``recipe.dataset.target``; sources as in the module docstring."""
    batch_size = recipe.engine.batch_size
    rates = run_rates(run_dir, batch_size) if run_dir is not None else None
    if batch_seconds is not None:
        seconds, batch_source = batch_seconds, "stated"
    elif rates is not None:
        seconds, batch_source = rates[1], f"measured over {rates[2]} done shard(s) of {run_dir}"
    elif measured is not None:
        seconds, batch_source = measured, "measured here, one batch"
    else:
        raise EstimateError(
            "--estimate needs a time per batch: give --batch-seconds S, or --measure (runs one batch of the "
            "recipe's pipeline here), or build a few shards first (their times are read from the run)"
        )
    if acceptance is not None:
        rate, rate_source = acceptance, "stated"
    elif rates is not None and rates[0] > 0:
        rate, rate_source = rates[0], f"running rate of {rates[2]} done shard(s)"
    else:
        rate, rate_source = recipe.engine.expected_acceptance_rate, "recipe engine.expected_acceptance_rate"
    if not 0.0 < rate <= 1.0 or seconds <= 0:
        raise EstimateError(f"acceptance rate must be in (0, 1] and batch time > 0; got {rate} and {seconds}")
    n_workers = workers if workers is not None else (recipe.engine.gpus or recipe.engine.cpu_workers)
    unit = "GPU" if workers is not None or recipe.engine.gpus else "CPU worker"
    if n_workers < 1:
        raise EstimateError("--gpus must be at least 1 for an estimate")
    samples = math.ceil(recipe.dataset.target / rate)
    gpu_hours = math.ceil(samples / batch_size) * seconds / 3600.0
    return Estimate(
        recipe.dataset.target, rate, rate_source, samples, batch_size, seconds, batch_source,
        n_workers, gpu_hours, gpu_hours / n_workers, unit,
    )  # fmt: skip

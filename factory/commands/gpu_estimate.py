"""`factory plan --estimate --measure --from-bench FILE`: GPU-hours of a build from a GPU bench result.

The result file of ``python -m bench.bench_gpu`` holds, per generator, a cost model measured
on one GPU: seconds per sample per UNet step, and seconds per sample outside the UNet (the
generator's text/VAE/AU work plus what the overlapped chain of face, detectors, filters and
writer adds). A batch of ``engine.batch_size`` samples at ``steps`` steps then takes
``batch_size x (other + unet_step x steps)`` seconds; :func:`factory.commands.estimate.estimate`
turns that, the acceptance rate (stated, a run's, else the recipe's) and the number of GPUs into
GPU-hours and wall time. With ``[balance] enabled = true`` the closed loop may plan up to
``max_generated_per_accepted x target`` samples before it stops chasing short cells; that bound
is printed beside the open-loop figure.

Steps: DPM-Solver++ (``DPMSolverMultistepScheduler``) and UniPC (``UniPCMultistepScheduler``)
evaluate the UNet once per step, as the bench's scheduler does, so 30 or 20 of their steps cost
30 or 20 UNet steps. What fewer steps do to image quality and to the detectors' agreement cannot
be measured with random weights: the table says so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from factory.commands.estimate import Estimate, EstimateError, estimate
from factory.recipe import Recipe

__all__ = ["STEP_CHOICES", "BenchFile", "BenchFileError", "GpuEstimate", "gpu_estimates", "read_bench"]

STEP_CHOICES = (50, 30, 20)
BENCH_KIND = "mifa-bench-gpu"  # bench.bench_gpu.RESULT_KIND (the factory does not import bench/)
GENERATOR_NAMES = {"diffusers": "plain SD 2.1 (diffusers)", "fineface": "fineface"}


class BenchFileError(EstimateError):
    """A --from-bench file that is not a GPU bench result."""


class BenchCost(BaseModel):
    model_config = ConfigDict(extra="ignore")
    unet_s_per_sample_step: float = Field(gt=0.0)
    other_s_per_sample: float = Field(ge=0.0)


class BenchFile(BaseModel):
    model_config = ConfigDict(extra="ignore")
    kind: Literal["mifa-bench-gpu"]
    size: Literal["full", "tiny"]
    device: dict[str, Any]
    cost_model: dict[str, BenchCost] = Field(min_length=1)

    @property
    def device_name(self) -> str:
        return str(self.device.get("name", "unknown device"))


def read_bench(path: Path) -> BenchFile:
    """The bench result at ``path``; a one-line BenchFileError names what is wrong and the fix."""
    fix = "give the .json file `python -m bench.bench_gpu --out FILE` wrote"
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise BenchFileError(f"--from-bench {path}: cannot be read ({exc.strerror or exc})", fix=fix) from None
    except json.JSONDecodeError as exc:
        raise BenchFileError(f"--from-bench {path}: not JSON (line {exc.lineno}: {exc.msg})", fix=fix) from None
    try:
        return BenchFile.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise BenchFileError(f"--from-bench {path}: field {where}: {first['msg']}", fix=fix) from None


@dataclass(frozen=True)
class GpuEstimate:
    generator: str
    steps: int
    batch_seconds: float
    open_loop: Estimate
    closed_loop_bound_hours: float | None  # GPU-hours at max_generated_per_accepted x target; None: open loop


def gpu_estimates(
    recipe: Recipe,
    bench: BenchFile,
    *,
    gpus: int,
    acceptance: float | None = None,
    run_dir: Path | None = None,
    steps: tuple[int, ...] = STEP_CHOICES,
) -> list[GpuEstimate]:
    """One estimate per generator of the bench file and per step count."""
    n = recipe.engine.batch_size
    balance = recipe.balance
    found = []
    for generator, cost in bench.cost_model.items():
        for step in steps:
            seconds = n * (cost.other_s_per_sample + cost.unet_s_per_sample_step * step)
            result = estimate(recipe, workers=gpus, batch_seconds=seconds, acceptance=acceptance, run_dir=run_dir)
            bound = None
            if balance.enabled:
                planned = balance.max_generated_per_accepted * recipe.dataset.target
                bound = max(planned, result.samples) / n * seconds / 3600.0
            found.append(GpuEstimate(generator, step, seconds, result, bound))
    return found


def estimate_lines(recipe: Recipe, bench: BenchFile, path: Path, estimates: list[GpuEstimate]) -> list[str]:
    """What `factory plan` prints: the inputs, then a table of GPU-hours by generator and steps."""
    first = estimates[0].open_loop
    lines = [
        f"rates from {path}: measured on {bench.device_name} ({bench.size} models); "
        f"{first.workers} GPUs assumed to run at that rate each",
        f"target: {first.target:,} accepted samples; acceptance rate {first.acceptance:.3f} "
        f"({first.acceptance_source}); {first.samples:,} samples to generate in batches of {first.batch_size}",
    ]
    if bench.size == "tiny":
        lines.append("this bench file holds tiny models (a harness check): the hours below are not a real build's")
    if recipe.balance.enabled:
        lines.append(
            f"closed loop ([balance] enabled): up to max_generated_per_accepted "
            f"{recipe.balance.max_generated_per_accepted:g} x target samples planned before short cells are "
            "given up (past twice that, later shards are indexed open loop)"
        )
    closed = recipe.balance.enabled
    lines.append(
        "| generator | steps | s per batch | GPU-hours | wall on "
        f"{first.workers} GPUs{' | closed-loop bound GPU-hours' if closed else ''} |"
    )
    for e in estimates:
        row = (
            f"| {GENERATOR_NAMES.get(e.generator, e.generator)} | {e.steps} | {e.batch_seconds:.2f} | "
            f"{e.open_loop.gpu_hours:,.1f} | {e.open_loop.wall_hours:,.1f} h"
        )
        if closed:
            row += f" | {e.closed_loop_bound_hours:,.1f}"
        lines.append(row + " |")
    lines.append(
        "steps: 50 as the release samples; 30 / 20 with DPM-Solver++ (DPMSolverMultistepScheduler) or UniPC "
        "(UniPCMultistepScheduler), one UNet step each (set generator.steps and generator.scheduler). "
        "Image quality at fewer steps cannot be measured here (random weights): check it on real weights "
        "with `factory calibrate` or a small build before choosing."
    )
    return lines

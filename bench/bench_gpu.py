"""The per-GPU benchmark: plain SD 2.1 vs FineFace and the whole chain, on full-size random-weight models.

``python -m bench.bench_gpu --size full|tiny [--out FILE.json]`` builds the models of
:mod:`bench.gpu_models` (published configurations, random weights: a model's speed does not
depend on its weights), then measures on this machine's device (CUDA if present):

- images/s at each batch size for (a) plain diffusers SD 2.1 text-to-image (the ``diffusers``
  generator: ``StableDiffusionPipeline`` on the folder) and (b) the ``fineface`` generator,
  same steps and classifier-free guidance (7.5), float16, channels_last;
- FineFace at one batch size with bfloat16, channels_last off and ``torch.compile`` on (the
  first call, which compiles, timed apart);
- peak GPU memory and the UNet's share of wall time of each row;
- the whole chain (generator -> scrfd -> geometric + opengraphau + LibreFace -> agreement ->
  realism -> filters -> writer, :mod:`bench.gpu_chain`) serially and overlapped as the shard
  worker runs it: samples/s, and the share of wall time outside the generator.

Rows are timed at ``--steps`` (fewer than 50 to fit the device budget); each row also gives the
images/s at 50 steps with the UNet time scaled by 50 / steps (every other cost is per image).
The result file holds every row and, per generator, the cost model ``factory plan --estimate
--from-bench`` reads: seconds per sample per UNet step, and seconds per sample outside the UNet
(the generator's own and the chain's, from the overlapped chain). ``tiny`` runs the same harness
on CPU in seconds (the test suite's check of the harness, not a speed measurement).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.gpu_chain import ChainTiming, chain_recipe, described, time_chain
from bench.gpu_models import ModelFolders, Size, models_at
from factory.engine.pipeline import Pipeline, make_context, recipe_pipeline
from stages.base import Record

__all__ = ["FULL_STEPS", "RESULT_KIND", "SETTINGS", "main", "measure"]

RESULT_KIND = "mifa-bench-gpu"
FULL_STEPS = 50  # the release's steps: the rate every row is also given at
SETTINGS: dict[str, dict[str, Any]] = {
    "full": {"batches": (1, 8, 16, 32), "steps": 20, "variant_batch": 16, "chain_batch": 16},
    "tiny": {"batches": (1, 2), "steps": 2, "variant_batch": 2, "chain_batch": 2},
}
VARIANTS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("bfloat16", {"dtype": "bfloat16"}),
    ("channels_last off", {"channels_last": False}),
    ("torch.compile", {"compile": True}),
)


def device_info() -> dict[str, Any]:
    """The device the rows were measured on: name, driver, torch and CUDA versions."""
    import torch  # deferred: optional and heavy

    info: dict[str, Any] = {"torch": torch.__version__, "python": platform.python_version()}
    if not torch.cuda.is_available():
        return {**info, "device": "cpu", "name": platform.processor() or platform.machine()}
    try:
        query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
        driver = subprocess.run(query, capture_output=True, text=True, timeout=30).stdout.strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        driver = "unknown"
    return {**info, "device": "cuda", "name": torch.cuda.get_device_name(0), "driver": driver,
            "cuda": torch.version.cuda}  # fmt: skip


def _generator(folders: ModelFolders, kind: str, device: str, batch: int, options: dict[str, Any], out: Path) -> Any:
    recipe = chain_recipe(folders, out, generator=kind, batch_size=batch, options=options)
    return recipe, recipe_pipeline(recipe, make_context(recipe, out, device), ["generator"])


def _call(pipeline: Pipeline, records: list[Record], device: str) -> tuple[float, float, float]:
    """(wall s, UNet s, peak GiB) of one generator call on fresh copies of ``records``."""
    import torch  # deferred: optional and heavy

    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    pipeline.run([dict(r) for r in records])
    if cuda:
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0
    return wall, pipeline.stages[0].last_timing.get("model_s", 0.0), peak


def _row(kind: str, label: str, batch: int, steps: int, call: tuple[float, float, float]) -> dict[str, Any]:
    wall, unet, peak = call
    at_full = (wall - unet) + unet * FULL_STEPS / steps
    return {"generator": kind, "variant": label, "batch": batch, "steps": steps,
            "images_per_s": batch / wall, f"images_per_s_at_{FULL_STEPS}_steps": batch / at_full,
            "unet_share": unet / wall, "peak_gib": peak, "seconds": wall}  # fmt: skip


def _generator_rows(
    folders: ModelFolders, kind: str, label: str, options: dict[str, Any], batches: tuple[int, ...], steps: int,
    records: list[Record], device: str, out: Path,
) -> list[dict[str, Any]]:  # fmt: skip
    """One loaded generator, timed at each batch size after one short warm-up at the largest."""
    _, pipeline = _generator(folders, kind, device, max(batches), {**options, "steps": steps}, out)
    stage: Any = pipeline.stages[0]
    timed = stage.config
    stage.config = timed.model_copy(update={"steps": 2})  # warm-up: allocations, kernels; compile happens here
    t0 = time.perf_counter()
    pipeline.run([dict(r) for r in records[: max(batches)]])
    first_s = time.perf_counter() - t0
    stage.config = timed
    rows = []
    for batch in batches:
        stage.config = timed.model_copy(update={"batch_size": batch})
        rows.append(_row(kind, label, batch, steps, _call(pipeline, records[:batch], device)))
    if options.get("compile"):
        rows[-1]["first_call_s"] = first_s  # the compile, at 2 steps: compiling dominates it
    del pipeline
    _free(device)
    return rows


def _free(device: str) -> None:
    if device.startswith("cuda"):
        import torch  # deferred: optional and heavy

        torch.cuda.empty_cache()


def _chain(folders: ModelFolders, batch: int, steps: int, device: str, out: Path) -> dict[str, Any]:
    """The whole chain serially and overlapped on the same records (2 micro-batches)."""
    recipe = chain_recipe(folders, out, batch_size=batch, batches=2, steps=steps)
    records = described(recipe)
    context = make_context(recipe, out, device)
    generator = recipe_pipeline(recipe, context, ["generator"])
    checks = recipe_pipeline(recipe, context, [p for p in recipe.stage_sections() if p not in ("prompt", "generator")])
    time_chain(generator, checks, records[:batch], batch, out / "warm", overlap=False)  # warm-up
    timings: dict[str, ChainTiming] = {}
    for mode in ("serial", "overlapped"):
        timings[mode], _ = time_chain(generator, checks, records, batch, out / mode, overlap=mode == "overlapped")
    serial = timings["serial"]
    alone = serial.samples / serial.generator_s
    result: dict[str, Any] = {"generator": "fineface", "batch": batch, "steps": steps,
                              "generator_alone_samples_per_s": alone, "accepted": serial.accepted}  # fmt: skip
    for mode, t in timings.items():
        result[mode] = {
            "samples_per_s": t.samples_per_s, "outside_generator_share": t.outside_generator_share,
            "generator_s": t.generator_s, "unet_s": t.unet_s, "checks_s": t.checks_s, "write_s": t.write_s,
            "wall_s": t.wall_s, "chain_over_generator": t.samples_per_s / alone,
        }  # fmt: skip
    result["placement"] = [list(p) for p in _placement([generator, checks])]
    return result


def _placement(pipelines: list[Pipeline]) -> list[tuple[str, str, str]]:
    from bench.gpu_chain import torch_placement  # deferred: same module as above, named for the reader

    return torch_placement(pipelines)


def cost_model(rows: list[dict[str, Any]], chain: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per generator, at the chain's batch size (float16, channels_last): seconds per sample per UNet
    step, and seconds per sample outside the UNet (its own, plus what the overlapped chain adds)."""
    batch, steps = chain["batch"], chain["steps"]
    over = chain["overlapped"]
    extra = max(over["wall_s"] - over["generator_s"], 0.0) / (2 * batch)
    model: dict[str, dict[str, float]] = {}
    for row in rows:
        if row["variant"] == "float16" and row["batch"] == batch:
            per_sample = row["seconds"] / batch
            unet = per_sample * row["unet_share"]
            model[row["generator"]] = {"unet_s_per_sample_step": unet / steps,
                                       "other_s_per_sample": per_sample - unet + extra}  # fmt: skip
    return model


def measure(
    size: Size,
    work: Path,
    device: str,
    settings: dict[str, Any] | None = None,
    folders: ModelFolders | None = None,
    save: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Build the models under ``work`` (unless given) and run every measurement; the result file's
    content. ``save`` gets the result so far after each part (a device run cut short keeps those)."""
    s = {**SETTINGS[size], **(settings or {})}
    t0 = time.perf_counter()
    folders = folders or models_at(work / "models", size, device=device)
    rows: list[dict[str, Any]] = []
    result: dict[str, Any] = {"kind": RESULT_KIND, "version": 1, "size": size, "device": device_info(),
                              "model_build_s": time.perf_counter() - t0, "image_size": 512 if size == "full" else 64,
                              "guidance_scale": 7.5, "steps": s["steps"], "variant_batch": s["variant_batch"],
                              "rows": rows}  # fmt: skip
    records = described(chain_recipe(folders, work / "plan", batch_size=max(s["batches"]), batches=1))
    for kind in ("diffusers", "fineface"):
        rows += _generator_rows(folders, kind, "float16", {}, s["batches"], s["steps"], records, device, work / kind)
        if save:
            save(result)
    result["chain"] = chain = _chain(folders, s["chain_batch"], s["steps"], device, work / "chain")
    result["cost_model"] = cost_model(rows, chain)
    if save:
        save(result)
    for label, options in VARIANTS:  # torch.compile last: its compile is the longest step
        if label not in s.get("variants", [v for v, _ in VARIANTS]):
            continue
        if options.get("compile") and not device.startswith("cuda"):
            continue  # compiling on the CPU takes minutes and says nothing about the GPU
        rows += _generator_rows(folders, "fineface", label, options, (s["variant_batch"],), s["steps"], records,
                                device, work / label.replace(" ", "_"))  # fmt: skip
        if save:
            save(result)
    return result


def _ratio(rows: list[dict[str, Any]], batch: int) -> float | None:
    rate = {r["generator"]: r["images_per_s"] for r in rows if r["variant"] == "float16" and r["batch"] == batch}
    return rate["fineface"] / rate["diffusers"] if {"fineface", "diffusers"} <= rate.keys() else None


def markdown(result: dict[str, Any], command: str) -> str:
    """The result as BENCHMARKS.md's GPU section."""
    dev, chain = result["device"], result["chain"]
    where = (
        f"{dev['name']} (driver {dev.get('driver')}, CUDA {dev.get('cuda')}), torch {dev['torch']}"
        if dev["device"] == "cuda"
        else f"CPU ({dev['name']}), torch {dev['torch']}: tiny models, float32; a check of the harness, not speed"
    )
    lines = [
        f"### GPU path, {result['size']} size (`{command}`)",
        "",
        f"Device: {where}. {result['image_size']} px, guidance {result['guidance_scale']}, timed at "
        f"{result['steps']} steps (the {FULL_STEPS}-step column scales the UNet time); models built in "
        f"{result['model_build_s']:.0f} s.",
        "",
        f"| generator | variant | batch | images/s | images/s at {FULL_STEPS} steps | UNet share | peak GiB |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    cpu = dev["device"] != "cuda"
    for r in result["rows"]:
        name = "plain SD 2.1 (diffusers)" if r["generator"] == "diffusers" else r["generator"]
        note = f" (first call {r['first_call_s']:.0f} s)" if "first_call_s" in r else ""
        note += " (float32 on a CPU)" if cpu and r["variant"] in ("float16", "bfloat16") else ""
        lines.append(
            f"| {name} | {r['variant']}{note} | {r['batch']} | {r['images_per_s']:.3f} | "
            f"{r[f'images_per_s_at_{FULL_STEPS}_steps']:.3f} | {100 * r['unet_share']:.0f}% | {r['peak_gib']:.2f} |"
        )
    batch = result["variant_batch"]
    ratio = _ratio(result["rows"], batch)
    ser, ovl = chain["serial"], chain["overlapped"]
    lines += [
        "",
        f"FineFace / plain SD 2.1 images/s at batch {batch}: {ratio:.2f} "
        f"({'the goal >= 0.9 is for float16 on a GPU' if cpu else 'goal >= 0.9'})."
        if ratio
        else "",
        "",
        f"Whole chain (fineface -> scrfd -> geometric + opengraphau + LibreFace -> agreement -> realism -> filters "
        f"-> writer), batch {chain['batch']}, 2 micro-batches; generator alone "
        f"{chain['generator_alone_samples_per_s']:.3f} samples/s:",
        "",
        "| chain | samples/s | chain / generator alone | share of wall time outside the generator |",
        "|---|---:|---:|---:|",
        f"| serial | {ser['samples_per_s']:.3f} | {ser['chain_over_generator']:.2f} | "
        f"{100 * ser['outside_generator_share']:.0f}% |",
        f"| overlapped (as the shard worker) | {ovl['samples_per_s']:.3f} | {ovl['chain_over_generator']:.2f} | "
        f"{100 * ovl['outside_generator_share']:.0f}% |",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    import torch  # deferred: optional and heavy

    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size", choices=("full", "tiny"), default="full" if cuda else "tiny")
    parser.add_argument("--out", type=Path, default=None, help="result file (.json; the table goes beside it as .md)")
    parser.add_argument("--work", type=Path, default=None, help="folder for the built models (default: a temp folder)")
    args = parser.parse_args(argv)
    _quiet()
    device = "cuda" if cuda else "cpu"
    command = f"python -m bench.bench_gpu --size {args.size}"

    def save(result: dict[str, Any]) -> None:
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=2))
            if "chain" in result:
                args.out.with_suffix(".md").write_text(markdown(result, command) + "\n")

    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as tmp:
        result = measure(args.size, args.work or Path(tmp), device, save=save)
    save(result)
    text = markdown(result, command)
    print(text)
    return text


def _quiet() -> None:
    """No progress bars or truncation warnings between the rows."""
    import diffusers  # deferred: optional and heavy
    import transformers  # deferred: optional and heavy

    diffusers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


if __name__ == "__main__":
    main()

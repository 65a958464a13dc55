"""Generator: any local diffusers text-to-image pipeline (SD 1.5, SD 2.x, SDXL, ...).

The pipeline directory is loaded with ``AutoPipelineForText2Image.from_pretrained(dir,
local_files_only=True)`` once per worker. Each sample gets its own ``torch.Generator``
seeded with ``record["seed"]`` (a *CPU* generator, so the initial noise is the same on any
device), which makes a sample's image independent of its batch neighbours (diffusers
issue #6233: a single generator shared by the batch ties every sample to its position).

Labels are the planned AU vector: a text-to-image model does not tell which AUs it drew,
so ``label_source = "planned"`` and later detector stages decide what is kept.

Timing: :class:`ForwardTimer` hooks the UNet (or transformer) so every ``process`` call
records how much of its wall time was the denoiser (``model_s``) against everything else
(text encoding, VAE decode, conversion: ``overhead_s``).
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from stages.base import ModelFilesError, Record, StageConfig, StageContext, StageError
from stages.generators.base import (
    DType,
    ForwardTimer,
    GeneratorStage,
    chunks,
    model_card_licence,
    planned_labels,
    resolve_dtype,
    scheduler_by_name,
    to_uint8,
)

__all__ = ["PIPELINE_LAYOUT", "DiffusersConfig", "DiffusersGenerator", "ForwardTimer", "check_pipeline_dir"]

# What a diffusers text-to-image pipeline folder holds (save_pretrained layout).
PIPELINE_LAYOUT = ("model_index.json", "unet/", "vae/", "text_encoder/", "tokenizer/", "scheduler/")


class DiffusersConfig(StageConfig):
    pipeline: str = Field(
        "models/stable-diffusion-v1-5",
        description="local diffusers pipeline folder (save_pretrained layout: model_index.json, unet/, ...)",
    )
    scheduler: str | None = Field(
        None,
        description="diffusers scheduler class, e.g. DPMSolverMultistepScheduler; None keeps the pipeline's",
    )
    steps: int = Field(30, ge=1, le=1000)
    guidance_scale: float = Field(7.0, ge=0.0, le=50.0)
    negative_prompt: str = "cartoon, drawing, painting, 3d render, deformed face, blurry, low quality, text, watermark"
    prompt_template: str = Field("{description}", description="'{description}' is replaced by the record's text")
    dtype: DType = Field("auto", description="auto: float16 on CUDA, float32 on CPU (CPU is always float32)")
    batch_size: int = Field(8, ge=1, le=256, description="samples per denoiser call; the micro-batch is chunked")
    compile: bool = Field(False, description="torch.compile the denoiser; chunks are padded to batch_size")
    channels_last: bool = True
    vae_slicing: bool = Field(True, description="decode one image at a time (bounded VAE memory)")


def check_pipeline_dir(path: Path) -> dict[str, Any]:
    """Read ``model_index.json`` and check every component folder it names exists.

    Raises :class:`StageError` naming the missing file and the expected layout.
    """
    layout = ", ".join(PIPELINE_LAYOUT)
    if not path.is_dir():
        raise StageError(
            f"diffusers pipeline folder {path} does not exist; set generator.pipeline to a local folder "
            f"saved with save_pretrained (expected layout: {layout})"
        )
    index_file = path / "model_index.json"
    if not index_file.is_file():
        raise StageError(
            f"{index_file} is missing; {path} is not a diffusers pipeline folder (expected layout: {layout})"
        )
    try:
        index = json.loads(index_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise StageError(
            f"{index_file} cannot be read ({exc}); re-save the pipeline (expected layout: {layout})"
        ) from exc
    # A component entry is [library, class]; [null, null] marks an optional part left out.
    components = [k for k, v in index.items() if isinstance(v, list) and len(v) == 2 and v[0] is not None]
    missing = [c for c in components if not (path / c).is_dir()]
    if missing:
        raise StageError(
            f"{path / missing[0]}/ is missing but model_index.json lists it; copy the whole pipeline folder "
            f"(expected layout: {layout})"
        )
    return index


class DiffusersGenerator(GeneratorStage[DiffusersConfig]):
    name = "diffusers"
    reads = frozenset({"description", "planned_intensity", "seed"})
    licence = "Apache-2.0 (this code); the pipeline's weights: the licence on its folder's model card (README.md)"

    def __init__(self, config: DiffusersConfig, context: StageContext) -> None:
        super().__init__(config, context)
        self.pipe: Any = None
        self._timer: ForwardTimer | None = None

    def licence_notice(self) -> str:
        found = model_card_licence(Path(self.config.pipeline))
        if found is None:
            return (
                f"Apache-2.0 (this code); UNDECLARED: the pipeline folder {self.config.pipeline} has no model card "
                "naming a licence (README.md front matter `license:`); check the weights' terms"
            )
        return f"Apache-2.0 (this code); pipeline {self.config.pipeline}: {found} (its model card)"

    def preflight(self) -> None:
        try:
            check_pipeline_dir(Path(self.config.pipeline).expanduser())
        except StageError as exc:
            problem = str(exc).split(" (expected layout", 1)[0].split("; set generator.pipeline", 1)[0]
            raise ModelFilesError(
                problem,
                fix="set generator.pipeline to a diffusers pipeline folder (model_index.json, unet/, vae/, ...), "
                "or fetch Stable Diffusion 1.5 with `factory models pull stable-diffusion-v1-5 --dest models`",
            ) from None

    def setup(self) -> None:
        import torch  # deferred: optional and heavy (the gen extra); only setup() and generation need it
        from diffusers import AutoPipelineForText2Image  # deferred: optional and heavy (the gen extra)

        cfg, device = self.config, self.context.device
        size = self.context.image_size
        if size % 8:
            raise StageError(f"output.image_size={size}: latent diffusion needs a multiple of 8")
        path = Path(cfg.pipeline).expanduser()
        check_pipeline_dir(path)
        dtype = resolve_dtype(cfg.dtype, device)
        try:
            with warnings.catch_warnings():
                # diffusers >= 0.36 renamed torch_dtype to dtype; the old name works everywhere.
                warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
                pipe = AutoPipelineForText2Image.from_pretrained(str(path), local_files_only=True, torch_dtype=dtype)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise StageError(
                f"diffusers could not load the pipeline in {path} ({type(exc).__name__}: {exc}); "
                f"check that it is a "
                f"complete text-to-image pipeline (expected layout: {', '.join(PIPELINE_LAYOUT)})"
            ) from exc
        if cfg.scheduler:
            pipe.scheduler = scheduler_by_name(cfg.scheduler, pipe.scheduler.config)
        pipe = pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        denoiser_name = "unet" if getattr(pipe, "unet", None) is not None else "transformer"
        denoiser = getattr(pipe, denoiser_name)
        if cfg.channels_last and device.startswith("cuda"):
            # NHWC convolutions are faster with tensor cores; on CPU they only add layout copies.
            denoiser.to(memory_format=torch.channels_last)
        if cfg.vae_slicing and hasattr(pipe.vae, "enable_slicing"):
            pipe.vae.enable_slicing()
        if cfg.compile:
            # Fixed shapes (every chunk is padded to batch_size) so the graph compiles once.
            denoiser = torch.compile(denoiser, fullgraph=False, dynamic=False)
            setattr(pipe, denoiser_name, denoiser)
        self._timer = ForwardTimer(denoiser, device)
        self.pipe = pipe

    def run(self, live: list[Record]) -> None:
        if self.pipe is None or self._timer is None:
            raise StageError("DiffusersGenerator.process() called before setup()")
        t0 = time.perf_counter()
        model_s = 0.0
        for chunk in chunks(live, self.config.batch_size):
            images, seconds = self._generate(chunk)
            model_s += seconds
            for record, image in zip(chunk, images, strict=True):
                occurrence, intensity = planned_labels(record["planned_intensity"])
                self.write_sample(record, image, "planned", occurrence, intensity)
        self.note_timing(len(live), model_s, t0)

    def _generate(self, chunk: list[Record]) -> tuple[np.ndarray, float]:
        import torch  # deferred: optional and heavy (the gen extra)

        cfg = self.config
        prompts = [cfg.prompt_template.format(description=r.get("description") or "") for r in chunk]
        seeds = [int(r["seed"]) for r in chunk]
        n_real = len(chunk)
        if cfg.compile and n_real < cfg.batch_size:
            # Pad with copies of the last sample; their images are discarded below.
            pad = cfg.batch_size - n_real
            prompts += [prompts[-1]] * pad
            seeds += [seeds[-1]] * pad
        generators = [torch.Generator(device="cpu").manual_seed(s) for s in seeds]
        size = self.context.image_size
        kwargs: dict[str, Any] = {
            "prompt": prompts,
            "height": size,
            "width": size,
            "num_inference_steps": cfg.steps,
            "guidance_scale": cfg.guidance_scale,
            "generator": generators,
            "output_type": "np",
        }
        if cfg.guidance_scale > 1.0 and cfg.negative_prompt:
            kwargs["negative_prompt"] = [cfg.negative_prompt] * len(prompts)
        timer = self._timer
        if timer is None:
            raise StageError("DiffusersGenerator used before setup()")
        with torch.inference_mode(), timer.measure():
            out = self.pipe(**kwargs)
        return to_uint8(np.asarray(out.images)[:n_real]), timer.seconds

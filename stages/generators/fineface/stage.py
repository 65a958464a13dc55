"""Generator: FineFace, AU-conditioned Stable Diffusion on public weights (Apache-2.0).

The planned AU vector (12 DISFA AUs, intensities 0-5) is the AU condition; the prompt is the
recipe's ``prompt_template`` filled with the record's description and demographic words
(:mod:`.prompt`). A text-to-image model does not report what it drew, so
``label_source = "planned"`` and the detector consensus decides the final labels.

Files come from local folders (:mod:`.layout`): by default the catalogue's
``stable-diffusion-2-1-base`` and ``fineface`` folders (``factory models pull``), found in
``$MIFA_MODELS_DIR`` (or the user cache) or ``./models``. ``identity = "faceid"`` switches to
the release's SD 1.5 + IP-Adapter-FaceID variant: the identity's bank exemplar is embedded with
ArcFace (dlib finds its landmarks), cached per identity, and a sample whose exemplar has no
usable face is dropped with that reason. The FaceID adapter and insightface's ArcFace weights
are for non-commercial research only; the stage's ``licence`` says so when they are used.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, field_validator

from stages.base import ModelFilesError, Record, StageConfig, StageContext, StageError, drop
from stages.catalogue import local_path
from stages.generators.base import DType, GeneratorStage, chunks, planned_labels, resolve_dtype
from stages.generators.fineface.layout import FineFaceFiles
from stages.generators.fineface.prompt import build_prompt, check_template

__all__ = ["FACEID_LICENCE", "LICENCE", "FineFaceConfig", "FineFaceGenerator", "release_files"]

LICENCE = (
    "FineFace code and weights: Apache-2.0 (tvaranka/fineface); "
    "base model Stable Diffusion 2.1-base: CreativeML Open RAIL++-M (stabilityai)"
)
FACEID_LICENCE = (
    "FineFace code and weights: Apache-2.0 (tvaranka/fineface); "
    "base model Realistic Vision 4.0 (SD 1.5): CreativeML Open RAIL-M; "
    "IP-Adapter-FaceID (h94/IP-Adapter-FaceID): non-commercial research use only; "
    "ArcFace (insightface buffalo_l): non-commercial research use only"
)
FACEID_FILE = "ip-adapter-faceid-portrait-v11_sd15.bin"


class FineFaceConfig(StageConfig):
    base_dir: str | None = Field(
        None,
        description="base diffusers folder; None: the catalogue's (stable-diffusion-2-1-base, or "
        "realistic-vision-v4 with identity = 'faceid')",
    )
    weights_dir: str | None = Field(
        None, description="folder with the FineFace files; None: the catalogue's 'fineface'"
    )
    attn_processors_file: str | None = Field(None, description="None: attn_processors.ckpt (sd15_... for faceid)")
    au_encoder_file: str | None = Field(None, description="None: au_encoder.ckpt (sd15_... for faceid)")
    lora_file: str = "pytorch_lora_weights.safetensors"
    identity: Literal["none", "faceid"] = Field("none", description="faceid: condition on the bank exemplar")
    faceid_file: str | None = Field(None, description=f"None: the catalogue's ip-adapter-faceid-portrait/{FACEID_FILE}")
    arcface_model: str | None = Field(None, description="ArcFace ONNX; None: the catalogue's arcface-r50")
    ip_scale: float = Field(1.0, ge=0.0, le=5.0)
    au_scale: float = Field(1.0, ge=0.0, le=5.0, description="weight of the AU attention (release default 1)")
    prompt_template: str = Field(
        "a closeup photo of {person}, {description}",
        description="slots: {description} {person} {age} {ethnicity} {gender}",
    )
    negative_prompt: str = Field("", description="empty: the release's unconditional prompt")
    steps: int = Field(50, ge=1, le=1000)
    guidance_scale: float = Field(7.5, ge=0.0, le=50.0)
    scheduler: str | None = Field(None, description="diffusers scheduler class; None keeps the base folder's")
    dtype: DType = Field("auto", description="auto: float16 on CUDA, float32 on CPU (CPU is always float32)")
    batch_size: int = Field(8, ge=1, le=256, description="samples per denoiser call; the micro-batch is chunked")
    compile: bool = Field(False, description="torch.compile the UNet; chunks are padded to batch_size")
    channels_last: bool = True
    lora_scale: float | None = Field(
        None,
        ge=0.0,
        le=4.0,
        description="None: the training scale (alpha 8 / rank, 0.25 for the release); 0: as the release's "
        "inference code runs (its loader skips the LoRA file)",
    )
    fuse_lora: bool = Field(True, description="merge the LoRA into the UNet weights once (faster steps)")
    vae_slicing: bool = Field(True, description="decode one image at a time (bounded VAE memory)")
    identity_cache: int = Field(4096, ge=0, description="identity embeddings kept in memory")

    @field_validator("prompt_template")
    @classmethod
    def _template(cls, v: str) -> str:
        return check_template(v)


def _folder(configured: str | None, catalogue_name: str) -> Path:
    return Path(configured).expanduser() if configured else local_path(catalogue_name)


def release_files(cfg: FineFaceConfig) -> FineFaceFiles:
    """The files the configured variant reads, recipe paths first, else the catalogue's."""
    faceid = cfg.identity == "faceid"
    prefix = "sd15_" if faceid else ""
    return FineFaceFiles(
        base_dir=_folder(cfg.base_dir, "realistic-vision-v4" if faceid else "stable-diffusion-2-1-base"),
        weights_dir=_folder(cfg.weights_dir, "fineface"),
        attn_processors=cfg.attn_processors_file or f"{prefix}attn_processors.ckpt",
        au_encoder=cfg.au_encoder_file or f"{prefix}au_encoder.ckpt",
        lora=None if faceid else cfg.lora_file,
        faceid=(
            Path(cfg.faceid_file).expanduser()
            if cfg.faceid_file
            else local_path("ip-adapter-faceid-portrait") / FACEID_FILE
        )
        if faceid
        else None,
        arcface=_folder(cfg.arcface_model, "arcface-r50") if faceid else None,
    )


def _pull_advice(files: FineFaceFiles, problem: str) -> str:
    """The pull command (or recipe key) for the part of ``files`` that ``problem`` names."""
    parts = [
        (files.base_dir, "realistic-vision-v4" if files.with_identity else "stable-diffusion-2-1-base", "base_dir"),
        (files.faceid, "ip-adapter-faceid-portrait", "faceid_file"),
        (files.arcface, "arcface-r50", "arcface_model"),
    ]
    for path, model, key in parts:
        if path is not None and str(path) in problem:
            return f"run `factory models pull {model}` or set generator.{key}"
    return "run `factory models pull fineface` or set generator.weights_dir"


class FineFaceGenerator(GeneratorStage[FineFaceConfig]):
    name = "fineface"
    reads = frozenset({"description", "identity_id", "planned_intensity", "seed"})
    optional_reads = frozenset({"ethnicity", "age_band", "gender"})  # the prompt template's slots
    licence: ClassVar[str] = LICENCE

    def __init__(self, config: FineFaceConfig, context: StageContext) -> None:
        super().__init__(config, context)
        self.pipe: Any = None
        self.licence = FACEID_LICENCE if config.identity == "faceid" else LICENCE
        self._embed: Any = None
        # Least recently used identities go first; identity_cache = 0 keeps none.
        self._identity = functools.lru_cache(maxsize=config.identity_cache)(self._prepare_identity)

    def preflight(self) -> None:
        files = release_files(self.config)
        if files.with_identity and self.context.identity_bank is None:
            raise ModelFilesError(
                "fineface identity = 'faceid' needs identity exemplars", fix="set identities.bank to a folder"
            )
        try:
            files.check()
        except StageError as exc:
            problem = str(exc).splitlines()[0]
            raise ModelFilesError(problem, fix=_pull_advice(files, problem)) from None

    def setup(self) -> None:
        import torch  # deferred: optional and heavy (the gen extra); only setup() and generation need it

        # deferred: the FineFace network modules import torch, diffusers and peft (optional, heavy)
        from stages.generators.fineface.pipeline import FineFacePipeline

        cfg, device = self.config, self.context.device
        if self.context.image_size % 8:
            raise StageError(f"output.image_size={self.context.image_size}: latent diffusion needs a multiple of 8")
        files = release_files(cfg)
        if files.with_identity and self.context.identity_bank is None:
            raise StageError("fineface identity = 'faceid' needs identity exemplars; set identities.bank to a folder")
        pipe = FineFacePipeline.from_files(
            files,
            device=device,
            dtype=resolve_dtype(cfg.dtype, device),
            scheduler=cfg.scheduler,
            fuse_lora=cfg.fuse_lora,
            lora_scale=cfg.lora_scale,
        )
        if cfg.channels_last and device.startswith("cuda"):
            # NHWC convolutions are faster with tensor cores; on CPU they only add layout copies.
            pipe.pipe.unet.to(memory_format=torch.channels_last)
        if cfg.vae_slicing and hasattr(pipe.pipe.vae, "enable_slicing"):
            pipe.pipe.vae.enable_slicing()
        if cfg.compile:
            pipe.compile_unet()
        if files.arcface is not None:
            self._embed = _arcface(files)
        self.pipe = pipe

    # ------------------------------------------------------------------ identities
    def _prepare_identity(self, identity_id: str) -> np.ndarray | str:
        """The exemplar's ArcFace embedding (512,), or why it cannot be used (cached as ``_identity``)."""
        from stages.faces.exemplar import ExemplarError, exemplar_face  # deferred: dlib, only for faceid

        result: np.ndarray | str
        try:
            image = np.asarray(self.context.identity_bank.image(identity_id), dtype=np.uint8)
            result = self._embed(image, exemplar_face(image).landmarks)
        except (ExemplarError, ValueError, OSError, KeyError) as exc:
            result = f"identity {identity_id!r} unusable for FaceID: {exc}"
        return result

    # ------------------------------------------------------------------ generation
    def run(self, live: list[Record]) -> None:
        if self.pipe is None:
            raise StageError("FineFaceGenerator.process() called before setup()")
        t0 = time.perf_counter()
        ready: list[tuple[Record, np.ndarray | None]] = []
        for record in live:
            embedding = self._identity(str(record["identity_id"])) if self._embed is not None else None
            if isinstance(embedding, str):
                drop(record, self.name, embedding)  # an unusable exemplar drops only its samples
            else:
                ready.append((record, embedding))
        model_s = 0.0
        for chunk in chunks(ready, self.config.batch_size):
            model_s += self._generate(chunk)
        self.note_timing(len(ready), model_s, t0)

    def _generate(self, chunk: list[tuple[Record, np.ndarray | None]]) -> float:
        cfg = self.config
        records = [r for r, _ in chunk]
        n_real = len(records)
        if cfg.compile and n_real < cfg.batch_size:
            # Pad with copies of the last sample (fixed shapes compile once); their images are discarded.
            chunk = chunk + [chunk[-1]] * (cfg.batch_size - n_real)
        prompts = [build_prompt(cfg.prompt_template, r) for r, _ in chunk]
        aus = np.asarray([r["planned_intensity"] for r, _ in chunk], dtype=np.float32)
        identity = np.stack([e for _, e in chunk])[:, None, :] if self._embed is not None else None
        out = self.pipe(
            prompts,
            aus,
            [int(r["seed"]) for r, _ in chunk],
            size=self.context.image_size,
            steps=cfg.steps,
            guidance_scale=cfg.guidance_scale,
            negative_prompt=cfg.negative_prompt,
            au_scale=cfg.au_scale,
            identity=identity,
            ip_scale=cfg.ip_scale,
        )
        for record, image in zip(records, out.images[:n_real], strict=True):
            occurrence, intensity = planned_labels(record["planned_intensity"])
            self.write_sample(record, image, "planned", occurrence, intensity)
        return out.unet_seconds


def _arcface(files: FineFaceFiles) -> Any:
    from stages.faces.embedding import EmbedderError, arcface_embedder  # deferred: insightface, only for faceid

    try:
        return arcface_embedder(files.arcface)  # type: ignore[arg-type]
    except EmbedderError as exc:
        raise files.fail(str(exc), exc) from exc

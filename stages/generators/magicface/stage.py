"""Generator: MagicFace, AU-vector editing of a bank identity's face on public weights (Apache-2.0).

Every sample edits its identity's exemplar photo (``identities.bank``) towards the planned AU
vector. MagicFace takes AU *changes relative to the source face* (0 = unchanged), so the
planned absolute vector becomes ``target - own``, where ``own`` is the exemplar's recorded
expression (the bank's ``expression``: ``neutral`` or ``AU12=3 ...``; not recorded counts as
neutral, the bank index's default for portraits). The labels are the planned absolute
vector, ``label_source = "planned"``, and the detector consensus decides the final labels.

Per identity, once (``identity_cache`` identities kept, least recently used first out): the
face crop (1.5x the dlib face box, as the release's preprocessing crops SCRFD's), the "bg"
attribute image, their latents and the identity keys/values of every self-attention. A
sample whose exemplar has no single usable face is dropped with that reason. The crop and bg
are also kept on disk beside a bank folder's index (:mod:`.cache`), keyed by the exemplar's
pixels, the bg method and the size.

``bg``: ``"bisenet"`` is the release's (BiSeNet face parsing painted black + the jaw points,
:mod:`.parsing`, from ``bisenet_file``, by default the catalogue's ``bisenet-face-parsing``);
``"landmark-hull"`` a stand-in needing no parsing model (:mod:`.source`); ``"auto"`` (the
default) is ``"bisenet"`` when its file is there, else the stand-in, and says so in the
preflight log and the run's licence notice.

Files come from local folders (:mod:`.layout`): by default the catalogue's
``stable-diffusion-v1-5`` and ``magicface`` folders (``factory models pull``).
"""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from stages.base import ModelCheck, ModelFilesError, Record, StageConfig, StageContext, StageError, drop
from stages.catalogue import DLIB_68_LICENCE, local_path
from stages.generators.base import DType, GeneratorStage, chunks, planned_labels, resolve_dtype
from stages.generators.magicface.cache import SourceCache, source_key
from stages.generators.magicface.layout import MagicFaceFiles
from stages.generators.magicface.parsing import BISENET_FILE, PARSE_SIZE, parsing_bg
from stages.generators.magicface.source import landmark_hull_bg, source_face

__all__ = ["LICENCE", "MagicFaceConfig", "MagicFaceGenerator", "relative_aus", "release_files"]

LICENCE = (
    "MagicFace code and weights: Apache-2.0 (weimengting/MagicFace, mengtingwei/magicface); "
    "Stable Diffusion 1.5 VAE and text encoder: CreativeML Open RAIL-M; face crop and jaw points: "
    f"{DLIB_68_LICENCE}"
)
BISENET_LICENCE = (
    "BiSeNet face parsing: MIT code (zllrunning/face-parsing.PyTorch), weights trained on CelebAMask-HQ "
    "(non-commercial research use)"
)
_log = logging.getLogger(__name__)


class MagicFaceConfig(StageConfig):
    sd_dir: str | None = Field(None, description="Stable Diffusion 1.5 folder; None: the catalogue's")
    weights_dir: str | None = Field(
        None, description="folder with ID_enc/ and denoising_unet/; None: the catalogue's 'magicface'"
    )
    steps: int = Field(50, ge=1, le=1000, description="UniPC steps (the release: 50)")
    guidance_scale: float = Field(1.5, ge=0.0, le=20.0, description="AU guidance u + g (c - u) (the release: 1.5)")
    bg: Literal["auto", "bisenet", "landmark-hull"] = Field(
        "auto",
        description="the bg attribute image: 'bisenet' (the release's face parsing + jaw dots), 'landmark-hull' "
        "(a stand-in: 68-landmark face polygon painted black + jaw dots), 'auto': bisenet when its file is there",
    )
    bisenet_file: str | None = Field(
        None, description=f"BiSeNet {BISENET_FILE}; None: the catalogue's 'bisenet-face-parsing' folder"
    )
    parse_size: int = Field(PARSE_SIZE, ge=32, le=2048, description="BiSeNet input side (the release: 512)")
    dtype: DType = Field("auto", description="auto: float16 on CUDA, float32 on CPU (CPU is always float32)")
    batch_size: int = Field(8, ge=1, le=256, description="samples per denoiser call; the micro-batch is chunked")
    identity_cache: int = Field(
        64, ge=0, description="identities whose latents and keys/values are kept (~50 MB each at 512 px, fp16)"
    )


def _folder(configured: str | None, catalogue_name: str) -> Path:
    return Path(configured).expanduser() if configured else local_path(catalogue_name)


def release_files(cfg: MagicFaceConfig) -> MagicFaceFiles:
    """The files the stage reads, recipe paths first, else the catalogue's."""
    return MagicFaceFiles(
        sd_dir=_folder(cfg.sd_dir, "stable-diffusion-v1-5"), weights_dir=_folder(cfg.weights_dir, "magicface")
    )


def bisenet_path(cfg: MagicFaceConfig) -> Path:
    """The BiSeNet weights file the stage reads, the recipe's first, else the catalogue's."""
    if cfg.bisenet_file:
        return Path(cfg.bisenet_file).expanduser()
    return local_path("bisenet-face-parsing") / BISENET_FILE


def bg_method(cfg: MagicFaceConfig) -> Literal["bisenet", "landmark-hull"]:
    """``cfg.bg`` with ``auto`` resolved by whether the BiSeNet file exists."""
    if cfg.bg == "auto":
        return "bisenet" if bisenet_path(cfg).is_file() else "landmark-hull"
    return cfg.bg


def relative_aus(planned: Any, own: Any) -> np.ndarray:
    """MagicFace's input: the planned absolute intensities minus the source face's own."""
    return np.asarray(planned, np.float32) - np.asarray(own, np.float32)


class MagicFaceGenerator(GeneratorStage[MagicFaceConfig]):
    name = "magicface"
    reads = frozenset({"identity_id", "planned_intensity", "seed"})
    licence: ClassVar[str] = LICENCE

    def __init__(self, config: MagicFaceConfig, context: StageContext) -> None:
        super().__init__(config, context)
        self.pipe: Any = None
        self.parser: Any = None
        self.bg = bg_method(config)
        bank = context.identity_bank
        self.source_cache = SourceCache(None if bank is None else bank.root)
        # Least recently used identities go first; identity_cache = 0 keeps none.
        self._identity = functools.lru_cache(maxsize=config.identity_cache)(self._prepare_identity)

    def licence_notice(self) -> str:
        if self.bg == "bisenet":
            return f"{self.licence}; bg: BiSeNet face parsing from {bisenet_path(self.config)}: {BISENET_LICENCE}"
        why = (
            "set bg = 'landmark-hull'" if self.config.bg == "landmark-hull" else f"{bisenet_path(self.config)} missing"
        )
        return f"{self.licence}; bg: the landmark-hull stand-in, not the release's BiSeNet parsing ({why})"

    def model_checks(self) -> list[ModelCheck]:
        if self.config.bg == "landmark-hull":
            return []
        instead = "the landmark-hull stand-in bg, not the release's" if self.config.bg == "auto" else None
        return [ModelCheck("bisenet-face-parsing", bisenet_path(self.config), f"bg = {self.config.bg!r}", instead)]

    def preflight(self) -> None:
        files = release_files(self.config)
        try:
            files.check()
        except StageError as exc:
            problem = str(exc).splitlines()[0]
            raise ModelFilesError(
                problem, fix="fetch it with `factory models pull stable-diffusion-v1-5 magicface`"
            ) from None
        path = bisenet_path(self.config)
        if self.config.bg == "bisenet" and not path.is_file():
            raise ModelFilesError(
                f"BiSeNet face-parsing file {path} is missing",
                fix="fetch it with `factory models pull bisenet-face-parsing`, or set generator.bg = 'landmark-hull'",
            )
        if self.bg == "landmark-hull" and self.config.bg == "auto":
            _log.warning(
                "magicface: BiSeNet face-parsing file %s is missing, so the bg image is the landmark-hull "
                "stand-in, not the release's; `factory models pull bisenet-face-parsing` fetches it",
                path,
            )

    def setup(self) -> None:
        # deferred: the MagicFace network modules import torch and diffusers (optional, heavy)
        from stages.generators.magicface.pipeline import MagicFacePipeline

        if self.context.image_size % 8:
            raise StageError(f"output.image_size={self.context.image_size}: latent diffusion needs a multiple of 8")
        if self.context.identity_bank is None:
            raise StageError("magicface edits bank identities; set identities.bank to a folder or 'builtin'")
        device = self.context.device
        if self.bg == "bisenet":
            from stages.generators.magicface.parsing import FaceParser  # deferred: imports torch

            self.parser = FaceParser(bisenet_path(self.config), device, self.config.parse_size)
        self.pipe = MagicFacePipeline(release_files(self.config), device, resolve_dtype(self.config.dtype, device))

    def _make_bg(self, crop: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        if self.parser is None:
            return landmark_hull_bg(crop, landmarks)
        return parsing_bg(crop, self.parser.parse(crop), landmarks[0:17])

    # ------------------------------------------------------------------ identities
    def _prepare_identity(self, identity_id: str) -> tuple[Any, np.ndarray] | str:
        """(prepared identity, own AU intensities), or why the exemplar cannot be used."""
        from stages.faces.exemplar import ExemplarError, exemplar_face  # deferred: dlib, loaded on the first identity

        bank = self.context.identity_bank
        try:
            own = bank.get(identity_id).own_intensity() or (0,) * 12
            image = np.asarray(bank.image(identity_id), dtype=np.uint8)
            key = source_key(image, self.bg, self.context.image_size)
            source = self.source_cache.get(key)
            if source is None:
                face = exemplar_face(image)
                source = source_face(image, face.box, face.landmarks, self.context.image_size, self._make_bg)
                self.source_cache.put(key, source)
        except (ExemplarError, ValueError, OSError, KeyError) as exc:
            return f"identity {identity_id!r} unusable for MagicFace: {exc}"
        return self.pipe.prepare(source.crop, source.bg), np.asarray(own, np.float32)

    # ------------------------------------------------------------------ generation
    def run(self, live: list[Record]) -> None:
        if self.pipe is None:
            raise StageError("MagicFaceGenerator.process() called before setup()")
        t0 = time.perf_counter()
        ready: list[tuple[Record, Any, np.ndarray]] = []
        for record in live:
            prepared = self._identity(str(record["identity_id"]))
            if isinstance(prepared, str):
                drop(record, self.name, prepared)  # an unusable exemplar drops only its samples
                continue
            identity, own = prepared
            ready.append((record, identity, relative_aus(record["planned_intensity"], own)))
        model_s = 0.0
        for chunk in chunks(ready, self.config.batch_size):
            out = self.pipe(
                [identity for _, identity, _ in chunk],
                np.stack([delta for _, _, delta in chunk]),
                [int(r["seed"]) for r, _, _ in chunk],
                steps=self.config.steps,
                guidance_scale=self.config.guidance_scale,
            )
            for (record, _, _), image in zip(chunk, out.images, strict=True):
                occurrence, intensity = planned_labels(record["planned_intensity"])
                self.write_sample(record, image, "planned", occurrence, intensity)
            model_s += out.unet_seconds
        self.note_timing(len(ready), model_s, t0)

"""Generator: MAUGen (paper sections 3.2-3.3), loading the official release's checkpoint layout.

Each sample is generated from its description, its identity exemplar and a mask, and comes
back with the image *and* the labels MAUGen's Conditional Label Decoder decoded while
denoising (``label_source = "decoded"``): 12 occurrence probabilities and 12 intensities
(0-5), in DISFA order.

Per sample:

- identity: ``context.identity_bank.image(identity_id)``, aligned to a 112x112 face chip
  (dlib detector + 5-point landmarks; ``identity_align = "center-crop"`` skips detection).
  A sample whose exemplar has no detectable face is dropped with that reason. Identity
  tokens are cached per ``identity_id`` (banks are small and reused across samples).
- mask (1 = generate): ``record["mask"]`` (``(H, W)``, any size) if present, else
  ``mask = "full"`` (the default: the whole frame is generated, nothing is kept; what a
  text-driven dataset needs) or ``"face-ellipse"`` (a head-sized ellipse is generated and
  the rest is kept from the background).
- background (kept where the mask is 0): ``record["background"]`` (uint8 RGB) if present,
  else the identity exemplar, centre-cropped to the frame.
- prompt: ``prompt_template`` with ``{description}``; its ``<ID> <ID2>`` slots carry the
  identity tokens into the text condition, as in the release.

Defaults are the release's ``inference.py``: the AU cue file is the cue at every step
(``au_cue_mode = "fixed"``; ``"ema"`` refreshes it each step, the paper's section 3.3) and its
negative prompt (``negative_prompt = "release"``; ``"short"`` is our face-only one).
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image
from pydantic import Field, field_validator

from manifests.vocab import DISFA_AUS
from stages.base import ModelFilesError, Record, StageConfig, StageContext, StageError, drop
from stages.generators.base import DType, GeneratorStage, model_card_licence, resolve_dtype
from stages.generators.maugen.chips import face_chip, resize_square
from stages.generators.maugen.layout import ReleaseFiles, resolve_files

__all__ = [
    "NEGATIVE_PROMPTS",
    "RELEASE_NEGATIVE_PROMPT",
    "SHORT_NEGATIVE_PROMPT",
    "MaugenConfig",
    "MaugenGenerator",
    "default_mask",
    "fit_image",
    "fit_mask",
]

# The release's inference.py negative prompt, verbatim (its "(...:1.4)" weighting is plain
# text to diffusers, and CLIP reads only the first 77 tokens, as here).
RELEASE_NEGATIVE_PROMPT = (
    "(deformed iris, deformed pupils, semi-realistic, cgi, 3d, render, sketch, cartoon, drawing, "
    "anime:1.4), text, close up, cropped, out of frame, worst quality, low quality, "
    "jpeg artifacts, ugly, duplicate, morbid, mutilated, extra fingers, mutated hands, "
    "poorly drawn hands, poorly drawn face, mutation, deformed, blurry, dehydrated, bad anatomy, "
    "bad proportions, extra limbs, cloned face, disfigured, gross proportions, malformed limbs, "
    "missing arms, missing legs, extra arms, extra legs, fused fingers, too many fingers, long neck, "
    "uneven skin texture, rough skin, noisy skin, patchy cheeks, unnatural lighting, blotchy color, red spots, "
    "discoloration, uneven tone, overexposed skin, deformed face, asymmetric cheeks, distorted features, "
    "unnatural proportions, sunken cheeks, plastic-like skin, overly smooth skin, waxy texture, overly edited "
    "face, harsh shadows, patchy texture, artifact, unrealistic lighting, unnatural cheek blush, uncanny valley,"
    "excessive frown lines, overly deep forehead wrinkles,"
    "unnaturally harsh forehead creases, excessively visible facial stress lines, overly defined horizontal lines "
    "on the forehead, over-exaggerated facial expressions, unnatural deep wrinkles, overly harsh shadows on skin, "
    "unnatural texture exaggeration, asymmetrical wrinkle distribution, overly strained facial features, "
    "exaggerated skin folds)"
)
# Ours: shorter, face terms only (no limbs, no wrinkle terms).
SHORT_NEGATIVE_PROMPT = (
    "semi-realistic, cgi, 3d, render, sketch, cartoon, drawing, anime, text, cropped, out of frame, "
    "worst quality, "
    "low quality, jpeg artifacts, duplicate, deformed, blurry, bad anatomy, bad proportions, disfigured, "
    "deformed iris, plastic-like skin, waxy texture, asymmetric cheeks, distorted features, uncanny valley"
)
NEGATIVE_PROMPTS = {"release": RELEASE_NEGATIVE_PROMPT, "short": SHORT_NEGATIVE_PROMPT}


class MaugenConfig(StageConfig):
    checkpoint_dir: str = Field(
        "models/maugen", description="folder holding the release layout (see stages/generators/maugen/checkpoint.py)"
    )
    base_dir: str = "stable-diffusion-inpainting"
    unet_file: str = "maugen_unet.pth"
    au_cue_file: str = "au_cue.pt"
    img2text_file: str = "img2text_exp.pth"
    identity_encoder_file: str = "msid_112.pth"
    steps: int = Field(30, ge=1, le=1000)
    guidance_scale: float = Field(7.5, ge=0.0, le=50.0)
    negative_prompt: str = Field(
        "release",
        description='"release" (the release\'s inference.py text), "short" (ours), or the text itself',
    )
    prompt_template: str = "a photo of <ID> <ID2>, {description}"
    scheduler: str | None = Field(None, description="diffusers scheduler class; None keeps the base folder's")
    dtype: DType = "auto"
    batch_size: int = Field(8, ge=1, le=256, description="samples per denoiser call; the micro-batch is chunked")
    idm_mode: Literal["release", "paper"] = Field(
        "release",
        description="IDM equations: as the release computes them (its weights) or as printed (eqs. 6-8)",
    )
    au_cue_mode: Literal["ema", "fixed"] = Field(
        "fixed",
        description='"fixed": the AU cue file throughout (the release); "ema": refreshed each step (paper 3.3)',
    )
    au_cue_momentum: float = Field(0.9, ge=0.0, le=1.0, description="EMA weight of the previous AU cue")
    attention_heads: int = Field(8, ge=1, description="heads of the label decoder's attention (8 in the release)")
    mask: Literal["full", "face-ellipse"] = "full"
    identity_align: Literal["dlib", "center-crop"] = "dlib"
    identity_padding: float = Field(0.3, ge=0.0, le=2.0, description="dlib face-chip padding around the landmarks")
    identity_cache: int = Field(4096, ge=0, description="identity embeddings kept in memory")

    @property
    def negative_text(self) -> str:
        """The negative prompt itself: a named one (``NEGATIVE_PROMPTS``) or the text given."""
        return NEGATIVE_PROMPTS.get(self.negative_prompt, self.negative_prompt)

    @field_validator("prompt_template")
    @classmethod
    def _has_description(cls, v: str) -> str:
        if "{description}" not in v:
            raise ValueError("must contain '{description}'")
        return v


def default_mask(kind: str, size: int) -> np.ndarray:
    """``(size, size)`` float32 mask, 1 where the face is generated."""
    if kind == "full":
        return np.ones((size, size), np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    # A head-sized ellipse a little above centre (portrait framing).
    return ((((xx - 0.5) / 0.33) ** 2 + ((yy - 0.45) / 0.42) ** 2) <= 1.0).astype(np.float32)


def fit_image(image: np.ndarray, size: int) -> np.ndarray:
    return resize_square(np.asarray(image, dtype=np.uint8)[..., :3], size)


def fit_mask(mask: np.ndarray, size: int) -> np.ndarray:
    m = np.asarray(mask, dtype=np.float32)
    m = m / 255.0 if m.max() > 1.0 else m
    resized = np.asarray(Image.fromarray(m).resize((size, size), Image.Resampling.NEAREST))
    return (resized > 0.5).astype(np.float32)


class MaugenGenerator(GeneratorStage[MaugenConfig]):
    name = "maugen"
    reads = frozenset({"description", "identity_id", "seed"})
    optional_reads = frozenset({"mask", "background"})
    # XDLI13/MAUGen publishes inference code without a LICENSE file and no weights: a user
    # brings their own checkpoint; the base is an SD 1.x inpainting folder (its model card).
    licence = (
        "Apache-2.0 (this code); MAUGen release code (XDLI13/MAUGen): no licence file (all rights reserved); "
        "the checkpoint: its own terms; the SD inpainting base: its model card; "
        "identity chips: dlib 5-point model (CC0)"
    )

    def licence_notice(self) -> str:
        base = Path(self.config.checkpoint_dir).expanduser() / self.config.base_dir
        card = model_card_licence(base)
        found = f"{card} (its model card)" if card else "UNDECLARED (no model card naming a licence)"
        return f"{self.licence}; base folder {base}: {found}"

    def __init__(self, config: MaugenConfig, context: StageContext) -> None:
        super().__init__(config, context)
        self.pipe: Any = None
        # Least recently used identities go first; identity_cache = 0 keeps none.
        self._identity = functools.lru_cache(maxsize=config.identity_cache)(self._prepare_identity)

    def preflight(self) -> None:
        cfg = self.config
        if self.context.identity_bank is None:
            raise ModelFilesError(
                "the maugen generator needs identity exemplars", fix="set identities.bank to 'builtin' or a folder"
            )
        files = ReleaseFiles(cfg.base_dir, cfg.unet_file, cfg.au_cue_file, cfg.img2text_file, cfg.identity_encoder_file)
        try:
            resolve_files(Path(cfg.checkpoint_dir).expanduser(), files)
        except StageError as exc:
            raise ModelFilesError(
                str(exc).splitlines()[0].split("; set generator", 1)[0].rstrip("."),
                fix="set generator.checkpoint_dir to a folder holding the MAUGen release files (the release "
                "publishes no weights: bring your own checkpoint; `factory models list` shows the pullable models)",
            ) from None

    def setup(self) -> None:
        # deferred: the MAUGen network modules import torch and diffusers (optional, heavy)
        from stages.generators.maugen.pipeline import MaugenPipeline

        cfg = self.config
        if self.context.identity_bank is None:
            raise StageError(
                "the maugen generator needs identity exemplars; set identities.bank to 'builtin' or a folder"
            )
        files = ReleaseFiles(cfg.base_dir, cfg.unet_file, cfg.au_cue_file, cfg.img2text_file, cfg.identity_encoder_file)
        self.pipe = MaugenPipeline.from_checkpoint(
            cfg.checkpoint_dir,
            files=files,
            device=self.context.device,
            dtype=resolve_dtype(cfg.dtype, self.context.device),
            idm_mode=cfg.idm_mode,
            num_heads=cfg.attention_heads,
            scheduler=cfg.scheduler,
        )
        size, multiple = self.context.image_size, self.pipe.size_multiple
        if size % multiple:
            raise StageError(f"output.image_size={size}: this MAUGen checkpoint needs a multiple of {multiple}")
        n_labels = self.pipe.au_cue.shape[1]
        if n_labels != len(DISFA_AUS):
            raise StageError(
                f"{cfg.checkpoint_dir}/{cfg.unet_file} decodes {n_labels} AUs; MIFA needs the "
                f"{len(DISFA_AUS)} DISFA AUs {list(DISFA_AUS)}"
            )

    # ------------------------------------------------------------------ identities
    def _prepare_identity(self, identity_id: str) -> tuple[Any, np.ndarray] | str:
        """(C_ID tokens on CPU, exemplar) or the reason it cannot be used (cached as ``_identity``)."""
        cfg = self.config
        try:
            exemplar = np.asarray(self.context.identity_bank.image(identity_id), dtype=np.uint8)
        except (ValueError, OSError, KeyError) as exc:
            result: tuple[Any, np.ndarray] | str = f"identity {identity_id!r} unusable: {exc}"
        else:
            size = self.pipe.identity_encoder.img_size
            if cfg.identity_align == "dlib":
                chip = face_chip(exemplar, size=size, padding=cfg.identity_padding)
            else:
                chip = resize_square(exemplar, size)
            if chip is None:
                result = f"identity {identity_id!r}: no face found in the exemplar to align (dlib)"
            else:
                result = (self.pipe.encode_identity([chip])[0].float().cpu(), exemplar)
        return result

    # ------------------------------------------------------------------ generation
    def run(self, live: list[Record]) -> None:
        if self.pipe is None:
            raise StageError("MaugenGenerator.process() called before setup()")
        t0 = time.perf_counter()
        ready: list[tuple[Record, Any, np.ndarray]] = []
        for record in live:
            ident = self._identity(str(record["identity_id"]))
            if isinstance(ident, str):
                drop(record, self.name, ident)  # an unusable exemplar drops only its samples
            else:
                ready.append((record, *ident))
        model_s = 0.0
        for i in range(0, len(ready), self.config.batch_size):
            model_s += self._generate(ready[i : i + self.config.batch_size])
        self.note_timing(len(ready), model_s, t0)

    def _generate(self, chunk: list[tuple[Record, Any, np.ndarray]]) -> float:
        import torch  # deferred: optional and heavy (the gen extra)

        cfg, size = self.config, self.context.image_size
        records = [r for r, _, _ in chunk]
        masks = np.stack(
            [fit_mask(r["mask"], size) if r.get("mask") is not None else default_mask(cfg.mask, size) for r in records]
        )
        backgrounds = np.stack(
            [
                fit_image(r["background"] if r.get("background") is not None else exemplar, size)
                for r, _, exemplar in chunk
            ]
        )
        out = self.pipe(
            [cfg.prompt_template.format(description=r.get("description") or "") for r in records],
            torch.stack([tokens for _, tokens, _ in chunk]),
            masks,
            backgrounds,
            [int(r["seed"]) for r in records],
            num_inference_steps=cfg.steps,
            guidance_scale=cfg.guidance_scale,
            negative_prompt=cfg.negative_text,
            au_cue_mode=cfg.au_cue_mode,
            au_cue_momentum=cfg.au_cue_momentum,
        )
        for i, record in enumerate(records):
            occurrence = [float(x) for x in out.occurrence[i]]
            intensity = [float(x) for x in out.intensity[i]]
            self.write_sample(record, out.images[i], "decoded", occurrence, intensity)
        return out.unet_seconds

"""The loaded MagicFace model, identity preparation and one batched, seeded call.

As the release's ``inference.py`` and ``MgPipeline`` run it, from local folders: SD 1.5's VAE,
text encoder and tokenizer; the fixed prompt ``"A close up of a person."``; the source face
and the "bg" image encoded to *unscaled* latents (``latent_dist.mode()``, no scaling factor);
``ID_enc`` once at t = 0 on the source latents; UniPC built from the SD folder's scheduler
config; classifier-free guidance over the AU vector only (batch ``[cond, uncond]``,
unconditional = zero AUs, ``u + g (c - u)``, g = 1.5); the final latents divided by the VAE's
scaling factor and decoded.

Departures, each for throughput or reproducibility and none changing the model's function:
an identity's features are computed once and kept (:meth:`MagicFacePipeline.prepare`; the
release recomputes them per call), as the self-attention keys/values they feed; one batch
holds many identities and AU vectors; each sample has its own CPU ``torch.Generator`` seeded
with its plan seed (the release draws the whole batch from one generator, so a sample's image
depends on its neighbours); half precision on CUDA (the release runs float32).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL, UniPCMultistepScheduler
from transformers import CLIPTextModel, CLIPTokenizer

from stages.generators.base import ForwardTimer, to_uint8
from stages.generators.magicface.layout import MagicFaceFiles
from stages.generators.magicface.unets import (
    IdentityKV,
    identity_features,
    identity_kv,
    install_identity_attention,
    load_unet,
)

__all__ = ["PROMPT", "MagicFaceOutput", "MagicFacePipeline", "PreparedIdentity"]

PROMPT = "A close up of a person."  # the release's fixed prompt


@dataclass
class MagicFaceOutput:
    images: np.ndarray  # (B, H, W, 3) uint8
    unet_seconds: float


@dataclass(frozen=True)
class PreparedIdentity:
    """What every sample of one identity reuses: its bg latents and identity keys/values."""

    bg_latents: torch.Tensor  # (1, 4, h, w)
    kv: IdentityKV


def _load_part(files: MagicFaceFiles, part: str, loader: Any, dtype: torch.dtype | None) -> Any:
    folder = files.sd_dir / part
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
            model = loader(str(folder), local_files_only=True, **({"torch_dtype": dtype} if dtype else {}))
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as exc:
        raise files.fail(
            f"MagicFace base folder {folder}/ cannot be loaded ({type(exc).__name__}: {exc})", exc
        ) from exc
    if dtype is not None and any(p.is_meta for p in model.parameters()):
        # diffusers leaves weights a file lacks on the meta device instead of failing.
        raise files.fail(f"MagicFace base folder {folder}/ lacks some of its weights")
    return model


def _to_unit(images: np.ndarray, device: str, dtype: torch.dtype) -> torch.Tensor:
    """uint8 ``(B, H, W, 3)`` -> ``(B, 3, H, W)`` in [-1, 1] (the release's ToTensor + normalise)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
    return (2.0 * x - 1.0).to(device=device, dtype=dtype)


class MagicFacePipeline:
    """The VAE, the text embedding of the fixed prompt, ``ID_enc`` and the denoising UNet."""

    def __init__(self, files: MagicFaceFiles, device: str, dtype: torch.dtype) -> None:
        files.check()
        self.device, self.dtype = device, dtype
        self.vae = _load_part(files, "vae", AutoencoderKL.from_pretrained, dtype).to(device).eval()
        text_encoder = _load_part(files, "text_encoder", CLIPTextModel.from_pretrained, dtype).to(device).eval()
        tokenizer = _load_part(files, "tokenizer", CLIPTokenizer.from_pretrained, None)
        self.scheduler_config = _load_part(files, "scheduler", UniPCMultistepScheduler.from_pretrained, None).config
        self.id_unet = load_unet(files, "ID_enc", dtype).to(device)
        self.unet = load_unet(files, "denoising_unet", dtype).to(device)
        width = text_encoder.config.hidden_size
        for name, unet in (("ID_enc", self.id_unet), ("denoising_unet", self.unet)):
            if unet.config.cross_attention_dim != width:
                raise files.fail(
                    f"MagicFace file {files.unet_dir(name) / 'config.json'}: the UNet attends to "
                    f"{unet.config.cross_attention_dim}-wide tokens but the text encoder gives {width}"
                )
        ids = tokenizer([PROMPT], max_length=tokenizer.model_max_length, padding="max_length", truncation=True)
        with torch.inference_mode():
            ids_t = torch.tensor(ids.input_ids, device=device)
            self.text = text_encoder(ids_t)[0].to(dtype)  # (1, 77, width), shared by every sample
        del text_encoder
        self.processors = install_identity_attention(self.unet)
        self.timer = ForwardTimer(self.unet, device)

    def encode(self, images: np.ndarray) -> torch.Tensor:
        """Unscaled latents (``mode()``) of uint8 images, one at a time (batch-independent)."""
        x = _to_unit(images, self.device, self.dtype)
        return torch.cat([self.vae.encode(x[i : i + 1]).latent_dist.mode() for i in range(len(x))])

    def prepare(self, crop: np.ndarray, bg: np.ndarray) -> PreparedIdentity:
        """One identity's bg latents and keys/values, from its face crop and bg image (uint8)."""
        with torch.inference_mode():
            source, bg_latents = self.encode(np.stack([crop, bg])).split(1)
            features = identity_features(self.id_unet, source, self.text)
            return PreparedIdentity(bg_latents=bg_latents, kv=identity_kv(self.unet, features))

    def __call__(
        self,
        identities: list[PreparedIdentity],
        aus: np.ndarray,
        seeds: list[int],
        *,
        steps: int,
        guidance_scale: float,
    ) -> MagicFaceOutput:
        """One image per (identity, relative AU vector, seed)."""
        guidance = guidance_scale >= 1.0  # the release's do_classifier_free_guidance
        copies = 2 if guidance else 1
        with torch.inference_mode(), self.timer.measure():
            bg = torch.cat([p.bg_latents for p in identities])
            shape = (1, *bg.shape[1:])
            noise = [torch.randn(shape, generator=torch.Generator("cpu").manual_seed(int(s))) for s in seeds]
            scheduler = UniPCMultistepScheduler.from_config(self.scheduler_config)
            scheduler.set_timesteps(steps, device=self.device)
            latents = torch.cat(noise).to(device=self.device, dtype=self.dtype) * scheduler.init_noise_sigma
            au = torch.as_tensor(np.asarray(aus, np.float32), device=self.device, dtype=self.dtype)
            labels = torch.cat([au, torch.zeros_like(au)]) if guidance else au
            text = self.text.expand(len(identities) * copies, -1, -1)
            bg = torch.cat([bg] * copies)
            for name, proc in self.processors.items():
                k = torch.cat([p.kv[name][0] for p in identities])
                v = torch.cat([p.kv[name][1] for p in identities])
                proc.kv = (torch.cat([k] * copies), torch.cat([v] * copies))
            try:
                for t in scheduler.timesteps:
                    model_in = scheduler.scale_model_input(torch.cat([latents] * copies), t)
                    pred = self.unet(
                        torch.cat([model_in, bg], dim=1), t, encoder_hidden_states=text, class_labels=labels
                    ).sample
                    if guidance:
                        cond, uncond = pred.chunk(2)
                        pred = uncond + guidance_scale * (cond - uncond)
                    latents = scheduler.step(pred, t, latents).prev_sample
            finally:
                for proc in self.processors.values():
                    proc.kv = None
            scale = self.vae.config.scaling_factor
            images = [self.vae.decode(latents[i : i + 1] / scale).sample for i in range(len(latents))]
            out = (torch.cat(images).float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
        return MagicFaceOutput(to_uint8(out), self.timer.seconds)

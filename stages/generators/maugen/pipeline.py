"""MAUGen as a batched diffusers-style pipeline: images and AU labels from one denoising run.

``MaugenPipeline.from_checkpoint(dir)`` loads the release layout (``checkpoint``);
``pipe(prompts, identity_chips, masks, backgrounds, seeds)`` returns, per sample, a uint8
image, 12 occurrence probabilities and 12 intensities (0-5).

Per denoising step (paper eqs. 3-5) the UNet sees ``[C_T with C_ID, C_AU(t-1)]`` and the
label decoder refines the AU queries from the up-path features; the occurrence logits and
intensities of every step are averaged with weight ``1/(t+1)`` (late, clean steps count
most), as the release does. ``au_cue_mode="ema"`` refreshes ``C_AU`` after each step from
the decoder's final-layer queries, ``C_AU(t) = m C_AU(t-1) + (1-m) Q(t)`` (the paper's
cross-timestep EMA, section 3.3); ``"fixed"`` keeps the released cue throughout, as the
release's inference script does.

Unlike the release it batches (each sample has its own seeded CPU generator, identity and
mask, so a sample does not depend on its batch neighbours), identity tokens are per sample
(the release repeats one identity across the batch), and it writes no files.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from stages.generators.maugen.checkpoint import DEFAULT_FILES, ReleaseFiles, expected_layout, load_au_cue, resolve_files
from stages.generators.maugen.identity_encoder import IdentityEncoder, ImageToTextWithExpression, to_model_input
from stages.generators.maugen.label_decoder import IDMMode
from stages.generators.maugen.loading import ID_TOKENS, check_widths, load_base, load_identity, load_unet
from stages.generators.maugen.unet import MaugenUNet

__all__ = ["ID_TOKENS", "MaugenOutput", "MaugenPipeline", "au_intensity"]

AUCueMode = Literal["ema", "fixed"]


@dataclass
class MaugenOutput:
    images: np.ndarray  # (B, H, W, 3) uint8
    occurrence: np.ndarray  # (B, N) probabilities
    intensity: np.ndarray  # (B, N) integers 0-5 as float
    unet_seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)


def au_intensity(intensity01: torch.Tensor) -> torch.Tensor:
    """Sigmoid intensity in [0, 1] -> the 0-5 scale, rounded (the release's ``round(x * 5)``)."""
    return torch.round(intensity01.clamp(0.0, 1.0) * 5.0)


def _step_kwargs(scheduler: Any, generators: list[torch.Generator]) -> dict[str, Any]:
    params = set(inspect.signature(scheduler.step).parameters)
    return {"generator": generators} if "generator" in params else {}


def _doubled(x: torch.Tensor, guided: bool) -> torch.Tensor:
    """``x`` for both branches of classifier-free guidance (negative, then conditional)."""
    return torch.cat([x, x]) if guided else x


@dataclass
class _StepCondition:
    """What every denoising step sees besides the latents, already doubled when guided."""

    text: torch.Tensor  # CLIP states, [negative; conditional] when guided
    mask: torch.Tensor  # at latent resolution
    masked: torch.Tensor  # VAE latent of the kept background
    id_tokens: torch.Tensor
    guided: bool

    def both(self, x: torch.Tensor) -> torch.Tensor:
        return _doubled(x, self.guided)


class MaugenPipeline:
    def __init__(
        self,
        *,
        unet: MaugenUNet,
        vae: Any,
        text_encoder: Any,
        tokenizer: Any,
        scheduler: Any,
        identity_encoder: IdentityEncoder,
        img2text: ImageToTextWithExpression,
        au_cue: torch.Tensor,
        device: str,
        dtype: torch.dtype,
    ) -> None:
        self.unet, self.vae, self.text_encoder, self.tokenizer = unet, vae, text_encoder, tokenizer
        self.scheduler, self.identity_encoder, self.img2text = scheduler, identity_encoder, img2text
        self.device, self.dtype = torch.device(device), dtype
        self.au_cue = au_cue.to(self.device, dtype)
        self.vae_scale = 2 ** (len(vae.config.block_out_channels) - 1)
        self.id_token_ids = [tokenizer.convert_tokens_to_ids(t) for t in ID_TOKENS]
        self._pending_ids: tuple[torch.Tensor, torch.Tensor] | None = None
        text_model = getattr(text_encoder, "text_model", text_encoder)  # transformers 4.x nests it
        # Identity tokens replace the *full* input embeddings (token + position) at the <ID>
        # slots, as in the release; a hook keeps this independent of the CLIP forward's API.
        text_model.embeddings.register_forward_hook(self._inject_identity)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_checkpoint(
        cls,
        checkpoint_dir: str | Path,
        *,
        files: ReleaseFiles = DEFAULT_FILES,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
        idm_mode: IDMMode = "release",
        num_heads: int = 8,
        scheduler: str | None = None,
    ) -> MaugenPipeline:
        """Load and check the release layout; ``scheduler`` overrides the base folder's class."""
        root = Path(checkpoint_dir).expanduser()
        paths = resolve_files(root, files)
        layout = expected_layout(root, files)
        parts = load_base(paths["base"], scheduler, layout)
        unet, spec, id_dim = load_unet(paths["unet"], layout, parts.unet, num_heads, idm_mode)
        identity_encoder, img2text = load_identity(paths, layout)
        au_cue = load_au_cue(paths["au_cue"], layout)
        check_widths(paths, layout, parts, spec, id_dim, au_cue, identity_encoder, img2text)
        for m in (unet, parts.vae, parts.text_encoder, identity_encoder, img2text):
            m.to(device=device, dtype=dtype).eval()
            m.requires_grad_(False)
        return cls(
            unet=unet,
            vae=parts.vae,
            text_encoder=parts.text_encoder,
            tokenizer=parts.tokenizer,
            scheduler=parts.scheduler,
            identity_encoder=identity_encoder,
            img2text=img2text,
            au_cue=au_cue,
            device=device,
            dtype=dtype,
        )

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this (VAE downscale x UNet downscale)."""
        return self.vae_scale * 2 ** int(self.unet.unet.num_upsamplers)

    # ------------------------------------------------------------------ encoders
    def _inject_identity(self, _module: Any, _inputs: Any, output: torch.Tensor) -> torch.Tensor | None:
        ids = self._pending_ids
        if ids is None:
            return None
        tokens, input_ids = ids
        out = output.clone()
        for slot, token_id in enumerate(self.id_token_ids):
            rows, cols = (input_ids == token_id).nonzero(as_tuple=True)
            out[rows, cols] = tokens[rows, slot].to(out.dtype)
        return out

    @torch.inference_mode()
    def encode_identity(self, chips: list[np.ndarray]) -> torch.Tensor:
        """Aligned uint8 face chips -> ``C_ID`` tokens ``(B, 2, D)``."""
        size = self.identity_encoder.img_size
        batch = to_model_input(chips, self.device, self.dtype)
        if batch.shape[-1] != size:
            batch = F.interpolate(batch, size=(size, size), mode="bilinear", align_corners=False)
        return self.img2text(self.identity_encoder(batch))

    def _tokenize(self, prompts: list[str]) -> torch.Tensor:
        return self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.device)

    @torch.inference_mode()
    def encode_prompts(self, prompts: list[str], id_tokens: torch.Tensor | None) -> torch.Tensor:
        """CLIP hidden states; where a prompt holds ``<ID>``/``<ID2>`` they carry ``C_ID``."""
        input_ids = self._tokenize(prompts)
        self._pending_ids = None if id_tokens is None else (id_tokens, input_ids)
        try:
            return self.text_encoder(input_ids)[0]
        finally:
            self._pending_ids = None

    # ------------------------------------------------------------------ generation
    def _masked_latents(
        self,
        masks: torch.Tensor,
        backgrounds: torch.Tensor,
        generators: list[torch.Generator],
        latent_hw: tuple[int, int],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask at latent resolution and the VAE latent of the kept background (masked area black)."""
        masked = backgrounds * (1.0 - masks) + (-1.0) * masks  # black where generated, as in the release
        dist = self.vae.encode(masked).latent_dist
        noise = torch.cat(
            [
                torch.randn(dist.mean[i : i + 1].shape, generator=g, dtype=torch.float32).to(
                    self.device, dist.mean.dtype
                )
                for i, g in enumerate(generators)
            ]
        )
        latents = (dist.mean + dist.std * noise) * self.vae.config.scaling_factor
        return F.interpolate(masks, size=latent_hw), latents

    def _encode(
        self,
        prompts: list[str],
        id_tokens: torch.Tensor,
        masks: np.ndarray,
        backgrounds: np.ndarray,
        generators: list[torch.Generator],
        negative_prompt: str,
        guided: bool,
    ) -> tuple[torch.Tensor, _StepCondition]:
        """Initial latents and the step condition (text, mask, kept background, identity)."""
        dev, dt = self.device, self.dtype
        n = len(prompts)
        h, w = masks.shape[1:]
        id_tokens = id_tokens.to(dev, dt)
        text = self.encode_prompts(prompts, id_tokens)
        if guided:
            text = torch.cat([self.encode_prompts([negative_prompt] * n, None), text])
        latent_hw = (h // self.vae_scale, w // self.vae_scale)
        channels = self.vae.config.latent_channels
        # Initial noise first, then the background latent: the same draw order per sample.
        latents = (
            torch.cat(
                [torch.randn((1, channels, *latent_hw), generator=g, dtype=torch.float32) for g in generators]
            ).to(dev, dt)
            * self.scheduler.init_noise_sigma
        )
        mask_t = torch.from_numpy(np.asarray(masks, dtype=np.float32)).unsqueeze(1).to(dev, dt)
        bg_t = torch.from_numpy(np.asarray(backgrounds)).permute(0, 3, 1, 2).to(dev, dt) / 127.5 - 1.0
        mask_lat, masked_lat = self._masked_latents(mask_t, bg_t, generators, latent_hw)
        doubled = [_doubled(x, guided) for x in (mask_lat, masked_lat, id_tokens)]
        return latents, _StepCondition(text, *doubled, guided=guided)

    def _denoise(
        self,
        latents: torch.Tensor,
        cond: _StepCondition,
        generators: list[torch.Generator],
        guidance_scale: float,
        au_cue_mode: AUCueMode,
        au_cue_momentum: float,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
        """The denoising loop: final latents, 1/(t+1)-weighted mean occurrence logits and
        intensities (conditional branch), and the seconds spent in the UNet."""
        n = latents.shape[0]
        au_cue = cond.both(self.au_cue.expand(n, -1, -1).clone())
        step_kwargs = _step_kwargs(self.scheduler, generators)
        det_sum = torch.zeros(n, self.au_cue.shape[1], device=self.device, dtype=torch.float32)
        reg_sum = torch.zeros_like(det_sum)
        weight_sum, unet_s = 0.0, 0.0
        for t in self.scheduler.timesteps:
            model_in = self.scheduler.scale_model_input(cond.both(latents), t)
            model_in = torch.cat([model_in, cond.mask, cond.masked], dim=1)
            t0 = time.perf_counter()
            out = self.unet(model_in, t, cond.text, au_cue, cond.id_tokens)
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            unet_s += time.perf_counter() - t0
            noise = out.noise
            det, reg = out.occurrence_logits.float(), out.intensity.float()
            if cond.guided:
                uncond, guided = noise.chunk(2)
                noise = uncond + guidance_scale * (guided - uncond)
                det, reg = det[n:], reg[n:]  # labels of the conditional branch
            weight = 1.0 / (float(t) + 1.0)
            det_sum += weight * det
            reg_sum += weight * reg
            weight_sum += weight
            if au_cue_mode == "ema":
                au_cue = au_cue_momentum * au_cue + (1.0 - au_cue_momentum) * out.au_queries
            latents = self.scheduler.step(noise, t, latents, **step_kwargs, return_dict=False)[0]
        return latents, det_sum / weight_sum, reg_sum / weight_sum, unet_s

    def _decode(self, latents: torch.Tensor) -> np.ndarray:
        """VAE decode one sample at a time (bounded memory) to ``(B, H, W, 3)`` uint8."""
        images = torch.cat(
            [
                self.vae.decode(latents[i : i + 1] / self.vae.config.scaling_factor).sample
                for i in range(latents.shape[0])
            ]
        )
        images = ((images.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
        return images.permute(0, 2, 3, 1).cpu().numpy()

    @torch.inference_mode()
    def __call__(
        self,
        prompts: list[str],
        id_tokens: torch.Tensor,
        masks: np.ndarray,
        backgrounds: np.ndarray,
        seeds: list[int],
        *,
        num_inference_steps: int = 30,
        guidance_scale: float = 7.5,
        negative_prompt: str = "",
        au_cue_mode: AUCueMode = "fixed",
        au_cue_momentum: float = 0.9,
    ) -> MaugenOutput:
        """Generate ``len(prompts)`` samples.

        ``id_tokens``: ``(B, 2, D)`` from :meth:`encode_identity`; ``masks``: ``(B, H, W)``
        floats, 1 where the face is generated; ``backgrounds``: ``(B, H, W, 3)`` uint8 kept
        where the mask is 0; ``seeds``: one per sample.
        """
        t_start = time.perf_counter()
        h, w = masks.shape[1:]
        if h % self.size_multiple or w % self.size_multiple:
            raise ValueError(f"image size {h}x{w} must be a multiple of {self.size_multiple} for this UNet")
        generators = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
        # Timesteps first: some schedulers derive init_noise_sigma from them.
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        guided = guidance_scale > 1.0
        latents, cond = self._encode(prompts, id_tokens, masks, backgrounds, generators, negative_prompt, guided)
        latents, logits, intensity01, unet_s = self._denoise(
            latents, cond, generators, guidance_scale, au_cue_mode, au_cue_momentum
        )
        t_decode = time.perf_counter()
        images = self._decode(latents)
        occurrence = torch.sigmoid(logits)
        intensity = au_intensity(intensity01)
        t_end = time.perf_counter()
        return MaugenOutput(
            images=images,
            occurrence=occurrence.cpu().numpy(),
            intensity=intensity.cpu().numpy(),
            unet_seconds=unet_s,
            timings={"unet_s": unet_s, "decode_s": t_end - t_decode, "total_s": t_end - t_start},
        )

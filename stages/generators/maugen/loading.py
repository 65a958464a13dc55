"""One loader per part of the MAUGen release: the SD-inpainting base folder, the MAUGen
UNet, the identity encoder with its token MLPs; and the check that the files agree on the
widths they pass to each other. :meth:`stages.generators.maugen.pipeline.MaugenPipeline.from_checkpoint`
calls them in turn; the file layout and state-dict reading are :mod:`~stages.generators.maugen.checkpoint`.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diffusers
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from stages.base import StageError
from stages.generators.maugen.checkpoint import (
    identity_encoder_kwargs,
    img2text_kwargs,
    load_state_dict,
    load_strict,
    unet_spec,
)
from stages.generators.maugen.identity_encoder import IdentityEncoder, ImageToTextWithExpression
from stages.generators.maugen.label_decoder import IDMMode
from stages.generators.maugen.unet import TRAINING_ONLY_KEYS, MaugenUNet, MaugenUNetSpec

__all__ = [
    "ID_TOKENS",
    "BaseParts",
    "add_identity_tokens",
    "check_widths",
    "load_base",
    "load_identity",
    "load_scheduler",
    "load_unet",
]

ID_TOKENS = ("<ID>", "<ID2>")


def load_scheduler(folder: Path, name: str | None) -> Any:
    """The base folder's scheduler, or the diffusers class ``name`` with its config."""
    config = diffusers.DDIMScheduler.load_config(folder)  # any ConfigMixin reads scheduler_config.json
    cls_name = name or config.get("_class_name", "DDIMScheduler")
    cls = getattr(diffusers, cls_name, None)
    if not (isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin)):
        raise StageError(
            f"scheduler {cls_name!r} (from {folder} or generator.scheduler) is not a diffusers scheduler class"
        )
    return cls.from_config(config)


@dataclass
class BaseParts:
    """The SD-inpainting parts of the base folder; ``unet`` is built from its config only
    (MAUGen's UNet file holds the weights)."""

    unet: Any
    vae: Any
    tokenizer: Any
    text_encoder: Any
    scheduler: Any


def add_identity_tokens(tokenizer: Any, text_encoder: Any) -> None:
    """Make ``<ID>``/``<ID2>`` single tokens; their embedding rows are never read."""
    missing_tokens = [t for t in ID_TOKENS if t not in tokenizer.get_vocab()]
    if missing_tokens:
        tokenizer.add_tokens(missing_tokens, special_tokens=True)
    if len(tokenizer) > text_encoder.get_input_embeddings().num_embeddings:
        # New rows are never read: the identity hook overwrites those positions.
        resize = text_encoder.resize_token_embeddings
        if "mean_resizing" in inspect.signature(resize).parameters:
            resize(len(tokenizer), mean_resizing=False)
        else:
            resize(len(tokenizer))


def load_base(base: Path, scheduler: str | None, layout: str) -> BaseParts:
    try:
        unet_base = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(base / "unet"))
        vae = AutoencoderKL.from_pretrained(base / "vae", local_files_only=True)
        tokenizer = CLIPTokenizer.from_pretrained(base / "tokenizer", local_files_only=True)
        text_encoder = CLIPTextModel.from_pretrained(base / "text_encoder", local_files_only=True)
        noise_scheduler = load_scheduler(base / "scheduler", scheduler)
    except (OSError, ValueError, KeyError) as exc:
        raise StageError(
            f"MAUGen base pipeline {base} cannot be loaded ({type(exc).__name__}: {exc}).\n{layout}"
        ) from exc
    if unet_base.config.in_channels != 9:
        raise StageError(
            f"MAUGen checkpoint file {base / 'unet' / 'config.json'}: in_channels="
            f"{unet_base.config.in_channels}, an SD-inpainting UNet has 9 (latent, mask, masked image)."
            f"\n{layout}"
        )
    add_identity_tokens(tokenizer, text_encoder)
    return BaseParts(unet_base, vae, tokenizer, text_encoder, noise_scheduler)


def load_unet(
    path: Path, layout: str, unet_base: Any, num_heads: int, idm_mode: IDMMode
) -> tuple[MaugenUNet, MaugenUNetSpec, int]:
    """MAUGen's UNet (base UNet + label branch) from its state dict, with its spec and identity width."""
    unet_sd = {k: v for k, v in load_state_dict(path, layout).items() if k not in TRAINING_ONLY_KEYS}
    spec, id_dim = unet_spec(unet_sd, path, layout, num_heads=num_heads)
    unet = MaugenUNet(unet_base, spec, id_dim=id_dim, idm_mode=idm_mode)
    load_strict(unet, unet_sd, path, layout)
    return unet, spec, id_dim


def load_identity(paths: dict[str, Path], layout: str) -> tuple[IdentityEncoder, ImageToTextWithExpression]:
    """The identity ViT and the identity-to-token MLPs, each sized from its own state dict."""
    enc_sd = load_state_dict(paths["identity_encoder"], layout)
    identity_encoder = IdentityEncoder(**identity_encoder_kwargs(enc_sd, paths["identity_encoder"], layout))
    load_strict(identity_encoder, enc_sd, paths["identity_encoder"], layout)
    i2t_sd = load_state_dict(paths["img2text"], layout)
    img2text = ImageToTextWithExpression(**img2text_kwargs(i2t_sd, paths["img2text"], layout))
    load_strict(img2text, i2t_sd, paths["img2text"], layout)
    return identity_encoder, img2text


def check_widths(
    paths: dict[str, Path],
    layout: str,
    parts: BaseParts,
    spec: MaugenUNetSpec,
    id_dim: int,
    au_cue: torch.Tensor,
    identity_encoder: IdentityEncoder,
    img2text: ImageToTextWithExpression,
) -> None:
    """The files of one release must agree on the widths they pass between each other."""
    text_dim = parts.text_encoder.config.hidden_size
    checks = [
        (
            paths["au_cue"],
            f"AU cue shape {tuple(au_cue.shape)}",
            au_cue.shape[1:] == (spec.num_labels, spec.token_dim),
        ),
        (
            paths["img2text"],
            f"identity token width {img2text.i2t_first.fc_out.out_features}",
            img2text.i2t_first.fc_out.out_features == text_dim and 2 * text_dim == id_dim,
        ),
        (
            paths["identity_encoder"],
            "identity feature width",
            identity_encoder.blocks[0].norm1.normalized_shape[0] * len(identity_encoder.ext_depths)
            == img2text.i2t_first.layers[0][0].in_features - img2text.null_exp.shape[0],
        ),
        (
            paths["unet"],
            f"AU token width {spec.token_dim}",
            spec.token_dim == parts.unet.config.cross_attention_dim,
        ),
    ]
    for path, what, ok in checks:
        if not ok:
            raise StageError(
                f"MAUGen checkpoint file {path} does not fit the rest of the checkpoint "
                f"({what}; text width "
                f"{text_dim}, {spec.num_labels} AUs, AU token width {spec.token_dim}).\n{layout}"
            )

"""The MAUGen release's checkpoint layout, checked and loaded.

The official release (XDLI13/MAUGen, ``inference.py``) takes five artefacts; this
factory expects them side by side in one ``checkpoint_dir`` (file names configurable):

=========================================  ==================================================
``stable-diffusion-inpainting/``            base SD-inpainting pipeline folder
                                            (model_index.json, unet/, vae/, text_encoder/,
                                            tokenizer/, scheduler/); ``<ID>``/``<ID2>`` are
                                            added to its tokenizer at load time
``maugen_unet.pth``                         custom UNet state dict (``unet.*``,
                                            ``auxiliary_head.*``, ``au_transformer.*``,
                                            ``dual_prediction_head.*``)
``au_cue.pt``                               AU-cue tensor ``(1, 12, D)`` or ``(12, D)``
``img2text_exp.pth``                        image-to-text-with-expression state dict
``msid_112.pth``                            112x112 identity-encoder state dict
=========================================  ==================================================

Every size of the label branch and the identity encoder is read off the state dicts'
shapes, then the modules are built and loaded with ``strict=True``: a missing, extra or
mis-shaped tensor is an error naming the file, not a silently random layer (the release
loads its UNet with ``strict=False``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from stages.base import StageError
from stages.generators.maugen.layout import BASE_LAYOUT, DEFAULT_FILES, ReleaseFiles, expected_layout, resolve_files
from stages.generators.maugen.unet import IGNORED_PREFIXES, MaugenUNetSpec
from stages.nets.checkpoint import state_dict_mismatch

__all__ = [
    "BASE_LAYOUT",
    "DEFAULT_FILES",
    "ReleaseFiles",
    "expected_layout",
    "identity_encoder_kwargs",
    "img2text_kwargs",
    "load_au_cue",
    "load_state_dict",
    "load_strict",
    "resolve_files",
    "unet_spec",
]


def load_state_dict(path: Path, layout: str) -> dict[str, torch.Tensor]:
    """A state dict from ``.pth``/``.pt``/``.bin`` (torch.load, weights only) or ``.safetensors``."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file  # deferred: only .safetensors files need it

            obj: Any = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt or foreign file
        raise StageError(
            f"MAUGen checkpoint file {path} cannot be read ({type(exc).__name__}: {exc}).\n{layout}"
        ) from exc
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if isinstance(obj, dict) and obj and all(isinstance(k, str) and k.startswith("module.") for k in obj):
        obj = {k.removeprefix("module."): v for k, v in obj.items()}  # saved from a DDP-wrapped model
    if not (isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values())):
        raise StageError(f"MAUGen checkpoint file {path} is not a state dict (name -> tensor).\n{layout}")
    return obj


def load_au_cue(path: Path, layout: str) -> torch.Tensor:
    try:
        cue = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise StageError(
            f"MAUGen checkpoint file {path} cannot be read ({type(exc).__name__}: {exc}).\n{layout}"
        ) from exc
    if isinstance(cue, torch.nn.Parameter):
        cue = cue.data
    if not isinstance(cue, torch.Tensor) or cue.dim() not in (2, 3) or (cue.dim() == 3 and cue.shape[0] != 1):
        shape = tuple(cue.shape) if isinstance(cue, torch.Tensor) else type(cue).__name__
        raise StageError(
            f"MAUGen checkpoint file {path}: AU cue must be a (1, N, D) or (N, D) tensor, got {shape}.\n{layout}"
        )
    return cue.reshape(1, *cue.shape[-2:]).float()


def _shape(sd: dict[str, torch.Tensor], key: str, path: Path, layout: str) -> tuple[int, ...]:
    if key not in sd:
        raise StageError(f"MAUGen checkpoint file {path} lacks tensor {key!r}; it is not the expected model.\n{layout}")
    return tuple(sd[key].shape)


def unet_spec(sd: dict[str, torch.Tensor], path: Path, layout: str, num_heads: int = 8) -> tuple[MaugenUNetSpec, int]:
    """Label-branch sizes and identity width (``2 * D``) read from the custom UNet state dict."""
    labels = {int(m.group(1)) for k in sd if (m := re.match(r"dual_prediction_head\.token_fc_layers_det\.(\d+)\.", k))}
    if not labels:
        raise StageError(
            f"MAUGen checkpoint file {path} has no dual_prediction_head.*; it is not a MAUGen UNet.\n{layout}"
        )
    token_dim = _shape(sd, "dual_prediction_head.token_fc_layers_det.0.0.weight", path, layout)[1]
    ff_dim = _shape(sd, "au_transformer.0.feedforward_layers_dec.0.0.weight", path, layout)[0]
    idm_dim, id_dim = _shape(sd, "auxiliary_head.0.idm.mlp.weight", path, layout)
    c1 = _shape(sd, "auxiliary_head.0.pointwise_conv1.weight", path, layout)[0]
    c2 = _shape(sd, "auxiliary_head.0.pointwise_conv2.weight", path, layout)[0]
    per_group = _shape(sd, "auxiliary_head.0.depthwise_conv2.weight", path, layout)[1]
    patch_in = _shape(sd, "auxiliary_head.0.patch_embedding.weight", path, layout)[1]
    patch = round((patch_in / c2) ** 0.5)
    depth = len({k.split(".")[3] for k in sd if k.startswith("au_transformer.0.norm_layers_dec_1.")})
    spec = MaugenUNetSpec(
        num_labels=len(labels),
        token_dim=token_dim,
        ff_dim=ff_dim,
        idm_dim=idm_dim,
        conv_dims=(c1, c2),
        conv2_groups=c1 // per_group,
        num_heads=num_heads,
        patch_size=patch,
        decoder_depth=max(depth, 1),
    )
    return spec, id_dim


def identity_encoder_kwargs(sd: dict[str, torch.Tensor], path: Path, layout: str) -> dict[str, Any]:
    """IdentityEncoder sizes from its state dict; heads follow the release's 32-wide heads."""
    embed_dim = _shape(sd, "cls_token", path, layout)[-1]
    patch = _shape(sd, "patch_embed.proj.weight", path, layout)[-1]
    tokens = _shape(sd, "pos_embed", path, layout)[1] - 1
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    ext = sorted({int(m.group(1)) for k in sd if (m := re.match(r"norms\.layer_(\d+)\.", k))})
    mlp_hidden = _shape(sd, "blocks.0.mlp.fc1.weight", path, layout)[0]
    grid = round(tokens**0.5)
    if grid * grid != tokens or not ext:
        raise StageError(
            f"MAUGen checkpoint file {path}: not a square-patch identity ViT with norms.layer_*.\n{layout}"
        )
    return {
        "embed_dim": embed_dim,
        "depth": depth,
        "num_heads": max(embed_dim // 32, 1),
        "patch_size": patch,
        "img_size": grid * patch,
        "ext_depths": tuple(ext),
        "mlp_hidden": mlp_hidden,
    }


def img2text_kwargs(sd: dict[str, torch.Tensor], path: Path, layout: str) -> dict[str, Any]:
    exp_dim = _shape(sd, "null_exp", path, layout)[0]
    hidden, in_total = _shape(sd, "i2t_first.layers.0.0.weight", path, layout)
    out_dim = _shape(sd, "i2t_first.fc_out.weight", path, layout)[0]
    layers = len({k.split(".")[2] for k in sd if k.startswith("i2t_first.layers.")})
    return {
        "in_dim": in_total - exp_dim,
        "hidden_dim": hidden,
        "out_dim": out_dim,
        "exp_dim": exp_dim,
        "layers": layers,
    }


def load_strict(module: torch.nn.Module, sd: dict[str, torch.Tensor], path: Path, layout: str) -> None:
    """``load_state_dict(strict=True)`` with an error naming the file and the first bad keys."""
    sd = {k: v for k, v in sd.items() if not k.startswith(IGNORED_PREFIXES)}
    problem = state_dict_mismatch(module.state_dict(), sd)
    if problem:
        raise StageError(f"MAUGen checkpoint file {path} does not match the model ({problem}).\n{layout}")
    module.load_state_dict(sd, strict=True)

"""The MAUGen denoiser: an SD-inpainting UNet whose up path also feeds the label decoder.

Paper section 3.2 (MRL): the cross-attention condition is ``[C_T, C_AU]`` where the
identity embedding ``C_ID`` sits inside ``C_T`` as the two ``<ID> <ID2>`` token slots.
Section 3.3 (DIG): every cross-attention block of the upsampling path hands its feature
map to the Conditional Label Decoder (``label_decoder``), which refines the AU queries
layer by layer; the dual head turns the final queries into labels.

Attribute names (``unet``, ``auxiliary_head``, ``au_transformer``,
``dual_prediction_head``) are the release's state-dict prefixes. The release also stores
``position_embedding.{l}.pe``: fixed sine codes, recomputed here for any image size, so
those keys are accepted and ignored (:data:`IGNORED_PREFIXES`). A UNet saved from the
release's model in training mode also carries ``learnable_tokens`` (the AU queries it
trains; inference reads the AU cue file instead): exactly that key is accepted and
ignored (:data:`TRAINING_ONLY_KEYS`), everything else stays strict.

Checked once (2026-11-22, not a committed test: it needs the release's code) against the
release's ``CustomUNet`` on random weights (SD-1.5 block layout, ``layers_per_block=1``,
512 px, batch 2, ``idm_mode="release"``): the same state-dict keys and shapes apart from
the ``pe`` buffers, an identical noise prediction, labels and AU queries within 2.4e-5.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from stages.generators.maugen.label_decoder import (
    AUDecoderLayer,
    DualPredictionHead,
    FeatureTokenizer,
    IDMMode,
    sinusoidal_positions,
)

__all__ = [
    "IGNORED_PREFIXES",
    "TRAINING_ONLY_KEYS",
    "MaugenUNet",
    "MaugenUNetOutput",
    "MaugenUNetSpec",
    "cross_attention_up_channels",
]

IGNORED_PREFIXES = ("position_embedding.",)
# The release's CustomUNet(train=True) holds this parameter; its lenient load skips it.
TRAINING_ONLY_KEYS = frozenset({"learnable_tokens"})


@dataclass(frozen=True)
class MaugenUNetSpec:
    """Sizes of the label branch (the release's values are 12, 768, 512, 128, (512, 256), 256, 8, 4)."""

    num_labels: int = 12
    token_dim: int = 768
    ff_dim: int = 512
    idm_dim: int = 128
    conv_dims: tuple[int, int] = (512, 256)
    conv2_groups: int = 256
    num_heads: int = 8
    patch_size: int = 4
    decoder_depth: int = 1


@dataclass
class MaugenUNetOutput:
    noise: torch.Tensor  # (B, 4, h, w) predicted noise
    occurrence_logits: torch.Tensor  # (B, N_q)
    intensity: torch.Tensor  # (B, N_q) in [0, 1]
    au_queries: torch.Tensor  # (B, N_q, D) final-layer AU queries (detached)


def cross_attention_up_channels(unet: Any) -> list[int]:
    """Output channels of each cross-attention block of the UNet's up path, in order."""
    return [block.resnets[-1].out_channels for block in unet.up_blocks if getattr(block, "has_cross_attention", False)]


class MaugenUNet(nn.Module):
    def __init__(self, unet: Any, spec: MaugenUNetSpec, id_dim: int, idm_mode: IDMMode = "release") -> None:
        super().__init__()
        self.unet = unet
        self.spec = spec
        channels = cross_attention_up_channels(unet)
        if not channels:
            raise ValueError("the UNet has no cross-attention up blocks for the label decoder to read")
        temb_dim = unet.time_embedding.linear_2.out_features
        self.auxiliary_head = nn.ModuleList(
            [
                FeatureTokenizer(
                    c,
                    temb_dim,
                    spec.token_dim,
                    id_dim,
                    spec.idm_dim,
                    spec.conv_dims,
                    spec.conv2_groups,
                    spec.patch_size,
                    idm_mode,
                )
                for c in channels
            ]
        )
        self.au_transformer = nn.ModuleList(
            [AUDecoderLayer(spec.token_dim, spec.ff_dim, spec.num_heads, spec.decoder_depth) for _ in channels]
        )
        self.dual_prediction_head = DualPredictionHead(spec.token_dim, spec.num_labels)

    @property
    def config(self) -> Any:
        return self.unet.config

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        text_states: torch.Tensor,
        au_cue: torch.Tensor,
        id_tokens: torch.Tensor,
    ) -> MaugenUNetOutput:
        """One denoising step.

        ``sample``: ``(B, 9, h, w)`` (latent, mask, masked-image latent); ``text_states``:
        ``(B, T, D)`` with the identity tokens already in place; ``au_cue``: ``(B, N_q, D)``
        (``C_AU(t-1)``, also the initial AU queries); ``id_tokens``: ``(B, 2, D)``.
        """
        unet = self.unet
        upsample_factor = 2**unet.num_upsamplers
        forward_upsample_size = any(s % upsample_factor for s in sample.shape[-2:])
        if unet.config.center_input_sample:
            sample = 2 * sample - 1.0
        emb = unet.time_embedding(unet.get_time_embed(sample=sample, timestep=timestep))
        if unet.time_embed_act is not None:
            emb = unet.time_embed_act(emb)
        text_states = unet.process_encoder_hidden_states(encoder_hidden_states=text_states, added_cond_kwargs={})
        # C_cond = [C_T (with C_ID inside), C_AU(t-1)] (eq. 3); C_AU is detached by the caller.
        cond = torch.cat([text_states, au_cue], dim=1)
        c_id = id_tokens.flatten(1)

        sample = unet.conv_in(sample)
        residuals: tuple[torch.Tensor, ...] = (sample,)
        for block in unet.down_blocks:
            if getattr(block, "has_cross_attention", False):
                sample, res = block(hidden_states=sample, temb=emb, encoder_hidden_states=cond)
            else:
                sample, res = block(hidden_states=sample, temb=emb)
            residuals += res
        if unet.mid_block is not None:
            if getattr(unet.mid_block, "has_cross_attention", False):
                sample = unet.mid_block(sample, emb, encoder_hidden_states=cond)
            else:
                sample = unet.mid_block(sample, emb)

        queries = au_cue
        layer = 0
        for i, block in enumerate(unet.up_blocks):
            res = residuals[-len(block.resnets) :]
            residuals = residuals[: -len(block.resnets)]
            upsample_size = residuals[-1].shape[2:] if (i < len(unet.up_blocks) - 1 and forward_upsample_size) else None
            if getattr(block, "has_cross_attention", False):
                sample = block(
                    hidden_states=sample,
                    temb=emb,
                    res_hidden_states_tuple=res,
                    encoder_hidden_states=cond,
                    upsample_size=upsample_size,
                )
                # Label branch: z^(l) -> IDM -> tokens -> decoder layer l (Figure 3a).
                tokens = self.auxiliary_head[layer](sample, emb, c_id)
                positions = sinusoidal_positions(tokens.shape[1], tokens.shape[2], tokens.device, tokens.dtype)
                queries = self.au_transformer[layer](tokens, positions, queries, cond)
                layer += 1
            else:
                sample = block(hidden_states=sample, temb=emb, res_hidden_states_tuple=res, upsample_size=upsample_size)
        if unet.conv_norm_out is not None:
            sample = unet.conv_act(unet.conv_norm_out(sample))
        noise = unet.conv_out(sample)
        det, reg = self.dual_prediction_head(queries)
        return MaugenUNetOutput(noise, det, reg, queries.detach())

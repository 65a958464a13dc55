"""FineFace's decoupled AU cross-attention, installed on every ``attn2`` of a diffusers UNet.

As in the release (IP-Adapter style): the text cross-attention of each ``attn2`` layer gets a
second attention over the AU token, with its own keys and values, added before the output
projection::

    h = softmax(q k_text^T / sqrt(d)) v_text  [+ ip_scale * softmax(q k_id^T) v_id]  + au_scale * softmax(q k_au^T) v_au
    out = to_out(h)

The keys and values are the checkpoint's ``au_to_k`` / ``au_to_v`` (and, in the FaceID
variant, the IP-Adapter's ``to_k_ip`` / ``to_v_ip``). All three attentions run through
``scaled_dot_product_attention`` with the layer's own scale; the release computes the same
with explicit softmax matrices (same values to float rounding, measured in
``tests/stages/generators/test_fineface_release.py``). Self-attention (``attn1``) runs
diffusers' ``AttnProcessor2_0`` and ignores the AU arguments.

The processors' argument names (``au_embedding``, ``au_scale``, ``image_embedding``,
``ip_scale``) are what the pipeline passes in ``cross_attention_kwargs``; diffusers drops
(with a warning per call) any keyword a processor's signature does not name, so both
processors name all four.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from torch import nn

__all__ = ["AUCrossAttnProcessor", "SelfAttnProcessor", "attn2_layers", "install_processors", "processor_state_keys"]


class SelfAttnProcessor(AttnProcessor2_0):
    """diffusers' SDPA attention for ``attn1``; accepts and ignores the AU and identity inputs."""

    def __call__(  # type: ignore[override]
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        au_embedding: torch.Tensor | None = None,
        au_scale: float = 1.0,
        image_embedding: torch.Tensor | None = None,
        ip_scale: float = 1.0,
    ) -> torch.Tensor:
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    batch, tokens, width = x.shape
    return x.view(batch, tokens, heads, width // heads).transpose(1, 2)


def _attend(attn: Attention, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: Any) -> torch.Tensor:
    """Multi-head attention of ``query`` (B, N, C) over ``key``/``value`` (B, M, C) -> (B, N, C)."""
    batch = query.shape[0]
    q, k, v = (_heads(t, attn.heads) for t in (query, key.to(query.dtype), value.to(query.dtype)))
    if attn.norm_q is not None:
        q = attn.norm_q(q)
    if attn.norm_k is not None:
        k = attn.norm_k(k)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0, is_causal=False, scale=attn.scale)
    return out.transpose(1, 2).reshape(batch, -1, attn.heads * v.shape[-1]).to(query.dtype)


class AUCrossAttnProcessor(nn.Module):
    """Text + AU (+ FaceID) cross-attention for one ``attn2`` layer.

    ``hidden`` is the layer's inner width (its ``to_q`` output), ``context`` the width of the
    condition tokens (the UNet's ``cross_attention_dim``, = the text encoder's width).
    Attribute names are the checkpoint's keys below ``<layer>.processor.``.
    """

    def __init__(self, hidden: int, context: int, identity: bool = False) -> None:
        super().__init__()
        self.au_to_k = nn.Linear(context, hidden, bias=False)
        self.au_to_v = nn.Linear(context, hidden, bias=False)
        self.identity = identity
        if identity:
            self.to_k_ip = nn.Linear(context, hidden, bias=False)
            self.to_v_ip = nn.Linear(context, hidden, bias=False)

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        au_embedding: torch.Tensor | None = None,
        au_scale: float = 1.0,
        image_embedding: torch.Tensor | None = None,
        ip_scale: float = 1.0,
    ) -> torch.Tensor:
        if au_embedding is None:
            raise ValueError("FineFace attention needs cross_attention_kwargs['au_embedding'] (B, tokens, width)")
        if self.identity and image_embedding is None:
            raise ValueError("FineFace FaceID attention needs cross_attention_kwargs['image_embedding']")
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        spatial = hidden_states.shape if hidden_states.ndim == 4 else None
        if spatial is not None:
            batch, channels, height, width = spatial
            hidden_states = hidden_states.view(batch, channels, height * width).transpose(1, 2)
        batch = hidden_states.shape[0]
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, context.shape[1], batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        out = _attend(attn, query, attn.to_k(context), attn.to_v(context), attention_mask)
        if self.identity:
            ids = image_embedding.to(self.to_k_ip.weight.dtype)  # type: ignore[union-attr]
            out = out + ip_scale * _attend(attn, query, self.to_k_ip(ids), self.to_v_ip(ids), None)
        aus = au_embedding.to(self.au_to_k.weight.dtype)
        out = out + au_scale * _attend(attn, query, self.au_to_k(aus), self.au_to_v(aus), None)
        out = attn.to_out[1](attn.to_out[0](out))
        if spatial is not None:
            out = out.transpose(-1, -2).reshape(spatial)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def attn2_layers(unet: nn.Module) -> dict[str, Attention]:
    """The UNet's cross-attention layers by module name (``...transformer_blocks.0.attn2``)."""
    return {name: m for name, m in unet.named_modules() if isinstance(m, Attention) and name.endswith("attn2")}


def install_processors(unet: Any, identity: bool = False) -> dict[str, AUCrossAttnProcessor]:
    """Put an :class:`AUCrossAttnProcessor` on every ``attn2`` and SDPA on every other layer.

    Returns the AU processors by layer name, on the UNet's device and dtype.
    """
    layers = attn2_layers(unet)
    au: dict[str, AUCrossAttnProcessor] = {
        name: AUCrossAttnProcessor(layer.to_q.out_features, layer.to_k.in_features, identity).to(
            device=layer.to_q.weight.device, dtype=layer.to_q.weight.dtype
        )
        for name, layer in layers.items()
    }
    processors: dict[str, Any] = {}
    for key in unet.attn_processors:
        layer = key.removesuffix(".processor")
        processors[key] = au[layer] if layer in au else SelfAttnProcessor()
    unet.set_attn_processor(processors)
    return au


def processor_state_keys(au: Mapping[str, AUCrossAttnProcessor]) -> dict[str, tuple[int, ...]]:
    """Checkpoint key -> shape of every AU weight, as ``attn_processors.ckpt`` spells them."""
    return {
        f"{layer}.processor.{part}.weight": tuple(getattr(proc, part).weight.shape)
        for layer, proc in au.items()
        for part in ("au_to_k", "au_to_v")
    }

"""The Conditional Label Decoder (CLD) of MAUGen, paper section 3.3 and Figure 3.

Per cross-attention layer ``l`` of the UNet's upsampling path:

1. :class:`FeatureTokenizer` adds the timestep embedding to the feature map ``z^(l)``,
   passes it through an :class:`IdentityDecouplingModule` (IDM), two depthwise-separable
   convolutions and a patch embedding, giving image tokens of the AU-token width.
2. :class:`AUDecoderLayer` (a Transformer decoder) refines the ``N_q`` AU queries:
   image-token self-attention, query self-attention, query-to-image cross-attention, a
   feed-forward block, then the Language-Guided Feature Enhancer (LGFE): cross-attention
   from the queries into the prompt tokens (``[C_T, C_AU]``).
3. After the last layer, :class:`DualPredictionHead` maps each query to an occurrence
   logit and a sigmoid intensity in [0, 1] (x5 gives the 0-5 scale).

Attribute names follow the official release's state dict (``auxiliary_head.{l}.idm.W_Q``,
``au_transformer.{l}.attention_layers_text.0``, ``dual_prediction_head.token_fc_layers_det``
...) so its checkpoint loads with ``strict=True``; that is why some names are not ours.

The IDM has two modes:

- ``"paper"``: equations 6-8 as printed. ``M = 1 - sigmoid(MLP_MM(C_ID) K^T)`` gates the
  attention logits, ``z_res = z - <z, c>c`` with ``c = Norm(MLP_RF(C_ID))`` removes the
  identity direction, and ``LN(softmax(QK^T/sqrt(d_k) * M) V + z_res)`` is the output.
- ``"release"``: what the official code computes (and therefore what its weights were
  trained with): the gate is ``sigmoid(...)`` (not its complement), logits are scaled by
  ``sqrt(L)`` (token count), the identity projection is subtracted from the attention
  output with a sigmoid weight and without re-normalising, there is no residual, the layer
  norm spans tokens and channels, and the result is reshaped (not transposed) back to
  ``(B, C, H, W)``. Use it with the release's weights.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "AUDecoderLayer",
    "DualPredictionHead",
    "FeatureTokenizer",
    "IDMMode",
    "IdentityDecouplingModule",
    "patchify",
    "sinusoidal_positions",
]

IDMMode = Literal["paper", "release"]


def sinusoidal_positions(num_tokens: int, dim: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Fixed 1-D sine/cosine position code ``(1, num_tokens, dim)`` (the release's FixedSinusoidal)."""
    position = torch.arange(num_tokens, dtype=torch.float32).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * -(math.log(10000.0) / dim))
    pe = torch.zeros(num_tokens, dim)
    pe[:, 0::2] = torch.sin(position * div_term)
    pe[:, 1::2] = torch.cos(position * div_term)[:, : dim // 2]
    return pe.unsqueeze(0).to(device=device, dtype=dtype)


def patchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, (H/p)(W/p), C*p*p)``, channel-major inside a patch (release order)."""
    b, c, h, w = x.shape
    if h % patch or w % patch:
        raise ValueError(f"feature map {h}x{w} is not divisible by the label decoder's patch size {patch}")
    x = x.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, (h // patch) * (w // patch), c * patch * patch)


class IdentityDecouplingModule(nn.Module):
    """IDM (Figure 3b): removes identity-aligned content from a UNet feature map.

    ``mlp`` is MLP_MM of eq. 6, ``linear_projection`` is MLP_RF of eq. 7.
    """

    def __init__(self, channels: int, id_dim: int, hidden: int, mode: IDMMode = "release") -> None:
        super().__init__()
        self.mode: IDMMode = mode
        self.hidden = hidden
        self.mlp = nn.Linear(id_dim, hidden)
        self.linear_projection = nn.Linear(id_dim, channels)
        self.W_Q = nn.Linear(channels, hidden)
        self.W_K = nn.Linear(channels, hidden)
        self.W_V = nn.Linear(channels, hidden)
        self.W_O = nn.Linear(hidden, channels)

    def modulation_mask(self, c_id: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """Eq. 6 gate ``(B, 1, L)``: 1 - sigmoid(MLP_MM(C_ID) . K^T) (paper) or sigmoid(...) (release)."""
        similarity = torch.sigmoid(torch.bmm(self.mlp(c_id).unsqueeze(1), keys.transpose(1, 2)))
        return 1.0 - similarity if self.mode == "paper" else similarity

    def forward(self, z: torch.Tensor, c_id: torch.Tensor) -> torch.Tensor:
        """``z``: ``(B, C, H, W)``; ``c_id``: ``(B, id_dim)`` (both identity tokens, flattened)."""
        b, c, h, w = z.shape
        tokens = z.reshape(b, c, h * w).transpose(1, 2)  # (B, L, C)
        normed = F.layer_norm(tokens, (c,))
        q, k, v = self.W_Q(normed), self.W_K(normed), self.W_V(normed)
        mask = self.modulation_mask(c_id, k)
        if self.mode == "paper":
            logits = torch.bmm(q, k.transpose(1, 2)) / math.sqrt(self.hidden) * mask
            attended = self.W_O(torch.bmm(torch.softmax(logits, dim=-1), v))
            direction = F.normalize(self.linear_projection(c_id), dim=-1).unsqueeze(1)  # eq. 7
            residual = tokens - (tokens * direction).sum(-1, keepdim=True) * direction
            out = F.layer_norm(attended + residual, (c,))  # eq. 8
            return out.transpose(1, 2).reshape(b, c, h, w)
        logits = torch.bmm(q, k.transpose(1, 2)) / math.sqrt(h * w) * mask
        attended = self.W_O(torch.bmm(torch.softmax(logits, dim=-1), v))
        projection = self.linear_projection(c_id).unsqueeze(1)
        weight = torch.sigmoid((attended * projection).sum(-1, keepdim=True))
        out = F.layer_norm(attended - weight * projection, attended.shape[1:])
        return out.reshape(b, c, h, w)  # the release reshapes (B, L, C) memory as (B, C, H, W)


class FeatureTokenizer(nn.Module):
    """UNet feature map -> image tokens for the AU decoder (the release's ``AuxiliaryModel``)."""

    def __init__(
        self,
        channels: int,
        temb_dim: int,
        token_dim: int,
        id_dim: int,
        idm_dim: int,
        conv_dims: tuple[int, int],
        conv2_groups: int,
        patch_size: int,
        idm_mode: IDMMode = "release",
    ) -> None:
        super().__init__()
        c1, c2 = conv_dims
        self.patch_size = patch_size
        self.time_emb_proj = nn.Linear(temb_dim, channels)
        self.nonlinearity = nn.SiLU()
        self.idm = IdentityDecouplingModule(channels, id_dim, idm_dim, idm_mode)
        self.depthwise_conv1 = nn.Conv2d(channels, channels, kernel_size=3, padding=1, groups=channels)
        self.pointwise_conv1 = nn.Conv2d(channels, c1, kernel_size=1)
        self.depthwise_conv2 = nn.Conv2d(c1, c1, kernel_size=3, padding=1, groups=conv2_groups)
        self.pointwise_conv2 = nn.Conv2d(c1, c2, kernel_size=1)
        self.patch_embedding = nn.Linear(c2 * patch_size * patch_size, token_dim)

    def forward(self, x: torch.Tensor, temb: torch.Tensor, c_id: torch.Tensor) -> torch.Tensor:
        x = x + self.time_emb_proj(self.nonlinearity(temb))[:, :, None, None]
        x = self.idm(x, c_id)
        x = F.gelu(F.instance_norm(self.pointwise_conv1(self.depthwise_conv1(x))))
        x = F.gelu(F.instance_norm(self.pointwise_conv2(self.depthwise_conv2(x))))
        return self.patch_embedding(patchify(x, self.patch_size))


def _mha(dim: int, heads: int) -> nn.MultiheadAttention:
    return nn.MultiheadAttention(embed_dim=dim, num_heads=heads, batch_first=True)


def _ff(dim: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))


class AUDecoderLayer(nn.Module):
    """Transformer decoder over AU queries with the LGFE (the release's ``AUTransformer``).

    The paper's LGFE self-attends over the prompt tokens before injecting them; the
    release has no weights for that self-attention (the CLIP encoder's own self-attention
    has already mixed the tokens), so only the injecting cross-attention is applied.
    """

    def __init__(self, dim: int, ff_dim: int, heads: int, depth: int = 1) -> None:
        super().__init__()
        self.depth = depth

        def many(make: type[nn.Module] | object, *args: object) -> nn.ModuleList:
            return nn.ModuleList([make(*args) for _ in range(depth)])  # type: ignore[operator]

        self.norm_layers_enc_1 = many(nn.LayerNorm, dim)
        self.norm_layers_enc_2 = many(nn.LayerNorm, dim)
        self.norm_layers_dec_1 = many(nn.LayerNorm, dim)
        self.norm_layers_dec_2 = many(nn.LayerNorm, dim)
        self.norm_layers_dec_3 = many(nn.LayerNorm, dim)
        self.feedforward_layers_enc = many(_ff, dim, ff_dim)
        self.feedforward_layers_dec = many(_ff, dim, ff_dim)
        self.attention_layers_enc = many(_mha, dim, heads)
        self.attention_layers_1 = many(_mha, dim, heads)
        self.attention_layers_2 = many(_mha, dim, heads)
        self.attention_layers_text = many(_mha, dim, heads)

    def forward(
        self, image_tokens: torch.Tensor, positions: torch.Tensor, queries: torch.Tensor, prompt: torch.Tensor
    ) -> torch.Tensor:
        x, q = image_tokens, queries
        x_pos = x + positions
        for i in range(self.depth):
            # Image tokens: self-attention with position-coded keys/values, then feed-forward.
            x = self.norm_layers_enc_1[i](x + self.attention_layers_enc[i](x, x_pos, x_pos, need_weights=False)[0])
            x = self.norm_layers_enc_2[i](x + self.feedforward_layers_enc[i](x))
            # AU queries: self-attention (co-activation), cross-attention into the image, FF.
            q = self.norm_layers_dec_1[i](q + self.attention_layers_1[i](q, q, q, need_weights=False)[0])
            q = self.norm_layers_dec_2[i](q + self.attention_layers_2[i](q, x, x, need_weights=False)[0])
            q = self.norm_layers_dec_3[i](q + self.feedforward_layers_dec[i](q))
            # LGFE: inject the prompt's token-wise context (no residual, as released).
            q = self.attention_layers_text[i](q, prompt, prompt, need_weights=False)[0]
        return q


class DualPredictionHead(nn.Module):
    """One occurrence MLP and one intensity MLP per AU query (Figure 3a)."""

    def __init__(self, dim: int, num_labels: int) -> None:
        super().__init__()

        def head() -> nn.Sequential:
            return nn.Sequential(nn.Linear(dim, dim // 2), nn.LeakyReLU(), nn.Linear(dim // 2, 1))

        self.token_fc_layers_det = nn.ModuleList([head() for _ in range(num_labels)])
        self.token_fc_layers_reg = nn.ModuleList([head() for _ in range(num_labels)])

    def forward(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, N_q, D)`` -> occurrence logits ``(B, N_q)``, intensity in [0, 1] ``(B, N_q)``."""
        det = torch.cat([fc(queries[:, i]) for i, fc in enumerate(self.token_fc_layers_det)], dim=1)
        reg = torch.cat([fc(queries[:, i]) for i, fc in enumerate(self.token_fc_layers_reg)], dim=1)
        return det, torch.sigmoid(reg)

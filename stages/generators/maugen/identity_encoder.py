"""Identity branch of MAUGen: aligned 112x112 face -> two CLIP-token-width vectors (``C_ID``).

- :class:`IdentityEncoder`: the release's multi-scale identity ViT (``msid_base_patch8_112``:
  112 px, patch 8, width 384, depth 12, 12 heads), written in plain torch with the same
  parameter names as its timm-based original so its state dict loads; it returns the
  class tokens of selected blocks, each through BatchNorm1d + LayerNorm, concatenated.
- :class:`ImageToTextWithExpression`: two MLPs mapping that feature (plus an expression
  code, the learned ``null_exp`` when none is given) to the ``<ID>`` and ``<ID2>`` token
  embeddings.

The aligned chips it reads come from :mod:`stages.generators.maugen.chips`.

The encoder was checked once against the release's timm (1.0.19) ``VisionTransformer``
subclass: a strict load of its state dict and identical features on random weights.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "IdentityEncoder",
    "ImageToTextWithExpression",
    "to_model_input",
]


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _Mlp(dim, mlp_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class IdentityEncoder(nn.Module):
    """Multi-scale identity ViT; ``forward`` gives ``(B, embed_dim * len(ext_depths))``."""

    def __init__(
        self,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 12,
        patch_size: int = 8,
        img_size: int = 112,
        ext_depths: tuple[int, ...] = (2, 5, 8, 11),
        mlp_hidden: int | None = None,
    ) -> None:
        super().__init__()
        self.img_size = img_size
        self.ext_depths = tuple(ext_depths)
        num_patches = (img_size // patch_size) ** 2
        self.patch_embed = _PatchEmbed(patch_size, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.randn(1, num_patches + 1, embed_dim) * 0.02)
        self.blocks = nn.ModuleList([_Block(embed_dim, num_heads, mlp_hidden or embed_dim * 4) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)  # final norm of the ViT; unused by the multi-scale feature
        self.norms = nn.ModuleDict(
            {f"layer_{i}": nn.Sequential(nn.BatchNorm1d(embed_dim), nn.LayerNorm(embed_dim)) for i in self.ext_depths}
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, 3, img_size, img_size)`` in [-1, 1]."""
        tokens = self.patch_embed(x)
        tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1) + self.pos_embed
        feats = []
        for i, block in enumerate(self.blocks):
            tokens = block(tokens)
            if i in self.ext_depths:
                feats.append(self.norms[f"layer_{i}"](tokens[:, 0]))
        return torch.cat(feats, dim=1)


class _TokenMlp(nn.Module):
    def __init__(self, in_dim: int, hidden: int, out_dim: int, layers: int) -> None:
        super().__init__()
        blocks = []
        dim = in_dim
        for _ in range(layers):
            # Dropout sits at index 1 in the release; kept so the Linear stays at index 0.
            blocks.append(nn.Sequential(nn.Linear(dim, hidden), nn.Dropout(0.1), nn.LeakyReLU(0.2)))
            dim = hidden
        self.layers = nn.Sequential(*blocks)
        self.fc_out = nn.Linear(hidden, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(self.layers(x))


class ImageToTextWithExpression(nn.Module):
    """Identity feature (+ expression code) -> (``<ID>`` token, ``<ID2>`` token)."""

    def __init__(
        self,
        in_dim: int = 1536,
        hidden_dim: int = 1536,
        out_dim: int = 768,
        exp_dim: int = 64,
        layers: int = 2,
    ) -> None:
        super().__init__()
        self.i2t_first = _TokenMlp(in_dim + exp_dim, hidden_dim, out_dim, layers)
        self.i2t_last = _TokenMlp(in_dim + exp_dim, hidden_dim, out_dim, layers)
        self.null_exp = nn.Parameter(torch.zeros(exp_dim))

    def forward(self, feature: torch.Tensor, expression: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, in_dim)`` -> ``(B, 2, out_dim)``; no expression code means the learned neutral one."""
        if expression is None:
            expression = self.null_exp.unsqueeze(0).expand(feature.shape[0], -1)
        x = torch.cat([feature, expression], dim=-1)
        return torch.stack([self.i2t_first(x), self.i2t_last(x)], dim=1)


def to_model_input(chips: list[np.ndarray], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """uint8 RGB chips -> ``(B, 3, H, W)`` in [-1, 1] (the release's Normalize(0.5, 0.5))."""
    batch = torch.from_numpy(np.stack(chips)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return batch.to(device=device, dtype=dtype)

"""Swin Transformer (Liu et al. 2021) in plain torch, with the Microsoft reference key names.

timm cannot be imported beside the pinned torch wheel, so the network is written here:
keys ``patch_embed.proj.*``, ``patch_embed.norm.*``, ``layers.{i}.blocks.{j}.norm1.*``,
``...attn.qkv.*``, ``...attn.relative_position_bias_table``,
``...attn.relative_position_index`` (buffer), ``...attn_mask`` (buffer, shifted blocks
only), ``...mlp.fc{1,2}.*``, ``layers.{i}.downsample.{reduction,norm}.*``, ``norm.*``,
``head.*``, so ``swin_base_patch4_window7_224.pth`` (its ``["model"]``) loads strictly.

``num_classes=None`` drops the classifier (no ``head.*`` keys), as OpenGraphAU does;
:meth:`SwinTransformer.forward_features` returns the token sequence ``(B, N, C)``. This
module imports torch at import time; import it only from code that needs a network.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["SWIN_SPECS", "SwinSpec", "SwinTransformer", "build_swin"]


def _window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, ws, ws, c)


def _window_reverse(windows: torch.Tensor, ws: int, h: int, w: int) -> torch.Tensor:
    b = windows.shape[0] // ((h // ws) * (w // ws))
    x = windows.view(b, h // ws, w // ws, ws, ws, -1)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, -1)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class WindowAttention(nn.Module):
    def __init__(self, dim: int, window_size: int, num_heads: int):
        super().__init__()
        self.window_size = window_size
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        coords = torch.stack(
            torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij")
        ).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).contiguous()
        rel[:, :, 0] += window_size - 1
        rel[:, :, 1] += window_size - 1
        rel[:, :, 0] *= 2 * window_size - 1
        # Persistent because the official checkpoints contain it (strict loading needs it).
        self.register_buffer("relative_position_index", rel.sum(-1))
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        bw, n, c = x.shape
        qkv = self.qkv(x).reshape(bw, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
        attn = q @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        attn = attn + bias.view(n, n, -1).permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(bw // nw, nw, self.num_heads, n, n) + mask[None, :, None]
            attn = attn.view(-1, self.num_heads, n, n)
        attn = attn.softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(bw, n, c))


class SwinBlock(nn.Module):
    def __init__(self, dim: int, resolution: tuple[int, int], num_heads: int, window_size: int, shift: int):
        super().__init__()
        self.resolution = resolution
        if min(resolution) <= window_size:
            # As in the reference: a window covering the whole map is never shifted.
            window_size, shift = min(resolution), 0
        self.window_size = window_size
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, dim * 4)
        mask = self._shift_mask() if shift > 0 else None
        self.register_buffer("attn_mask", mask)

    def _shift_mask(self) -> torch.Tensor:
        h, w = self.resolution
        ws, s = self.window_size, self.shift
        img = torch.zeros((1, h, w, 1))
        cnt = 0
        for hs in (slice(0, -ws), slice(-ws, -s), slice(-s, None)):
            for wsl in (slice(0, -ws), slice(-ws, -s), slice(-s, None)):
                img[:, hs, wsl, :] = cnt
                cnt += 1
        win = _window_partition(img, ws).view(-1, ws * ws)
        mask = win.unsqueeze(1) - win.unsqueeze(2)
        return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.resolution
        b, _, c = x.shape
        shortcut = x
        x = self.norm1(x).view(b, h, w, c)
        if self.shift:
            x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
        windows = _window_partition(x, self.window_size).view(-1, self.window_size**2, c)
        windows = self.attn(windows, self.attn_mask).view(-1, self.window_size, self.window_size, c)
        x = _window_reverse(windows, self.window_size, h, w)
        if self.shift:
            x = torch.roll(x, shifts=(self.shift, self.shift), dims=(1, 2))
        x = shortcut + x.reshape(b, h * w, c)
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    def __init__(self, resolution: tuple[int, int], dim: int):
        super().__init__()
        self.resolution = resolution
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.resolution
        b, _, c = x.shape
        x = x.view(b, h, w, c)
        # Reference order x0, x1, x2, x3 = (even,even), (odd,even), (even,odd), (odd,odd).
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x.view(b, -1, 4 * c)))


class BasicLayer(nn.Module):
    def __init__(
        self,
        dim: int,
        resolution: tuple[int, int],
        depth: int,
        num_heads: int,
        window_size: int,
        downsample: bool,
    ):
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinBlock(dim, resolution, num_heads, window_size, 0 if i % 2 == 0 else window_size // 2)
            for i in range(depth)
        )
        self.downsample = PatchMerging(resolution, dim) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


class PatchEmbed(nn.Module):
    def __init__(self, img_size: int, patch_size: int, embed_dim: int):
        super().__init__()
        self.img_size = img_size
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(f"Swin input must be {self.img_size}x{self.img_size}, got {tuple(x.shape[-2:])}")
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))


class SwinTransformer(nn.Module):
    """Swin Transformer with the Microsoft reference key layout (no absolute pos. embedding)."""

    def __init__(
        self,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        img_size: int = 224,
        patch_size: int = 4,
        num_classes: int | None = 1000,
    ):
        super().__init__()
        self.patch_embed = PatchEmbed(img_size, patch_size, embed_dim)
        grid = img_size // patch_size
        self.layers = nn.ModuleList(
            BasicLayer(
                embed_dim * 2**i,
                (grid // 2**i, grid // 2**i),
                depths[i],
                num_heads[i],
                window_size,
                downsample=i < len(depths) - 1,
            )
            for i in range(len(depths))
        )
        self.num_features = embed_dim * 2 ** (len(depths) - 1)
        self.norm = nn.LayerNorm(self.num_features)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes else None
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised token sequence ``(B, N, C)`` of the last stage."""
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.forward_features(x).mean(dim=1)
        return pooled if self.head is None else self.head(pooled)


@dataclass(frozen=True)
class SwinSpec:
    embed_dim: int
    depths: tuple[int, int, int, int]
    num_heads: tuple[int, int, int, int]
    window_size: int = 7
    img_size: int = 224


SWIN_SPECS: dict[str, SwinSpec] = {
    "swin_tiny": SwinSpec(96, (2, 2, 6, 2), (3, 6, 12, 24)),
    "swin_small": SwinSpec(96, (2, 2, 18, 2), (3, 6, 12, 24)),
    "swin_base": SwinSpec(128, (2, 2, 18, 2), (4, 8, 16, 32)),
}


def build_swin(spec: SwinSpec | str, num_classes: int | None = 1000) -> SwinTransformer:
    if isinstance(spec, str):
        try:
            spec = SWIN_SPECS[spec]
        except KeyError:
            raise ValueError(f"unknown Swin {spec!r}; known: {sorted(SWIN_SPECS)}") from None
    return SwinTransformer(
        spec.embed_dim, spec.depths, spec.num_heads, spec.window_size, spec.img_size, num_classes=num_classes
    )

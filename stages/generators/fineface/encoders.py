"""The condition encoders of FineFace: AU intensities -> one AU token; ArcFace -> FaceID tokens.

AU token (as the release builds it): ``[the 12 raw AU intensities, Linear(12 -> hidden)(AUs),
zeros]``, as wide as the text encoder's tokens (1024 for SD 2.1, 768 for SD 1.5), shape
``(B, 1, width)``. The unconditional token is the encoder applied to the zero AU vector (so
the Linear's bias is in it), as in the release.

FaceID tokens (the IP-Adapter-FaceID portrait projection): ``LayerNorm(MLP(embedding))``
reshaped to ``(B, n_tokens, width)``; the unconditional tokens project the zero embedding.
Both modules are sized from their state dicts and their attribute names are the files' keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from stages.generators.fineface.layout import FineFaceFiles

__all__ = ["AUEncoder", "FaceIDProjection", "load_au_encoder", "load_faceid_projection"]

N_AUS = 12


class AUEncoder(nn.Module):
    def __init__(self, hidden: int, width: int) -> None:
        super().__init__()
        if N_AUS + hidden > width:
            raise ValueError(f"AU token needs {N_AUS} + {hidden} values but the text width is {width}")
        self.au_encoder = nn.Linear(N_AUS, hidden)
        self.width = width

    def forward(self, aus: torch.Tensor) -> torch.Tensor:
        """``(B, 12)`` intensities 0-5 -> ``(B, 1, width)`` tokens."""
        aus = aus.to(self.au_encoder.weight.dtype)
        features = self.au_encoder(aus)
        pad = aus.new_zeros(aus.shape[0], self.width - N_AUS - features.shape[1])
        return torch.cat([aus, features, pad], dim=1).unsqueeze(1)


class FaceIDProjection(nn.Module):
    def __init__(self, embedding: int, width: int, tokens: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(
            nn.Linear(embedding, embedding * 2), nn.GELU(), nn.Linear(embedding * 2, width * tokens)
        )
        self.norm = nn.LayerNorm(width)
        self.width, self.tokens = width, tokens

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``(B, faces, 512)`` or ``(B, 512)`` ArcFace embeddings -> ``(B, faces * tokens, width)``."""
        batch = embeddings.shape[0]
        flat = embeddings.reshape(-1, embeddings.shape[-1]).to(self.norm.weight.dtype)
        tokens = self.norm(self.proj(flat).reshape(-1, self.tokens, self.width))
        return tokens.reshape(batch, -1, self.width)


def _shape(state: Mapping[str, Any], key: str, path: Path, files: FineFaceFiles) -> tuple[int, ...]:
    value = state.get(key)
    if not isinstance(value, torch.Tensor):
        raise files.fail(f"FineFace file {path} has no tensor {key!r} (keys: {sorted(state)[:6]}...)")
    return tuple(value.shape)


def load_au_encoder(state: Mapping[str, Any], path: Path, width: int, files: FineFaceFiles) -> AUEncoder:
    """The AU encoder of ``au_encoder.ckpt``, its token as wide as the text encoder's (``width``)."""
    hidden, n_aus = _shape(state, "au_encoder.weight", path, files)
    if n_aus != N_AUS or N_AUS + hidden > width:
        raise files.fail(
            f"FineFace file {path} encodes {n_aus} AUs into {hidden} features; this base's text width "
            f"is {width}, which must hold the {N_AUS} AUs plus the features (wrong base folder or variant?)"
        )
    encoder = AUEncoder(hidden, width)
    _load(encoder, state, path, files)
    return encoder


def load_faceid_projection(state: Mapping[str, Any], path: Path, width: int, files: FineFaceFiles) -> FaceIDProjection:
    """The ``image_proj`` part of the IP-Adapter-FaceID portrait file."""
    embedding = _shape(state, "proj.0.weight", path, files)[1]
    out = _shape(state, "proj.2.weight", path, files)[0]
    if out % width:
        raise files.fail(f"FineFace file {path}: image_proj gives {out} values, not a multiple of the width {width}")
    projection = FaceIDProjection(embedding, width, out // width)
    _load(projection, state, path, files)
    return projection


def _load(module: nn.Module, state: Mapping[str, Any], path: Path, files: FineFaceFiles) -> None:
    try:
        module.load_state_dict(dict(state), strict=True)
    except RuntimeError as exc:
        raise files.fail(f"FineFace file {path} does not fit {type(module).__name__}: {exc}", exc) from exc

"""The FineFace release layout on disk, its checks, and reading its state-dict files.

Two variants, as published in tvaranka/fineface (hub repo ``Tvaranka/fineface``):

- **AU** (default): a Stable Diffusion 2.1-base diffusers folder plus ``attn_processors.ckpt``
  (AU keys/values of every ``attn2``), ``pytorch_lora_weights.safetensors`` (LoRA on the UNet's
  ``to_q/to_k/to_v/to_out.0``) and ``au_encoder.ckpt`` (``Linear(12 -> 64)``).
- **FaceID** (identity conditioning): a Stable Diffusion 1.5 folder (the release uses
  Realistic Vision 4.0), ``sd15_attn_processors.ckpt``, ``sd15_au_encoder.ckpt``
  (``Linear(12 -> 756)``, token width 768, no LoRA) and the IP-Adapter-FaceID portrait file
  (``image_proj`` + ``ip_adapter``), fed ArcFace embeddings of the identity's exemplar.

Every missing or unreadable file raises one :class:`~stages.base.StageError` naming the file
and printing the whole expected layout, so a user fixes the folder once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stages.base import StageError

__all__ = ["SD_FOLDER_PARTS", "FineFaceFiles", "read_state_dict"]

SD_FOLDER_PARTS = ("model_index.json", "unet/", "vae/", "text_encoder/", "tokenizer/", "scheduler/")


@dataclass(frozen=True)
class FineFaceFiles:
    """Where each part of one FineFace variant is; ``lora`` is ``None`` in the FaceID variant."""

    base_dir: Path
    weights_dir: Path
    attn_processors: str
    au_encoder: str
    lora: str | None
    faceid: Path | None = None  # IP-Adapter-FaceID portrait file (FaceID variant only)
    arcface: Path | None = None  # ArcFace ONNX that embeds the exemplar (FaceID variant only)

    @property
    def with_identity(self) -> bool:
        return self.faceid is not None

    def path(self, part: str) -> Path:
        """``attn_processors``, ``au_encoder`` or ``lora`` inside the weights folder."""
        name = getattr(self, part)
        if name is None:
            raise ValueError(f"this FineFace variant has no {part} file")
        return self.weights_dir / name

    def layout(self) -> str:
        """The full expected layout, with the pull command that fills it."""
        parts = ", ".join(SD_FOLDER_PARTS)
        w = self.weights_dir
        if not self.with_identity:
            return "\n".join(
                [
                    "FineFace expects (`factory models pull stable-diffusion-2-1-base` and "
                    "`factory models pull fineface` put it there):",
                    f"  {self.base_dir}/  Stable Diffusion 2.1-base diffusers folder: {parts}",
                    f"  {w / self.attn_processors}  AU cross-attention (au_to_k, au_to_v) of every attn2 layer",
                    f"  {w / str(self.lora)}  LoRA on the UNet's to_q, to_k, to_v, to_out.0",
                    f"  {w / self.au_encoder}  AU encoder: Linear(12 AUs -> 64)",
                ]
            )
        return "\n".join(
            [
                "FineFace with FaceID identity expects (`factory models pull` realistic-vision-v4, fineface, "
                "ip-adapter-faceid-portrait and arcface-r50 put it there):",
                f"  {self.base_dir}/  Stable Diffusion 1.5 diffusers folder (the release: Realistic Vision 4.0): "
                f"{parts}",
                f"  {w / self.attn_processors}  AU cross-attention (au_to_k, au_to_v) for the SD 1.5 UNet",
                f"  {w / self.au_encoder}  AU encoder: Linear(12 AUs -> 756), token width 768",
                f"  {self.faceid}  IP-Adapter-FaceID portrait: image_proj + ip_adapter (to_k_ip, to_v_ip)",
                f"  {self.arcface}  ArcFace ONNX (insightface buffalo_l w600k_r50.onnx) for the exemplar's embedding",
            ]
        )

    def fail(self, problem: str, cause: BaseException | None = None) -> StageError:
        """The one error for a bad layout: the problem, then the whole expected layout."""
        error = StageError(f"{problem}\n{self.layout()}")
        error.__cause__ = cause
        return error

    def check(self) -> dict[str, Any]:
        """Every file present and the base folder complete; returns its ``model_index.json``."""
        base = self.base_dir
        if not base.is_dir():
            raise self.fail(f"FineFace base folder {base}/ does not exist")
        index_file = base / "model_index.json"
        if not index_file.is_file():
            raise self.fail(f"FineFace base file {index_file} is missing; {base} is not a diffusers folder")
        try:
            index = json.loads(index_file.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise self.fail(f"FineFace base file {index_file} cannot be read ({exc})", exc) from exc
        for part in SD_FOLDER_PARTS[1:]:
            if not (base / part).is_dir():
                raise self.fail(f"FineFace base folder {base / part} is missing")
        files = [self.path("attn_processors"), self.path("au_encoder")]
        files += [self.path("lora")] if self.lora else []
        files += [p for p in (self.faceid, self.arcface) if p is not None]
        for file in files:
            if not file.is_file():
                raise self.fail(f"FineFace file {file} is missing")
        return index


def read_state_dict(path: Path, files: FineFaceFiles) -> dict[str, Any]:
    """A ``torch.save``-d dict of tensors, read with ``weights_only=True`` (no pickled code runs)."""
    import torch  # deferred: optional and heavy (the gen extra); only loading needs it

    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises pickle, zip and runtime errors for a bad file
        raise files.fail(
            f"FineFace file {path} cannot be read as a state dict ({type(exc).__name__}: {exc})", exc
        ) from exc
    if not isinstance(data, dict) or not data:
        raise files.fail(f"FineFace file {path} holds {type(data).__name__}, not a state dict of tensors")
    return data

"""The MagicFace release layout on disk and its checks.

As published (hub repos ``sd-legacy/stable-diffusion-v1-5`` and ``mengtingwei/magicface``):

- a Stable Diffusion 1.5 diffusers folder; only ``vae/``, ``text_encoder/``, ``tokenizer/`` and
  ``scheduler/`` are read (the release replaces the UNet with its own two);
- ``ID_enc/``: a stock SD 1.5 UNet (``config.json`` + ``diffusion_pytorch_model.safetensors``)
  run once at t = 0 on the source face's latents;
- ``denoising_unet/``: an SD 1.5 UNet with 8 input channels (noisy latents + "bg" latents)
  and ``au_aug_mlp`` (``Linear(12 -> time-embedding width)``, added to the time embedding).

Every missing or unreadable file raises one :class:`~stages.base.StageError` naming the file
and printing the whole expected layout with the pull commands.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stages.base import StageError

__all__ = ["SD_PARTS", "UNET_FILES", "MagicFaceFiles"]

SD_PARTS = ("vae/", "text_encoder/", "tokenizer/", "scheduler/")
UNET_FILES = ("config.json", "diffusion_pytorch_model.safetensors")


@dataclass(frozen=True)
class MagicFaceFiles:
    """Where the SD 1.5 parts and the two MagicFace UNets are."""

    sd_dir: Path
    weights_dir: Path

    def unet_dir(self, name: str) -> Path:
        """``ID_enc`` or ``denoising_unet`` inside the weights folder."""
        return self.weights_dir / name

    def layout(self) -> str:
        """The full expected layout, with the pull commands that fill it."""
        w = self.weights_dir
        files = " + ".join(UNET_FILES)
        return "\n".join(
            [
                "MagicFace expects (`factory models pull stable-diffusion-v1-5` and "
                "`factory models pull magicface` put it there):",
                f"  {self.sd_dir}/  Stable Diffusion 1.5 diffusers folder: {', '.join(SD_PARTS)}",
                f"  {w / 'ID_enc'}/  identity UNet (4 input channels): {files}",
                f"  {w / 'denoising_unet'}/  denoising UNet (8 input channels, au_aug_mlp): {files}",
            ]
        )

    def fail(self, problem: str, cause: BaseException | None = None) -> StageError:
        """The one error for a bad layout: the problem, then the whole expected layout."""
        error = StageError(f"{problem}\n{self.layout()}")
        error.__cause__ = cause
        return error

    def config(self, name: str) -> dict[str, Any]:
        """A UNet folder's ``config.json``, read."""
        path = self.unet_dir(name) / "config.json"
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise self.fail(f"MagicFace file {path} cannot be read ({exc})", exc) from exc
        if not isinstance(data, dict):
            raise self.fail(f"MagicFace file {path} holds {type(data).__name__}, not a UNet config")
        return data

    def check(self) -> None:
        """Every folder and file present (contents are checked when loading)."""
        if not self.sd_dir.is_dir():
            raise self.fail(f"MagicFace base folder {self.sd_dir}/ does not exist")
        for part in SD_PARTS:
            if not (self.sd_dir / part).is_dir():
                raise self.fail(f"MagicFace base folder {self.sd_dir / part} is missing")
        for name in ("ID_enc", "denoising_unet"):
            for file in UNET_FILES:
                path = self.unet_dir(name) / file
                if not path.is_file():
                    raise self.fail(f"MagicFace file {path} is missing")

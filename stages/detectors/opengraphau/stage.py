"""OpenGraphAU AU detector stage (Luo et al. 2022; lingjivoo/OpenGraphAU, MIT).

Runs the stage-1 (default) or stage-2 network of :mod:`stages.detectors.opengraphau.model` on the face crop (the
``face_crop`` a face stage left, else the whole image) with the release's evaluation
preprocessing: shorter side resized to 256 (bilinear), centre crop 224, ImageNet
mean/std. Outputs the 41 release columns; the base class keeps the DISFA ones (AU1, 2,
4, 5, 6, 9, 12, 15, 17, 20, 25, 26: all 12 are covered), combining L/R columns by max.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from PIL import Image
from pydantic import Field

from stages.base import Record, StageConfig, StageContext, StageError
from stages.catalogue import OPENGRAPHAU_LICENCE, THIS_CODE, local_path, search_dirs
from stages.detectors.base import AUDetector, Scale, record_image

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "OpenGraphAUConfig", "OpenGraphAUDetector", "imagenet_batch"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Backbone = Literal["resnet18", "resnet50", "swin_tiny", "swin_small", "swin_base"]


class OpenGraphAUConfig(StageConfig):
    checkpoint: str | None = Field(
        None, description="stage-1 .pth; default: the file `factory models pull` puts in the models dir"
    )
    backbone: Backbone = "resnet50"
    stage: Literal[1, 2] = Field(1, description="1 = ANFL head; 2 = MEFL head (released for resnet18/50, swin_tiny)")
    batch_size: int = Field(16, ge=1, le=1024)
    use_face_crop: bool = True


def _resize_crop(image: np.ndarray, resize: int, crop: int) -> np.ndarray:
    """torchvision ``Resize(resize)`` + ``CenterCrop(crop)`` on a uint8 RGB array."""
    pil = Image.fromarray(image)
    w, h = pil.size
    size = (resize, max(1, int(resize * h / w))) if w <= h else (max(1, int(resize * w / h)), resize)
    pil = pil.resize(size, Image.Resampling.BILINEAR)
    w, h = pil.size
    top, left = round((h - crop) / 2.0), round((w - crop) / 2.0)
    return np.asarray(pil.crop((left, top, left + crop, top + crop)))


def imagenet_batch(
    images: list[np.ndarray],
    resize: int = 256,
    crop: int = 224,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
) -> np.ndarray:
    """``(n, 3, crop, crop)`` float32 NCHW, normalised like torchvision's ``Normalize``."""
    out = np.empty((len(images), 3, crop, crop), dtype=np.float32)
    m = np.asarray(mean, dtype=np.float32)[:, None, None]
    s = np.asarray(std, dtype=np.float32)[:, None, None]
    for i, image in enumerate(images):
        arr = _resize_crop(image, resize, crop).astype(np.float32) / 255.0
        out[i] = (arr.transpose(2, 0, 1) - m) / s
    return out


def _searched(explicit: str | None) -> str:
    """Where a default model file was looked for (empty when the recipe named the file)."""
    if explicit:
        return ""
    return "; searched: " + ", ".join(str(d) for d in search_dirs())


def _catalogue_name(backbone: str, stage: int = 1) -> str:
    return "opengraphau-" + backbone.replace("_", "-") + ("-stage2" if stage == 2 else "")


class OpenGraphAUDetector(AUDetector[OpenGraphAUConfig]):
    name: ClassVar[str] = "opengraphau"
    scale: Scale = "probability"
    preprocessing: str = (
        "face crop (else full image) -> shorter side 256 bilinear -> centre crop 224 -> "
        "ImageNet mean/std (release image_eval)"
    )
    licence = f"{THIS_CODE}; {OPENGRAPHAU_LICENCE}"

    def __init__(self, config: OpenGraphAUConfig, context: StageContext) -> None:
        super().__init__(config, context)
        # deferred: the network module imports torch (optional, heavy); the registry must not
        from stages.detectors.opengraphau.model import VOCABULARY

        self.vocabulary = VOCABULARY
        self.net: Any = None
        self.device = "cpu"

    def checkpoint_path(self) -> Path:
        cfg = self.config
        if cfg.checkpoint:
            return Path(cfg.checkpoint).expanduser()
        try:
            return local_path(_catalogue_name(cfg.backbone, cfg.stage))
        except KeyError:
            raise StageError(
                f"opengraphau: no released stage-{cfg.stage} checkpoint for backbone {cfg.backbone!r}; "
                "set `checkpoint` to your own file or choose another backbone/stage"
            ) from None

    def setup(self) -> None:
        import torch  # deferred: optional and heavy (the gen extra); only the network needs it

        from stages.detectors.opengraphau.model import CheckpointError, checkpoint_name, load_mefarg  # deferred: torch

        cfg = self.config
        path = self.checkpoint_path()
        if not path.is_file():
            raise StageError(
                f"opengraphau: checkpoint {path} not found. The official stage-{cfg.stage} {cfg.backbone} file "
                f"is {checkpoint_name(cfg.backbone, cfg.stage)}; get it with `factory models pull "
                f"{_catalogue_name(cfg.backbone, cfg.stage)}` (or download it by hand and set `checkpoint`)"
                + _searched(cfg.checkpoint)
            )
        try:
            net = load_mefarg(path, cfg.backbone, cfg.stage)
        except CheckpointError as exc:
            raise StageError(f"opengraphau: {exc}") from exc
        self.device = "cuda" if self.context.device == "cuda" and torch.cuda.is_available() else "cpu"
        self.net = net.to(self.device).float().eval()

    def predict(self, batch: list[Record]) -> np.ndarray:
        import torch  # deferred: optional and heavy (the gen extra); only the network needs it

        if self.net is None:
            self.setup()
        cfg = self.config
        images = [record_image(r, self.name, cfg.use_face_crop) for r in batch]
        out = np.empty((len(images), len(self.vocabulary)), dtype=np.float64)
        for start in range(0, len(images), cfg.batch_size):
            chunk = imagenet_batch(images[start : start + cfg.batch_size])
            with torch.inference_mode():
                scores = self.net(torch.from_numpy(chunk).to(self.device))
            out[start : start + len(chunk)] = scores.float().cpu().numpy()
        return out

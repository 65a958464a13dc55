"""Learned realism: a binary real-vs-generated ResNet classifier scores each image.

The checkpoint is what :func:`stages.realism.train.train_realism` writes (``torch.save``
of a dict)::

    {"arch": "resnet18" | "resnet50", "state_dict": {...}, "input_size": 224,
     "mean": [r, g, b], "std": [r, g, b], "trained_on": {...}}

``state_dict`` uses torchvision's ResNet key names with a one-logit ``fc`` (logit > 0 means
"real"). The stage writes ``record["realism_score"]`` = P(real) and
``record["realism_scorer"] = "learned:<arch>"``; thresholding is the filter stage's job.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image
from pydantic import Field

from stages.base import Record, StageConfig, StageContext, StageError
from stages.nets.checkpoint import state_dict_mismatch
from stages.realism.base import RealismStage

__all__ = [
    "CHECKPOINT_KEYS",
    "LearnedRealism",
    "LearnedRealismConfig",
    "build_classifier",
    "load_classifier",
    "realism_batch",
]

CHECKPOINT_KEYS = ("arch", "state_dict", "input_size", "mean", "std", "trained_on")
ARCHS = ("resnet18", "resnet50")


class LearnedRealismConfig(StageConfig):
    checkpoint: str | None = Field(
        None, description="classifier .pt from `factory train-realism --real DIR --fake DIR`"
    )
    batch_size: int = Field(32, ge=1, le=1024)
    use_face_crop: bool = Field(False, description="score the aligned face crop instead of the whole image")


def realism_batch(images: list[np.ndarray], size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """Shorter side to ``size`` (bilinear), centre crop, scale to [0, 1], normalise; NCHW float32."""
    m = np.asarray(mean, dtype=np.float32)
    s = np.asarray(std, dtype=np.float32)
    out = np.empty((len(images), 3, size, size), dtype=np.float32)
    for i, image in enumerate(images):
        pil = Image.fromarray(image)
        w, h = pil.size
        scale = size / min(w, h)
        pil = pil.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BILINEAR)
        w, h = pil.size
        left, top = (w - size) // 2, (h - size) // 2
        arr = np.asarray(pil.crop((left, top, left + size, top + size)), dtype=np.float32) / 255.0
        out[i] = ((arr - m) / s).transpose(2, 0, 1)
    return out


def build_classifier(arch: str) -> Any:
    """A ResNet with torchvision keys and a single real/fake logit."""
    from stages.nets.resnet import build_resnet  # deferred: the network module imports torch (optional, heavy)

    if arch not in ARCHS:
        raise ValueError(f"unknown realism classifier arch {arch!r}; allowed: {list(ARCHS)}")
    return build_resnet(arch, num_classes=1)


def load_classifier(path: Path) -> tuple[Any, dict[str, Any]]:
    """(eval-mode network, checkpoint metadata without the weights); errors name the file."""
    import torch  # deferred: optional and heavy (the gen extra); only loading a classifier needs it

    if not path.is_file():
        raise StageError(
            f"learned-realism: checkpoint {path} not found; train one with "
            "`factory train-realism --real DIR --fake DIR --out FILE` and set `checkpoint`"
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip errors have many types; the file is what matters
        raise StageError(f"learned-realism: cannot read checkpoint {path}: {exc}") from exc
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise StageError(f"learned-realism: checkpoint {path} lacks {missing} (expected keys {CHECKPOINT_KEYS})")
    try:
        net = build_classifier(str(ckpt["arch"]))
    except ValueError as exc:
        raise StageError(f"learned-realism: checkpoint {path}: {exc}") from exc
    problem = state_dict_mismatch(net.state_dict(), ckpt["state_dict"])
    if problem:
        raise StageError(f"learned-realism: checkpoint {path} does not fit {ckpt['arch']}: {problem}")
    net.load_state_dict(ckpt["state_dict"], strict=True)
    meta = {k: ckpt[k] for k in CHECKPOINT_KEYS if k != "state_dict"}
    return net.eval(), meta


class LearnedRealism(RealismStage[LearnedRealismConfig]):
    name: ClassVar[str] = "learned-realism"
    licence = (
        "Apache-2.0 (this code); the classifier checkpoint from `factory train-realism`: the terms of the real "
        "and generated images it was trained on (and of torchvision ImageNet weights if it started from them)"
    )

    def __init__(self, config: LearnedRealismConfig, context: StageContext) -> None:
        super().__init__(config, context)
        self.net: Any = None
        self.meta: dict[str, Any] = {}
        self.device = "cpu"

    def setup(self) -> None:
        import torch  # deferred: optional and heavy (the gen extra); only the classifier needs it

        if not self.config.checkpoint:
            raise StageError(
                'learned-realism needs `checkpoint = "path/to/realism.pt"`; train one with '
                "`factory train-realism --real DIR --fake DIR`"
            )
        net, self.meta = load_classifier(Path(self.config.checkpoint).expanduser())
        self.device = "cuda" if self.context.device == "cuda" and torch.cuda.is_available() else "cpu"
        self.net = net.to(self.device).float()
        self.scorer = f"learned:{self.meta['arch']}"

    def scores(self, images: list[np.ndarray]) -> np.ndarray:
        """P(real) per image."""
        import torch  # deferred: optional and heavy (the gen extra); only the classifier needs it

        if self.net is None:
            self.setup()
        batch_size = self.config.batch_size
        size, mean, std = int(self.meta["input_size"]), tuple(self.meta["mean"]), tuple(self.meta["std"])
        out = []
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(realism_batch(images[start : start + batch_size], size, mean, std))
            with torch.inference_mode():
                out.append(torch.sigmoid(self.net(x.to(self.device))).float().cpu().numpy().reshape(-1))
        return np.concatenate(out) if out else np.empty(0)

    def score(self, live: list[Record]) -> list[float | None]:
        images = []
        for record in live:
            image = record.get("face_crop") if self.config.use_face_crop else None
            image = record.get("image") if image is None else image
            if not isinstance(image, np.ndarray) or image.ndim != 3:
                raise StageError(f"learned-realism: record {record.get('key')!r} has no decoded 'image'")
            images.append(image)
        return [float(s) for s in self.scores(images)]

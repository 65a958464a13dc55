"""Train the learned realism discriminator: real photos vs. generated images.

``train_realism(real_dir, fake_dir, out)`` fits a ResNet (keys as torchvision's, one logit:
real) on images found under the two folders, holds out a stratified ``val_fraction`` for
the accuracy it reports, and writes the checkpoint :class:`stages.realism.learned.LearnedRealism`
loads. Optionally starts from torchvision ImageNet weights (``pretrained=``, e.g.
``resnet18-f37072fd.pth``), which the hand-written backbone loads key for key.

The CLI wires ``factory train-realism --real DIR --fake DIR`` here.
"""

from __future__ import annotations

import datetime as dt
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from manifests.errors import UserError
from stages.nets.checkpoint import state_dict_mismatch
from stages.realism.learned import ARCHS, build_classifier, realism_batch

__all__ = ["IMAGE_SUFFIXES", "TrainError", "TrainReport", "find_images", "split", "train_realism"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


class TrainError(UserError, ValueError):
    """Training cannot start (missing folder, too few images, bad weights file)."""


@dataclass
class TrainReport:
    arch: str
    checkpoint: str
    epochs: int
    n_train: int
    n_val: int
    val_accuracy: float  # held-out accuracy at P(real) >= 0.5
    val_accuracy_real: float
    val_accuracy_fake: float
    train_loss: list[float] = field(default_factory=list)  # mean loss per epoch
    device: str = "cpu"
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def find_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursive), sorted for determinism."""
    if not folder.is_dir():
        raise TrainError(f"image folder {folder} does not exist")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def split(paths: list[Path], val_fraction: float, seed: int) -> tuple[list[Path], list[Path]]:
    """Deterministic shuffle, then the first ``val_fraction`` (at least 1) is held out."""
    shuffled = list(paths)
    random.Random(seed).shuffle(shuffled)
    n_val = max(1, round(len(shuffled) * val_fraction)) if val_fraction > 0 else 0
    return shuffled[n_val:], shuffled[:n_val]


def _load(path: Path, short_side: int) -> np.ndarray:
    """Decode as RGB, downscaled so the shorter side is at most ``short_side``."""
    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB")
            scale = short_side / min(rgb.size)
            if scale < 1.0:
                size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
                rgb = rgb.resize(size, Image.Resampling.BILINEAR)
            return np.asarray(rgb)
    except (OSError, UnidentifiedImageError) as exc:
        raise TrainError(f"cannot read image {path}: {exc}") from exc


def _augment(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random square crop of 70-100% of the shorter side, random horizontal flip."""
    h, w = image.shape[:2]
    side = int(min(h, w) * rng.uniform(0.7, 1.0))
    top = int(rng.integers(0, h - side + 1))
    left = int(rng.integers(0, w - side + 1))
    crop = image[top : top + side, left : left + side]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return np.ascontiguousarray(crop)


def _load_pretrained(net: Any, path: Path) -> None:
    import torch  # deferred: optional and heavy (the gen extra); only training needs it

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip errors have many types
        raise TrainError(f"cannot read pretrained weights {path}: {exc}") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise TrainError(f"pretrained weights {path} hold no state dict")
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}  # new 1-logit head
    backbone = {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    problem = state_dict_mismatch(backbone, state)
    if problem:
        raise TrainError(
            f"pretrained weights {path} do not fit the backbone ({problem}); expected torchvision's ResNet key names"
        )
    net.load_state_dict(state, strict=False)  # only fc.* is left at its fresh initialisation


def _recalibrate_batchnorm(
    net: Any, images: list[Path], load: Callable[[Path], np.ndarray], size: int, batch_size: int, dev: str
) -> None:
    """Re-estimate BatchNorm running statistics as exact averages over the training images.

    With few optimisation steps the exponential running averages still remember their
    initial (0, 1) values, so eval-mode outputs drift from what training saw; one pass with
    cumulative averaging (``momentum=None``) fixes that at the cost of a forward pass.
    """
    import torch  # deferred: optional and heavy (the gen extra); only training needs it

    norms = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    net.train()
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            chunk = [load(p) for p in images[start : start + batch_size]]
            if len(chunk) >= 2:
                net(torch.from_numpy(realism_batch(chunk, size, _MEAN, _STD)).to(dev))
    for m, momentum in zip(norms, saved, strict=True):
        m.momentum = momentum


Item = tuple[Path, float]  # image file, label (1.0 = real)


@dataclass
class _Data:
    """The labelled images of one training run and how they are decoded."""

    train: list[Item]
    val: list[Item]
    n_real: int
    n_fake: int
    work_side: int  # images are decoded with the shorter side at most this
    use_cache: bool
    cache: dict[Path, np.ndarray] = field(default_factory=dict)

    def image(self, path: Path) -> np.ndarray:
        if not self.use_cache:
            return _load(path, self.work_side)
        if path not in self.cache:
            self.cache[path] = _load(path, self.work_side)
        return self.cache[path]


def _find_data(
    real_dir: Path, fake_dir: Path, val_fraction: float, seed: int, input_size: int, cache_limit: int
) -> _Data:
    """Images of both folders, each split into train and held-out parts."""
    real, fake = find_images(Path(real_dir)), find_images(Path(fake_dir))
    for label, paths, folder in (("real", real, real_dir), ("fake", fake, fake_dir)):
        if len(paths) < 2:
            raise TrainError(f"need at least 2 {label} images under {folder}, found {len(paths)}")
    real_train, real_val = split(real, val_fraction, seed)
    fake_train, fake_val = split(fake, val_fraction, seed + 1)
    train = [(p, 1.0) for p in real_train] + [(p, 0.0) for p in fake_train]
    val = [(p, 1.0) for p in real_val] + [(p, 0.0) for p in fake_val]
    use_cache = len(train) + len(val) <= cache_limit
    return _Data(train, val, len(real), len(fake), round(input_size * 1.25), use_cache)


def _train_epoch(
    net: Any, optimizer: Any, data: _Data, rng: np.random.Generator, input_size: int, batch_size: int, dev: str
) -> float:
    """One pass over the shuffled, augmented training images; the mean loss."""
    import torch  # deferred: optional and heavy (the gen extra); only training needs it

    loss_fn = torch.nn.BCEWithLogitsLoss()
    net.train()
    order = rng.permutation(len(data.train))
    total, count = 0.0, 0
    for start in range(0, len(order), batch_size):
        chunk = [data.train[i] for i in order[start : start + batch_size]]
        if len(chunk) < 2:  # BatchNorm needs two samples
            continue
        x = realism_batch([_augment(data.image(p), rng) for p, _ in chunk], input_size, _MEAN, _STD)
        y = torch.tensor([[label] for _, label in chunk], dtype=torch.float32, device=dev)
        optimizer.zero_grad()
        loss = loss_fn(net(torch.from_numpy(x).to(dev)), y)
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * len(chunk)
        count += len(chunk)
    return total / max(count, 1)


def _held_out_accuracy(net: Any, data: _Data, input_size: int, batch_size: int, dev: str) -> dict[float, list[int]]:
    """Per label (1.0 real, 0.0 fake): ``[right, seen]`` at P(real) >= 0.5 on the held-out images."""
    import torch  # deferred: optional and heavy (the gen extra); only training needs it

    net.eval()
    correct = {1.0: [0, 0], 0.0: [0, 0]}
    with torch.inference_mode():
        for start in range(0, len(data.val), batch_size):
            chunk = data.val[start : start + batch_size]
            x = realism_batch([data.image(p) for p, _ in chunk], input_size, _MEAN, _STD)
            prob = torch.sigmoid(net(torch.from_numpy(x).to(dev))).cpu().numpy().reshape(-1)
            for (_, label), pr in zip(chunk, prob, strict=True):
                correct[label][0] += int((pr >= 0.5) == (label == 1.0))
                correct[label][1] += 1
    return correct


def _accuracy(right_seen: list[int]) -> float:
    return right_seen[0] / right_seen[1] if right_seen[1] else float("nan")


def _write_checkpoint(out: Path, net: Any, input_size: int, trained_on: dict[str, Any], arch: str) -> None:
    """The file :func:`stages.realism.learned.load_classifier` reads, written atomically."""
    import torch  # deferred: optional and heavy (the gen extra); only training needs it

    checkpoint = {
        "arch": arch,
        "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        "input_size": input_size,
        "mean": list(_MEAN),
        "std": list(_STD),
        "trained_on": trained_on,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    torch.save(checkpoint, tmp)
    tmp.replace(out)  # a crash mid-save never leaves a truncated checkpoint under `out`


def train_realism(
    real_dir: Path,
    fake_dir: Path,
    out: Path,
    arch: str = "resnet18",
    epochs: int = 5,
    val_fraction: float = 0.2,
    seed: int = 0,
    device: str | None = None,
    *,
    input_size: int = 224,
    batch_size: int = 32,
    lr: float = 3e-4,
    pretrained: Path | None = None,
    cache_limit: int = 2000,
) -> TrainReport:
    """Train, evaluate on the held-out split, write ``out``; returns the report.

    Images are decoded at a working size (shorter side ``1.25 * input_size``) and kept in
    memory when there are at most ``cache_limit`` of them, else re-read every epoch.
    """
    import torch  # deferred: optional and heavy (the gen extra); only training needs it

    if arch not in ARCHS:
        raise TrainError(f"unknown arch {arch!r}; allowed: {list(ARCHS)}")
    if not 0.0 <= val_fraction < 1.0:
        raise TrainError(f"val_fraction must be in [0, 1), got {val_fraction}")
    data = _find_data(real_dir, fake_dir, val_fraction, seed, input_size, cache_limit)

    started = time.perf_counter()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    net = build_classifier(arch)
    if pretrained is not None:
        _load_pretrained(net, Path(pretrained))
    net = net.to(dev).float()
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    losses = [_train_epoch(net, optimizer, data, rng, input_size, batch_size, dev) for _ in range(epochs)]
    if epochs > 0:
        _recalibrate_batchnorm(net, [p for p, _ in data.train], data.image, input_size, batch_size, dev)
    correct = _held_out_accuracy(net, data, input_size, batch_size, dev)

    val_acc = _accuracy([correct[1.0][0] + correct[0.0][0], correct[1.0][1] + correct[0.0][1]])
    report = TrainReport(
        arch=arch,
        checkpoint=str(out),
        epochs=epochs,
        n_train=len(data.train),
        n_val=len(data.val),
        val_accuracy=val_acc,
        val_accuracy_real=_accuracy(correct[1.0]),
        val_accuracy_fake=_accuracy(correct[0.0]),
        train_loss=losses,
        device=dev,
    )
    trained_on = {
        "real_dir": str(real_dir),
        "fake_dir": str(fake_dir),
        "n_real": data.n_real,
        "n_fake": data.n_fake,
        "val_fraction": val_fraction,
        "val_accuracy": val_acc,
        "epochs": epochs,
        "seed": seed,
        "pretrained": str(pretrained) if pretrained else None,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    _write_checkpoint(Path(out), net, input_size, trained_on, arch)
    report.seconds = time.perf_counter() - started
    return report

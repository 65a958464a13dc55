"""Realism discriminator training on tiny images: report, checkpoint, reload through the stage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import gaussian_filter

from stages.base import StageContext
from stages.nets.resnet import build_resnet
from stages.realism.learned import LearnedRealism, LearnedRealismConfig
from stages.realism.train import TrainError, TrainReport, split, train_realism

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry")


def _write_dataset(root: Path, n_per_class: int = 20) -> tuple[Path, Path]:
    import skimage.data

    rng = np.random.default_rng(0)
    real, fake = root / "real", root / "fake" / "nested"
    real.mkdir(parents=True)
    fake.mkdir(parents=True)
    photos = [getattr(skimage.data, name)() for name in PHOTOS]
    for i in range(n_per_class):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        side = int(rng.integers(min(h, w) // 3, min(h, w)))
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = Image.fromarray(photo[y : y + side, x : x + side]).resize((72, 72))
        crop.save(real / f"{i:03d}.png")
        noise = rng.normal(128, 60, (72, 72, 3))
        if i % 2:  # blurred noise: smooth blobs rather than texture
            noise = gaussian_filter(noise, sigma=(3, 3, 0))
        Image.fromarray(np.clip(noise, 0, 255).astype(np.uint8)).save(fake / f"{i:03d}.jpg")
    return real, root / "fake"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainReport, Path, Path, Path]:
    root = tmp_path_factory.mktemp("realism")
    real, fake = _write_dataset(root)
    out = root / "models" / "realism.pt"
    report = train_realism(real, fake, out, arch="resnet18", epochs=3, seed=0, input_size=48, batch_size=8)
    return report, out, real, fake


def test_split_is_deterministic_and_disjoint() -> None:
    paths = [Path(f"{i}.png") for i in range(10)]
    train, val = split(paths, 0.2, seed=3)
    assert len(val) == 2 and set(train).isdisjoint(val) and set(train) | set(val) == set(paths)
    assert split(paths, 0.2, seed=3) == (train, val)


def test_training_reports_held_out_accuracy(trained: tuple[TrainReport, Path, Path, Path]) -> None:
    report, out, _, _ = trained
    assert report.n_train == 32 and report.n_val == 8
    assert len(report.train_loss) == 3
    assert report.val_accuracy > 0.5
    assert out.is_file() and not out.with_name(out.name + ".tmp").exists()
    ckpt = torch.load(out, weights_only=True)
    assert set(ckpt) == {"arch", "state_dict", "input_size", "mean", "std", "trained_on"}
    assert ckpt["trained_on"]["n_real"] == 20 and ckpt["input_size"] == 48


def test_checkpoint_reloads_through_the_stage(trained: tuple[TrainReport, Path, Path, Path], tmp_path: Path) -> None:
    _, out, real, fake = trained
    stage = LearnedRealism(LearnedRealismConfig(checkpoint=str(out)), StageContext(run_dir=tmp_path))
    stage.setup()
    images = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(real.glob("*.png"))[:4]]
    images += [np.asarray(Image.open(p).convert("RGB")) for p in sorted(fake.rglob("*.jpg"))[:4]]
    records = [{"key": str(i), "image": im} for i, im in enumerate(images)]
    records.append({"key": "gone", "image": images[0], "dropped_by": "x", "drop_reason": "y"})
    stage.process(records)
    scores = [r["realism_score"] for r in records[:8]]
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert {r["realism_scorer"] for r in records[:8]} == {"learned:resnet18"}
    assert "realism_score" not in records[8]
    # Same weights as training: the stage's scores match a direct forward pass.
    ckpt = torch.load(out, weights_only=True)
    net = build_resnet("resnet18", num_classes=1)
    net.load_state_dict(ckpt["state_dict"])
    from stages.realism.learned import realism_batch

    x = torch.from_numpy(realism_batch(images, 48, tuple(ckpt["mean"]), tuple(ckpt["std"])))
    with torch.no_grad():
        expected = torch.sigmoid(net.eval()(x)).numpy().reshape(-1)
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-6)


def test_pretrained_torchvision_layout_is_accepted(tmp_path: Path) -> None:
    real, fake = _write_dataset(tmp_path, n_per_class=4)
    imagenet = build_resnet("resnet18", num_classes=1000)  # stands in for resnet18-f37072fd.pth
    torch.save(imagenet.state_dict(), tmp_path / "resnet18.pth")
    out = tmp_path / "r.pt"
    train_realism(real, fake, out, epochs=0, input_size=32, pretrained=tmp_path / "resnet18.pth")
    trained = torch.load(out, weights_only=True)["state_dict"]
    torch.testing.assert_close(trained["layer3.1.conv2.weight"], imagenet.state_dict()["layer3.1.conv2.weight"])

    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(TrainError, match="do not fit"):
        train_realism(real, fake, out, epochs=0, input_size=32, pretrained=tmp_path / "bad.pth")


def test_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(TrainError, match="does not exist"):
        train_realism(tmp_path / "no", tmp_path / "no", tmp_path / "o.pt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TrainError, match="at least 2 real"):
        train_realism(tmp_path / "empty", tmp_path / "empty", tmp_path / "o.pt")


def test_uncached_training_and_unreadable_image(tmp_path: Path) -> None:
    real, fake = _write_dataset(tmp_path, n_per_class=4)
    report = train_realism(real, fake, tmp_path / "u.pt", epochs=1, input_size=32, batch_size=4, cache_limit=0)
    assert (report.n_train, report.n_val) == (6, 2) and len(report.train_loss) == 1
    (real / "broken.png").write_bytes(b"not a png")
    with pytest.raises(TrainError, match=r"broken\.png"):
        train_realism(real, fake, tmp_path / "u.pt", epochs=1, input_size=32, batch_size=4, val_fraction=0.5)

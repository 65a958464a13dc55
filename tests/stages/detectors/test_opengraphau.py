"""OpenGraphAU stage: checkpoint path errors, the real loading path, votes on DISFA AUs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from manifests.vocab import DISFA_AUS
from stages import stage_class
from stages.base import StageContext, StageError
from stages.detectors.opengraphau.model import ARCHS, _Arch, build_mefarg
from stages.detectors.opengraphau.stage import OpenGraphAUConfig, OpenGraphAUDetector, imagenet_batch
from stages.nets.resnet import ResNetSpec
from stages.nets.swin import SwinSpec

TINY = {
    # Narrow versions with the official key layout (the real ones are slow to build and save).
    "resnet50": _Arch("resnet", ResNetSpec("bottleneck", (1, 1, 1, 1), 8)),
    "swin_base": _Arch("swin", SwinSpec(16, (2, 2, 2, 2), (1, 1, 2, 2))),
}


@pytest.fixture(scope="module")
def checkpoints(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, tuple[Path, torch.nn.Module]]]:
    with pytest.MonkeyPatch.context() as mp:
        for name, arch in TINY.items():
            mp.setitem(ARCHS, name, arch)
        out = {}
        root = tmp_path_factory.mktemp("ogau")
        for name in TINY:
            torch.manual_seed(1)
            net = build_mefarg(name).eval()
            path = root / f"{name}.pth"
            state = {f"module.{k}": v for k, v in net.state_dict().items()}
            torch.save({"epoch": 0, "state_dict": state, "optimizer": {}}, path)
            out[name] = (path, net)
        yield out


def _stage(tmp_path: Path, **cfg: object) -> OpenGraphAUDetector:
    return OpenGraphAUDetector(OpenGraphAUConfig(**cfg), StageContext(run_dir=tmp_path))


def _faces(n: int) -> list[dict[str, object]]:
    rng = np.random.default_rng(0)
    return [{"key": f"k{i}", "image": rng.integers(0, 255, (300, 260, 3), dtype=np.uint8)} for i in range(n)]


def test_registered_and_defaults() -> None:
    assert stage_class("opengraphau") is OpenGraphAUDetector
    cfg = OpenGraphAUConfig()
    assert cfg.backbone == "resnet50" and cfg.checkpoint is None


def test_missing_checkpoint_explains_the_fix(tmp_path: Path) -> None:
    stage = _stage(tmp_path, checkpoint=str(tmp_path / "nope.pth"), backbone="swin_base")
    with pytest.raises(StageError) as err:
        stage.setup()
    msg = str(err.value)
    assert str(tmp_path / "nope.pth") in msg
    assert "OpenGprahAU-SwinB_first_stage.pth" in msg
    assert "factory models pull opengraphau-swin-base" in msg


def test_preprocessing_matches_release_transform() -> None:
    image = np.zeros((300, 200, 3), dtype=np.uint8)
    image[:, :, 0] = 255
    batch = imagenet_batch([image])
    assert batch.shape == (1, 3, 224, 224) and batch.dtype == np.float32
    np.testing.assert_allclose(batch[0, 0].mean(), (1 - 0.485) / 0.229, rtol=1e-5)
    np.testing.assert_allclose(batch[0, 1].mean(), (0 - 0.456) / 0.224, rtol=1e-5)


def test_stage2_paths_and_names(tmp_path: Path) -> None:
    stage = _stage(tmp_path, checkpoint=str(tmp_path / "s2.pth"), backbone="resnet50", stage=2)
    with pytest.raises(StageError) as err:
        stage.setup()
    assert "OpenGprahAU-ResNet50_second_stage.pth" in str(err.value)
    assert "factory models pull opengraphau-resnet50-stage2" in str(err.value)
    with pytest.raises(StageError, match="no released stage-2"):
        _stage(tmp_path, backbone="swin_base", stage=2).checkpoint_path()


def test_stage2_votes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(ARCHS, "resnet50", TINY["resnet50"])
    torch.manual_seed(2)
    net = build_mefarg("resnet50", stage=2).eval()
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, tmp_path / "s2.pth")
    stage = _stage(tmp_path, checkpoint=str(tmp_path / "s2.pth"), stage=2)
    records = _faces(2)
    raw = stage.predict(records)
    with torch.no_grad():
        expected = net(torch.from_numpy(imagenet_batch([r["image"] for r in records]))).numpy()
    np.testing.assert_allclose(raw, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backbone", ["resnet50", "swin_base"])
def test_votes_come_from_the_loaded_weights(
    tmp_path: Path,
    checkpoints: dict[str, tuple[Path, torch.nn.Module]],
    backbone: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(ARCHS, backbone, TINY[backbone])
    path, reference = checkpoints[backbone]
    stage = _stage(tmp_path, checkpoint=str(path), backbone=backbone, batch_size=2)
    stage.setup()
    records = _faces(3)
    records[1]["face_crop"] = np.full((224, 224, 3), 128, dtype=np.uint8)
    raw = stage.predict(records)
    with torch.no_grad():
        x = imagenet_batch([records[0]["image"], records[1]["face_crop"], records[2]["image"]])
        expected = reference(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(raw, expected, rtol=1e-4, atol=1e-5)

    stage.process(records)
    vote = records[0]["detector_votes"]["opengraphau"]
    assert all(v is not None for v in vote["occurrence"])  # all 12 DISFA AUs covered
    assert vote["intensity"] == [None] * len(DISFA_AUS)
    i12 = DISFA_AUS.index(12)
    cols = [stage.vocabulary.index(c) for c in ("AU12", "AUL12", "AUR12")]
    assert vote["occurrence"][i12] == pytest.approx(float(np.clip(raw[0, cols].max(), 0, 1)))


def test_checkpoint_for_another_backbone_is_refused(
    tmp_path: Path, checkpoints: dict[str, tuple[Path, torch.nn.Module]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(ARCHS, "swin_base", TINY["swin_base"])
    path, _ = checkpoints["resnet50"]
    stage = _stage(tmp_path, checkpoint=str(path), backbone="swin_base")
    with pytest.raises(StageError) as err:
        stage.setup()
    assert str(path) in str(err.value) and "missing keys" in str(err.value)


def test_record_without_image_is_a_clear_error(
    tmp_path: Path, checkpoints: dict[str, tuple[Path, torch.nn.Module]], monkeypatch: pytest.MonkeyPatch
) -> None:

    monkeypatch.setitem(ARCHS, "resnet50", TINY["resnet50"])
    stage = _stage(tmp_path, checkpoint=str(checkpoints["resnet50"][0]))
    stage.setup()
    with pytest.raises(StageError, match="'image'"):
        stage.predict([{"key": "x"}])

"""LearnedRealism stage: checkpoint errors and scoring (training is in tests/factory)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from stages import stage_class
from stages.base import StageContext, StageError
from stages.realism.learned import LearnedRealism, LearnedRealismConfig, build_classifier, realism_batch


def _stage(tmp_path: Path, checkpoint: Path | None, **cfg: object) -> LearnedRealism:
    config = LearnedRealismConfig(checkpoint=str(checkpoint) if checkpoint else None, **cfg)
    return LearnedRealism(config, StageContext(run_dir=tmp_path))


def test_registered() -> None:
    assert stage_class("learned-realism") is LearnedRealism and LearnedRealism.kind == "realism"


def test_missing_or_unset_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(StageError, match="train-realism"):
        _stage(tmp_path, None).setup()
    with pytest.raises(StageError) as err:
        _stage(tmp_path, tmp_path / "r.pt").setup()
    assert str(tmp_path / "r.pt") in str(err.value) and "factory train-realism" in str(err.value)


def test_incomplete_or_mismatched_checkpoint(tmp_path: Path) -> None:
    torch.save({"arch": "resnet18", "state_dict": {}}, tmp_path / "a.pt")
    with pytest.raises(StageError, match="lacks"):
        _stage(tmp_path, tmp_path / "a.pt").setup()
    state = build_classifier("resnet18").state_dict()
    meta = {"input_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3, "trained_on": {}}
    torch.save({"arch": "resnet50", "state_dict": state, **meta}, tmp_path / "b.pt")
    with pytest.raises(StageError) as err:
        _stage(tmp_path, tmp_path / "b.pt").setup()
    assert str(tmp_path / "b.pt") in str(err.value) and "missing" in str(err.value)


def test_scores_use_face_crop_when_asked(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = build_classifier("resnet18").eval()
    meta = {"input_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3, "trained_on": {"note": "random"}}
    torch.save({"arch": "resnet18", "state_dict": net.state_dict(), **meta}, tmp_path / "c.pt")
    stage = _stage(tmp_path, tmp_path / "c.pt", use_face_crop=True)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)
    crop = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    records = [{"key": "a", "image": image, "face_crop": crop}, {"key": "b", "image": image}]
    stage.process(records)
    x = torch.from_numpy(realism_batch([crop, image], 32, (0.5,) * 3, (0.25,) * 3))
    with torch.no_grad():
        expected = torch.sigmoid(net(x)).numpy().reshape(-1)
    got = [r["realism_score"] for r in records]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    assert records[0]["realism_scorer"] == "learned:resnet18"

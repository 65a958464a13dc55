"""Generic ONNX AU adapter: tiny exported models + YAML specs written here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from manifests.vocab import DISFA_AUS
from stages import stage_class
from stages.base import StageContext, StageError
from stages.detectors.onnx import OnnxAUConfig, OnnxAUDetector, load_spec, preprocess


class TinyAU(torch.nn.Module):
    """conv -> mean pool -> linear; 4 logits (NCHW input)."""

    def __init__(self, out: int = 4, channels_last: bool = False):
        super().__init__()
        self.channels_last = channels_last
        self.conv = torch.nn.Conv2d(3, 6, 3, stride=2)
        self.fc = torch.nn.Linear(6, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.permute(0, 3, 1, 2)
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


class Encoder(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(self.conv(x), 1)  # (B, 8, 1, 1) like LibreFace


def _export(m: torch.nn.Module, x: torch.Tensor, path: Path, dynamic: bool = True) -> Path:
    axes = {"input": {0: "n"}, "output": {0: "n"}} if dynamic else None
    torch.onnx.export(
        m.eval(), (x,), str(path), input_names=["input"], output_names=["output"], dynamic_axes=axes,
        dynamo=False,
    )  # fmt: skip
    return path


@pytest.fixture(scope="module")
def nets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("onnxau")
    nchw, nhwc, enc, head = TinyAU(), TinyAU(channels_last=True), Encoder(), torch.nn.Linear(8, 12)
    _export(nchw, torch.zeros(1, 3, 32, 32), root / "nchw.onnx")
    _export(nhwc, torch.zeros(1, 32, 32, 3), root / "nhwc.onnx")
    _export(enc, torch.zeros(1, 3, 32, 32), root / "enc.onnx", dynamic=False)  # fixed batch 1
    _export(head, torch.zeros(1, 8), root / "head.onnx", dynamic=False)
    return {"root": root, "nchw": nchw, "nhwc": nhwc, "enc": enc, "head": head}


def _write(root: Path, name: str, **spec: object) -> Path:
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _detector(tmp_path: Path, spec: Path) -> OnnxAUDetector:
    return OnnxAUDetector(OnnxAUConfig(spec=str(spec), batch_size=2), StageContext(run_dir=tmp_path))


def _records(n: int) -> list[dict[str, object]]:
    rng = np.random.default_rng(1)
    return [{"key": str(i), "image": rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)} for i in range(n)]


def test_registered() -> None:
    assert stage_class("onnx-au") is OnnxAUDetector


def test_nchw_probability_with_sigmoid(tmp_path: Path, nets: dict[str, object]) -> None:
    spec = _write(
        nets["root"], "a", path="nchw.onnx", size=32, vocabulary=["AU1", "AU12", "AUL25", "AU45"],
        output_scale="probability", activation="sigmoid", crop="image", licence="MIT (test)",
    )  # fmt: skip
    det = _detector(tmp_path, spec)
    det.setup()
    records = _records(3)
    raw = det.predict(records)
    x = preprocess([r["image"] for r in records], load_spec(spec))
    with torch.no_grad():
        expected = torch.sigmoid(nets["nchw"](torch.from_numpy(x))).numpy()
    np.testing.assert_allclose(raw, expected, rtol=1e-4, atol=1e-6)
    det.process(records)
    vote = records[0]["detector_votes"]["onnx-au"]
    covered = [au for au, v in zip(DISFA_AUS, vote["occurrence"], strict=True) if v is not None]
    assert covered == [1, 12, 25]  # AU45 is not a DISFA AU; the rest are missing, not 0
    assert vote["occurrence"][DISFA_AUS.index(25)] == pytest.approx(raw[0, 2])
    assert det.licence_notice() == "MIT (test)"


def test_nhwc_bgr_and_resize_crop(tmp_path: Path, nets: dict[str, object]) -> None:
    spec = _write(
        nets["root"], "b", path=str(nets["root"] / "nhwc.onnx"), size=32, resize=36, layout="NHWC",
        colour="BGR", pixel_range=255.0, mean=[100.0, 110.0, 120.0], std=[50.0, 50.0, 50.0],
        vocabulary=["AU1", "AU2", "AU4", "AU6"], output_scale="intensity_0_5", crop="image",
    )  # fmt: skip
    det = _detector(tmp_path, spec)
    records = _records(2)
    x = preprocess([records[0]["image"]], load_spec(spec))
    assert x.shape == (1, 32, 32, 3)
    # BGR: channel 0 is the image's blue channel (after a centre crop of the 36-px resize).
    from PIL import Image

    pil = Image.fromarray(records[0]["image"]).resize((36, 43), Image.Resampling.BILINEAR)
    crop = np.asarray(pil, dtype=np.float32)[6:38, 2:34]
    np.testing.assert_allclose(x[0, :, :, 0], (crop[:, :, 2] - 100.0) / 50.0, rtol=1e-5)
    raw = det.predict(records)
    with torch.no_grad():
        expected = nets["nhwc"](torch.from_numpy(preprocess([r["image"] for r in records], load_spec(spec))))
    np.testing.assert_allclose(raw, expected.numpy(), rtol=1e-4, atol=1e-6)


def test_encoder_head_chain_with_fixed_batch(tmp_path: Path, nets: dict[str, object]) -> None:
    spec = _write(
        nets["root"], "c", path="enc.onnx", size=32, head={"path": "head.onnx"}, multiply=5.0,
        vocabulary="disfa12", output_scale="intensity_0_5",
    )  # fmt: skip
    det = _detector(tmp_path, spec)
    records = _records(3)
    records[1]["face_crop"] = np.full((32, 32, 3), 200, dtype=np.uint8)  # used instead of the image
    raw = det.predict(records)
    assert raw.shape == (3, 12)
    images = [records[0]["image"], records[1]["face_crop"], records[2]["image"]]
    with torch.no_grad():
        feats = nets["enc"](torch.from_numpy(preprocess(images, load_spec(spec)))).flatten(1)
        expected = nets["head"](feats).numpy() * 5.0
    np.testing.assert_allclose(raw, expected, rtol=1e-4, atol=1e-5)


def test_spec_errors_name_file_and_field(tmp_path: Path, nets: dict[str, object]) -> None:
    bad = _write(tmp_path, "bad", path="nchw.onnx", vocabulary=["AU1"], output_scale="logits")
    with pytest.raises(StageError) as err:
        _detector(tmp_path, bad)
    assert str(bad) in str(err.value) and "output_scale" in str(err.value)

    with pytest.raises(StageError, match="not found"):
        _detector(tmp_path, tmp_path / "missing.yaml")

    gone = _write(tmp_path, "gone", path="nowhere.onnx", vocabulary="disfa8", output_scale="binary")
    det = _detector(tmp_path, gone)
    with pytest.raises(StageError, match=r"nowhere\.onnx"):
        det.setup()

    wrong = _write(nets["root"], "wrong", path="nchw.onnx", size=32, vocabulary="disfa8", output_scale="binary")
    det = _detector(tmp_path, wrong)
    with pytest.raises(StageError, match="4 values per image"):
        det.predict(_records(1))


def test_empty_section_explains_spec(tmp_path: Path) -> None:
    det = OnnxAUDetector(OnnxAUConfig(), StageContext(run_dir=tmp_path))
    with pytest.raises(StageError, match="spec"):
        det.setup()
